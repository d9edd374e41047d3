"""An OmniModel served by an upstream OpenAI-Realtime-compatible websocket (issue 17).

The upstream is OpenAI's GA Realtime API, Azure's, or another Voxgate. Voxgate keeps the edge:
auth, admission, Twilio, server-paced playout and exact truncation, barge-in, histograms. Who
detects the caller's turns is the option `turn_detection`:
- "gateway" (default): the upstream session has `turn_detection: null`, our VAD ends the turn
  (`commit_audio` -> `input_audio_buffer.commit`) and `respond` asks for the reply
  (`response.create`).
- "upstream": the upstream runs its VAD with the client's settings (`voice_detection`:
  server_vad or semantic_vad) but `create_response` and `interrupt_response` false, so it only
  reports: its `speech_started/stopped` become `turn_signals()` (on the session's input clock),
  the conversation announces them, cancels a reply the caller talks over and asks for the
  reply; `commit_audio` adopts the turn the upstream committed instead of committing. The
  session keeps a link up (reconnecting with backoff) while it detects turns: without one
  nobody would hear the caller.

    model = load({"url": "ws://host:8765/v1/realtime", "api_key": "...", "model": "..."}, deadlines)
    session = await model.open(options)   # starts connecting at once, in the background
    session.push_audio(frame)             # -> input_audio_buffer.append, never blocks
    async for t in session.commit_audio(): ...   # -> commit; the upstream's transcript
    async for ev in session.respond(ResponseOptions()): ...   # audio and transcript deltas
    session.truncate_reply(heard_ms)      # -> conversation.item.truncate, audio_end_ms=heard_ms
    await session.aclose()                # the socket and its tasks are closed

Invariants:
- One websocket (a `_Link`) per session at a time, with two owned tasks: a sender draining a
  queue (control events are never dropped; beyond `max_queued_audio_ms` of unsent audio the
  oldest append is dropped and counted) and a reader handing each parsed event to the session,
  whose handler never awaits. Closing the session closes both and the socket.
- A failure (refused, dropped, silent past a deadline, a failed response) ends the response it
  happens in with `BackendError`; the session lives. The next call that needs the upstream
  connects again and replays the history as conversation items (user and assistant text; tool
  calls and results are not replayed), then the audio of the turn in progress.
- The history is a local mirror (`history()`): user turns with the upstream's transcript (""
  if it has none within `transcript_timeout_s`; filled in if it comes later), assistant replies
  with their audio transcript. `truncate_reply` cuts the text by the fraction of the audio the
  caller heard: the upstream sends no word timings, so the kept text is an estimate (the
  upstream's own item is cut exactly, by audio_end_ms).
- No speculative replies: the upstream cannot delete items here (`can_rollback=False`).
- Anticipation: when a reply follows every committed turn (`anticipate_reply`), the commit
  and `response.create` go out together, so waiting for the transcript costs no latency;
  `respond` adopts that response. One never adopted is cancelled and truncated to nothing.
- Tools: the client's functions are passed through (offered upstream, calls yielded as
  ToolCallRequest, outputs sent back); server-side tools of embedding code are not offered.

Stage timings: `asr_final_ms` is commit -> transcript (or its timeout); `llm_first_token_ms`
is response.create -> the upstream's first audio or text (time to first output).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from server.aio import cancel_and_wait
from server.audio import PcmFrame
from server.errors import BackendError, ModelTimeout
from server.model import base
from server.model.backends import realtime_wire as wire
from server.model.base import (
    AudioChunk,
    Capabilities,
    HeardSpeechStart,
    HeardSpeechStop,
    ImageInput,
    Message,
    ReplyEvent,
    ResponseOptions,
    SessionOptions,
    StageTimings,
    ToolCallRequest,
    TranscriptDelta,
    TurnDetectionFailed,
    TurnSignal,
)
from server.model.deadlines import DeadlineIterator, ModelDeadlines
from server.model.phrases import cut_text_to_fraction
from server.model.tool_rounds import insert_tool_result

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CLOSE_TIMEOUT_S = 2.0
# the upstream's VAD: reconnecting after a failure waits this long, doubling up to the maximum
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 10.0
STAGE = "upstream realtime model"


@dataclass(frozen=True, slots=True)
class RealtimeUpstreamOptions:
    """url: the upstream's websocket URL (ws:// or wss://, .../v1/realtime).
    api_key: sent as `Authorization: Bearer` when not empty. model: added as `?model=` unless
    the URL has one. headers: more handshake headers (Azure: {"api-key": "..."}).
    voice: the upstream's voice name ("": its default; a client's Voxgate voice is not sent,
    the names differ). transcription_model: asked of the upstream for user transcripts
    ("": none). turn_detection: "gateway" (our VAD ends the turns) or "upstream" (its VAD, with
    the client's settings; see the module docstring).
    connect_timeout_s: connecting and the handshake. transcript_timeout_s: the wait for a
    turn's transcript after the commit. max_queued_audio_ms: unsent audio kept when the
    upstream reads slowly. max_turn_audio_ms: audio of the turn in progress kept for a replay
    after a reconnect."""

    url: str
    api_key: str = ""
    model: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    voice: str = ""
    transcription_model: str = "whisper-1"
    turn_detection: Literal["gateway", "upstream"] = "gateway"
    connect_timeout_s: float = 5.0
    transcript_timeout_s: float = 3.0
    max_queued_audio_ms: int = 5_000
    max_turn_audio_ms: int = 30_000

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> RealtimeUpstreamOptions:
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown realtime backend options: {', '.join(unknown)}")
        url = options.get("url")
        if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
            raise ValueError(f"realtime backend option 'url' must be a ws:// or wss:// URL, not {url!r}")
        headers = options.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("realtime backend option 'headers' must map names to strings")
        turns = options.get("turn_detection", "gateway")
        if turns not in ("gateway", "upstream"):
            raise ValueError(
                f"realtime backend option 'turn_detection' must be 'gateway' (Voxgate's VAD) or"
                f" 'upstream' (the upstream's), not {turns!r}"
            )
        d = cls(url=url)
        return cls(
            url=url,
            api_key=_opt(options, "api_key", str, d.api_key),
            model=_opt(options, "model", str, d.model),
            headers=dict(headers),
            turn_detection="upstream" if turns == "upstream" else "gateway",
            voice=_opt(options, "voice", str, d.voice),
            transcription_model=_opt(options, "transcription_model", str, d.transcription_model),
            connect_timeout_s=float(_opt(options, "connect_timeout_s", (int, float), d.connect_timeout_s)),
            transcript_timeout_s=float(
                _opt(options, "transcript_timeout_s", (int, float), d.transcript_timeout_s)
            ),
            max_queued_audio_ms=int(_opt(options, "max_queued_audio_ms", int, d.max_queued_audio_ms)),
            max_turn_audio_ms=int(_opt(options, "max_turn_audio_ms", int, d.max_turn_audio_ms)),
        )

    def connect_url(self) -> str:
        parts = urlsplit(self.url)
        query = parse_qsl(parts.query)
        if self.model and not any(k == "model" for k, _ in query):
            query.append(("model", self.model))
        return urlunsplit(parts._replace(query=urlencode(query)))

    def connect_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def _opt(options: Mapping[str, object], name: str, kind: Any, default: Any) -> Any:
    value = options.get(name, default)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"realtime backend option {name!r} has the wrong type: {value!r}")
    return value


def load(
    options: Mapping[str, object] | None, deadlines: ModelDeadlines | None = None
) -> RealtimeUpstreamModel:
    """Build the model; nothing is contacted until a session opens."""
    if not options or "url" not in options:
        raise ValueError(
            'the realtime profile needs VOXGATE_BACKEND_OPTIONS=\'{"realtime": {"url": "ws://.../v1/realtime"}}\''
        )
    return RealtimeUpstreamModel(RealtimeUpstreamOptions.from_mapping(options), deadlines or ModelDeadlines())


class RealtimeUpstreamModel:
    """Shared by every session of the profile; each `open()` gets its own upstream socket."""

    def __init__(self, options: RealtimeUpstreamOptions, deadlines: ModelDeadlines) -> None:
        self.options = options
        self.deadlines = deadlines
        self.capabilities = Capabilities(
            input_sample_rate_hz=wire.AUDIO_RATE_HZ,
            output_sample_rate_hz=wire.AUDIO_RATE_HZ,
            accepts_images=True,  # passed on as input_image parts; the upstream model decides
            can_rollback=False,
        )

    async def open(self, options: SessionOptions) -> RealtimeUpstreamSession:
        session = RealtimeUpstreamSession(self, options)
        session.start_connecting()
        return session


# --- the socket --------------------------------------------------------------------------


async def connect(options: RealtimeUpstreamOptions) -> websockets.ClientConnection:
    """Open the upstream websocket; `BackendError` saying why not (never the key)."""
    url = options.connect_url()
    where = urlunsplit(urlsplit(url)._replace(query=""))
    try:
        async with asyncio.timeout(options.connect_timeout_s):
            return await websockets.connect(
                url,
                additional_headers=options.connect_headers(),
                max_size=None,
                open_timeout=None,  # ours above
                ping_interval=None,  # a reply in flight is the liveness we need
                compression=None,
            )
    except InvalidStatus as exc:
        status = exc.response.status_code
        body = (
            " ".join(exc.response.body.decode("utf-8", "replace").split())[:200] if exc.response.body else ""
        )
        raise BackendError(
            f"the upstream {where} refused the connection: HTTP {status}" + (f": {body}" if body else ""),
            retryable=status in RETRYABLE_STATUS,
        ) from exc
    except TimeoutError as exc:
        raise BackendError(
            f"timed out connecting to the upstream {where} after {options.connect_timeout_s} s",
            retryable=True,
        ) from exc
    except (OSError, InvalidHandshake, InvalidURI) as exc:
        raise BackendError(f"cannot connect to the upstream {where}: {exc}", retryable=True) from exc


class _Link:
    """One upstream websocket and its two tasks. `lost` holds why it ended (None: still up,
    or closed by us)."""

    def __init__(
        self,
        ws: websockets.ClientConnection,
        on_event: Callable[[_Link, wire.UpstreamEvent], None],
        on_lost: Callable[[_Link, BackendError], None],
        max_queued_audio_ms: int,
    ) -> None:
        self._ws = ws
        self._on_event = on_event
        self._on_lost = on_lost
        self._max_audio_ms = max_queued_audio_ms
        self._queue: deque[tuple[str, float]] = deque()  # (json text, its audio ms)
        self._queued_audio_ms = 0.0
        self._wakeup = asyncio.Event()
        self._closing = False
        self.lost: BackendError | None = None
        self.dropped_audio_ms = 0.0
        # the session's input ms at the upstream's audio ms 0 (its times are this socket's)
        self.audio_base_ms = 0.0
        self._sender = asyncio.create_task(self._send_loop(), name="realtime-upstream-sender")
        self._reader = asyncio.create_task(self._read_loop(), name="realtime-upstream-reader")

    @property
    def is_up(self) -> bool:
        return self.lost is None and not self._closing

    def send_nowait(self, event: dict[str, Any]) -> None:
        if self.is_up:
            self._queue.append((_dumps(event), 0.0))
            self._wakeup.set()

    def send_audio_nowait(self, pcm: bytes, duration_ms: float) -> None:
        if not self.is_up:
            return
        self._queue.append((_dumps(wire.append_event(pcm)), duration_ms))
        self._queued_audio_ms += duration_ms
        while self._queued_audio_ms > self._max_audio_ms:  # the upstream reads too slowly
            for i, (_, ms) in enumerate(self._queue):
                if ms:
                    del self._queue[i]
                    self._queued_audio_ms -= ms
                    self.dropped_audio_ms += ms
                    break
        self._wakeup.set()

    async def _send_loop(self) -> None:
        try:
            while True:
                while not self._queue:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                text, ms = self._queue.popleft()
                self._queued_audio_ms -= ms
                await self._ws.send(text)
        except ConnectionClosed as exc:
            self._lose(BackendError(f"the upstream connection closed: {_why(exc)}", retryable=True))

    async def _read_loop(self) -> None:
        try:
            async for message in self._ws:
                event = wire.parse_upstream_event(message)
                if event is not None:
                    self._on_event(self, event)
            why = _why_closed(self._ws)
            self._lose(BackendError(f"the upstream connection closed: {why}", retryable=True))
        except ConnectionClosed as exc:
            self._lose(BackendError(f"the upstream connection closed: {_why(exc)}", retryable=True))
        except BackendError as exc:  # the upstream broke the protocol: this socket is no use
            self._lose(exc)

    def _lose(self, failure: BackendError) -> None:
        if self.lost is not None or self._closing:
            return
        self.lost = failure
        self._on_lost(self, failure)

    async def aclose(self) -> None:
        self._closing = True
        current = asyncio.current_task()
        for task in (self._sender, self._reader):
            if task is not current:
                await cancel_and_wait(task, _CLOSE_TIMEOUT_S)
        with contextlib.suppress(Exception):  # the socket may be broken already
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._ws.close()


def say_instructions(text: str) -> str:
    """A response's instructions that ask the upstream model to speak `text` as it is: its
    API takes no words to speak, only instructions (ResponseOptions.say; it may still vary)."""
    return f'Say exactly the following to the caller, word for word, and nothing else: "{text}"'


def _dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def _why(exc: ConnectionClosed) -> str:
    frame = exc.rcvd
    return "without a close frame" if frame is None else f"code {frame.code} {frame.reason}".strip()


def _why_closed(ws: websockets.ClientConnection) -> str:
    frame = ws.protocol.close_rcvd
    return "without a close frame" if frame is None else f"code {frame.code} {frame.reason}".strip()


# --- one response ------------------------------------------------------------------------


_End = wire.ResponseDone
_Item = wire.AudioDelta | wire.TextDelta | wire.FunctionCalled | wire.ResponseDone | BackendError


@dataclass(slots=True)
class _Response:
    """A response asked of (or started by) the upstream; its items queue until read."""

    link: _Link
    with_audio: bool
    instructions: str | None
    response_id: str | None = None
    item_id: str | None = None
    items: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    done: bool = False


@dataclass(slots=True)
class _ReplyRecord:
    """The last reply in the mirror: its message, its upstream item, how much audio it had."""

    message: Message
    link: _Link | None = None
    item_id: str | None = None
    audio_ms: float = 0.0
    transcript: str = ""


# --- the session -------------------------------------------------------------------------


class RealtimeUpstreamSession:
    def __init__(self, model: RealtimeUpstreamModel, options: SessionOptions) -> None:
        self._model = model
        self._opts = model.options
        self.capabilities = model.capabilities
        self.options = options
        self.timings = StageTimings()
        self._history: list[Message] = []
        self._turn_audio: deque[bytes] = deque()  # the uncommitted turn's audio, for a replay
        self._turn_audio_ms = 0.0
        self._link: _Link | None = None
        self._connecting: asyncio.Task[_Link] | None = None
        self._commit: asyncio.Future[str] | None = None  # the committed item's id
        self._transcripts: dict[str, asyncio.Future[str]] = {}  # by user item id
        self._user_items: dict[str, Message] = {}  # user audio items awaiting their transcript
        self._requested: deque[_Response] = deque()  # response.create sent, response.created not yet
        self._responses: dict[str, _Response] = {}  # by response id, until response.done
        self._anticipated: _Response | None = None
        self._last_reply: _ReplyRecord | None = None
        self._ids = itertools.count(1)
        self._closed = False
        # the upstream's VAD (detects_turns)
        self._pushed_ms = 0.0  # all audio pushed: the session's input clock
        self._signals: asyncio.Queue[TurnSignal | None] = asyncio.Queue()  # None: the link was lost
        self._model_commit: str | None = None  # the upstream's last commit, not yet adopted
        self._awaiting_model_commit = False  # it said the speech stopped; its commit follows
        chosen = options.model_detects_turns
        self._detects_turns = self._opts.turn_detection == "upstream" if chosen is None else chosen

    # -- the link

    def start_connecting(self) -> None:
        """Connect in the background now, so the first turn does not wait for it."""
        self._connecting = asyncio.create_task(self._connect(), name="realtime-upstream-connect")

    def _event_id(self, kind: str) -> str:
        return f"vg_{kind}_{next(self._ids)}"

    @property
    def detects_turns(self) -> bool:
        return self._detects_turns

    async def _connect(self, old: _Link | None = None) -> _Link:
        if old is not None:
            await old.aclose()
        ws = await connect(self._opts)
        link = _Link(ws, self._on_event, self._on_lost, self._opts.max_queued_audio_ms)
        link.audio_base_ms = self._pushed_ms - self._turn_audio_ms  # where the replay begins
        # no await from here on: no audio or item can slip in between the replay and the link
        link.send_nowait(self._session_update())
        for message in self._history:
            if (
                message.role in ("user", "assistant")
                and (message.text or message.images)
                and not message.tool_calls
            ):
                link.send_nowait(
                    wire.message_item_event(
                        self._event_id("item"), message.role, message.text, message.images
                    )
                )
        for pcm in self._turn_audio:
            link.send_audio_nowait(pcm, len(pcm) / 2 * 1000 / wire.AUDIO_RATE_HZ)
        self._link = link  # from now on push_audio sends to it
        return link

    async def _ensure_link(self) -> _Link:
        """The live link, connecting (and replaying) if there is none; BackendError if the
        upstream cannot be reached or refuses. Callers at the same time share one attempt
        (a caller cancelled while waiting leaves it to the others)."""
        if self._closed:
            raise BackendError("the session is closed")
        link = self._link
        if link is not None and link.is_up:
            return link
        task = self._connecting
        if task is None or task.done():
            if task is not None and not task.cancelled():
                task.exception()  # the last attempt's failure, if any, is superseded by this one
            self._link = None
            task = self._connecting = asyncio.create_task(
                self._connect(old=link), name="realtime-upstream-connect"
            )
        return await asyncio.shield(task)

    def _session_update(self) -> dict[str, Any]:
        o = self.options
        tools = o.tools
        specs = [s for s in tools.specs() if s.client_side] if tools is not None else []
        vad = o.voice_detection if self.detects_turns else None
        return wire.session_update_event(
            instructions=o.instructions,
            voice=self._opts.voice or None,
            transcription_model=self._opts.transcription_model or None,
            tools=specs,
            tool_choice=tools.choice if tools is not None and specs else "auto",
            max_output_tokens=o.max_output_tokens,
            turn_detection=None
            if vad is None
            else wire.turn_detection_config(
                vad.type,
                eagerness=vad.eagerness,
                threshold=vad.threshold,
                prefix_padding_ms=vad.prefix_padding_ms,
                silence_duration_ms=vad.silence_duration_ms,
            ),
        )

    def _on_lost(self, link: _Link, failure: BackendError) -> None:
        log.warning("upstream realtime connection lost", extra={"error": str(failure)})
        if self._commit is not None and not self._commit.done():
            self._commit.set_exception(failure)
        for waiter in self._transcripts.values():
            if not waiter.done():
                waiter.set_result("")
        for response in [*self._requested, *self._responses.values()]:
            if response.link is link and not response.done:
                response.done = True
                response.items.put_nowait(failure)
        self._requested = deque(r for r in self._requested if r.link is not link)
        self._responses = {k: r for k, r in self._responses.items() if r.link is not link}
        self._model_commit = None  # the new socket's upstream never heard of it
        self._awaiting_model_commit = False
        if self.detects_turns:
            self._signals.put_nowait(None)  # turn_signals() reconnects

    def _on_event(self, link: _Link, event: wire.UpstreamEvent) -> None:
        """Route one upstream event (never awaits)."""
        if not link.is_up:
            return  # a link we dropped: its stragglers are not ours
        match event:
            case wire.InputCommitted(item_id=item_id):
                self._awaiting_model_commit = False
                if self._commit is not None and not self._commit.done():
                    if self._opts.transcription_model:  # its transcript may follow at once
                        self._transcripts[item_id] = asyncio.get_running_loop().create_future()
                    self._commit.set_result(item_id)
                elif self.detects_turns:  # its VAD ended a turn: commit_audio adopts it
                    if self._model_commit is not None:  # never adopted (cleared meanwhile)
                        self._transcripts.pop(self._model_commit, None)
                    if self._opts.transcription_model:
                        self._transcripts[item_id] = asyncio.get_running_loop().create_future()
                    self._model_commit = item_id
                    self._forget_turn_audio()
            case wire.SpeechStarted(audio_start_ms=start_ms):
                if self.detects_turns:
                    self._signals.put_nowait(HeardSpeechStart(round(link.audio_base_ms + start_ms)))
            case wire.SpeechStopped(audio_end_ms=end_ms):
                if self.detects_turns:
                    self._awaiting_model_commit = True
                    self._signals.put_nowait(HeardSpeechStop(round(link.audio_base_ms + end_ms)))
            case wire.InputTranscribed(item_id=item_id, text=text, failed=failed):
                if failed:
                    log.warning("the upstream could not transcribe a turn", extra={"item_id": item_id})
                message = self._user_items.pop(item_id, None)
                if message is not None and not message.text:
                    message.text = text.strip()  # came after the wait: the mirror still gets it
                waiter = self._transcripts.get(item_id)
                if waiter is not None and not waiter.done():
                    waiter.set_result(text.strip())
            case wire.ResponseCreated(response_id=response_id):
                response = self._requested.popleft() if self._requested else None
                if response is None:
                    return  # not one we asked for (its events are ignored)
                response.response_id = response_id
                self._responses[response_id] = response
            case wire.MessageAdded(response_id=rid, item_id=item_id):
                response = self._responses.get(rid)
                if response is not None and response.item_id is None:
                    response.item_id = item_id
            case wire.AudioDelta() | wire.TextDelta() | wire.FunctionCalled():
                response = self._responses.get(event.response_id)
                if response is not None:
                    response.items.put_nowait(event)
            case wire.ResponseDone(response_id=rid):
                response = self._responses.pop(rid, None)
                if response is not None:
                    response.done = True
                    response.items.put_nowait(event)
            case wire.ErrorReported(code=code, message=message, event_id=event_id):
                self._on_error(code, message, event_id)

    def _on_error(self, code: str, message: str, event_id: str | None) -> None:
        failure = BackendError(f"the upstream realtime model reported an error ({code}): {message}")
        kind = event_id.split("_")[1] if event_id and event_id.startswith("vg_") else None
        if kind == "commit" and self._commit is not None and not self._commit.done():
            self._commit.set_exception(failure)
            return
        if kind == "response" and self._requested:
            response = self._requested.popleft()
            response.done = True
            response.items.put_nowait(failure)
            return
        log.warning("upstream realtime error", extra={"code": code, "error_message": message, "kind": kind})

    # -- input

    def update(self, options: SessionOptions) -> None:
        self.options = options
        if self._link is not None:
            self._link.send_nowait(self._session_update())

    def _forget_turn_audio(self) -> None:
        """The turn in progress was committed or cleared: a reconnect replays none of it."""
        self._turn_audio.clear()
        self._turn_audio_ms = 0.0

    def push_audio(self, frame: PcmFrame) -> None:
        pcm = frame.to_bytes()
        self._pushed_ms += frame.duration_ms
        self._turn_audio.append(pcm)
        self._turn_audio_ms += frame.duration_ms
        while self._turn_audio_ms > self._opts.max_turn_audio_ms and len(self._turn_audio) > 1:
            self._turn_audio_ms -= len(self._turn_audio.popleft()) / 2 * 1000 / wire.AUDIO_RATE_HZ
        if self._link is not None:
            self._link.send_audio_nowait(pcm, frame.duration_ms)

    async def clear_audio(self) -> None:
        self._forget_turn_audio()
        if self._model_commit is not None:  # a turn the client threw away
            self._transcripts.pop(self._model_commit, None)
            self._model_commit = None
        if self._link is not None:
            self._link.send_nowait(wire.clear_event())

    async def commit_audio(self) -> AsyncIterator[TranscriptDelta]:
        """Commit the turn (gateway VAD, or the client's own commit); with the upstream's VAD,
        adopt the turn the upstream committed itself (its commit may still be on its way)."""
        started = time.perf_counter()
        await self._drop_anticipated()
        link = await self._ensure_link()
        loop = asyncio.get_running_loop()
        self._commit = loop.create_future()
        adopted, self._model_commit = self._model_commit, None
        if adopted is not None:
            self._commit.set_result(adopted)
        elif not self._awaiting_model_commit:
            link.send_nowait(wire.commit_event(self._event_id("commit")))
            self._forget_turn_audio()
        # a reply follows: ask for it now (module docstring), but after the commit, so with the
        # upstream's VAD only once its commit is known
        ask_after_commit = self.detects_turns and adopted is None
        if self.options.anticipate_reply and not ask_after_commit:
            self._anticipated = self._request(link, with_audio=True, instructions=None)
        try:
            async with asyncio.timeout(self._model.deadlines.asr_final_timeout_s) as deadline:
                item_id = await self._commit
            if self.options.anticipate_reply and ask_after_commit:
                self._anticipated = self._request(link, with_audio=True, instructions=None)
        except TimeoutError as exc:
            await self._drop_anticipated()
            if deadline.expired():
                raise ModelTimeout(STAGE, self._model.deadlines.asr_final_timeout_s) from exc
            raise
        except BaseException:
            await self._drop_anticipated()
            raise
        finally:
            self._commit = None
        message = Message("user", "")
        self._history.append(message)
        text = ""
        if self._opts.transcription_model:
            self._user_items[item_id] = message
            waiter = self._transcripts.get(item_id) or loop.create_future()
            try:
                async with asyncio.timeout(self._opts.transcript_timeout_s):
                    text = await asyncio.shield(waiter)
            except TimeoutError:
                log.info(
                    "no upstream transcript in time; the turn goes on without", extra={"item_id": item_id}
                )
            finally:
                self._transcripts.pop(item_id, None)
            if text:
                message.text = text
                self._user_items.pop(item_id, None)
        self.timings.asr_final_ms = (time.perf_counter() - started) * 1000
        yield TranscriptDelta(text, is_final=True)

    def add_user_text(self, text: str, images: Sequence[ImageInput] = ()) -> None:
        self._history.append(Message("user", text, images=tuple(images)))
        if self._link is not None:
            self._link.send_nowait(wire.message_item_event(self._event_id("item"), "user", text, images))

    def add_assistant_text(self, text: str) -> None:
        self._history.append(Message("assistant", text))
        self._last_reply = None
        if self._link is not None:
            self._link.send_nowait(wire.message_item_event(self._event_id("item"), "assistant", text))

    def add_system_text(self, text: str) -> None:
        self._history.append(Message("system", text))
        if self._link is not None:
            self._link.send_nowait(wire.message_item_event(self._event_id("item"), "system", text))

    def add_function_call(self, call: ToolCallRequest) -> None:
        self._history.append(Message("assistant", "", tool_calls=(call,)))
        self._last_reply = None
        if self._link is not None:
            self._link.send_nowait(wire.function_call_event(self._event_id("item"), call))

    def add_tool_result(self, call_id: str, output: str) -> None:
        insert_tool_result(self._history, Message("tool", output, tool_call_id=call_id))
        if self._link is not None:
            self._link.send_nowait(wire.function_output_event(self._event_id("item"), call_id, output))

    def history(self) -> Sequence[Message]:
        return tuple(self._history)

    def checkpoint(self) -> int:
        return len(self._history)

    def rollback(self, checkpoint: int) -> None:
        """Only the mirror forgets (can_rollback is False: the conversation never asks)."""
        del self._history[checkpoint:]

    # -- output

    def _request(self, link: _Link, *, with_audio: bool, instructions: str | None) -> _Response:
        response = _Response(link, with_audio, instructions)
        self._requested.append(response)
        link.send_nowait(
            wire.response_create_event(
                self._event_id("response"), with_audio=with_audio, instructions=instructions
            )
        )
        return response

    async def _drop_anticipated(self) -> None:
        """A response asked for at a commit but never adopted: stop it; none of it was heard."""
        response, self._anticipated = self._anticipated, None
        if response is not None:
            self._cancel_upstream(response, heard_ms=0)

    def _cancel_upstream(self, response: _Response, heard_ms: int | None) -> None:
        link = response.link
        if not link.is_up:
            return
        if not response.done:
            link.send_nowait(wire.response_cancel_event(self._event_id("cancel"), response.response_id))
        if heard_ms is not None and response.item_id is not None:
            link.send_nowait(wire.truncate_event(self._event_id("truncate"), response.item_id, heard_ms))

    async def respond(self, options: ResponseOptions) -> AsyncIterator[ReplyEvent]:
        instructions = options.instructions if options.say is None else say_instructions(options.say)
        response, self._anticipated = self._anticipated, None
        if response is not None and not (
            response.link.is_up and response.with_audio == options.with_audio and instructions is None
        ):
            self._cancel_upstream(response, heard_ms=0)
            response = None
        started = time.perf_counter()
        if response is None:
            link = await self._ensure_link()
            response = self._request(link, with_audio=options.with_audio, instructions=instructions)
        self.timings = StageTimings(asr_final_ms=self.timings.asr_final_ms)
        record = _ReplyRecord(Message("assistant", ""), link=response.link)
        self._history.append(record.message)
        self._last_reply = record
        deadlines = self._model.deadlines
        items = DeadlineIterator(
            _QueueItems(response.items),
            stage=STAGE,
            first_item_s=deadlines.llm_first_token_timeout_s,
            gap_s=deadlines.llm_token_gap_timeout_s,
        )
        finished = False
        try:
            async for item in items:
                if self.timings.llm_first_token_ms is None:
                    self.timings.llm_first_token_ms = (time.perf_counter() - started) * 1000
                record.item_id = record.item_id or response.item_id
                match item:
                    case BackendError():
                        raise item
                    case wire.AudioDelta(pcm=pcm):
                        frame = PcmFrame.from_bytes(pcm, wire.AUDIO_RATE_HZ)
                        record.audio_ms += frame.duration_ms
                        yield AudioChunk(frame)
                    case wire.TextDelta(text=text):
                        record.transcript += text
                        record.message.text = record.transcript
                        yield base.TextDelta(text)
                    case wire.FunctionCalled(call_id=call_id, name=name, arguments_json=arguments):
                        call = ToolCallRequest(call_id, name, arguments)
                        record.message.tool_calls = (*record.message.tool_calls, call)
                        yield call
                    case wire.ResponseDone(status=status, error=error):
                        if status == "failed":
                            raise BackendError(f"the upstream realtime model failed the response: {error}")
                        finished = True
                        break
        except ModelTimeout:
            # a silent upstream: the next response gets a fresh connection
            await self._drop_link(response.link)
            raise
        finally:
            record.item_id = record.item_id or response.item_id
            if not finished:
                self._cancel_upstream(response, heard_ms=None)
                response.done = True
                if response.response_id is not None:
                    self._responses.pop(response.response_id, None)
                with contextlib.suppress(ValueError):
                    self._requested.remove(response)
            if not record.message.text and not record.message.tool_calls and not record.audio_ms:
                with contextlib.suppress(ValueError):
                    self._history.remove(record.message)

    async def _drop_link(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        link._lose(BackendError("dropped after a deadline", retryable=True))
        await link.aclose()

    def truncate_reply(self, heard_ms: int) -> str:
        """Cut the last reply to what was heard: upstream exactly (audio_end_ms), in the
        mirror by the heard fraction of the audio (an estimate: no word timings upstream)."""
        record = self._last_reply
        if record is None:
            return ""
        audio_end_ms = max(0, min(heard_ms, int(record.audio_ms)))
        full = record.transcript
        fraction = audio_end_ms / record.audio_ms if record.audio_ms else 0.0
        text = cut_text_to_fraction(full, fraction)
        record.message.text = text
        record.message.interrupted = text != full
        if not text and not record.message.tool_calls and record.message in self._history:
            self._history.remove(record.message)
        link = record.link
        if link is not None and link is self._link and link.is_up and record.item_id is not None:
            link.send_nowait(wire.truncate_event(self._event_id("truncate"), record.item_id, audio_end_ms))
        return text

    async def turn_signals(self) -> AsyncIterator[TurnSignal]:
        """The upstream's speech signals (detects_turns), keeping a link up meanwhile: a lost
        or refused one is reported (TurnDetectionFailed) and tried again with backoff."""
        delay_s = RECONNECT_FIRST_S
        while not self._closed:
            try:
                await self._ensure_link()
            except BackendError as exc:
                yield TurnDetectionFailed(str(exc))
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RECONNECT_MAX_S)
                continue
            delay_s = RECONNECT_FIRST_S
            while (signal := await self._signals.get()) is not None:
                yield signal

    async def aclose(self) -> None:
        self._closed = True
        task, self._connecting = self._connecting, None
        await cancel_and_wait(task, _CLOSE_TIMEOUT_S)
        link, self._link = self._link, None  # (set by a connect that finished before the cancel)
        if link is not None:
            await link.aclose()
        if self._commit is not None and not self._commit.done():
            self._commit.cancel()
        for waiter in self._transcripts.values():
            waiter.cancel()


class _QueueItems(AsyncIterator[_Item]):
    """A response's items as they arrive (a plain iterator: nothing to finalize)."""

    def __init__(self, queue: asyncio.Queue[_Item]) -> None:
        self._queue = queue

    def __aiter__(self) -> _QueueItems:
        return self

    async def __anext__(self) -> _Item:
        return await self._queue.get()
