"""Conversation: one per websocket. Owns the tasks; executes TurnTaker actions.

Tasks (one TaskGroup, all named, none fire-and-forget):
- reader: client events -> session config, input audio -> VAD -> TurnTaker -> actions;
- writer: paces reply audio out of the PlayoutBuffer at real time;
- timer: advances the turn clock when the client stops sending audio (silence by absence);
- the current reply (at most one): transcript of the committed turn, then the model's reply.

Barge-in: the TurnTaker says CancelReply; we mark the reply cancelled (the writer drops any
chunk tagged with it), clear the PlayoutBuffer (what the client holds is the estimate of what
it has not heard), cancel the reply task with a bound, end the response `cancelled`, and cut
the model's history to what was heard. A client `conversation.item.truncate` overrides.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from server.aio import cancel_and_wait, wait_event
from server.audio import PcmFrame, StreamResampler, resample
from server.errors import BackendError, ModelTimeout, ProtocolViolation
from server.events import (
    AgentEvent,
    AssistantTurn,
    EventHandler,
    Interrupted,
    SessionEnded,
    SessionStarted,
    ToolCalled,
    Truncated,
    TurnLatency,
    UserTurn,
)
from server.logs import error_fields
from server.metrics import Metrics
from server.model.base import (
    AudioChunk,
    OmniModel,
    OmniSession,
    ResponseOptions,
    SessionOptions,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
)
from server.model.tool_calls import ForcedTool, ToolChoice
from server.privacy import PrivacyOptions
from server.realtime.function_calls import (
    client_tool_specs,
    function_call_events,
    function_call_item,
    function_call_output_item,
)
from server.realtime.wire import (
    Dialect,
    EventWriter,
    InputAudioAppend,
    InputAudioClear,
    InputAudioCommit,
    ItemCreate,
    ItemDelete,
    ItemIn,
    ItemTruncate,
    OutputAudioClear,
    ResponseCancel,
    ResponseCreate,
    SessionConfig,
    SessionUpdate,
    TurnDetectionConfig,
    apply_session_update,
    decode_base64_audio,
    forced_tool_name,
    is_beta_session_shape,
    new_id,
    parse_client_event,
)
from server.streaming.capture import InputAudio
from server.streaming.lifetime import EndSession, LifetimeOptions, SessionEnd, SessionLifetime, WarnExpiring
from server.streaming.notifier import EventNotifier
from server.streaming.playout import PlayoutBuffer, PlayoutOptions
from server.streaming.turns import (
    AbandonPreparedReply,
    AnnounceSpeechStarted,
    AnnounceSpeechStopped,
    BeginCapture,
    CancelReply,
    CommitTurn,
    DiscardNoise,
    FrameClassified,
    InputCleared,
    PrepareReply,
    ReplyFinished,
    ReplyStarted,
    ReportIdle,
    StartReply,
    Tick,
    TurnAction,
    TurnOptions,
    TurnTaker,
    UserState,
)
from server.tools import SessionTools, ToolBox
from server.vad.detector import ClassifierFactory, FrameClassifier, QueuedClassifier

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 1.0
SILENCE_BY_ABSENCE_MS = 250  # no audio for this long in the middle of a turn: treat as silence


class TransportClosed(Exception):
    """The client went away."""


def _failure_code(exc: Exception) -> str:
    """The `error.code` of a model failure: a hung model, or any other failure."""
    return "model_timeout" if isinstance(exc, ModelTimeout) else "backend_error"


class Transport(Protocol):
    async def receive(self) -> str | bytes:
        """The next message; raises TransportClosed when the client has gone."""
        ...

    async def send_text(self, text: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ConversationOptions:
    model_name: str = "voxgate-cascade"
    instructions: str = ""
    voice: str = "en-us"
    turn: TurnOptions = field(default_factory=TurnOptions)
    prefix_padding_ms: int = 300
    playout: PlayoutOptions = field(default_factory=PlayoutOptions)
    max_audio_ahead_ms: int = 10_000
    lifetime: LifetimeOptions = field(default_factory=LifetimeOptions)
    privacy: PrivacyOptions = field(default_factory=PrivacyOptions)

    def session_config(self, session_id: str) -> SessionConfig:
        """The protocol's session object a session with these options starts from."""
        return SessionConfig(
            id=session_id,
            model=self.model_name,
            instructions=self.instructions,
            voice=self.voice,
            turn_detection=TurnDetectionConfig(
                threshold=self.turn.threshold,
                prefix_padding_ms=self.prefix_padding_ms,
                silence_duration_ms=self.turn.silence_duration_ms,
                create_response=self.turn.create_response,
                interrupt_response=self.turn.interrupt_response,
                idle_timeout_ms=self.turn.idle_timeout_ms,
            ),
        )


class ReplyPhase(Enum):
    GENERATING = "generating"
    DRAINING = "draining"  # response.done sent; the client is still playing its tail
    FINISHED = "finished"


def _released() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass(slots=True)
class _Reply:
    reply_id: int
    response_id: str
    item_id: str
    with_audio: bool
    phase: ReplyPhase = ReplyPhase.GENERATING
    cancelled: bool = False
    transcript: str = ""
    audio_sent_ms: float = 0.0
    first_audio_sent_s: float | None = None
    task: asyncio.Task[None] | None = None
    all_sent: asyncio.Event = field(default_factory=asyncio.Event)
    user_speech_end_s: float | None = None
    # a prepared (speculative) reply holds its events and audio until it is adopted (released)
    release: asyncio.Event = field(default_factory=_released)
    held_events: list[dict[str, Any]] = field(default_factory=list)
    held_audio: list[PcmFrame] = field(default_factory=list)
    held_agent_events: list[AgentEvent] = field(default_factory=list)
    checkpoint: int = 0
    input_done: bool = False  # all of the reply's audio has been produced
    function_calls: list[dict[str, Any]] = field(default_factory=list)  # client-side tool calls

    @property
    def released(self) -> bool:
        return self.release.is_set()


