"""Conversation: one per client connection. Owns the tasks; executes TurnTaker actions.

The conversation speaks no protocol: its client is a `ClientPort` (port.py) of typed commands
in and outputs out, and edge adapters translate (server/realtime/port.py, server/telephony/).

Tasks (one TaskGroup, all named, none fire-and-forget):
- reader: commands -> session settings, caller audio -> VAD -> TurnTaker -> actions;
- writer: paces reply audio out of the PlayoutBuffer at real time;
- timer: advances the turn clock when the client stops sending audio (silence by absence);
- lifetime: the session's maximum duration and idle timeout;
- model turns: when the model detects the turns itself (DetectsTurns: the upstream's VAD),
  its speech signals -> TurnTaker -> actions, in place of our VAD;
- the transcription of the committed turn, and the current reply (replies.py).

The decisions live in sans-I/O machines: TurnTaker (turns.py) decides who has the floor,
each Reply (reply.py) its own state, PlayoutBuffer (playout.py) what the caller has heard;
this module feeds them events, with audio time from sample counts, and carries out what
they answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from server.aio import wait_event
from server.audio import PcmFrame, resample
from server.audio_processing import SUPPORTED_RATES_HZ, ProcessingOptions, open_input_processor
from server.errors import BackendError, BackendUnavailable, ProtocolViolation
from server.events import AgentEvent, EventHandler, FalseInterruption, SessionEnded, SessionStarted
from server.ids import new_id
from server.metrics import Metrics
from server.model.base import (
    DetectsTurns,
    HeardSpeechStart,
    HeardSpeechStop,
    HearsListenerWords,
    HearsWords,
    ImageInput,
    KnowsVoices,
    Message,
    OmniModel,
    OmniSession,
    ResponseOptions,
    SessionOptions,
    ToolSpec,
    TranscriptionOptions,
    TurnDetectionFailed,
    TurnEndScoring,
    VoiceDetection,
    WordSpan,
)
from server.model.tool_calls import ForcedTool, ToolChoice
from server.privacy import redact
from server.streaming.capture import InputAudio, VadFrame
from server.streaming.commands import (
    AddAssistantText,
    AddFunctionCall,
    AddFunctionOutput,
    AddSystemText,
    AddUserText,
    AppendAudio,
    CancelResponse,
    ClearAudio,
    ClearOutputAudio,
    Command,
    CommitAudio,
    CreateResponse,
    DeleteItem,
    Rejected,
    RetrieveItem,
    TruncateItem,
    UpdateSession,
)
from server.streaming.echo_gate import EchoGate, EchoGateOptions
from server.streaming.interruptions import OverlapKind
from server.streaming.items import ItemMessages
from server.streaming.lifetime import EndSession, SessionEnd, SessionLifetime, WarnExpiring
from server.streaming.notifier import EventNotifier
from server.streaming.out_of_band import OutOfBandResponses
from server.streaming.outputs import (
    AssistantTextAdded,
    Failed,
    IdleTimedOut,
    InputCleared,
    InputCommitted,
    ItemDeleted,
    ItemRequested,
    Output,
    OutputCleared,
    ResponseAudio,
    SessionCreated,
    SessionExpiring,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    SystemTextAdded,
    UserAudioAdded,
    UserTextAdded,
)
from server.streaming.playout import PlayoutBuffer
from server.streaming.port import ClientPort, TransportClosed
from server.streaming.replies import Replies, failure_code
from server.streaming.session_config import ConversationOptions, SessionConfig, forced_tool_name
from server.streaming.transcription import transcribe_turn
from server.streaming.turns import (
    AbandonPreparedReply,
    AnnounceSpeechStarted,
    AnnounceSpeechStopped,
    BeginCapture,
    CancelReply,
    CommitTurn,
    CompletionScored,
    DiscardNoise,
    EchoReturnMeasured,
    EndCapture,
    FrameClassified,
    IgnoreOverlap,
    ListenerWordsHeard,
    ModelSpeechStarted,
    ModelSpeechStopped,
    PauseReply,
    PrepareReply,
    ReportIdle,
    ResumeReply,
    ScoreCompletion,
    StartReply,
    Tick,
    TurnAction,
    TurnTaker,
    UserState,
    WordsHeard,
)
from server.streaming.turns import (
    InputCleared as TurnInputCleared,
)
from server.tools import SessionTools, ToolBox
from server.vad.detector import ClassifierFactory, SessionClassifier, session_classifier

log = logging.getLogger(__name__)

SILENCE_BY_ABSENCE_MS = 250  # no audio for this long in the middle of a turn: treat as silence
MIN_COMMIT_MS = 100
MAX_SESSION_IMAGE_BYTES = 32 * 1024 * 1024  # images a session's history may hold


class Conversation:
    """Run with `await Conversation(...).run()`; returns when the client disconnects."""

    def __init__(
        self,
        port: ClientPort,
        model: OmniModel,
        vad: ClassifierFactory,
        options: ConversationOptions,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        on_event: EventHandler | None = None,
        metadata: Mapping[str, str] | None = None,
        tools: ToolBox | None = None,
    ) -> None:
        self._port = port
        self._notifier = EventNotifier(on_event, privacy=options.privacy)
        self.metadata = dict(metadata or {})
        self._toolbox = tools if tools is not None else ToolBox()
        self._client_tools: tuple[ToolSpec, ...] = ()  # declared by the client in its settings
        self._model = model
        self._vad_factory = vad
        self._options = options
        self._metrics = metrics
        self._clock = clock
        self.config = options.session_config(new_id("sess"))
        self.last_item_id: str | None = None
        self._image_bytes = 0  # of the images in the history (bounded: MAX_SESSION_IMAGE_BYTES)
        self._send_lock = asyncio.Lock()
        self._ingest_lock = asyncio.Lock()
        self._session: OmniSession | None = None
        self._classifier: SessionClassifier = session_classifier(vad.open(options.turn.threshold))
        self._turns = TurnTaker(options.turn)
        self._playout = PlayoutBuffer(options.playout, self.config.output_format.sample_rate_hz)
        self._playout_wakeup = asyncio.Event()
        self._input = InputAudio(
            self.config.input_format.sample_rate_hz,
            model.capabilities.input_sample_rate_hz,
            self._classifier,
            # onsets are confirmed up to ~barge_in_min_ms after they happened
            preroll_ms=options.prefix_padding_ms + 1000,
            start_s=clock(),
        )
        self._processing: tuple[ProcessingOptions, int] | None = None  # what the input processor does
        self._echo_gate = (
            EchoGate(EchoGateOptions(), self._classifier.frame_ms) if options.echo_gate else None
        )
        self._capturing = False
        self._captured: list[PcmFrame] = []  # this turn's audio, replayed if a speculation is abandoned
        self._captured_ms = 0
        self._capture_start_ms = 0  # where the captured audio (the model's uncommitted input) began
        self._input_item_id: str | None = None
        self._replies = Replies(
            self,
            self._playout,
            self._playout_wakeup,
            self._turns,
            metrics,
            options.privacy,
            clock,
            self._run_transcription,
        )
        self._out_of_band = OutOfBandResponses(self.send, failure_code)
        self._items = ItemMessages()  # each item's history message, for conversation.item.delete
        self._tasks: asyncio.TaskGroup | None = None
        self._timer_wakeup = asyncio.Event()
        self._transcription: asyncio.Task[Exception | None] | None = None  # result: its failure
        self._scoring: asyncio.Task[None] | None = None  # the words of the current pause, scored
        self._scored_words: str | None = None  # ... which words
        # the words the TurnTaker last heard over a paused reply, the input they cover and
        # their spans as the recogniser placed them (put on the input's clock only when new)
        self._overlap_heard: tuple[str, int | None, tuple[WordSpan, ...] | None] | None = None
        self._listener_heard: tuple[str, tuple[WordSpan, ...] | None] | None = None  # ... a listener's
        self._echo_return_db: float | None = None  # the gate's, as last told the TurnTaker
        # the silence heard before the reply resumed under the caller's listener words, while
        # the overlap is judged (ResumeReply(under_voice=True)); reported with its IgnoreOverlap
        self._overlap_silence_ms = 0.0
        self._stop_requested = False
        self._speech_end_s: float | None = None
        self._model_detects_turns = False  # the model's VAD ends the turns (DetectsTurns)
        self._committed_until_ms = 0  # the input audio up to here belongs to committed turns
        self._model_turns_failing = False  # ... and it cannot for now (reported once)
        self._lifetime = SessionLifetime(options.lifetime, clock())
        self.ended_by: SessionEnd | None = None  # set when the server ended the session (lifetime.py)
        port.attach(self)

    # --- what replies and the port may use (ReplyHost, SessionView) ----------------------------

    @property
    def model_session(self) -> OmniSession:
        assert self._session is not None
        return self._session

    @property
    def tasks(self) -> asyncio.TaskGroup:
        assert self._tasks is not None
        return self._tasks

    def input_ms(self) -> int:
        return self._input.input_ms

    def server_tool_names(self) -> Iterable[str]:
        return (spec.name for spec in self._toolbox.specs())

    def transcription_languages(self) -> frozenset[str] | None:
        return self.model_session.capabilities.transcription_languages

    async def send(self, output: Output) -> None:
        async with self._send_lock:
            await self._port.send(output)

    def publish(self, event: AgentEvent) -> None:
        self._notifier.publish(event)

    # --- lifecycle ------------------------------------------------------------------

    async def run(self) -> None:
        self._metrics.session_opened()
        try:
            self._session = await self._model.open(self._session_options())
            self._model_detects_turns = (
                isinstance(self._session, DetectsTurns) and self._session.detects_turns
            )
            self._fit_turns_to(self._session)
            self._update_processing(self.config)
            opening = self._port.opening_settings()
            if opening is not None:
                self._configure(opening)
            await self.send(SessionCreated(self.config))
            self._notifier.publish(SessionStarted(self.config.id, dict(self.metadata)))
            try:
                async with asyncio.TaskGroup() as tg:
                    self._tasks = tg
                    tg.create_task(self._notifier.run(), name="conversation-events")
                    tg.create_task(self._read_loop(), name="conversation-reader")
                    tg.create_task(self._write_loop(), name="conversation-writer")
                    tg.create_task(self._timer_loop(), name="conversation-timer")
                    tg.create_task(self._lifetime_loop(), name="conversation-lifetime")
                    if isinstance(self._session, DetectsTurns) and self._model_detects_turns:
                        tg.create_task(
                            self._follow_model_turns(self._session), name="conversation-model-turns"
                        )
                    if self._stop_requested:
                        tg.create_task(self._stop_now(), name="conversation-stop")
            except* TransportClosed:
                pass
        finally:
            self._tasks = None
            await self._replies.aclose()
            if self._session is not None:
                await self._session.aclose()
            self._input.set_processor(None)
            self._metrics.session_closed()
            self._notifier.publish(SessionEnded(self.config.id))
            await self._notifier.drain()

    def _fit_turns_to(self, session: OmniSession) -> None:
        """Turn-taking that the session cannot serve is off: speculative replies when it cannot
        roll them back, the `words` barge-in mode when it hears no words (without words every
        short barge-in would count as noise). A model that detects the turns itself takes
        them over: no VAD of ours, no speculation, any speech it hears over a reply cancels it."""
        turn = self._options.turn
        if self._model_detects_turns:
            turn = replace(turn, model_detects_turns=True, speculative_silence_ms=None, interruption=None)
        if not session.capabilities.can_rollback:
            turn = replace(turn, speculative_silence_ms=None)
        if not isinstance(session, HearsWords):
            turn = replace(turn, interruption=None)
        if turn != self._options.turn:
            self._options = replace(self._options, turn=turn)
            td = self.config.turn_detection
            self._turns.configure(turn if td is None else self._options.turn_options(td))

    @property
    def is_replying(self) -> bool:
        """A committed turn is being transcribed, or a reply prepared, generated or played."""
        return self._replies.is_busy or (self._transcription is not None and not self._transcription.done())

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
            speed=self.config.speed,
            temperature=self.config.temperature,
            max_output_tokens=self.config.max_output_tokens,
            metadata=dict(self.metadata),
            tools=SessionTools(
                self._toolbox,
                self.config.id,
                self._notifier.publish,
                self._client_tools,
                self._tool_choice(),
                gate=self._replies.tools_may_run,
            ),
            anticipate_reply=(
                self.config.turn_detection is not None and self.config.turn_detection.create_response
            ),
            score_turn_end=(
                self.config.turn_detection is not None and self.config.turn_detection.type == "semantic_vad"
            ),
            transcription=TranscriptionOptions(
                self.config.transcription_language, self.config.transcription_prompt
            ),
            grounding=self._options.grounding,
            voice_detection=self._voice_detection(),
            model_detects_turns=self._options.model_detects_turns,
        )

    def _voice_detection(self) -> VoiceDetection | None:
        td = self.config.turn_detection
        if td is None:
            return None
        return VoiceDetection(
            td.type, td.eagerness, td.threshold, td.prefix_padding_ms, td.silence_duration_ms
        )

    def _tool_choice(self) -> ToolChoice:
        choice = self.config.tool_choice
        forced = forced_tool_name(choice)
        if forced is not None:
            return ForcedTool(forced)
        return "none" if choice == "none" else "required" if choice == "required" else "auto"

    async def _refuse(self, exc: ProtocolViolation, event_id: str | None = None) -> None:
        self._metrics.errors.labels(code=exc.code).inc()
        await self.send(Failed(str(exc), exc.code, exc.param, event_id))

    # --- reader ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        if self._options.greeting and self.config.session_type != "transcription":  # captions: no reply
            # before the client's first command: a session.update sent at once applies after it
            await self._start_reply(replace(self._default_response_options(), say=self._options.greeting))
        while True:
            command = await self._port.receive()
            self._lifetime.push_activity(self._clock())
            try:
                await self._handle(command)
            except ProtocolViolation as exc:
                await self._refuse(exc, command.event_id)

    async def _handle(self, command: Command) -> None:
        match command:
            case AppendAudio():
                await self._on_append(command.audio)
            case UpdateSession():
                self._check_voice(command.config.voice)
                self._configure(command)
                await self.send(SessionUpdated(self.config))
            case CommitAudio():
                await self._commit_input(from_vad=False)
            case ClearAudio():
                await self._clear_input()
                await self.send(InputCleared())
            case AddUserText():
                self._check_images(command.images)
                item_id = command.item_id or new_id("item")
                self.model_session.add_user_text(command.text, command.images)
                self.remember_item(item_id, lambda m: m.role == "user")
                self._image_bytes += sum(len(image.data) for image in command.images)
                previous, self.last_item_id = self.last_item_id, item_id
                await self.send(UserTextAdded(item_id, command.text, previous, command.images))
            case AddSystemText():
                item_id = command.item_id or new_id("item")
                self.model_session.add_system_text(command.text)
                self.remember_item(item_id, lambda m: m.role == "system")
                previous, self.last_item_id = self.last_item_id, item_id
                await self.send(SystemTextAdded(item_id, command.text, previous))
            case AddAssistantText():
                item_id = command.item_id or new_id("item")
                self.model_session.add_assistant_text(command.text)
                self.remember_item(item_id, lambda m: m.role == "assistant")
                previous, self.last_item_id = self.last_item_id, item_id
                await self.send(AssistantTextAdded(item_id, command.text, previous))
            case AddFunctionCall():
                await self._replies.replay_function_call(command)
            case AddFunctionOutput():
                await self._replies.function_output(command)
            case TruncateItem():
                await self._replies.truncate_item(command)
            case CreateResponse(out_of_band=True):
                options = command.options or self._default_response_options()
                self._out_of_band.start(
                    replace(command, options=options), self.model_session, self.config, self.tasks
                )
            case CreateResponse():
                current = self._replies.current
                if current is not None and current.is_generating:
                    raise ProtocolViolation(
                        "a response is already in progress; cancel it first",
                        code="conversation_already_has_active_response",
                    )
                await self._start_reply(command.options or self._default_response_options(), command.metadata)
            case CancelResponse():
                if self._out_of_band.is_running(command.response_id):
                    assert command.response_id is not None
                    await self._out_of_band.cancel(command.response_id)
                else:
                    await self._replies.cancel_response(command.response_id)
            case DeleteItem():
                current = self._replies.current
                if current is not None and current.item_id == command.item_id and not current.is_finished:
                    raise ProtocolViolation(
                        "a response in progress cannot be deleted; cancel it first",
                        code="item_in_progress",
                        param="item_id",
                    )
                self._items.delete(command.item_id, self.model_session)
                await self.send(ItemDeleted(command.item_id))
            case RetrieveItem():
                await self.send(ItemRequested(command.item_id, command.event_id))
            case ClearOutputAudio():
                if self._replies.current is not None:
                    await self._replies.cancel(reason="client_cancelled")
                await self.send(OutputCleared())
            case Rejected():
                await self._refuse(command.violation, command.event_id)

    def _configure(self, command: UpdateSession) -> None:
        """Apply new session settings; raises ProtocolViolation and changes nothing if they
        name a tool the session does not have."""
        config = command.config
        client_tools = self._client_tools if command.client_tools is None else command.client_tools
        forced = forced_tool_name(config.tool_choice)
        known = {spec.name for spec in (*self._toolbox.specs(), *client_tools)}
        if isinstance(forced, str) and forced and forced not in known:
            raise ProtocolViolation(
                f"session.tool_choice names {forced[:80]!r}, which is not one of the session's tools",
                code="invalid_value",
                param="session.tool_choice.name",
            )
        self._check_processing(config)
        old_in = self.config.input_format
        self.config = config
        self._client_tools = client_tools
        if config.input_format != old_in:
            self._input.set_input_rate(config.input_format.sample_rate_hz)
        self._update_processing(config)
        td = config.turn_detection
        if td is not None:
            defaults = self._options.turn
            self._turns.configure(self._options.turn_options(td))
            if td.threshold != defaults.threshold:
                self._classifier = session_classifier(self._vad_factory.open(td.threshold))
                self._input.set_classifier(self._classifier)
            self._input.preroll_ms = td.prefix_padding_ms + 1000
        self.model_session.update(self._session_options())

    # --- input audio ----------------------------------------------------------------

    def _processing_for(self, config: SessionConfig) -> ProcessingOptions:
        noise = config.noise_reduction
        return ProcessingOptions(
            echo_cancellation=self._options.echo_cancellation,
            noise_reduction="near_field"
            if noise == "near_field"
            else "far_field"
            if noise == "far_field"
            else None,
        )

    def _check_processing(self, config: SessionConfig) -> None:
        """A session asking for noise reduction at an input rate it cannot work at is told so."""
        rate = config.input_format.sample_rate_hz
        if config.noise_reduction is not None and rate not in SUPPORTED_RATES_HZ:
            raise ProtocolViolation(
                f"noise reduction works on input audio at {', '.join(map(str, SUPPORTED_RATES_HZ))} Hz,"
                f" not {rate} Hz",
                code="invalid_value",
                param="session.audio.input.noise_reduction",
            )

    def _update_processing(self, config: SessionConfig) -> None:
        """(Re)build the input processor when what it does or the input rate changed."""
        options = self._processing_for(config)
        rate = config.input_format.sample_rate_hz
        if self._processing == (options, rate):
            return
        self._processing = (options, rate)
        self._input.tracks_reply = self._echo_gate is not None or options.echo_cancellation
        if not options.enabled or rate not in SUPPORTED_RATES_HZ:
            self._input.set_processor(None)  # (echo cancellation only: 44.1 kHz input goes without)
            return
        try:
            self._input.set_processor(open_input_processor(options, rate))
        except BackendUnavailable as exc:  # checked at startup: only if the library broke since
            log.error("input audio processing unavailable", extra={"error": str(exc)})
            self._input.set_processor(None)

    async def _on_append(self, audio: bytes) -> None:
        if not audio:
            return
        now_s = self._clock()
        try:
            frame = self.config.input_format.decode(audio)
        except ValueError as exc:
            raise ProtocolViolation(f"audio: {exc}", code="invalid_audio", param="audio") from exc
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
            vad_on = self.config.turn_detection is not None and not self._model_detects_turns
            gap_ms = self._input.gap_ms
            model_frame, vad_frames = self._input.push(frame, now_s, classify=vad_on)
            if self._input.gap_ms != gap_ms and log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "input gap",  # the echo reference moved on past it, or back after late audio
                    extra={
                        "session_id": self.config.id,
                        "input_ms": self._input.input_ms,
                        "gap_ms": self._input.gap_ms,
                    },
                )
            if model_frame.sample_count and self._model_detects_turns:
                # the model hears everything to find the turns; nothing kept here but its length
                self._captured_ms += int(model_frame.duration_ms)
                self.model_session.push_audio(model_frame)
            elif model_frame.sample_count and (self._capturing or not vad_on):
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
                probability = await self._speech_probability(vad_frame.frame)  # keeps the VAD's state
                masked = False
                if self._is_echo(vad_frame):
                    masked, probability = probability >= self._turns.options.threshold, 0.0
                if (masked or probability >= self._turns.options.threshold) and log.isEnabledFor(
                    logging.DEBUG
                ):
                    self._log_gate(vad_frame.start_ms, masked)
                classified = FrameClassified(vad_frame.start_ms, vad_frame.duration_ms, probability, masked)
                self._turns.receive(classified, now_ms=vad_frame.start_ms + vad_frame.duration_ms)
                await self._run_turn_actions()
            if self.config.turn_detection is not None and self._turns.next_deadline() is not None:
                # a silence deadline falls due with the audio that reaches it, not a VAD frame later
                # (a part-frame can't hold a voice onset: that needs vad_min_voiced_ms of frames)
                self._turns.receive(Tick(), now_ms=self._input.input_ms)
                await self._run_turn_actions()
            self._rescore_if_words_changed()
            await self._hear_overlap_words()
        self._timer_wakeup.set()

    async def _hear_overlap_words(self) -> None:
        """While the caller talks over a paused reply, pass the recogniser's words to the
        TurnTaker whenever they change: they decide whether it is an interruption."""
        session = self._session
        if not self._turns.wants_words or not isinstance(session, HearsWords):
            self._overlap_heard = self._listener_heard = None
            return
        await self._hear_listener_words()
        words, cover_ms = session.words_so_far(), session.words_cover_ms()
        # the input position the words reach: their judgement waits for the end of the speech
        through_ms = None if cover_ms is None else self._capture_start_ms + cover_ms
        spans = session.word_spans_so_far()
        if (words, through_ms, spans) != self._overlap_heard:
            self._overlap_heard = (words, through_ms, spans)
            if spans is not None:  # placed on the input's clock, as the TurnTaker's frames are
                start_ms = self._capture_start_ms
                spans = tuple(WordSpan(s.word, start_ms + s.start_ms, start_ms + s.end_ms) for s in spans)
            reply = self._replies.current
            reply_text = reply.transcript if reply is not None else ""
            heard = WordsHeard(words, reply_text, through_ms, spans)
            self._turns.receive(heard, now_ms=self._input.input_ms)
            if log.isEnabledFor(logging.DEBUG):  # how far the recogniser lags
                self._log_overlap_words(words, through_ms)
            await self._run_turn_actions()

    async def _hear_listener_words(self) -> None:
        """... and, where the session can decode the input for a listener's short words
        (HearsListenerWords, from the overlap's first paused moment on), those words: they say
        whether the reply talks on under the voice. Empty ones are not passed: until the
        listener's recogniser has heard a word, the turn's recogniser's words say it."""
        session = self._session
        if not self._turns.wants_listener_words or not isinstance(session, HearsListenerWords):
            return
        if not session.listen_for_listener_words(self._captured):
            return
        heard = session.listener_words_so_far()
        if heard is None or not heard[0] or heard == self._listener_heard:
            return
        self._listener_heard = heard
        words, spans = heard
        if spans is not None:  # on the input's clock, as WordsHeard's
            start_ms = self._capture_start_ms
            spans = tuple(WordSpan(s.word, start_ms + s.start_ms, start_ms + s.end_ms) for s in spans)
        self._turns.receive(ListenerWordsHeard(words, spans), now_ms=self._input.input_ms)
        if log.isEnabledFor(logging.DEBUG):
            fields: dict[str, object] = {
                "session_id": self.config.id,
                "input_ms": self._input.input_ms,
                "word_count": len(words.split()),
                **self._loggable_words(words=words),
            }
            log.debug("listener words", extra=fields)
        await self._run_turn_actions()

    async def _follow_model_turns(self, session: DetectsTurns) -> None:
        """The model's speech signals drive the TurnTaker (in place of our VAD's frames); a
        model that cannot detect turns for now is reported once, until it can again."""
        async for signal in session.turn_signals():
            match signal:
                case TurnDetectionFailed(message=message):
                    if not self._model_turns_failing:
                        self._model_turns_failing = True
                        self._metrics.errors.labels(code="backend_error").inc()
                        await self.send(
                            Failed(
                                f"turn detection is unavailable: {message}; retrying",
                                "backend_error",
                                type="server_error",
                            )
                        )
                    continue
                case HeardSpeechStart(audio_start_ms=start_ms):
                    event: ModelSpeechStarted | ModelSpeechStopped = ModelSpeechStarted(start_ms)
                case HeardSpeechStop(audio_end_ms=end_ms):
                    event = ModelSpeechStopped(end_ms)
            self._model_turns_failing = False
            async with self._ingest_lock:
                if self.config.turn_detection is None:
                    continue  # the client commits its turns itself
                self._turns.receive(event, now_ms=self._input.input_ms)
                await self._run_turn_actions()
            self._timer_wakeup.set()

    def _is_echo(self, vad_frame: VadFrame) -> bool:
        """The frame is explained by the reply's echo (echo_gate.py): silence to the VAD."""
        if self._echo_gate is None or vad_frame.reference is None:
            return False
        # while a voice is heard, the frames may be the caller's: held until it is decided
        hold = self._turns.hears_voice
        is_echo = self._echo_gate.is_echo(vad_frame.frame, vad_frame.reference, hold=hold)
        self._report_echo_return(self._echo_gate.echo_return)
        if is_echo:
            self._metrics.echo_frames.inc()
        return is_echo

    def _report_echo_return(self, echo_return: float | None) -> None:
        """Tell the TurnTaker the gate's learned echo return when it has moved by a dB."""
        return_db = None if not echo_return else round(10 * math.log10(echo_return))
        if return_db != self._echo_return_db:
            self._echo_return_db = return_db
            self._turns.receive(EchoReturnMeasured(return_db), now_ms=self._input.input_ms)

    def _log_gate(self, start_ms: int, masked: bool) -> None:
        """A voiced frame over the reply, as the echo gate judged it (debug): its level against
        the loudest the echo could have been, in dB; how near the gate came to the other side."""
        gate = self._echo_gate
        if gate is None or gate.last_limit is None:
            return
        fields = {
            "session_id": self.config.id,
            "start_ms": start_ms,
            "masked": masked,
            "mic_db": round(10 * math.log10(gate.last_power + 1.0), 1),
            "limit_db": round(10 * math.log10(gate.last_limit + 1.0), 1),
            "delay_frames": gate.delay_frames,
        }
        log.debug("echo gate frame", extra=fields)

    def _settle_echo_frames(self, *, echo: bool) -> None:
        """The voice whose frames the echo gate held was decided: the reply's echo, its words
        the reply's own (they teach it the echo's level), or anything else: the caller's words,
        a backchannel, a burst dismissed as noise (forgotten: the gate itself chops a caller's
        sentence into such bursts, and learning them would gate the caller)."""
        if self._echo_gate is not None:
            self._echo_gate.settle_held(echo=echo)

    def _deadline_due(self) -> bool:
        deadline = self._turns.next_deadline()
        return deadline is not None and deadline <= self._input.input_ms

    async def _speech_probability(self, frame: PcmFrame) -> float:
        try:
            return await self._classifier.classify(frame)
        except BackendError as exc:
            if not exc.retryable:
                raise
            # the VAD worker died with this frame (it is being restarted): one 32 ms frame
            # counted as silence is less than the hangover, so the call goes on unharmed
            log.warning("VAD frame lost; counted as silence", extra={"error": str(exc)})
            return 0.0

    def _push_to_model(self, frame: PcmFrame) -> None:
        self._captured.append(frame)
        self._captured_ms += int(frame.duration_ms)
        if self._replies.prepared is None:  # while a reply is prepared, its transcript is final
            self.model_session.push_audio(frame)

    def _log_overlap_words(self, words: str, through_ms: int | None) -> None:
        """What the recogniser has heard over the reply, at debug level: counts, and the words
        themselves only with `log_transcripts` (redacted as transcripts are), so an operator can
        see why a reply was cancelled or went on."""
        callers = self._turns.overlap_callers_words
        fields: dict[str, object] = {
            "session_id": self.config.id,
            "input_ms": self._input.input_ms,
            "through_ms": through_ms,
            "word_count": len(words.split()),
            # ... of them, the caller's (the others were heard over the echo)
            "callers_word_count": len(callers.split()),
            "echo": self._turns.overlap_hears_echo,
            **self._loggable_words(words=words, callers_words=callers),
        }
        log.debug("overlap words", extra=fields)

    def _loggable_words(self, **texts: str) -> dict[str, str]:
        """The caller's words for a debug log line: only with `log_transcripts`, redacted as
        transcripts are."""
        privacy = self._options.privacy
        if not privacy.log_transcripts:
            return {}
        shown = redact if privacy.redact_transcripts else str
        return {name: shown(text) for name, text in texts.items()}

    async def _run_turn_actions(self) -> None:
        for action in self._turns.actions():
            await self._execute(action)

    async def _execute(self, action: TurnAction) -> None:
        if log.isEnabledFor(logging.DEBUG):  # no words: they are the caller's
            times = {k: v for k, v in dataclasses.asdict(action).items() if isinstance(v, int)}
            log.debug(
                "turn action",
                extra={
                    "session_id": self.config.id,
                    "action": type(action).__name__,
                    "input_ms": self._input.input_ms,
                    **times,
                },
            )
        match action:
            case BeginCapture(from_ms=from_ms):
                td = self.config.turn_detection
                self._start_capture(from_ms - (td.prefix_padding_ms if td else 0))
            case DiscardNoise(keeps_capture=keeps_capture):
                self._metrics.noise_ignored.inc()
                self._settle_echo_frames(echo=False)  # a burst: as often the caller, chopped
                if not keeps_capture:
                    await self._drop_capture()
            case EndCapture():
                await self._drop_capture()
            case CancelReply(reason=reason):
                self._overlap_silence_ms = 0.0
                await self._replies.cancel(reason=reason)
            case PauseReply(reply_id=reply_id):
                self._replies.pause(reply_id)
            case ResumeReply(reply_id=reply_id, under_voice=under_voice):
                silence_ms = self._replies.resume(reply_id)
                self._overlap_silence_ms = self._overlap_silence_ms + silence_ms if under_voice else 0.0
            case IgnoreOverlap():
                await self._ignore_overlap(action)
            case AnnounceSpeechStarted(audio_start_ms=start_ms):
                self._settle_echo_frames(echo=False)  # the caller's turn
                self._input_item_id = new_id("item")
                await self.send(SpeechStarted(start_ms, self._input_item_id))
            case AnnounceSpeechStopped(audio_end_ms=end_ms):
                await self.send(SpeechStopped(end_ms, self._input_item_id))
            case CommitTurn(audio_end_ms=end_ms):
                self._settle_echo_frames(echo=False)
                await self._commit_input(from_vad=True, speech_end_ms=end_ms)
            case PrepareReply():
                self._prepare_reply()
            case AbandonPreparedReply():
                if await self._replies.abandon_prepared():
                    for frame in self._captured:  # the turn goes on: the recogniser hears it all again
                        self.model_session.push_audio(frame)
            case StartReply():
                await self._start_reply(self._default_response_options())
            case ScoreCompletion(voice_end_ms=voice_end_ms):
                self._score_completion(voice_end_ms)
            case ReportIdle(audio_ms=audio_ms):
                await self.send(IdleTimedOut(audio_ms, new_id("item")))

    async def _ignore_overlap(self, action: IgnoreOverlap) -> None:
        """Speech over the reply was a backchannel or noise: forget its audio, let the
        reply go on, and tell the embedding code."""
        self._settle_echo_frames(echo=action.kind is OverlapKind.ECHO)
        if not action.keeps_capture:  # else a voice may continue it: the recogniser hears on
            await self._drop_capture()
        self._metrics.false_interruptions.labels(kind=action.kind.value).inc()
        silence_before_ms, self._overlap_silence_ms = self._overlap_silence_ms, 0.0
        if action.paused_reply is None:
            return
        # (a reply that already talks on under the caller's words is not paused: resume() is 0)
        silence_ms = self._replies.resume(action.paused_reply) + silence_before_ms
        self._metrics.barge_in_silence.observe(silence_ms / 1000)
        reply = self._replies.current
        log.info(
            "false interruption",
            extra={
                "session_id": self.config.id,
                "kind": action.kind.value,
                "speech_ms": action.end_ms - action.start_ms,
                "silence_ms": round(silence_ms),
            },
        )
        self._notifier.publish(
            FalseInterruption(
                self.config.id,
                reply.item_id if reply is not None else "",
                action.kind.value,
                action.words,
                round(silence_ms),
            )
        )

    def _score_completion(self, voice_end_ms: int) -> None:
        """Score the words heard so far (read now, before any later audio) in a task of the
        session; the answer goes back to the TurnTaker as CompletionScored. One at a time: a
        newer pause replaces the scoring of an older one."""
        session = self.model_session
        words = session.words_so_far() if isinstance(session, TurnEndScoring) else None
        if self._scoring is not None:
            self._scoring.cancel()  # its answer would be stale; the TurnTaker ignores it anyway
        self._scored_words = words
        self._scoring = self.tasks.create_task(
            self._answer_score(voice_end_ms, words), name="conversation-turn-end-score"
        )

    def _rescore_if_words_changed(self) -> None:
        """During a scored pause, score again when the recogniser's words change (its last
        word often arrives after the voice stopped); one score at a time."""
        voice_end_ms = self._turns.scoring_pause_ms
        session = self._session
        if voice_end_ms is None or not isinstance(session, TurnEndScoring):
            return
        if self._scoring is not None and not self._scoring.done():
            return
        if session.words_so_far() != self._scored_words:
            self._score_completion(voice_end_ms)

    async def _answer_score(self, voice_end_ms: int, words: str | None) -> None:
        session = self.model_session
        probability: float | None = None
        started_s = self._clock()
        if words is not None and isinstance(session, TurnEndScoring):
            probability = await session.end_of_turn_probability(words)
        policy = self._turns.options.semantic
        silence_ms = policy.silence_ms(probability) if policy is not None else None
        if probability is None:
            outcome = "unscored"
        else:
            self._metrics.turn_end_score.observe(self._clock() - started_s)
            outcome = "complete" if policy is not None and policy.is_complete(probability) else "incomplete"
        self._metrics.turn_end_scores.labels(outcome=outcome).inc()
        log.info(
            "turn end scored",
            extra={
                "session_id": self.config.id,
                "voice_end_ms": voice_end_ms,
                "words": len((words or "").split()),
                "probability": None if probability is None else round(probability, 4),
                "silence_ms": silence_ms,
            },
        )
        async with self._ingest_lock:
            self._turns.receive(CompletionScored(voice_end_ms, probability), now_ms=self._input.input_ms)
            await self._run_turn_actions()
        self._timer_wakeup.set()
        self._rescore_if_words_changed()

    def remember_item(self, item_id: str, is_it: Callable[[Message], bool]) -> None:
        """Name the newest history message that `is_it` as this item (items.py)."""
        self._items.remember(item_id, self.model_session.history(), is_it)

    def _check_voice(self, voice: str) -> None:
        """Refuse a voice the model cannot speak (before anything of the update applies)."""
        session = self._session
        if voice != self.config.voice and isinstance(session, KnowsVoices) and not session.knows_voice(voice):
            raise ProtocolViolation(
                f"unknown voice {voice!r}: use a voice of this server's text-to-speech (the "
                "default profile: an eSpeak name such as en-us) or an OpenAI name (alloy, ...), "
                "which speaks with the default voice",
                code="invalid_value",
                param="session.audio.output.voice",
            )

    def _check_images(self, images: Sequence[ImageInput]) -> None:
        """Refuse images the model cannot see, or beyond the session's image budget."""
        if not images:
            return
        if not self.model_session.capabilities.accepts_images:
            raise ProtocolViolation(
                f"the model {self.config.model!r} cannot see images; send text, or serve a vision "
                "model (VOXGATE_LLM=openai with a vision model behind it, or the realtime profile)",
                code="images_not_supported",
                param="item.content",
            )
        added = sum(len(image.data) for image in images)
        if self._image_bytes + added > MAX_SESSION_IMAGE_BYTES:
            raise ProtocolViolation(
                f"this session's images would exceed {MAX_SESSION_IMAGE_BYTES // (1024 * 1024)} MiB",
                code="images_limit_exceeded",
                param="item.content",
            )

    def _default_response_options(self) -> ResponseOptions:
        return ResponseOptions(with_audio="audio" in self.config.output_modalities)

    async def _start_reply(self, options: ResponseOptions, metadata: Mapping[str, str] | None = None) -> None:
        speech_end_s, self._speech_end_s = self._speech_end_s, None
        await self._replies.start(
            options, self._default_response_options(), self._transcription, speech_end_s, metadata
        )

    def _prepare_reply(self) -> None:
        if self._replies.prepared is not None or self._session is None or self._tasks is None:
            return
        item_id = self._input_item_id or new_id("item")
        self._input_item_id = item_id
        previous, self._transcription = self._transcription, None
        self._replies.prepare(self._default_response_options(), item_id, previous)

    def _start_capture(self, from_ms: int) -> None:
        if self._capturing:
            return
        self._capturing = True
        for frame in self._input.preroll_since(from_ms):
            self._push_to_model(frame)
        self._capture_start_ms = self._input.input_ms - self._captured_ms

    async def _drop_capture(self) -> None:
        self._capturing = False
        self._captured = []
        self._captured_ms = 0
        await self.model_session.clear_audio()

    async def _clear_input(self) -> None:
        self._settle_echo_frames(echo=False)
        self._turns.receive(TurnInputCleared(), self._input.input_ms)
        await self._run_turn_actions()
        await self._drop_capture()
        self._input.clear_preroll()
        self._input_item_id = None

    async def _commit_input(self, *, from_vad: bool, speech_end_ms: int | None = None) -> None:
        if not from_vad:
            if (
                not self._capturing
                and self.config.turn_detection is not None
                and not self._model_detects_turns
            ):
                # speech the VAD did not catch: the last second, but never audio of a turn
                # already committed (a client's commit that crossed the VAD's on the wire
                # finds the buffer empty, as OpenAI's does, instead of repeating the turn)
                self._start_capture(max(self._input.input_ms - 1000, self._committed_until_ms))
            if self._captured_ms < MIN_COMMIT_MS:
                raise ProtocolViolation(
                    f"buffer too small: {self._captured_ms} ms of audio; commit needs at least"
                    f" {MIN_COMMIT_MS} ms",
                    code="input_audio_buffer_commit_empty",
                )
            self._turns.receive(TurnInputCleared(), self._input.input_ms)
            await self._run_turn_actions()
        item_id = self._input_item_id or new_id("item")
        self._input_item_id = None
        self._committed_until_ms = self._input.input_ms
        self._capturing = False
        self._captured = []
        self._captured_ms = 0
        previous, self.last_item_id = self.last_item_id, item_id
        self._metrics.turns.inc()
        await self.send(InputCommitted(item_id, previous))
        await self.send(UserAudioAdded(item_id, previous))
        self._speech_end_s = None if speech_end_ms is None else self._input.arrival_of(speech_end_ms)
        if self._replies.prepared is not None:
            return  # the prepared reply is transcribing this turn already
        previous_task = self._transcription
        self._transcription = self.tasks.create_task(
            self._run_transcription(item_id, previous_task, self.send, self._notifier.publish),
            name=f"transcription-{item_id}",
        )

    async def _run_transcription(
        self,
        item_id: str,
        previous: asyncio.Task[Exception | None] | None,
        emit: Callable[[Output], Awaitable[None]],
        publish: Callable[[AgentEvent], None],
    ) -> Exception | None:
        """Transcribe the committed turn (transcription.py); its failure, or None."""
        failure = await transcribe_turn(
            self.model_session,
            item_id,
            previous,
            emit,
            publish,
            session_id=self.config.id,
            announce_final=self.config.transcription_model is not None,
            metrics=self._metrics,
            privacy=self._options.privacy,
        )
        if failure is None:  # the turn's words joined the history
            self.remember_item(item_id, lambda m: m.role == "user")
        return failure

    # --- writer: real-time pacing ---------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            now_ms = self._clock() * 1000
            reply = self._replies.current
            for chunk in self._playout.due(now_ms):
                if await self._send_chunk(chunk.reply_id, chunk.frame):
                    self._input.reply_plays(chunk.frame, chunk.plays_at_ms / 1000)
            if reply is not None and self._playout.reply_id == reply.reply_id and self._playout.is_sent():
                self._replies.all_sent(reply)
            next_ms = self._playout.next_due_ms(self._clock() * 1000)
            self._playout_wakeup.clear()
            # a chunk becomes due just after the client's buffer drops below the lead
            timeout = None if next_ms is None else max(0.001, next_ms / 1000 - self._clock() + 0.0005)
            await wait_event(self._playout_wakeup, timeout)

    async def _send_chunk(self, reply_id: int, frame: PcmFrame) -> bool:
        """Send a chunk of reply audio, unless its reply was interrupted; whether it was sent."""
        fmt = self.config.output_format
        if frame.sample_rate_hz != fmt.sample_rate_hz:  # a session.update changed it mid-reply
            frame = resample(frame, fmt.sample_rate_hz)
        audio = fmt.encode(frame)
        async with self._send_lock:
            reply = self._replies.current
            if reply is None or reply.reply_id != reply_id or not reply.accepts_audio:
                return False  # a stale chunk of an interrupted reply: never sent
            await self._port.send(ResponseAudio(reply.response_id, reply.item_id, audio, frame.duration_ms))
            self._replies.sent_audio(reply, frame.duration_ms)
            return True

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
        """Warn `SessionExpiring` before the maximum duration; end the session at it or after
        `idle_timeout_s` without a client message."""
        while True:
            match self._lifetime.poll(self._clock()):
                case WarnExpiring(seconds_left=left):
                    await self.send(SessionExpiring(round(time.time() + left), round(left)))
                case EndSession(reason=reason):
                    self.ended_by = reason
                    raise TransportClosed(reason.value)
            await asyncio.sleep(max(0.0, self._lifetime.next_deadline_s() - self._clock()))
