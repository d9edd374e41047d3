"""Conversation events handed to embedding code in process (typed; no speech audio in them).

Subscribe with `VoiceAgent(on_event=...)`: an `async def on_event(event: AgentEvent) -> None`
called in order for each session. A slow or failing handler never stalls the conversation:
each call is bounded by `EVENT_HANDLER_TIMEOUT_S` and its exceptions are logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

EVENT_HANDLER_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class SessionStarted:
    session_id: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserTurn:
    """The caller finished a turn; `transcript` is what the recogniser heard."""

    session_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class AssistantTurn:
    """A reply ended. `status` is completed, cancelled or failed; `text` is what the caller
    heard (cut at the interruption when `interrupted`)."""

    session_id: str
    item_id: str
    text: str
    status: str
    interrupted: bool
    # how a completed reply was answered under grounding: "knowledge" (the operator's answer as
    # written), "knowledge_hedged" (the same after "If you mean ..."), "grounded_model" (the
    # language model given the operator's entries), "model" (the model alone, checked) or
    # "fallback" (the checks replaced what the model said); None without grounding
    answer_path: str | None = None


@dataclass(frozen=True, slots=True)
class Interrupted:
    """The caller talked over a reply, which stopped after `heard_ms` of its audio (the
    server's estimate of the caller's playback; a `Truncated` event may correct it)."""

    session_id: str
    item_id: str
    heard_ms: int


@dataclass(frozen=True, slots=True)
class FalseInterruption:
    """The caller spoke over a reply but did not take the floor: `kind` is "backchannel"
    ("uh-huh", "yeah": `transcript` is what the recogniser heard), "noise" (no words) or
    "echo" (the reply's own words came back through the caller's microphone). The
    reply paused and went on where it stopped; the caller heard `silence_ms` of silence
    (the server's estimate). Nothing of it entered the conversation."""

    session_id: str
    item_id: str
    kind: str
    transcript: str
    silence_ms: int


@dataclass(frozen=True, slots=True)
class Truncated:
    """The reply's place in the conversation was cut to what the caller heard: `heard_ms` of
    its audio, whose words are `text`. `source` is "server" (the server's estimate of the
    caller's playback, at a barge-in) or "client" (the client said so with
    conversation.item.truncate; on phone calls, from the marks Twilio returned as it played
    the audio). The last Truncated event of an item is the final word."""

    session_id: str
    item_id: str
    heard_ms: int
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class TurnLatency:
    """End of the caller's speech (as received) -> first reply audio sent, and the stages
    within it when the model reports them (None when unknown): commit -> final transcript,
    language model request -> first text, first phrase -> its first audio."""

    session_id: str
    item_id: str
    voice_to_voice_ms: float
    asr_final_ms: float | None = None
    llm_first_token_ms: float | None = None
    tts_first_audio_ms: float | None = None


@dataclass(frozen=True, slots=True)
class SessionEnded:
    session_id: str


@dataclass(frozen=True, slots=True)
class ToolCalled:
    """A tool call finished. Server-side tools (`client_side` False) ran in this process:
    `duration_ms` is their run time. Client-side ones were answered by the protocol client's
    function_call_output: `duration_ms` is from the call sent to the output received.
    `arguments` is the validated arguments (the raw JSON text if they did not validate);
    `result` the JSON text the model was given; `error` a short code (invalid_arguments,
    unknown_tool, timeout, tool_failed) or None. A server-side call cut short by barge-in or
    the session's end is published too, with `error` "cancelled", `result` "" and the raw
    arguments: the tool may already have acted."""

    session_id: str
    call_id: str
    name: str
    arguments: Mapping[str, object] | str
    result: str
    error: str | None
    duration_ms: float
    client_side: bool


AgentEvent = (
    SessionStarted
    | UserTurn
    | AssistantTurn
    | Interrupted
    | FalseInterruption
    | Truncated
    | TurnLatency
    | SessionEnded
    | ToolCalled
)
EventHandler = Callable[[AgentEvent], Awaitable[None]]