# the reply whose task (or a task it started) is running: a speculative one's tools wait
_RUNNING_REPLY: contextvars.ContextVar[_Reply | None] = contextvars.ContextVar("voxgate_reply", default=None)


@dataclass(frozen=True, slots=True)
class _PendingCall:
    """A client-side tool call sent to the client, waiting for its function_call_output."""

    name: str
    arguments_json: str
    sent_s: float


class Conversation:
    """Run with `await Conversation(...).run()`; returns when the client disconnects."""

    def __init__(
        self,
        transport: Transport,
        model: OmniModel,
        vad: ClassifierFactory,
        options: ConversationOptions,
        metrics: Metrics,
        dialect: Dialect,
        clock: Callable[[], float] = time.monotonic,
        on_event: EventHandler | None = None,
        metadata: Mapping[str, str] | None = None,
        session: Mapping[str, Any] | None = None,
        tools: ToolBox | None = None,
    ) -> None:
        """`session`: a session object (validated, as by a client secret's minting) the
        session starts with, applied before session.created."""
        self._transport = transport
        self._notifier = EventNotifier(on_event, privacy=options.privacy)
        self.metadata = dict(metadata or {})
        self._toolbox = tools if tools is not None else ToolBox()
        self._client_tools: tuple[ToolSpec, ...] = ()  # declared by the client in session.update
        self._pending_calls: dict[str, _PendingCall] = {}
        self._initial_session = dict(session or {})
        self._model = model
        self._vad_factory = vad
        self._options = options
        self._metrics = metrics
        self._events = EventWriter(dialect)
        self._dialect_fixed = dialect is Dialect.BETA
        self._clock = clock
        self.config = options.session_config(new_id("sess"))
        self._send_lock = asyncio.Lock()
        self._ingest_lock = asyncio.Lock()
        self._session: OmniSession | None = None
        self._classifier: FrameClassifier = vad.open(options.turn.threshold)
        self._turns = TurnTaker(options.turn)
        caps = model.capabilities
        self._playout = PlayoutBuffer(options.playout, self.config.output_format.sample_rate_hz)
        self._playout_wakeup = asyncio.Event()
        self._input = InputAudio(
            self.config.input_format.sample_rate_hz,
            caps.input_sample_rate_hz,
            self._classifier,
            # onsets are confirmed up to ~barge_in_min_ms after they happened
            preroll_ms=options.prefix_padding_ms + 1000,
            start_s=clock(),
        )
        self._capturing = False
        self._captured: list[PcmFrame] = []  # this turn's audio, replayed if a speculation is abandoned
        self._captured_ms = 0
        self._prepared: _Reply | None = None
        self._input_item_id: str | None = None
        self._last_item_id: str | None = None
        self._reply: _Reply | None = None
        self._reply_seq = 0
        self._tasks: asyncio.TaskGroup | None = None
        self._timer_wakeup = asyncio.Event()
        self._transcription: asyncio.Task[Exception | None] | None = None  # result: its failure
        self._stop_requested = False
        self._speech_end_s: float | None = None
        self._lifetime = SessionLifetime(options.lifetime, clock())
        self.ended_by: SessionEnd | None = None  # set when the server ended the session (lifetime.py)

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        self._metrics.sessions.inc()
        self._metrics.sessions_active.inc()
        try:
            self._session = await self._model.open(self._session_options())
            if self._initial_session:
                self._configure(self._initial_session)
            await self._send(self._events.event("session.created", session=self._events.session(self.config)))
            self._notifier.publish(SessionStarted(self.config.id, dict(self.metadata)))
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tasks = tg
                    tg.create_task(self._notifier.run(), name="conversation-events")
                    tg.create_task(self._read_loop(), name="conversation-reader")
                    tg.create_task(self._write_loop(), name="conversation-writer")
                    tg.create_task(self._timer_loop(), name="conversation-timer")
                    tg.create_task(self._lifetime_loop(), name="conversation-lifetime")
                    if self._stop_requested:
                        tg.create_task(self._stop_now(), name="conversation-stop")
            except* TransportClosed:
                pass
        finally:
            self._tasks = None
            reply = self._reply
            if reply is not None:
                reply.cancelled = True
                await cancel_and_wait(reply.task, CANCEL_TIMEOUT_S)
            if self._session is not None:
                await self._session.aclose()
            self._metrics.sessions_active.dec()
            self._notifier.publish(SessionEnded(self.config.id))
            await self._notifier.drain()

    @property
    def is_replying(self) -> bool:
        """A committed turn is being transcribed, or a reply prepared, generated or played."""
        reply = self._reply
        return (
            (reply is not None and reply.phase is not ReplyPhase.FINISHED)
            or self._prepared is not None
            or (self._transcription is not None and not self._transcription.done())
        )

    def stop(self) -> None:
        """End `run()` soon, as if the client had left (server shutdown); idempotent."""
        if self._stop_requested:
            return
        self._stop_requested = True
        if self._tasks is not None:
            with contextlib.suppress(RuntimeError):  # the task group is ending already
                self._tasks.create_task(self._stop_now(), name="conversation-stop")

    async def _stop_now(self) -> None:
        raise TransportClosed("the server stopped this session")

    def _session_options(self) -> SessionOptions:
        return SessionOptions(
            instructions=self.config.instructions,
            voice=self.config.voice,
            temperature=self.config.temperature,
            max_output_tokens=self.config.max_output_tokens,
            metadata=dict(self.metadata),
            tools=SessionTools(
                self._toolbox,
                self.config.id,
                self._notifier.publish,
                self._client_tools,
                self._tool_choice(),
                gate=self._tools_may_run,
            ),
            anticipate_reply=(
                self.config.turn_detection is not None and self.config.turn_detection.create_response
            ),
        )

    def _tool_choice(self) -> ToolChoice:
        choice = self.config.tool_choice
        forced = forced_tool_name(choice)
        if forced is not None:
            return ForcedTool(forced)
        return "none" if choice == "none" else "required" if choice == "required" else "auto"

    async def _send(self, event: dict[str, Any]) -> None:
        text = json.dumps(event)
        async with self._send_lock:
            await self._transport.send_text(text)

    async def _send_error(self, exc: ProtocolViolation, event_id: str | None = None) -> None:
        self._metrics.errors.labels(code=exc.code).inc()
        await self._send(self._events.error(str(exc), code=exc.code, param=exc.param, event_id=event_id))

    # --- reader ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            message = await self._transport.receive()
            self._lifetime.push_activity(self._clock())
            if isinstance(message, bytes):
                await self._send_error(
                    ProtocolViolation(
                        "binary frames are not part of this protocol; send JSON text events",
                        code="invalid_frame",
                    )
                )
                continue
            event_id: str | None = None
            try:
                event = parse_client_event(message)
                event_id = event.event_id
                await self._handle(event)
            except ProtocolViolation as exc:
                await self._send_error(exc, event_id)

    async def _handle(self, event: Any) -> None:
        match event:
            case SessionUpdate():
                await self._on_session_update(event)
            case InputAudioAppend():
                await self._on_append(event)
            case InputAudioCommit():
                await self._commit_input(from_vad=False)
            case InputAudioClear():
                await self._clear_input()
                await self._send(self._events.event("input_audio_buffer.cleared"))
            case ItemCreate():
                await self._on_item_create(event)
            case ItemTruncate():
                await self._on_truncate(event)
            case ItemDelete():
                raise ProtocolViolation(
                    "conversation.item.delete is not supported by this server",
                    code="unsupported_event",
                    param="type",
                )
            case ResponseCreate():
                await self._on_response_create(event)
            case ResponseCancel():
                reply = self._reply
                if reply is None or reply.phase is not ReplyPhase.GENERATING:
                    raise ProtocolViolation("no response is in progress", code="response_cancel_not_active")
                if event.response_id is not None and event.response_id != reply.response_id:
                    raise ProtocolViolation(
                        f"response {event.response_id!r} is not in progress",
                        code="response_cancel_not_active",
                        param="response_id",
                    )
                await self._cancel_reply(reason="client_cancelled")
            case OutputAudioClear():
                if self._reply is not None:
                    await self._cancel_reply(reason="client_cancelled")
                await self._send(self._events.event("output_audio_buffer.cleared"))

    async def _on_session_update(self, event: SessionUpdate) -> None:
        if not self._dialect_fixed:
            if is_beta_session_shape(event.session):
                self._events = EventWriter(Dialect.BETA)
            self._dialect_fixed = True
        self._configure(event.session)
        await self._send(self._events.event("session.updated", session=self._events.session(self.config)))

    def _configure(self, session: dict[str, Any]) -> None:
        """Apply a session object (session.update, or the one the session started with);
        raises ProtocolViolation and changes nothing if it is invalid."""
        old_in = self.config.input_format
        client_tools = self._client_tools
        if "tools" in session:
            client_tools = client_tool_specs(session["tools"], (s.name for s in self._toolbox.specs()))
        choice = session.get("tool_choice", self.config.tool_choice)  # the new one, or the one kept
        forced = forced_tool_name(choice)
        known = {spec.name for spec in (*self._toolbox.specs(), *client_tools)}
        if isinstance(forced, str) and forced and forced not in known:
            raise ProtocolViolation(
                f"session.tool_choice names {forced[:80]!r}, which is not one of the session's tools",
                code="invalid_value",
                param="session.tool_choice.name",
            )
        apply_session_update(self.config, session)
        self._client_tools = client_tools
        if self.config.input_format != old_in:
            self._input.set_input_rate(self.config.input_format.sample_rate_hz)
        td = self.config.turn_detection
        if td is not None:
            self._turns.configure(
                TurnOptions(
                    threshold=td.threshold,
                    min_speech_ms=self._options.turn.min_speech_ms,
                    barge_in_min_ms=self._options.turn.barge_in_min_ms,
                    silence_duration_ms=td.silence_duration_ms,
                    create_response=td.create_response,
                    interrupt_response=td.interrupt_response,
                    idle_timeout_ms=td.idle_timeout_ms,
                    speculative_silence_ms=self._options.turn.speculative_silence_ms,
                    vad_hangover_ms=self._options.turn.vad_hangover_ms,
                    vad_min_voiced_ms=self._options.turn.vad_min_voiced_ms,
                )
            )
            if td.threshold != self._options.turn.threshold:
                self._classifier = self._vad_factory.open(td.threshold)
                self._input.set_classifier(self._classifier)
            self._input.preroll_ms = td.prefix_padding_ms + 1000
        assert self._session is not None
        self._session.update(self._session_options())

    # --- input audio ----------------------------------------------------------------

    @property
    def _input_ms(self) -> int:
        return self._input.input_ms

    async def _on_append(self, event: InputAudioAppend) -> None:
        fmt = self.config.input_format
        audio = decode_base64_audio(event.audio, fmt)
        if not audio:
            return
        now_s = self._clock()
        frame = fmt.decode(audio)
        ahead_ms = self._input.ahead_ms(frame.duration_ms, now_s)
        if ahead_ms > self._options.max_audio_ahead_ms:
            raise ProtocolViolation(
                f"audio is arriving faster than real time: {ahead_ms:.0f} ms ahead, more than the "
                f"{self._options.max_audio_ahead_ms} ms allowed; this append was dropped",
                code="audio_too_fast",
                param="audio",
            )
        await self._ingest(frame, now_s)

    async def _ingest(self, frame: PcmFrame, now_s: float) -> None:
        """Audio at the input format's rate, as received at `now_s`. The reader and the
        silence timer both feed audio: one at a time, so VAD frames stay in order."""
        async with self._ingest_lock:
            vad_on = self.config.turn_detection is not None
            model_frame, vad_frames = self._input.push(frame, now_s, classify=vad_on)
            if model_frame.sample_count and (self._capturing or not vad_on):
                self._push_to_model(model_frame)
            if vad_on and vad_frames and self._deadline_due():
                unclassified_ms = sum(f.duration_ms for f in vad_frames)
                if self._turns.may_end_before(unclassified_ms):
                    # too short to hold an onset: the turn ends with this audio whatever the VAD
                    # says of it, so the reply need not wait for the classifier (another
                    # process, or the next loop iteration's batch)
                    self._turns.receive(Tick(), now_ms=self._input.input_ms)
                    await self._run_turn_actions()
            for vad_frame in vad_frames:
                probability = await self._speech_probability(vad_frame.frame)
                classified = FrameClassified(vad_frame.start_ms, vad_frame.duration_ms, probability)
                self._turns.receive(classified, now_ms=vad_frame.start_ms + vad_frame.duration_ms)
                await self._run_turn_actions()
            if vad_on and self._turns.next_deadline() is not None:
                # a silence deadline falls due with the audio that reaches it, not a VAD frame later
                # (a part-frame can't hold a voice onset: that needs vad_min_voiced_ms of frames)
                self._turns.receive(Tick(), now_ms=self._input.input_ms)
                await self._run_turn_actions()
        self._timer_wakeup.set()

    def _deadline_due(self) -> bool:
        deadline = self._turns.next_deadline()
        return deadline is not None and deadline <= self._input.input_ms

    async def _speech_probability(self, frame: PcmFrame) -> float:
        classifier = self._classifier
        if isinstance(classifier, QueuedClassifier):  # Silero: shared batches, in its own process
            try:
                return await classifier.classify(frame)
            except BackendError as exc:
                if not exc.retryable:
                    raise
                # the VAD worker died with this frame (it is being restarted): one 32 ms frame
                # counted as silence is less than the hangover, so the call goes on unharmed
                log.warning("VAD frame lost; counted as silence", extra={"error": str(exc)})
                return 0.0
        return classifier.speech_probability(frame)  # webrtcvad: a few µs of C, inline

    def _push_to_model(self, frame: PcmFrame) -> None:
        assert self._session is not None
        self._captured.append(frame)
        self._captured_ms += int(frame.duration_ms)
        if self._prepared is None:  # while a reply is prepared, its transcript is already final
            self._session.push_audio(frame)

    async def _run_turn_actions(self) -> None:
        for action in self._turns.actions():
            await self._execute(action)

    async def _execute(self, action: TurnAction) -> None:
        match action:
            case BeginCapture(from_ms=from_ms):
                self._start_capture(
                    from_ms
                    - (self.config.turn_detection.prefix_padding_ms if self.config.turn_detection else 0)
                )
            case DiscardNoise():
                self._metrics.noise_ignored.inc()
                await self._drop_capture()
            case CancelReply(reason=reason):
                await self._cancel_reply(reason=reason)
            case AnnounceSpeechStarted(audio_start_ms=start_ms):
                self._input_item_id = new_id("item")
                await self._send(
                    self._events.event(
                        "input_audio_buffer.speech_started",
                        audio_start_ms=start_ms,
                        item_id=self._input_item_id,
                    )
                )
            case AnnounceSpeechStopped(audio_end_ms=end_ms):
                await self._send(
                    self._events.event(
                        "input_audio_buffer.speech_stopped",
                        audio_end_ms=end_ms,
                        item_id=self._input_item_id,
                    )
                )
            case CommitTurn(audio_end_ms=end_ms):
                await self._commit_input(from_vad=True, speech_end_ms=end_ms)
            case PrepareReply():
                self._prepare_reply()
            case AbandonPreparedReply():
                await self._abandon_prepared()
            case StartReply():
                await self._start_reply(self._default_response_options())
            case ReportIdle(audio_ms=audio_ms):
                await self._send(
                    self._events.event(
                        "input_audio_buffer.timeout_triggered",
                        audio_start_ms=audio_ms,
                        audio_end_ms=audio_ms,
                        item_id=new_id("item"),
                    )
                )

    def _start_capture(self, from_ms: int) -> None:
        if self._capturing:
            return
        self._capturing = True
        for frame in self._input.preroll_since(from_ms):
            self._push_to_model(frame)

    async def _drop_capture(self) -> None:
        self._capturing = False
        self._captured = []
        self._captured_ms = 0
        assert self._session is not None
        await self._session.clear_audio()

    async def _clear_input(self) -> None:
        self._turns.receive(InputCleared(), self._input_ms)
        await self._run_turn_actions()
        await self._drop_capture()
        self._input.clear_preroll()
        self._input_item_id = None

    async def _commit_input(self, *, from_vad: bool, speech_end_ms: int | None = None) -> None:
        if not from_vad:
            if not self._capturing and self.config.turn_detection is not None:
                self._start_capture(self._input_ms - 1000)
            if self._captured_ms < 100:
                raise ProtocolViolation(
                    f"buffer too small: {self._captured_ms} ms of audio; commit needs at least 100 ms",
                    code="input_audio_buffer_commit_empty",
                )
            self._turns.receive(InputCleared(), self._input_ms)
            await self._run_turn_actions()
        item_id = self._input_item_id or new_id("item")
        self._input_item_id = None
        self._capturing = False
        self._captured = []
        self._captured_ms = 0
        previous, self._last_item_id = self._last_item_id, item_id
        self._metrics.turns.inc()
        await self._send(
            self._events.event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        )
        for ev in self._events.item_added(self._events.user_audio_item(item_id, None), previous):
            await self._send(ev)
        self._speech_end_s = None if speech_end_ms is None else self._input.arrival_of(speech_end_ms)
        assert self._tasks is not None and self._session is not None
        if self._prepared is not None:
            return  # the prepared reply is transcribing this turn already
        previous_task = self._transcription
        self._transcription = self._tasks.create_task(
            self._run_transcription(
                self._session, item_id, previous_task, self._send, self._notifier.publish
            ),
            name=f"transcription-{item_id}",
        )

    # --- client-side tools ----------------------------------------------------------

    async def _tools_may_run(self) -> None:
        """Server-side tools of a speculative reply wait until it is adopted: a turn that goes
        on cancels the reply, and the tool never runs (tools may have side effects)."""
        reply = _RUNNING_REPLY.get()
        if reply is not None:
            await reply.release.wait()

    async def _send_function_call(self, reply: _Reply, call: ToolCallRequest) -> None:
        """The model called a client-side tool: announce the function_call item now; the
        client runs it and answers with a function_call_output item."""
        item_id = new_id("item")
        previous, self._last_item_id = self._last_item_id, item_id
        output_index = 1 + len(reply.function_calls)  # the reply's message is output 0
        events = function_call_events(
            self._events,
            reply.response_id,
            item_id,
            output_index,
            call.call_id,
            call.name,
            call.arguments_json,
            previous,
        )
        for event in events:
            await self._emit(reply, event)
        reply.function_calls.append(
            function_call_item(item_id, call.call_id, call.name, call.arguments_json, "completed")
        )
        self._pending_calls[call.call_id] = _PendingCall(call.name, call.arguments_json, self._clock())

    async def _on_function_call_output(self, item: ItemIn) -> None:
        if item.call_id is None:
            raise ProtocolViolation(
                "function_call_output needs the call_id of the call it answers",
                code="missing_field",
                param="item.call_id",
            )
        if item.output is None:
            raise ProtocolViolation(
                "function_call_output needs an output string", code="missing_field", param="item.output"
            )
        pending = self._pending_calls.pop(item.call_id, None)
        if pending is None:
            raise ProtocolViolation(
                f"no function call {item.call_id[:80]!r} is waiting for output",
                code="call_id_not_found",
                param="item.call_id",
            )
        assert self._session is not None
        self._session.add_tool_result(item.call_id, item.output)
        item_id = item.id or new_id("item")
        previous, self._last_item_id = self._last_item_id, item_id
        for ev in self._events.item_added(
            function_call_output_item(item_id, item.call_id, item.output), previous
        ):
            await self._send(ev)
        arguments: Mapping[str, object] | str = pending.arguments_json
        with contextlib.suppress(ValueError):
            parsed = json.loads(pending.arguments_json)
            arguments = parsed if isinstance(parsed, dict) else pending.arguments_json
        self._notifier.publish(
            ToolCalled(
                self.config.id,
                item.call_id,
                pending.name,
                arguments,
                item.output,
                None,
                (self._clock() - pending.sent_s) * 1000,
                client_side=True,
            )
        )

    # --- replies --------------------------------------------------------------------

    async def _on_item_create(self, event: ItemCreate) -> None:
        item = event.item
        if item.type == "function_call_output":
            await self._on_function_call_output(item)
            return
        if item.type != "message" or item.role != "user":
            raise ProtocolViolation(
                f"conversation.item.create supports user messages; got {item.type}"
                + (f"/{item.role}" if item.role else ""),
                code="unsupported_item_type",
                param="item.type",
            )
        texts = [p.text for p in item.content if p.type == "input_text" and p.text]
        if not texts:
            raise ProtocolViolation(
                "user message needs an input_text content part",
                code="missing_field",
                param="item.content",
            )
        item_id = item.id or new_id("item")
        text = " ".join(texts)
        assert self._session is not None
        self._session.add_user_text(text)
        previous, self._last_item_id = self._last_item_id, item_id
        for ev in self._events.item_added(self._events.user_text_item(item_id, text), previous):
            await self._send(ev)

    async def _on_response_create(self, event: ResponseCreate) -> None:
        if self._reply is not None and self._reply.phase is ReplyPhase.GENERATING:
            raise ProtocolViolation(
                "a response is already in progress; cancel it first",
                code="conversation_already_has_active_response",
            )
        body = event.response or {}
        modalities = body.get("output_modalities") or body.get("modalities") or self.config.output_modalities
        if not isinstance(modalities, list) or any(m not in ("audio", "text") for m in modalities):
            raise ProtocolViolation(
                "response modalities must list 'audio' and/or 'text'",
                code="invalid_value",
                param="response.output_modalities",
            )
        audio = body.get("audio") or {}
        output = (audio.get("output") or {}) if isinstance(audio, dict) else None
        if not isinstance(output, dict):
            raise ProtocolViolation(
                "response.audio and response.audio.output must be objects",
                code="invalid_value",
                param="response.audio",
            )
        instructions = body.get("instructions")
        voice = body.get("voice") or output.get("voice")
        if instructions is not None and not isinstance(instructions, str):
            raise ProtocolViolation(
                "response.instructions must be a string", code="invalid_value", param="response.instructions"
            )
        if voice is not None and not isinstance(voice, str):
            raise ProtocolViolation(
                "response voice must be a string", code="invalid_value", param="response.voice"
            )
        await self._start_reply(
            ResponseOptions(with_audio="audio" in modalities, instructions=instructions, voice=voice)
        )

    def _default_response_options(self) -> ResponseOptions:
        return ResponseOptions(with_audio="audio" in self.config.output_modalities)

    def _new_reply(self, options: ResponseOptions) -> _Reply:
        self._reply_seq += 1
        return _Reply(
            reply_id=self._reply_seq,
            response_id=new_id("resp"),
            item_id=new_id("item"),
            with_audio=options.with_audio,
        )

    async def _start_reply(self, options: ResponseOptions) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is not None and options != self._default_response_options():
            await self._discard_prepared(prepared)  # a client's response.create asked for another
            prepared = None
        previous = self._reply
        if previous is not None and previous.phase is not ReplyPhase.FINISHED:
            # a reply still playing its tail (or one that may not be interrupted) is let finish
            await self._finish_previous(previous)
        reply = prepared or self._new_reply(options)
        reply.user_speech_end_s, self._speech_end_s = self._speech_end_s, None
        self._reply = reply
        self._playout.begin(reply.reply_id, self.config.output_format.sample_rate_hz)
        self._turns.receive(ReplyStarted(reply.reply_id), self._input_ms)
        if prepared is not None:
            self._metrics.speculations.labels(outcome="adopted").inc()
            await self._release(prepared)
            return
        assert self._tasks is not None
        reply.task = self._tasks.create_task(
            self._run_reply(reply, options, self._transcription), name=f"reply-{reply.reply_id}"
        )

    # --- speculative replies ----------------------------------------------------------

    def _prepare_reply(self) -> None:
        """Finish the transcript and start the reply during the end-of-turn silence, holding
        everything it produces until StartReply adopts it."""
        if self._prepared is not None or self._session is None or self._tasks is None:
            return
        options = self._default_response_options()
        reply = self._new_reply(options)
        reply.release.clear()
        reply.checkpoint = self._session.checkpoint()
        item_id = self._input_item_id or new_id("item")
        self._input_item_id = item_id
        previous = self._transcription
        self._transcription = None
        self._prepared = reply
        reply.task = self._tasks.create_task(
            self._run_prepared(reply, options, item_id, previous), name=f"prepared-reply-{reply.reply_id}"
        )

    async def _run_prepared(
        self,
        reply: _Reply,
        options: ResponseOptions,
        item_id: str,
        previous: asyncio.Task[Exception | None] | None,
    ) -> None:
        assert self._session is not None

        async def hold(event: dict[str, Any]) -> None:
            await self._emit(reply, event)

        def publish(event: AgentEvent) -> None:
            # until the reply is adopted the turn may yet be abandoned: hold its events
            if reply.released:
                self._notifier.publish(event)
            else:
                reply.held_agent_events.append(event)

        failure = await self._run_transcription(self._session, item_id, previous, hold, publish)
        await self._run_reply(reply, options, None, failure)

    async def _abandon_prepared(self) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is None:
            return
        await self._discard_prepared(prepared)
        assert self._session is not None
        for frame in self._captured:  # the turn goes on: the recogniser hears it all again
            self._session.push_audio(frame)

    async def _discard_prepared(self, prepared: _Reply) -> None:
        self._metrics.speculations.labels(outcome="abandoned").inc()
        prepared.cancelled = True
        await cancel_and_wait(prepared.task, CANCEL_TIMEOUT_S)
        assert self._session is not None
        self._session.rollback(prepared.checkpoint)

    async def _release(self, reply: _Reply) -> None:
        """Adopt a prepared reply: send what it held, in order, then let it run free."""
        while reply.held_events:  # the reply may hold more while we send: drain to empty
            await self._send(reply.held_events.pop(0))
        # no await from here on: nothing can be held after the last look
        for frame in reply.held_audio:
            self._playout.push(frame)
        reply.held_audio.clear()
        if reply.input_done:
            self._playout.end_input()
        reply.release.set()
        for agent_event in reply.held_agent_events:
            self._notifier.publish(agent_event)
        reply.held_agent_events.clear()
        self._playout_wakeup.set()

    async def _emit(self, reply: _Reply, event: dict[str, Any]) -> None:
        if reply.released:
            await self._send(event)
        else:
            reply.held_events.append(event)

    def _queue_audio(self, reply: _Reply, frame: PcmFrame) -> None:
        if reply.released:
            self._playout.push(frame)
            self._playout_wakeup.set()
        else:
            reply.held_audio.append(frame)

    async def _finish_previous(self, previous: _Reply) -> None:
        if previous.phase is ReplyPhase.GENERATING and previous.task is not None:
            await asyncio.wait({previous.task}, timeout=30)
        if previous.task is not None and not previous.task.done():
            await cancel_and_wait(previous.task, CANCEL_TIMEOUT_S)

    async def _run_reply(
        self,
        reply: _Reply,
        options: ResponseOptions,
        transcription: asyncio.Task[Exception | None] | None,
        failure: Exception | None = None,
    ) -> None:
        """`failure`: the transcription of the turn failed (already reported): the reply fails."""
        _RUNNING_REPLY.set(reply)  # this task's own context: its tool calls know their reply
        session = self._session
        assert session is not None
        if transcription is not None:
            failure = await asyncio.shield(transcription)  # the user's words count even if we are cut off
        previous, self._last_item_id = self._last_item_id, reply.item_id
        opening = self._events.response_opening(
            reply.response_id, reply.item_id, reply.with_audio, previous, self.config
        )
        for opening_event in opening:
            await self._emit(reply, opening_event)
        try:
            if failure is not None:
                raise failure  # the user's words were not heard: nothing to answer
            out_rate = self.config.output_format.sample_rate_hz
            resampler = StreamResampler(session.capabilities.output_sample_rate_hz, out_rate)
            async for event in session.respond(options):
                if isinstance(event, TextDelta):
                    reply.transcript += event.text
                    await self._emit(
                        reply,
                        self._events.response_text_delta(
                            reply.response_id, reply.item_id, reply.with_audio, event.text
                        ),
                    )
                elif isinstance(event, ToolCallRequest):
                    await self._send_function_call(reply, event)
                elif isinstance(event, AudioChunk) and reply.with_audio:
                    out = resampler.push(event.frame)
                    if out.sample_count:
                        self._queue_audio(reply, out)
            if reply.with_audio:
                tail = resampler.flush()
                if tail.sample_count:
                    self._queue_audio(reply, tail)
            reply.input_done = True
            if reply.released:
                self._playout.end_input()
                self._playout_wakeup.set()
            self._record_stage_timings(session)
            if reply.with_audio:
                await reply.all_sent.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a backend failed mid-reply: this response fails, the session lives
            log.error(  # the brain is embedding code: its messages may quote the caller
                "reply failed",
                extra={
                    "session_id": self.config.id,
                    "response_id": reply.response_id,
                    **error_fields(exc, with_message=self._options.privacy.log_transcripts),
                },
            )
            code = _failure_code(exc)
            if reply.released:
                self._playout.clear(self._clock() * 1000)
            reply.cancelled = True
            await self._end_response(
                reply,
                "failed",
                reason="error",
                error={
                    "type": "server_error",
                    "code": code,
                    "message": str(exc) or type(exc).__name__,
                },
            )
            await self._emit(
                reply,
                self._events.error(
                    f"the response failed: {exc}" if str(exc) else "the response failed",
                    code=code,
                    type_="server_error",
                ),
            )
            self._metrics.errors.labels(code=code).inc()
            self._notifier.publish(
                AssistantTurn(self.config.id, reply.item_id, reply.transcript, "failed", False)
            )
            self._reply_over(reply)
            return
        await self._end_response(reply, "completed")
        self._notifier.publish(
            AssistantTurn(self.config.id, reply.item_id, reply.transcript, "completed", False)
        )
        reply.phase = ReplyPhase.DRAINING
        played_out = self._playout.played_out_at_ms()
        if played_out is not None:
            await asyncio.sleep(max(0.0, played_out / 1000 - self._clock()))
        self._reply_over(reply)

    async def _run_transcription(
        self,
        session: OmniSession,
        item_id: str,
        previous: asyncio.Task[Exception | None] | None,
        emit: Callable[[dict[str, Any]], Awaitable[None]],
        publish: Callable[[AgentEvent], None],
    ) -> Exception | None:
        """Transcribe the committed turn; returns None, or the recogniser's failure (reported
        here as `input_audio_transcription.failed`; the turn then has no transcript)."""
        if previous is not None:
            await asyncio.shield(previous)  # transcripts join the history in turn order
        final = ""
        sent = ""  # deltas are increments: a revised hypothesis waits for the final transcript
        try:
            async for delta in session.commit_audio():
                if delta.is_final:
                    final = delta.text
                    continue
                if not delta.text.startswith(sent) or len(delta.text) == len(sent):
                    continue
                increment, sent = delta.text[len(sent) :], delta.text
                await emit(
                    self._events.event(
                        "conversation.item.input_audio_transcription.delta",
                        item_id=item_id,
                        content_index=0,
                        delta=increment,
                    )
                )
        except Exception as exc:  # the recogniser failed or hung: this turn fails, the session lives
            log.error(
                "transcription failed",
                extra={
                    "session_id": self.config.id,
                    "item_id": item_id,
                    **error_fields(exc, with_message=self._options.privacy.log_transcripts),
                },
            )
            code = _failure_code(exc)
            self._metrics.errors.labels(code=code).inc()
            await emit(
                self._events.event(
                    "conversation.item.input_audio_transcription.failed",
                    item_id=item_id,
                    content_index=0,
                    error={"type": "server_error", "code": code, "message": str(exc) or type(exc).__name__},
                )
            )
            return exc
        if session.timings.asr_final_ms is not None:
            self._metrics.asr_final.observe(session.timings.asr_final_ms / 1000)
        if self.config.transcription_model is not None:
            await emit(
                self._events.event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=final,
                )
            )
        publish(UserTurn(self.config.id, item_id, final))
        return None

    def _record_stage_timings(self, session: OmniSession) -> None:
        t = session.timings
        if t.llm_first_token_ms is not None:
            self._metrics.llm_first_token.observe(t.llm_first_token_ms / 1000)
        if t.tts_first_audio_ms is not None:
            self._metrics.tts_first_audio.observe(t.tts_first_audio_ms / 1000)
        if t.anticipated is not None:
            self._metrics.anticipations.labels(outcome="kept" if t.anticipated else "discarded").inc()

    def _reply_over(self, reply: _Reply) -> None:
        reply.phase = ReplyPhase.FINISHED
        self._turns.receive(ReplyFinished(reply.reply_id), self._input_ms)

    async def _end_response(
        self,
        reply: _Reply,
        status: str,
        reason: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        """The closing events of a response, in protocol order. Sent once per reply."""
        if reply.phase is not ReplyPhase.GENERATING:
            return
        reply.phase = ReplyPhase.DRAINING
        closing = self._events.response_closing(
            reply.response_id,
            reply.item_id,
            reply.with_audio,
            reply.transcript,
            status,
            self.config,
            reason=reason,
            error=error,
            extra_output=reply.function_calls,
        )
        for closing_event in closing:
            await self._emit(reply, closing_event)
        self._metrics.responses.labels(status=status).inc()

    async def _cancel_reply(self, *, reason: str) -> None:
        reply = self._reply
        if reply is None or reply.phase is ReplyPhase.FINISHED:
            return
        detected_s = self._clock()
        reply.cancelled = True
        heard_ms = self._playout.clear(detected_s * 1000)
        self._playout_wakeup.set()
        if reply.task is not None and reply.task is not asyncio.current_task():
            await cancel_and_wait(reply.task, CANCEL_TIMEOUT_S)
        self._metrics.barge_in_reaction.observe(self._clock() - detected_s)
        if reason == "turn_detected":
            self._metrics.interruptions.inc()
        was_generating = reply.phase is ReplyPhase.GENERATING
        if was_generating:
            await self._end_response(reply, "cancelled", reason=reason)
        self._reply_over(reply)
        if reply.with_audio and reply.audio_sent_ms > 0:
            await self._truncate(reply, heard_ms)
        if reason == "turn_detected":
            self._notifier.publish(Interrupted(self.config.id, reply.item_id, heard_ms))
        if was_generating or reply.audio_sent_ms > 0:
            self._notifier.publish(
                AssistantTurn(self.config.id, reply.item_id, reply.transcript, "cancelled", True)
            )

    async def _truncate(self, reply: _Reply, audio_end_ms: int, *, source: str = "server") -> None:
        assert self._session is not None
        kept = self._session.truncate_reply(audio_end_ms)
        reply.transcript = kept
        await self._send(
            self._events.event(
                "conversation.item.truncated",
                item_id=reply.item_id,
                content_index=0,
                audio_end_ms=audio_end_ms,
            )
        )
        self._notifier.publish(Truncated(self.config.id, reply.item_id, audio_end_ms, kept, source))

    async def _on_truncate(self, event: ItemTruncate) -> None:
        reply = self._reply
        if reply is None or reply.item_id != event.item_id:
            raise ProtocolViolation(
                f"item {event.item_id!r} is not the assistant's last audio item",
                code="item_not_found",
                param="item_id",
            )
        if event.content_index != 0:
            raise ProtocolViolation("content_index must be 0", code="invalid_value", param="content_index")
        if event.audio_end_ms > reply.audio_sent_ms + 1:
            raise ProtocolViolation(
                f"audio_end_ms {event.audio_end_ms} is beyond the {reply.audio_sent_ms:.0f} ms of audio sent",
                code="invalid_value",
                param="audio_end_ms",
            )
        if reply.phase is not ReplyPhase.FINISHED:
            reply.cancelled = True
            self._playout.clear(self._clock() * 1000)
            if reply.task is not None:
                await cancel_and_wait(reply.task, CANCEL_TIMEOUT_S)
            await self._end_response(reply, "cancelled", reason="client_cancelled")
            self._reply_over(reply)
        await self._truncate(reply, event.audio_end_ms, source="client")

    # --- writer: real-time pacing ---------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            now_ms = self._clock() * 1000
            reply = self._reply
            for chunk in self._playout.due(now_ms):
                await self._send_chunk(chunk.reply_id, chunk.frame)
            if reply is not None and self._playout.reply_id == reply.reply_id and self._playout.is_sent():
                reply.all_sent.set()
            next_ms = self._playout.next_due_ms(self._clock() * 1000)
            self._playout_wakeup.clear()
            # a chunk becomes due just after the client's buffer drops below the lead
            timeout = None if next_ms is None else max(0.001, next_ms / 1000 - self._clock() + 0.0005)
            await wait_event(self._playout_wakeup, timeout)

    async def _send_chunk(self, reply_id: int, frame: PcmFrame) -> None:
        fmt = self.config.output_format
        if frame.sample_rate_hz != fmt.sample_rate_hz:  # a session.update changed it mid-reply
            frame = resample(frame, fmt.sample_rate_hz)
        payload = base64.b64encode(fmt.encode(frame)).decode("ascii")
        async with self._send_lock:
            reply = self._reply
            if reply is None or reply.reply_id != reply_id or reply.cancelled:
                return  # a stale chunk of an interrupted reply: never sent
            event = self._events.event(
                self._events.audio_delta,
                response_id=reply.response_id,
                item_id=reply.item_id,
                output_index=0,
                content_index=0,
                delta=payload,
            )
            await self._transport.send_text(json.dumps(event))
            reply.audio_sent_ms += frame.duration_ms
        if reply.first_audio_sent_s is None:
            reply.first_audio_sent_s = self._clock()
            if reply.user_speech_end_s is not None:
                latency_s = reply.first_audio_sent_s - reply.user_speech_end_s
                self._metrics.voice_to_voice.observe(latency_s)
                timings = self._session.timings if self._session is not None else None
                self._notifier.publish(
                    TurnLatency(
                        self.config.id,
                        reply.item_id,
                        latency_s * 1000,
                        asr_final_ms=timings.asr_final_ms if timings else None,
                        llm_first_token_ms=timings.llm_first_token_ms if timings else None,
                        tts_first_audio_ms=timings.tts_first_audio_ms if timings else None,
                    )
                )

    # --- timer: silence by absence of audio ----------------------------------------

    async def _timer_loop(self) -> None:
        """A client that stops sending audio in the middle of a turn has gone quiet: after
        SILENCE_BY_ABSENCE_MS without audio, feed silence at real time so the turn can end."""
        while True:
            last_push_s = self._input.last_push_s
            waiting = self._turns.state is not UserState.LISTENING or self._turns.next_deadline() is not None
            if not waiting or last_push_s is None or self.config.turn_detection is None:
                self._timer_wakeup.clear()
                await self._timer_wakeup.wait()
                continue
            now_s = self._clock()
            idle_ms = (now_s - last_push_s) * 1000
            if idle_ms >= SILENCE_BY_ABSENCE_MS:
                rate = self.config.input_format.sample_rate_hz
                await self._ingest(PcmFrame.silence(min(int(idle_ms), 1000), rate), now_s)
                continue
            self._timer_wakeup.clear()
            await wait_event(self._timer_wakeup, (SILENCE_BY_ABSENCE_MS - idle_ms) / 1000)

    # --- lifetime: maximum duration and idle timeout --------------------------------

    async def _lifetime_loop(self) -> None:
        """Warn `session.expiring` (a Voxgate extension) before the maximum duration; end the
        session at it or after `idle_timeout_s` without a client message."""
        while True:
            match self._lifetime.poll(self._clock()):
                case WarnExpiring(seconds_left=left):
                    await self._send(
                        self._events.event(
                            "session.expiring",
                            expires_at=round(time.time() + left),
                            seconds_left=round(left),
                        )
                    )
                case EndSession(reason=reason):
                    self.ended_by = reason
                    raise TransportClosed(reason.value)
            await asyncio.sleep(max(0.0, self._lifetime.next_deadline_s() - self._clock()))
