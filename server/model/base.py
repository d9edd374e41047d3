"""The omni-model interface and the narrow backend Protocols the cascade is built from.

Order of calls on an `OmniSession` (one per websocket connection):

    session = await model.open(options)
    session.push_audio(frame)            # user audio, any number of times (non-blocking)
    async for t in session.commit_audio(): ...   # end of the user's turn: transcript events,
                                                 # the last one final; the user message joins
                                                 # the history
    session.add_user_text("...")         # or a typed user message instead of audio
    session.add_assistant_text("...")    # an earlier assistant message (a replayed history)
    async for ev in session.respond(ResponseOptions(...)): ...
                                         # the reply: TextDelta / AudioChunk events; leaving
                                         # the loop early (cancel, aclose) stops generation
    session.truncate_reply(heard_ms)     # barge-in: keep only what the user heard
    await session.aclose()

Backends are loaded once (by name, see registry.py) and shared by all sessions; each call
(`open_stream`, `complete`, `synthesize`) gets its own state. Heavy inference runs off the
event loop. A backend failure raises `BackendError`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from server.audio import PcmFrame
from server.errors import BackendError as BackendError  # re-exported for backends
from server.model.tool_calls import ToolCallRequest as ToolCallRequest  # re-exported
from server.model.tool_calls import ToolRunner as ToolRunner
from server.model.tool_calls import ToolSpec as ToolSpec

Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ImageInput:
    """An image the user shared (a realtime `input_image` part): its bytes, their MIME type
    (image/png or image/jpeg) and the detail a vision model should look at it with."""

    mime_type: str
    data: bytes
    detail: Literal["auto", "low", "high"] = "auto"

    @property
    def data_url(self) -> str:
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode()}"


@dataclass(slots=True)
class Message:
    """One conversation message. `interrupted` marks an assistant reply cut by barge-in.

    Tools: an assistant message may carry `tool_calls` (its text then may be empty); each call's
    result follows as a `tool` message whose `tool_call_id` names the call and whose text is
    the result's JSON. A user message may carry `images` beside its text."""

    role: Role
    text: str
    interrupted: bool = False
    tool_calls: tuple[ToolCallRequest, ...] = ()
    tool_call_id: str | None = None
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server must know of a model; it reads these, never the model's type.

    input_sample_rate_hz: the rate `push_audio` expects.
    output_sample_rate_hz: the rate of `AudioChunk` frames.
    can_rollback: `checkpoint`/`rollback` forget a speculative reply exactly. False (a model
        whose conversation lives elsewhere, e.g. upstream, which cannot delete items): the
        conversation never prepares a reply speculatively (turns.py's speculation is off).

    accepts_images: whether user messages may carry images (`add_user_text(text, images)`);
    the conversation refuses an image item with a clear error where it is False.

    Every model truncates its last reply (`truncate_reply`) and leaves turn-taking to the
    server. A model that decides turns itself (an upstream realtime model's own VAD) would add
    a flag here together with the server code that reads it; flags that no code reads are
    not kept.
    """

    input_sample_rate_hz: int
    output_sample_rate_hz: int
    accepts_images: bool = False
    can_rollback: bool = True
    # the languages its recogniser transcribes (ISO-639-1; None: any, it detects the language
    # itself): the conversation refuses a session's `transcription.language` outside them
    transcription_languages: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class TranscriptionOptions:
    """How a session's recogniser hears the caller (the realtime `transcription` object).

    language: ISO-639-1 code; None: the recogniser's default (English for the embedded ones).
    prompt: text that steers vocabulary and spelling (names, jargon), where the recogniser
    takes one (Whisper); others ignore it."""

    language: str | None = None
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Per-connection settings a model session reads when it is opened or updated."""

    instructions: str = ""
    voice: str = ""
    temperature: float = 0.8
    max_output_tokens: int | None = None
    speed: float = 1.0  # the voice's speaking rate (audio.output.speed)
    metadata: Mapping[str, str] = field(default_factory=dict)  # set by embedding code
    tools: ToolRunner | None = None  # functions the language model may call (server/tools.py)
    # a reply will follow every committed turn (server VAD with create_response): a model may
    # start it from the recogniser's hypothesis before the final transcript
    anticipate_reply: bool = False
    # the conversation scores the caller's words at each pause (semantic_vad): a model may
    # evaluate the words as they are recognised, so that the score and the reply start sooner
    score_turn_end: bool = False
    transcription: TranscriptionOptions = field(default_factory=TranscriptionOptions)
    # the operator's knowledge and the specifics guard on the language model's replies
    # (server/knowledge/grounding.py); None: the model answers alone, unchecked
    grounding: ReplyGrounding | None = None
    # the caller's turn detection as the client set it (None: the client commits its turns);
    # read only by a session whose model detects the turns itself (DetectsTurns)
    voice_detection: VoiceDetection | None = None
    # whether a model that can detect turns (DetectsTurns) does so in this session; None: its
    # default. Decided when the session opens.
    model_detects_turns: bool | None = None


@dataclass(frozen=True, slots=True)
class VoiceDetection:
    """The client's `turn_detection`, for a model that ends the caller's turns itself: the
    type (`server_vad` | `semantic_vad`) and what that type reads."""

    type: str = "server_vad"
    eagerness: str = "auto"
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 300


class ReplyGrounding(Protocol):
    """Operator knowledge between the caller and the language model (server/knowledge)."""

    async def look_ahead(self, words: str) -> None:
        """Prepare for a reply to `words` (the caller's words so far); may be cancelled."""
        ...

    def reply(
        self,
        complete: Callable[[Sequence[Message], SessionOptions], AsyncIterator[str | ToolCallRequest]],
        history: Sequence[Message],
        options: SessionOptions,
        report: Callable[[str], None],
    ) -> AsyncIterator[str | ToolCallRequest]:
        """The reply to `history`: the operator's answer, or `complete`'s text checked phrase
        by phrase; `report(path)` says which ("knowledge", "grounded_model", "model",
        "fallback")."""
        ...


@dataclass(frozen=True, slots=True)
class ResponseOptions:
    """One reply's settings (None: the session's). `say`: the reply is this text, spoken as it
    is, instead of the language model's (a session's greeting); a model that cannot be handed
    its words (an upstream realtime model) is asked to say exactly this."""

    with_audio: bool = True
    instructions: str | None = None
    voice: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    say: str | None = None


# --- Events out of an omni session ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    """User speech recognised so far; `is_final` marks the transcript of the whole turn."""

    text: str
    is_final: bool


@dataclass(frozen=True, slots=True)
class TextDelta:
    """Reply text, in the order it will be spoken."""

    text: str


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Reply audio at `Capabilities.output_sample_rate_hz`."""

    frame: PcmFrame


# ToolCallRequest: the model called a client-side tool; the reply ends after it and the
# client's output comes back through `add_tool_result`.
ReplyEvent = TextDelta | AudioChunk | ToolCallRequest


@dataclass(slots=True)
class StageTimings:
    """Latency of each stage of the last reply, for histograms (milliseconds, None if unknown).

    asr_final_ms: commit -> final transcript; llm_first_token_ms: request -> first text;
    tts_first_audio_ms: first phrase ready -> its first audio.
    anticipated: whether the reply was started from the recogniser's last hypothesis before
    the final transcript (True: the guess was right and the reply kept; False: started but
    thrown away; None: not tried).
    answer_path: how the reply was answered under grounding (server/knowledge/grounding.py):
    "knowledge", "grounded_model", "model" or "fallback"; None without grounding.
    """

    asr_final_ms: float | None = None
    llm_first_token_ms: float | None = None
    tts_first_audio_ms: float | None = None
    anticipated: bool | None = None
    answer_path: str | None = None


class OmniSession(Protocol):
    capabilities: Capabilities
    timings: StageTimings

    def update(self, options: SessionOptions) -> None: ...

    def push_audio(self, frame: PcmFrame) -> None:
        """User audio at `capabilities.input_sample_rate_hz`; never blocks."""
        ...

    async def clear_audio(self) -> None:
        """Drop the user audio pushed since the last commit."""
        ...

    def commit_audio(self) -> AsyncIterator[TranscriptDelta]:
        """End the user's turn; yields transcript events, the last one final."""
        ...

    def add_user_text(self, text: str, images: Sequence[ImageInput] = ()) -> None:
        """A typed user message; `images` only where `capabilities.accepts_images`."""
        ...

    def add_assistant_text(self, text: str) -> None:
        """What the assistant said earlier (a client replaying a conversation); not spoken."""
        ...

    def add_system_text(self, text: str) -> None:
        """A system note added mid-conversation (context the model reads; never spoken)."""
        ...

    def add_tool_result(self, call_id: str, output: str) -> None:
        """The client's output for a client-side tool call of an earlier reply."""
        ...

    def add_function_call(self, call: ToolCallRequest) -> None:
        """A function call the assistant made earlier (a client replaying a conversation)."""
        ...

    def respond(self, options: ResponseOptions) -> AsyncIterator[ReplyEvent]:
        """Generate the reply to the history so far. Closing the iterator early stops it."""
        ...

    def truncate_reply(self, heard_ms: int) -> str:
        """Cut the last reply in the history to its first `heard_ms` of audio; returns the
        text that remains."""
        ...

    def history(self) -> Sequence[Message]: ...

    def checkpoint(self) -> int:
        """A mark of the conversation state, for `rollback` (speculative replies)."""
        ...

    def rollback(self, checkpoint: int) -> None:
        """Forget everything added since `checkpoint` (a transcript, a reply never heard)."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ForgetsMessages(Protocol):
    """An OmniSession whose history a client may edit (optional): `conversation.item.delete`."""

    def forget(self, message: Message) -> bool:
        """Remove this message (the very object `history()` holds) from the history; whether
        it was there."""
        ...


@runtime_checkable
class KnowsVoices(Protocol):
    """An OmniSession that can tell whether it speaks a voice (optional): the conversation
    refuses a session update naming one it does not (server/model/voices.py)."""

    def knows_voice(self, voice: str) -> bool:
        """Whether `voice` can be spoken (blocking for about a millisecond)."""
        ...


@runtime_checkable
class AnswersOutOfBand(Protocol):
    """An OmniSession that can answer outside its conversation (optional): a client's
    `response.create` with `conversation: "none"` ("summarise this call", "classify the
    intent"), answered beside the caller's reply without touching the history."""

    def respond_out_of_band(
        self, options: ResponseOptions, context: Sequence[Message] | None
    ) -> AsyncIterator[str]:
        """The response's text, to `context` (None: the conversation so far) under the
        response's instructions; nothing is added to the history."""
        ...


class OmniModel(Protocol):
    capabilities: Capabilities

    async def open(self, options: SessionOptions) -> OmniSession: ...


# --- Backend Protocols the cascade composes ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    is_final: bool


@dataclass(frozen=True, slots=True)
class WordSpan:
    """A word of a hypothesis and where the recogniser placed it: [start_ms, end_ms) of the
    audio its stream (or, once the conversation has placed it, the session's input) was
    pushed from its start."""

    word: str
    start_ms: int
    end_ms: int


@runtime_checkable
class TimesWords(Protocol):
    """An AsrStream that can say where each word of its hypothesis lies in the audio
    (optional): the conversation tells the caller's words over the reply from those the
    recogniser made of the reply's own echo (server/streaming/interruptions.py)."""

    @property
    def word_spans(self) -> tuple[WordSpan, ...]:
        """The words of `hypothesis`, in order, each with its span (() until there is one)."""
        ...


class AsrStream(Protocol):
    """One utterance. push_audio, then end_input; iterate for partials and one final.

    `hypothesis`: the newest partial transcript of the audio pushed so far, as it is being
    decoded ("" until there is one); read while the caller speaks (semantic end of turn).
    `decoded_ms`: how much of the pushed audio, from its start, `hypothesis` covers (a busy
    recogniser lags behind the audio); None if the recogniser cannot say (one that hears the
    utterance only once it ends)."""

    hypothesis: str

    @property
    def decoded_ms(self) -> int | None: ...

    def push_audio(self, frame: PcmFrame) -> None: ...

    def end_input(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[Transcript]: ...

    async def aclose(self) -> None: ...


class AsrBackend(Protocol):
    """Optional attributes (read with getattr): `languages`, a frozenset of the ISO-639-1
    codes it transcribes (absent: any; the embedded English recognisers say {"en"})."""

    sample_rate_hz: int

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> AsrStream:
        """A stream for one utterance, heard as `transcription` says (None: the defaults)."""
        ...


@runtime_checkable
class HearsListeners(Protocol):
    """An AsrBackend that can also decode with a model that expects a listener's short words
    ("mm-hmm", "okay"; optional): while the caller talks over a reply, its words say whether
    the reply may talk on under the voice (server/streaming/turns.py, `ListenerWordsHeard`)."""

    def open_listener_stream(self) -> AsrStream:
        """A stream for one stretch of speech over a reply, decoded for a listener's words."""
        ...


class LlmBackend(Protocol):
    """`accepts_images` (optional attribute, False when absent): the backend passes user
    messages' images to a model that can see them."""

    def complete(
        self, history: Sequence[Message], options: SessionOptions
    ) -> AsyncIterator[str | ToolCallRequest]:
        """Stream the assistant's next message as text pieces. A tool-capable backend offers
        `options.tools` and yields a ToolCallRequest once a call's arguments are complete."""
        ...


@runtime_checkable
class TurnEndScorer(Protocol):
    """A language model that can tell whether a caller's line is complete (optional beside
    LlmBackend; the cascade's semantic end of turn uses it)."""

    async def end_of_turn_probability(
        self, history: Sequence[Message], words: str, options: SessionOptions
    ) -> float:
        """The probability that the user's line ends after `words` (as a recogniser writes
        them), following `history`. May keep what it evaluated, so a reply to the same
        words that follows starts sooner (prefill)."""
        ...


@runtime_checkable
class HearsWords(Protocol):
    """An OmniSession that can say which words it has heard of the uncommitted input so far
    (optional): the conversation reads them to tell a backchannel from an interruption
    (server/streaming/interruptions.py) and, with TurnEndScoring, to score a pause."""

    def words_so_far(self) -> str:
        """The words heard in the uncommitted turn so far ("" if none yet)."""
        ...

    def words_cover_ms(self) -> int | None:
        """How much of the uncommitted input, from its start, `words_so_far()` covers (ms):
        words judged before the recogniser reached the end of the speech miss its last
        ones. None if the recogniser cannot say."""
        ...

    def word_spans_so_far(self) -> tuple[WordSpan, ...] | None:
        """The words of `words_so_far()` with their spans in the uncommitted input (ms from
        its start); None if the recogniser does not place its words (TimesWords)."""
        ...


@runtime_checkable
class HearsListenerWords(Protocol):
    """An OmniSession that can also decode the uncommitted input for a listener's short words
    (optional; its AsrBackend HearsListeners): the conversation asks while the caller talks
    over a reply."""

    def listen_for_listener_words(self, heard: Sequence[PcmFrame]) -> bool:
        """From now until the input is committed or cleared, also decode it for a listener's
        words, from its start: `heard` is the uncommitted input pushed so far (the session
        does not keep it). True if listening (already or now), False if it cannot."""
        ...

    def listener_words_so_far(self) -> tuple[str, tuple[WordSpan, ...] | None] | None:
        """Those words so far, with their spans in the uncommitted input as
        `word_spans_so_far()`'s (None: unplaced); None when not listening."""
        ...


@runtime_checkable
class TurnEndScoring(HearsWords, Protocol):
    """An OmniSession that can score the words of the turn in progress (optional): the
    conversation asks when the caller pauses, under semantic_vad."""

    async def end_of_turn_probability(self, words: str) -> float | None:
        """The probability that the caller's turn is complete after `words`; None if this
        session cannot say (no scorer, or the scorer failed)."""
        ...


@dataclass(frozen=True, slots=True)
class HeardSpeechStart:
    """The model's own VAD heard the caller start speaking at `audio_start_ms` of the
    session's input audio (the audio pushed to the session since it opened)."""

    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class HeardSpeechStop:
    """... and stop at `audio_end_ms`: the model ends (commits) the caller's turn there."""

    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class TurnDetectionFailed:
    """The model cannot detect turns for now (its connection is down); it keeps trying."""

    message: str


TurnSignal = HeardSpeechStart | HeardSpeechStop | TurnDetectionFailed


@runtime_checkable
class DetectsTurns(Protocol):
    """An OmniSession whose model may detect the caller's turns itself (optional; the realtime
    profile with the upstream's VAD). When `detects_turns`, the conversation does not run its
    own VAD: it pushes all the caller's audio, takes the turns from `turn_signals()` (under the
    client's `voice_detection`), and `commit_audio` adopts the turn the model committed."""

    @property
    def detects_turns(self) -> bool: ...

    def turn_signals(self) -> AsyncIterator[TurnSignal]:
        """The model's turn signals for the whole session, in order; never raises for a
        failure of the model (TurnDetectionFailed), ends only when cancelled."""
        ...


class TtsBackend(Protocol):
    sample_rate_hz: int

    def synthesize(self, text: str, voice: str, speed: float = 1.0) -> AsyncIterator[PcmFrame]:
        """Speak one phrase at `speed` (OpenAI's range 0.25-1.5; 1.0: the voice's own rate; an
        engine clamps it to what it can do); frames at `sample_rate_hz`, as they are ready."""
        ...
