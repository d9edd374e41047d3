"""How a conversation meets its client: a port of typed commands in and outputs out.

The conversation (server/streaming/conversation.py) knows no protocol. An edge adapter
implements `ClientPort` for its carrier: server/realtime/port.py for OpenAI Realtime clients,
server/telephony/twilio.py for Twilio Media Streams, tests/streaming/memory_port.py for tests
that drive a conversation without sockets. Adapters below a port move text frames:
`TextTransport` (a websocket, wrapped by the session limits of server/streaming/guard.py).

Order of calls: the conversation calls `port.attach(itself)` when it is built (an adapter may
read the session's settings to parse a message, e.g. the input audio format), then
`opening_settings()` once before `SessionCreated`, then `receive()` until it raises
`TransportClosed`, and `send()` for every output, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from server.streaming.commands import Command, UpdateSession
from server.streaming.outputs import Output
from server.streaming.session_config import SessionConfig


class TransportClosed(Exception):
    """The client went away."""


class TextTransport(Protocol):
    async def receive(self) -> str | bytes:
        """The next message; raises TransportClosed when the client has gone."""
        ...

    async def send_text(self, text: str) -> None: ...


class SessionView(Protocol):
    """What an adapter may read of the session it serves."""

    @property
    def config(self) -> SessionConfig: ...

    def server_tool_names(self) -> Iterable[str]: ...

    def transcription_languages(self) -> frozenset[str] | None:
        """The languages the session's recogniser transcribes (None: any)."""
        ...


class ClientPort(Protocol):
    def attach(self, session: SessionView) -> None: ...

    def opening_settings(self) -> UpdateSession | None:
        """Settings to apply before the session is announced (a minted client secret's
        session, a phone call's formats), without a `SessionUpdated` of their own."""
        ...

    async def receive(self) -> Command:
        """The client's next command; raises TransportClosed when it has gone."""
        ...

    async def send(self, output: Output) -> None:
        """Deliver an output; raises TransportClosed when the client has gone."""
        ...
