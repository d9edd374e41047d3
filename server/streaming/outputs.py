"""What a conversation tells its client, free of any protocol.

The conversation sends these through its `ClientPort`; the edge adapter renders them for its
carrier (OpenAI Realtime JSON events in server/realtime/port.py; Twilio media, marks and clears
in server/telephony/twilio.py), or drops the ones its carrier has no word for. Reply audio is
already encoded in the session's output format, so an adapter only frames it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from server.model.base import ImageInput
from server.streaming.session_config import SessionConfig


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """A client-side function call the model made in a reply (an output item of its own)."""

    item_id: str
    call_id: str
    name: str
    arguments_json: str


# --- the session -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionCreated:
    config: SessionConfig


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    config: SessionConfig


@dataclass(frozen=True, slots=True)
class SessionExpiring:
    expires_at: int  # Unix time, s
    seconds_left: int


@dataclass(frozen=True, slots=True)
class Failed:
    """An error for the client: its message was refused, or a model failed."""

    message: str
    code: str
    param: str | None = None
    event_id: str | None = None
    type: str = "invalid_request_error"


# --- the caller's input ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str | None


@dataclass(frozen=True, slots=True)
class InputCommitted:
    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class InputCleared:
    pass


@dataclass(frozen=True, slots=True)
class IdleTimedOut:
    """No speech for the session's idle timeout (turn_detection.idle_timeout_ms)."""

    audio_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class UserAudioAdded:
    """The caller's committed turn joined the conversation (its transcript follows)."""

    item_id: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class UserTextAdded:
    item_id: str
    text: str
    previous_item_id: str | None
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True, slots=True)
class SystemTextAdded:
    """A system message the client added to the conversation."""

    item_id: str
    text: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class AssistantTextAdded:
    """An assistant message the client added to the conversation (e.g. a replayed history)."""

    item_id: str
    text: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class FunctionCallAdded:
    """A client's replayed function call joined the conversation."""

    call: FunctionCall
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class FunctionOutputAdded:
    item_id: str
    call_id: str
    output: str
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptCompleted:
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class TranscriptFailed:
    item_id: str
    error: dict[str, Any]


# --- the reply -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    response_id: str
    item_id: str
    with_audio: bool
    previous_item_id: str | None
    config: SessionConfig
    metadata: Mapping[str, str] | None = None
    out_of_band: bool = False  # not in the conversation: no item joins it


@dataclass(frozen=True, slots=True)
class ResponseText:
    response_id: str
    item_id: str
    with_audio: bool
    text: str


@dataclass(frozen=True, slots=True)
class ResponseAudio:
    """One paced chunk of reply audio, in the session's output format."""

    response_id: str
    item_id: str
    audio: bytes
    duration_ms: float


@dataclass(frozen=True, slots=True)
class FunctionCallMade:
    response_id: str
    output_index: int
    call: FunctionCall
    previous_item_id: str | None


@dataclass(frozen=True, slots=True)
class ResponseEnded:
    """The response's closing events (`response.done`): status completed, cancelled or failed."""

    response_id: str
    item_id: str
    with_audio: bool
    transcript: str
    status: str
    config: SessionConfig
    reason: str | None = None
    error: dict[str, Any] | None = None
    function_calls: tuple[FunctionCall, ...] = field(default_factory=tuple)
    metadata: Mapping[str, str] | None = None
    out_of_band: bool = False
    # how the reply was answered under grounding (StageTimings.answer_path), for
    # response.metadata; None without grounding
    answer_path: str | None = None


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    """The assistant's item was cut to what the caller heard."""

    item_id: str
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class OutputCleared:
    pass


@dataclass(frozen=True, slots=True)
class ItemDeleted:
    item_id: str


@dataclass(frozen=True, slots=True)
class ItemRequested:
    """Answer a RetrieveItem, in order with everything else sent (the adapter renders it)."""

    item_id: str
    event_id: str | None = None


Output = (
    SessionCreated
    | SessionUpdated
    | SessionExpiring
    | Failed
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | InputCleared
    | IdleTimedOut
    | UserAudioAdded
    | UserTextAdded
    | AssistantTextAdded
    | SystemTextAdded
    | FunctionCallAdded
    | FunctionOutputAdded
    | TranscriptDelta
    | TranscriptCompleted
    | TranscriptFailed
    | ResponseStarted
    | ResponseText
    | ResponseAudio
    | FunctionCallMade
    | ResponseEnded
    | ItemTruncated
    | OutputCleared
    | ItemRequested
    | ItemDeleted
)
