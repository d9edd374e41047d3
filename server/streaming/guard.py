"""TransportGuard: a Transport around another that bounds what one client can cost us.

- Outbound: a send that does not complete within `max_outbound_buffer_ms` means the client has
  stopped reading (the server's socket buffers are full and the websocket layer waits for them
  to drain). Audio goes out at real time, so that is about as many milliseconds of audio held
  back; the session ends with `SessionEnd.SLOW_CONSUMER` instead of piling more up or hanging.
- Inbound: a message larger than `max_message_bytes` ends the session with
  `SessionEnd.MESSAGE_TOO_BIG` (the websocket server's own size limit, uvicorn's `ws_max_size`,
  may be larger when Voxgate is embedded in another app; this one always holds).

Either way the guard raises `SessionLimitReached` (a `TransportClosed`, so the Conversation
ends as if the client had gone) and remembers it in `ended`; every later call raises too.
The route reads `ended` to pick the close code.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from server.streaming.lifetime import SessionEnd
from server.streaming.port import TextTransport, TransportClosed


class SessionLimitReached(TransportClosed):
    """The session must end for `reason`; `detail` says why, for the client and the log."""

    def __init__(self, reason: SessionEnd, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class GuardOptions:
    max_outbound_buffer_ms: int = 2000
    max_message_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_outbound_buffer_ms < 1:
            raise ValueError(f"max_outbound_buffer_ms must be >= 1, not {self.max_outbound_buffer_ms}")
        if self.max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be >= 1, not {self.max_message_bytes}")


def message_bytes(message: str | bytes) -> int:
    """Size of a websocket message as sent: UTF-8 bytes of a text message."""
    if isinstance(message, bytes):
        return len(message)
    return len(message.encode())


class TransportGuard:
    def __init__(self, inner: TextTransport, options: GuardOptions) -> None:
        self._inner = inner
        self._options = options
        self.ended: SessionLimitReached | None = None

    def _end(self, reason: SessionEnd, detail: str) -> SessionLimitReached:
        if self.ended is None:
            self.ended = SessionLimitReached(reason, detail)
        return SessionLimitReached(self.ended.reason, self.ended.detail)

    async def receive(self) -> str | bytes:
        if self.ended is not None:
            raise self._end(self.ended.reason, self.ended.detail)
        message = await self._inner.receive()
        limit = self._options.max_message_bytes
        # a str has at least one byte per character: count the bytes only when it may matter
        if len(message) > limit or (isinstance(message, str) and len(message) * 4 > limit):
            size = message_bytes(message)
            if size > limit:
                raise self._end(
                    SessionEnd.MESSAGE_TOO_BIG,
                    f"message of {size} bytes is over the {limit}-byte limit",
                )
        return message

    async def send_text(self, text: str) -> None:
        if self.ended is not None:
            raise self._end(self.ended.reason, self.ended.detail)
        bound_ms = self._options.max_outbound_buffer_ms
        try:
            async with asyncio.timeout(bound_ms / 1000):
                await self._inner.send_text(text)
        except TimeoutError as exc:
            raise self._end(
                SessionEnd.SLOW_CONSUMER,
                f"the client stopped reading: a send waited more than {bound_ms} ms",
            ) from exc
