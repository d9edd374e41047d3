"""One realtime session as a benchmark client: speak like a live microphone, time every turn.

Call order: build `SessionOptions` and a list of `TurnPlan`s, then `await run_session(...)`;
it returns a `SessionResult` whatever happens (refused connection, server error, stall,
close): failures are counted in `SessionResult.errors`, never raised, and the call never
outlives `SessionOptions.deadline_s`. Only bugs in this module raise. A load test passes its
own `SessionResult` (it fills in as the session goes, so progress can be read from it, and
what was measured survives a cancellation) and a `stop` event: once set, no new turn starts
and the session closes after the current one.

What the session does:
1. connects to `ws://HOST:PORT/v1/realtime?model=...` and waits for `session.created`;
   optionally sends `session.update` (`turn_detection`: server VAD with `silence_duration_ms`,
   or semantic VAD with `eagerness`; see `turn_detection_request`; and `instructions`, if set)
   and waits for `session.updated`;
2. starts the `Microphone`: 20 ms frames of pcm16 24 kHz (`input_audio_buffer.append`) sent on
   an absolute schedule of the monotonic clock, frame k at start + (k + 1) * 20 ms, the moment
   a live microphone would have captured it. It never stops: silence when nothing is spoken;
3. for each turn: queues the utterance on the microphone and reads events until the reply to
   it has ended (`response.done`), then streams `pause_ms` more silence. With a `BargeInPlan`,
   once `after_ms` of reply audio has been heard (wall time since the reply's first audio
   arrived, i.e. a listener that plays audio as it arrives), the interrupting utterance is
   spoken over the reply; it is then a turn of its own, measured the same way. A barge-in
   that `expects_reply` False (a backchannel, a noise) need not be answered: the turn ends
   when the talked-over reply has ended and, unless the server started a response to the
   overlay (then that one's end), `reply_grace_s` after the overlay's last frame was sent;
   A turn's `linger_ms` keeps recording after its reply's response.done (a server announces
   a barge-in's speech_started just after the cancellation it caused);
4. with a `Room` (`loadtests.room`), the microphone hears the room too: every reply audio
   delta is pushed on its player as it is received, and its echo and noise go into each frame.

What is measured, all on `time.monotonic()` (receive times are taken as the reader gets each
message; send times as soon as `websocket.send` returns):
- the origin of a turn is the sending of the frame that holds the utterance's last voiced
  sample (`Utterance.speech_end_ms`, found in the audio itself, not from any server event);
  the 20 ms framing makes it up to 20 ms later than the true end of speech;
- voice-to-voice: first reply audio delta (`response.output_audio.delta`, or the beta
  `response.audio.delta`) received, minus that origin; likewise `speech_stopped`, the user
  transcript (`conversation.item.input_audio_transcription.completed`), `response.created`
  and `response.done`. `speech_started` is timed from the frame holding the first voiced
  sample instead (for an interruption: how long the server took to accept the barge-in);
- endpoint-to-audio: first reply audio minus the sending of the frame that completed the
  server's end-of-turn silence, i.e. that brought the input stream to the `audio_end_ms` of
  the turn's `speech_stopped` plus `silence_duration_ms` (the value this session set, else
  the one `session.created` announced). The server cannot end the turn before that frame
  arrives, so with an instant model this is what the server (and the network) add. With
  semantic VAD (asked for, or announced) there is no fixed silence: it is not measured (None);
- the reply of a turn is the first response created after the origin. A response created
  while the utterance was still being spoken (the server cut the utterance at a pause) is
  counted in `TurnResult.responses`, and each input item the server committed for the
  utterance in `TurnResult.commits`; the user transcript joins the transcripts of all of them;
- audio stalls: a player starts playing when the first reply chunk arrives and plays at real
  time; whenever it runs dry before the next chunk arrives, that wait is a stall (reply audio
  arriving slower than real time);
- barge-in: reaction is the time from sending the interrupter's first voiced frame to
  receiving the last audio delta of the interrupted response (0 when none arrived after it),
  whatever its ending: for a reply that completed, it tells whether the reply was still
  playing when the interrupter began (the barge-in benchmark's "ended by itself");
  `audio_after_interrupt_ms` is the reply audio received after that frame; the interrupted
  response's `response.done` should be `cancelled` with reason `turn_detected`.
Reply audio is assumed to be pcm16 at 24 kHz, the session's default output format.

The pacing lives in `loadtests.microphone`, the attribution of events to turns and the
arithmetic in `loadtests.recorder` (no I/O there); this module does the I/O.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from loadtests.corpus import SAMPLE_RATE_HZ, Utterance
from loadtests.microphone import Microphone
from loadtests.recorder import AUDIO_DELTA_EVENTS, TurnRecorder, TurnResult, pcm16_samples, str_or_none
from loadtests.room import Room

ErrorKind = Literal["connect", "timeout", "closed", "server_error", "protocol", "deadline"]
TurnDetectionType = Literal["server_vad", "semantic_vad"]
Eagerness = Literal["low", "medium", "high", "auto"]
TURN_DETECTION_TYPES: tuple[TurnDetectionType, ...] = ("server_vad", "semantic_vad")
EAGERNESS_LEVELS: tuple[Eagerness, ...] = ("low", "medium", "high", "auto")


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """How to reach the server and how patient to be. Every wait is bounded by one of these."""

    url: str
    model: str = "voxgate-cascade"  # sent as ?model= unless the url already has one
    api_key: str | None = None  # sent as `Authorization: Bearer ...`
    beta: bool = False  # speak the beta dialect (`OpenAI-Beta: realtime=v1`)
    # what `session.update` asks for; all None: keep the server's turn detection as is
    turn_detection: TurnDetectionType | None = None  # None: server_vad if silence_duration_ms
    silence_duration_ms: int | None = None  # server_vad's; None: the server's
    eagerness: Eagerness | None = None  # semantic_vad's; None: the server's
    instructions: str | None = None  # sent in session.update if set
    max_output_tokens: int | None = None  # likewise (beta: max_response_output_tokens)
    frame_ms: int = 20
    lead_silence_ms: int = 500  # silence before the first turn
    pause_ms: int = 1000  # silence after a reply ends, before the next turn
    connect_timeout_s: float = 10.0  # TCP + websocket handshake
    event_timeout_s: float = 10.0  # session.created, session.updated
    reply_timeout_s: float = 30.0  # from the end of an utterance's audio to its response.done
    transcript_grace_s: float = 2.0  # after response.done, wait this long for a user transcript
    deadline_s: float = 600.0  # the whole session, connection to close

    def __post_init__(self) -> None:
        semantic = self.turn_detection == "semantic_vad"
        if semantic and self.silence_duration_ms is not None:
            raise ValueError("semantic_vad has no silence_duration_ms; it is server_vad's")
        if not semantic and self.eagerness is not None:
            raise ValueError("eagerness is semantic_vad's; set turn_detection='semantic_vad'")


@dataclass(frozen=True, slots=True)
class BargeInPlan:
    """Speak `utterance` over the reply once `after_ms` of it has been heard. With
    `expects_reply` False (a backchannel, a noise: nothing to answer), the turn does not wait
    for a reply to it beyond `reply_grace_s` after its last frame (see the module docstring)."""

    utterance: Utterance
    after_ms: int = 500
    expects_reply: bool = True
    reply_grace_s: float = 3.0


@dataclass(frozen=True, slots=True)
class TurnPlan:
    utterance: Utterance
    barge_in: BargeInPlan | None = None
    pause_ms: int | None = None  # silence after this turn's reply; None: SessionOptions.pause_ms
    # after the reply's response.done, keep recording this long: a server announces the
    # speech_started of a barge-in just after the cancellation it caused
    linger_ms: int = 0


@dataclass(frozen=True, slots=True)
class SessionError:
    kind: ErrorKind
    message: str
    at_ms: float  # since the session began connecting
    turn: int | None = None
    code: str | None = None  # the server's error.code, for server_error


@dataclass(slots=True)
class SessionResult:
    url: str
    session_id: str | None = None  # from session.created
    silence_duration_ms: int | None = None  # the server VAD's, as set or announced; None: semantic
    turn_detection_sent: dict[str, Any] | None = None  # in session.update; None: nothing sent
    turn_detection: dict[str, Any] | None = None  # as session.updated (else .created) announced it
    turns: list[TurnResult] = field(default_factory=list)
    errors: list[SessionError] = field(default_factory=list)
    connect_ms: float | None = None  # connecting to session.created
    # a server that spoke first (a session greeting), heard out before the first turn: its
    # response.created -> response.done; None: it waited for the caller
    greeting_ms: float | None = None
    duration_s: float = 0.0
    frames_sent: int = 0
    late_frames: int = 0  # frames the microphone sent more than one frame late
    max_frame_lateness_ms: float = 0.0  # > 20 ms means this client, not the server, lagged


# --- the session --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Received:
    t: float
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Closed:
    t: float
    code: int | None
    reason: str


class _Abort(Exception):
    """The session cannot go on; the cause is already in SessionResult.errors."""


async def run_session(
    options: SessionOptions,
    turns: Sequence[TurnPlan],
    *,
    result: SessionResult | None = None,
    stop: asyncio.Event | None = None,
    room: Room | None = None,
) -> SessionResult:
    """Run the turns in one session; see the module docstring. Never hangs, never raises on
    server misbehaviour: failures end up in `SessionResult.errors`.

    `result`, if given, is filled in (and returned) as the session goes; `stop`, once set,
    lets the current turn finish and starts no other. `room`, if given, is what the microphone
    hears besides the caller (its origin should be about now: the session's monotonic clock)."""
    runner = _SessionRunner(options, result, stop, room)
    await runner.run(turns)
    return runner.result


def session_url(url: str, model: str) -> str:
    """`url` with `model=...` added to its query unless it already names one."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key == "model" for key, _ in query):
        query.append(("model", model))
    return urlunsplit(parts._replace(query=urlencode(query)))


def turn_detection_of(session: object) -> dict[str, Any] | None:
    """The `turn_detection` object of a session object (GA or beta shape), if it has one."""
    if not isinstance(session, dict):
        return None
    audio = session.get("audio")
    detection = session.get("turn_detection")
    if isinstance(audio, dict) and isinstance(audio.get("input"), dict):
        detection = audio["input"].get("turn_detection", detection)
    return detection if isinstance(detection, dict) else None


def silence_duration_of(session: object) -> int | None:
    """`silence_duration_ms` of a session object (GA or beta shape), if it has server VAD:
    None for semantic VAD, which ends a turn after no fixed silence."""
    detection = turn_detection_of(session)
    if detection is None or detection.get("type", "server_vad") != "server_vad":
        return None
    value = detection.get("silence_duration_ms")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def turn_detection_request(options: SessionOptions) -> dict[str, Any] | None:
    """The `turn_detection` object that `session.update` sends, or None to send no update.

    `semantic_vad` goes as `{"type": "semantic_vad", "eagerness": ...}` (eagerness only if
    set); `server_vad` (asked for, or implied by a `silence_duration_ms`) as `{"type":
    "server_vad", "silence_duration_ms": ...}` (the silence only if set).
    """
    if options.turn_detection == "semantic_vad":
        detection: dict[str, Any] = {"type": "semantic_vad"}
        if options.eagerness is not None:
            detection["eagerness"] = options.eagerness
        return detection
    if options.turn_detection is None and options.silence_duration_ms is None:
        return None
    detection = {"type": "server_vad"}
    if options.silence_duration_ms is not None:
        detection["silence_duration_ms"] = options.silence_duration_ms
    return detection


def session_update(
    turn_detection: dict[str, Any] | None,
    beta: bool,
    instructions: str | None = None,
    max_output_tokens: int | None = None,
) -> dict[str, Any]:
    """The `session.update` event setting pcm16 24 kHz audio, `turn_detection` (if not None;
    in the beta dialect `session.turn_detection`, in the GA one
    `session.audio.input.turn_detection`), `instructions` and `max_output_tokens` (beta:
    `max_response_output_tokens`) if not None."""
    if beta:
        session: dict[str, Any] = {"input_audio_format": "pcm16", "output_audio_format": "pcm16"}
        if turn_detection is not None:
            session["turn_detection"] = turn_detection
    else:
        pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE_HZ}
        audio_input: dict[str, Any] = {"format": pcm}
        if turn_detection is not None:
            audio_input["turn_detection"] = turn_detection
        session = {"type": "realtime", "audio": {"input": audio_input, "output": {"format": pcm}}}
    if instructions is not None:
        session["instructions"] = instructions
    if max_output_tokens is not None:
        session["max_response_output_tokens" if beta else "max_output_tokens"] = max_output_tokens
    return {"type": "session.update", "session": session}


class _SessionRunner:
    def __init__(
        self,
        options: SessionOptions,
        result: SessionResult | None,
        stop: asyncio.Event | None,
        room: Room | None = None,
    ) -> None:
        self._options = options
        self._url = session_url(options.url, options.model)
        self.result = result if result is not None else SessionResult(url=self._url)
        self.result.url = self._url
        self._stop = stop
        self._room = room
        self._silence_ms: int | None = options.silence_duration_ms
        self._start = time.monotonic()
        self._events: asyncio.Queue[_Received | _Closed] = asyncio.Queue()
        self._active: list[TurnRecorder] = []
        self._mic: Microphone | None = None
        self._main: TurnRecorder | None = None
        self._mic_task: asyncio.Task[None] | None = None
        self._asked = False  # a turn has begun: responses from now on are replies to turns
        self._greeting_started_s: float | None = None

    def _error(self, kind: ErrorKind, message: str, turn: int | None = None, code: str | None = None) -> None:
        at_ms = (time.monotonic() - self._start) * 1000
        self.result.errors.append(SessionError(kind, message, at_ms, turn, code))

    def _finish_active(self, error: str | None) -> None:
        for recorder in self._active:
            recorder.endpoint_sent_s = self._endpoint_sent_s(recorder)
            self.result.turns.append(recorder.result(error=error))
        self._active = []

    def _endpoint_sent_s(self, recorder: TurnRecorder) -> float | None:
        """When the frame that completed the server's end-of-turn silence was sent."""
        end_ms = recorder.stopped_audio_end_ms
        if end_ms is None or self._silence_ms is None or self._mic is None:
            return None
        return self._mic.sent_s_at(end_ms + self._silence_ms)

    async def run(self, turns: Sequence[TurnPlan]) -> None:
        try:
            async with asyncio.timeout(self._options.deadline_s) as deadline:
                await self._connect_and_run(turns)
        except TimeoutError:
            if not deadline.expired():
                raise
            self._error("deadline", f"the session ran past its {self._options.deadline_s:g} s deadline")
            self._finish_active("deadline")
        finally:
            self.result.duration_s = time.monotonic() - self._start
            if self._mic is not None:
                self.result.frames_sent = self._mic.frames_sent
                self.result.late_frames = self._mic.late_frames
                self.result.max_frame_lateness_ms = self._mic.max_lateness_s * 1000

    async def _connect_and_run(self, turns: Sequence[TurnPlan]) -> None:
        options = self._options
        headers = {}
        if options.api_key:
            headers["Authorization"] = f"Bearer {options.api_key}"
        if options.beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        try:
            ws = await connect(
                self._url,
                additional_headers=headers,
                open_timeout=options.connect_timeout_s,
                close_timeout=2,
                max_size=None,
                compression=None,  # audio does not compress; deflate would only cost CPU on both ends
                proxy=None,
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            self._error("connect", f"cannot connect to {self._url}: {exc!r}")
            return
        async with ws:
            try:
                async with asyncio.TaskGroup() as tasks:
                    reader = tasks.create_task(self._read_loop(ws), name="bench-reader")
                    try:
                        await self._converse(ws, tasks, turns)
                    finally:
                        reader.cancel()
                        if self._mic_task is not None:
                            self._mic_task.cancel()
            except* _Abort:
                pass

    async def _read_loop(self, ws: ClientConnection) -> None:
        try:
            async for message in ws:
                t = time.monotonic()
                try:
                    event = json.loads(message)
                except ValueError:
                    event = None
                if not isinstance(event, dict):
                    self._error("protocol", "the server sent a message that is not a JSON object")
                    continue
                if not isinstance(event.get("type"), str):
                    self._error("protocol", "the server sent an event without a type")
                    continue
                if self._room is not None and event["type"] in AUDIO_DELTA_EVENTS:
                    samples = pcm16_samples(event.get("delta"))
                    if samples is not None:
                        self._room.push_reply(samples, t)
                self._events.put_nowait(_Received(t, event))
        except ConnectionClosed:
            pass
        self._events.put_nowait(_Closed(time.monotonic(), ws.close_code, ws.close_reason or ""))

    async def _next_event(self, until_s: float, turn: int | None = None) -> _Received | None:
        """The next event, or None once the monotonic time `until_s` has passed."""
        if self._mic is not None:  # kept current, for a load test's progress lines
            self.result.late_frames = self._mic.late_frames
            self.result.max_frame_lateness_ms = self._mic.max_lateness_s * 1000
        if not self._events.empty():
            item = self._events.get_nowait()
        else:
            timeout = until_s - time.monotonic()
            if timeout <= 0:
                return None
            try:
                item = await asyncio.wait_for(self._events.get(), timeout)
            except TimeoutError:
                return None
        if isinstance(item, _Closed):
            self._error(
                "closed", f"the server closed the connection: {item.code} {item.reason}".strip(), turn
            )
            self._finish_active("closed")
            raise _Abort
        kind = item.event.get("type")
        if not self._asked and kind == "response.created" and self._greeting_started_s is None:
            self._greeting_started_s = item.t  # the server speaks first: a session greeting
        elif (
            not self._asked
            and kind == "response.done"
            and self._greeting_started_s is not None
            and self.result.greeting_ms is None
        ):
            self.result.greeting_ms = (item.t - self._greeting_started_s) * 1000
        error = item.event.get("error") if kind == "error" else None
        if isinstance(error, dict):
            self._error(
                "server_error", str(error.get("message") or ""), turn, code=str_or_none(error.get("code"))
            )
        return item

    async def _expect(self, kind: str) -> _Received:
        until = time.monotonic() + self._options.event_timeout_s
        while True:
            item = await self._next_event(until)
            if item is None:
                self._error("timeout", f"no {kind} within {self._options.event_timeout_s:g} s")
                raise _Abort
            if item.event.get("type") == kind:
                return item

    async def _converse(
        self, ws: ClientConnection, tasks: asyncio.TaskGroup, turns: Sequence[TurnPlan]
    ) -> None:
        try:
            await self._converse_open(ws, tasks, turns)
        except ConnectionClosed as exc:  # a send of ours found the connection gone
            self._error("closed", f"the connection closed: {exc}")
            self._finish_active("closed")
            raise _Abort from exc

    async def _converse_open(
        self, ws: ClientConnection, tasks: asyncio.TaskGroup, turns: Sequence[TurnPlan]
    ) -> None:
        options = self._options
        created = await self._expect("session.created")
        self.result.connect_ms = (created.t - self._start) * 1000
        session = created.event.get("session")
        if isinstance(session, dict):
            self.result.session_id = str_or_none(session.get("id"))
            self.result.turn_detection = turn_detection_of(session)
            if self._silence_ms is None:
                self._silence_ms = silence_duration_of(session)
        request = turn_detection_request(options)
        extra = (options.instructions, options.max_output_tokens)
        if request is not None or any(value is not None for value in extra):
            self.result.turn_detection_sent = request
            update = session_update(request, options.beta, options.instructions, options.max_output_tokens)
            await ws.send(json.dumps(update))
            updated = await self._expect("session.updated")
            announced = updated.event.get("session")
            self.result.turn_detection = turn_detection_of(announced) or self.result.turn_detection
            if request is None:
                pass  # the server's turn detection, as session.created announced it
            elif request["type"] == "semantic_vad":
                self._silence_ms = None  # whatever the server echoes, we asked for no fixed silence
            else:
                self._silence_ms = silence_duration_of(announced) or self._silence_ms
        self.result.silence_duration_ms = self._silence_ms
        self._mic = Microphone(ws.send, options.frame_ms, background=self._room)
        self._mic_task = tasks.create_task(self._mic.run(), name="bench-microphone")
        await self._lead_in()
        for index, plan in enumerate(turns):
            if self._stop is not None and self._stop.is_set():
                break
            await self._run_turn(index, plan, self._mic)
            await self._listen((options.pause_ms if plan.pause_ms is None else plan.pause_ms) / 1000)

    async def _lead_in(self) -> None:
        """The silence before the first turn. A server that greets the caller has begun by
        now (its greeting starts as the session is created); it is heard out, as a caller
        would, and the silence is kept again after it."""
        options = self._options
        await self._listen(options.lead_silence_ms / 1000)
        if self._greeting_started_s is None or self.result.greeting_ms is not None:
            return
        until = time.monotonic() + options.reply_timeout_s
        while self.result.greeting_ms is None:
            if await self._next_event(until) is None:
                self._error(
                    "timeout", f"the server's greeting did not end within {options.reply_timeout_s:g} s"
                )
                raise _Abort
        await self._listen(options.lead_silence_ms / 1000)

    async def _listen(self, duration_s: float) -> None:
        """Read (and drop) events for `duration_s`, so errors and closes are still seen."""
        until = time.monotonic() + duration_s
        while await self._next_event(until) is not None:
            pass

    async def _run_turn(self, index: int, plan: TurnPlan, mic: Microphone) -> None:
        options = self._options
        main = TurnRecorder(index, mic.say(plan.utterance), "turn")
        main.linger_s = plan.linger_ms / 1000
        if plan.barge_in is not None:
            main.barge_in_after_ms = plan.barge_in.after_ms
            main.barge_in_expects_reply = plan.barge_in.expects_reply
        self._active = [main]
        self._asked = True
        self._main = main
        deadline = time.monotonic() + plan.utterance.duration_ms / 1000 + options.reply_timeout_s
        while True:
            now = time.monotonic()
            pending = [r for r in self._active if not self._is_finished(r, now)]
            if not pending:
                break
            if now >= deadline:
                waiting = "response.done" if any(not r.is_done for r in pending) else "user transcript"
                self._error(
                    "timeout",
                    f"turn {index}: no {waiting} within {options.reply_timeout_s:g} s of the utterance",
                    index,
                )
                self._finish_active("timeout")
                raise _Abort
            wake = deadline
            for recorder in pending:
                if recorder.done_s is not None:
                    wake = min(wake, recorder.done_s + options.transcript_grace_s)
                    if now < recorder.done_s + recorder.linger_s:
                        wake = min(wake, recorder.done_s + recorder.linger_s)
                unanswered_s = recorder.unanswered_until_s
                if unanswered_s is not None:  # still being spoken (inf): look again soon
                    wake = min(wake, now + 0.1 if math.isinf(unanswered_s) else max(unanswered_s, now + 0.01))
            barge_in = plan.barge_in
            if barge_in is not None and main.interrupter is None and main.first_audio_s is not None:
                if main.is_done:
                    pass  # the reply ended before the barge-in point: nothing to interrupt
                elif now >= main.first_audio_s + barge_in.after_ms / 1000:
                    main.interrupter = mic.say(barge_in.utterance)
                    overlay = TurnRecorder(index, main.interrupter, "interruption")
                    if not barge_in.expects_reply:
                        overlay.reply_grace_s = barge_in.reply_grace_s
                    self._active.append(overlay)
                    deadline = max(
                        deadline, now + barge_in.utterance.duration_ms / 1000 + options.reply_timeout_s
                    )
                    continue
                else:
                    wake = min(wake, main.first_audio_s + barge_in.after_ms / 1000)
            item = await self._next_event(wake, index)
            if item is not None:
                for recorder in self._active:
                    recorder.observe(item.event, item.t)
        self._finish_active(None)

    def _is_finished(self, recorder: TurnRecorder, now: float) -> bool:
        if recorder.done_s is None:
            # an overlay that needs no answer, still unanswered once the reply it talked over ended
            unanswered_s = recorder.unanswered_until_s
            main_done = self._main is not None and self._main.is_done
            return unanswered_s is not None and main_done and now >= unanswered_s
        if now < recorder.done_s + recorder.linger_s:
            return False
        return (
            not recorder.is_missing_transcripts or now >= recorder.done_s + self._options.transcript_grace_s
        )
