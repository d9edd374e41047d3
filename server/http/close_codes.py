"""Websocket close codes Voxgate sends (RFC 6455 section 7.4.1), named once for every route."""

from typing import Final

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # the server is shutting down
CLOSE_UNSUPPORTED_DATA: Final = 1003
CLOSE_POLICY_VIOLATION: Final = 1008
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013
