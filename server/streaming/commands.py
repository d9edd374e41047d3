"""What a client asks of a conversation, free of any protocol.

An edge adapter (server/realtime/port.py for OpenAI Realtime clients, server/telephony/twilio.py
for Twilio Media Streams) turns its carrier's messages into these and hands them to the
conversation through its `ClientPort`; the conversation never parses a carrier's JSON.
`event_id` is the client's id of the message, quoted back in an error about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from server.errors import ProtocolViolation
from server.model.base import ImageInput, Message, ResponseOptions
from server.model.tool_calls import ToolSpec
from server.streaming.session_config import SessionConfig


@dataclass(frozen=True, slots=True)
class UpdateSession:
    """New session settings, already parsed and validated against the protocol.
    `client_tools`: the functions the client declared (None: unchanged)."""

    config: SessionConfig
    client_tools: tuple[ToolSpec, ...] | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class AppendAudio:
    """Caller audio, encoded in the session's input format."""

    audio: bytes
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class CommitAudio:
    """End the caller's turn now (client-committed turns)."""

    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClearAudio:
    """Forget the caller audio of the turn so far."""

    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class AddUserText:
    """A typed user message, with any images the client shared."""

    text: str
    item_id: str | None = None
    event_id: str | None = None
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True, slots=True)
class AddSystemText:
    """A system note the client adds mid-conversation (context for the model; never spoken)."""

    text: str
    item_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class AddAssistantText:
    """What the assistant said earlier, added by the client (a history it replays)."""

    text: str
    item_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class AddFunctionCall:
    """A function call a client replays into the conversation (its output may follow)."""

    call_id: str
    name: str
    arguments_json: str
    item_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class AddFunctionOutput:
    """The client's result for a client-side function call of an earlier reply."""

    call_id: str | None
    output: str | None
    item_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class TruncateItem:
    """The caller heard only the first `audio_end_ms` of the assistant's item."""

    item_id: str
    content_index: int
    audio_end_ms: int
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class CreateResponse:
    """A client's `response.create`. `out_of_band` (`conversation: "none"`): answered beside
    the conversation, which it neither joins nor interrupts, to `context` (its own `input`
    items; None: the conversation so far). `metadata` is echoed in the response."""

    options: ResponseOptions | None = None  # None: the session's defaults
    event_id: str | None = None
    metadata: Mapping[str, str] | None = None
    out_of_band: bool = False
    context: tuple[Message, ...] | None = None


@dataclass(frozen=True, slots=True)
class CancelResponse:
    response_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClearOutputAudio:
    """Stop the reply's audio now (the client emptied its own buffer)."""

    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteItem:
    """A client removes an item from the conversation (and so from the model's history)."""

    item_id: str
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class RetrieveItem:
    """A client asks for an item as the protocol last described it (the adapter keeps them)."""

    item_id: str
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message the adapter could not accept; the conversation reports it as an error."""

    violation: ProtocolViolation
    event_id: str | None = None


Command = (
    UpdateSession
    | AppendAudio
    | CommitAudio
    | ClearAudio
    | AddUserText
    | AddAssistantText
    | AddSystemText
    | AddFunctionCall
    | AddFunctionOutput
    | TruncateItem
    | CreateResponse
    | CancelResponse
    | ClearOutputAudio
    | RetrieveItem
    | DeleteItem
    | Rejected
)
