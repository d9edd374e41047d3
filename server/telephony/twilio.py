"""TwilioMediaStream: a conversation's `ClientPort` for Twilio Media Streams.

Twilio's messages become the conversation's typed commands, and its outputs become Twilio's
media, marks and clears, directly: no OpenAI Realtime JSON in between (one JSON parse per
inbound frame, one JSON encoding per outbound one, both at this edge).

Order of calls: `await stream.start()` reads `connected`/`start` and returns the call's
`StreamStart`; hand the stream to a `Conversation` as its transport and run it; `await
stream.aclose()` when the conversation returns. `stream.violation` then says whether the stream
ended on bad input (the route picks the close code), `stream.stopped` whether Twilio said
`stop`.

Inbound, Twilio -> conversation (pulled by the conversation's reader through `receive()`):
- `connected`: dropped. `start`: the call's settings (`call_settings`: mu-law in and out, server
  VAD that may interrupt, plus `instructions` and `voice` from customParameters if present),
  applied as the conversation opens (`opening_settings`).
- `media`: `AppendAudio` with the decoded mu-law bytes.
- `dtmf` (option `dtmf="message"`): keys are gathered until `#` or `dtmf_pause_ms` without a
  key, then become a user text "[DTMF 12#]" and a `CreateResponse`; a reply that is being
  spoken is cut first, as if the caller had spoken. With `dtmf="ignore"` keys are dropped.
- `mark`: fed to the MarkLedger, which keeps the caller's played position.
- `stop`: the transport closes; the conversation ends cleanly.
- An unknown event is ignored (debug log): Twilio adds events over time.
- Anything else malformed ends the stream (see `violation`): a binary frame, bad JSON, a known
  event with missing fields, media/dtmf/mark before `start`, a second `start`, an unsupported
  media format, a payload that is not base64, a streamSid other than the call's, or no
  `start` within `start_timeout_s`.

Outbound, conversation -> Twilio (pushed through `send()`):
- `ResponseAudio` -> `media` (already mu-law: the session's output format) and a `mark` named
  "<item id>@<ms of the item's audio up to here>".
- `ResponseEnded` (cancelled), `ItemTruncated`, or `SpeechStarted`, while audio is still queued
  at Twilio -> `clear`, and a `TruncateItem` back to the conversation with `audio_end_ms` = the
  item's played position as proven by returned marks (mark_ledger.py explains why marks
  returning after the clear do not count). It overrides the server's own estimate, which
  assumes the client plays audio the moment it is sent.
- `Failed` is logged; every other output has no Twilio message and is dropped here.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.aio import cancel_and_wait
from server.audio import AudioFormat, Encoding
from server.errors import ProtocolViolation
from server.streaming.commands import (
    AddUserText,
    AppendAudio,
    CancelResponse,
    Command,
    CreateResponse,
    TruncateItem,
    UpdateSession,
)
from server.streaming.outputs import (
    Failed,
    ItemTruncated,
    Output,
    ResponseAudio,
    ResponseEnded,
    ResponseStarted,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
)
from server.streaming.port import SessionView, TextTransport, TransportClosed
from server.streaming.session_config import SessionConfig, TurnDetectionConfig
from server.telephony.mark_ledger import MarkLedger
from server.telephony.twilio_signature import is_valid_signature, stream_url
from server.telephony.twilio_wire import (
    SAMPLE_RATE_HZ,
    Connected,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    TwilioEvent,
    UnknownEvent,
    check_digit,
    check_start,
    clear_message,
    mark_message,
    media_audio,
    media_message,
    parse_twilio_event,
)

log = logging.getLogger(__name__)

DtmfMode = Literal["message", "ignore"]
MAX_DTMF_DIGITS = 32  # a longer run of keys is sent at once
ULAW_8K = AudioFormat(Encoding.ULAW, SAMPLE_RATE_HZ)


@dataclass(frozen=True, slots=True)
class TwilioOptions:
    dtmf: DtmfMode = "message"
    dtmf_pause_ms: int = 1000  # keys separated by less than this form one message
    start_timeout_s: float = 10.0  # Twilio sends `start` right after `connected`


@dataclass(frozen=True, slots=True)
class StreamStart:
    """What Twilio told us about the call in its `start` event."""

    stream_sid: str
    call_sid: str | None
    account_sid: str | None
    custom_parameters: Mapping[str, str]


def call_settings(config: SessionConfig, parameters: Mapping[str, str]) -> SessionConfig:
    """A call's session settings, from the server's defaults (`config`, not changed): mu-law
    audio both ways, the server's turn detection (server or semantic VAD; server VAD if it
    has none) creating replies that may be interrupted, audio replies, and the `instructions`
    and `voice` customParameters where the TwiML gives them."""
    call = config.copy()
    call.input_format = call.output_format = ULAW_8K
    turn = call.turn_detection or TurnDetectionConfig()
    turn.create_response, turn.interrupt_response = True, True
    call.turn_detection = turn
    call.output_modalities = ["audio"]
    if parameters.get("voice"):
        call.voice = parameters["voice"]
    if "instructions" in parameters:
        call.instructions = parameters["instructions"]
    return call


def upgrade_is_signed(
    headers: Mapping[str, str], scope: Mapping[str, Any], auth_token: str, public_url: str | None
) -> bool:
    """Whether the websocket upgrade carries a valid `X-Twilio-Signature` for its URL."""
    raw_path = scope.get("raw_path") or str(scope.get("path", "")).encode()
    url = stream_url(headers.get("host", ""), raw_path, scope.get("query_string") or b"", public_url)
    return is_valid_signature(auth_token, url, headers.get("x-twilio-signature"))


class TwilioMediaStream:
    """Wraps the websocket's text transport; is itself the conversation's ClientPort."""

    def __init__(
        self, inner: TextTransport, options: TwilioOptions, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._options = options
        self._clock = clock
        self._ledger = MarkLedger(SAMPLE_RATE_HZ)
        self._inbox: deque[Command] = deque()  # commands waiting for the conversation's reader
        self._session: SessionView | None = None
        self._pending: asyncio.Task[str | bytes] | None = None  # the websocket read in progress
        self._wake: asyncio.Future[None] | None = None
        self._ended = False
        self._configured = False  # the conversation confirmed mu-law output
        self._responding = False  # between response.created and response.done
        self._truncated: set[str] = set()  # items we cut; the server's echo is not answered
        self._digits = ""
        self._digits_deadline_s: float | None = None
        self.started: StreamStart | None = None
        self.violation: ProtocolViolation | None = None
        self.stopped = False

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> StreamStart:
        """Read up to Twilio's `start`; raises TransportClosed if the stream ends first."""
        deadline_s = self._clock() + self._options.start_timeout_s
        while self.started is None:
            if self._ended:
                raise TransportClosed
            remaining_s = deadline_s - self._clock()
            if remaining_s <= 0:
                self._fail(
                    ProtocolViolation(
                        f"no start event within {self._options.start_timeout_s:g} s", code="start_timeout"
                    )
                )
                continue
            message = await self._next_message(remaining_s)
            if message is not None:
                self._on_message(message)
        return self.started

    async def aclose(self) -> None:
        """Stop reading the websocket. Idempotent."""
        self._ended = True
        self._inbox.clear()
        pending, self._pending = self._pending, None
        await cancel_and_wait(pending, timeout_s=1.0)

    # --- ClientPort: inbound ----------------------------------------------------------------

    def add_parameters(self, stored: Mapping[str, str]) -> None:
        """Parameters stored for this call beforehand (server/telephony/call_parameters.py),
        under the stream's own customParameters. Call after `start()`, before the session."""
        if self.started is None:
            raise RuntimeError("add_parameters before start()")
        merged = {**stored, **self.started.custom_parameters}
        self.started = dataclasses.replace(self.started, custom_parameters=merged)

    def attach(self, session: SessionView) -> None:
        self._session = session

    def opening_settings(self) -> UpdateSession | None:
        """The call's settings (`call_settings`), applied before the session is announced."""
        if self.started is None or self._session is None:
            return None
        return UpdateSession(call_settings(self._session.config, self.started.custom_parameters))

    async def receive(self) -> Command:
        while True:
            if self._inbox:
                return self._inbox.popleft()
            if self._ended:
                raise TransportClosed
            message = await self._next_message(self._dtmf_wait_s())
            if message is not None:
                self._on_message(message)
            if self._digits_deadline_s is not None and self._clock() >= self._digits_deadline_s:
                await self._flush_digits()

    async def _next_message(self, timeout_s: float | None) -> str | bytes | None:
        """The next websocket message, or None on timeout or when an event was queued for the
        reader. The read itself survives a timeout (a cancelled read could lose a message)."""
        if self._pending is None:
            self._pending = asyncio.create_task(self._inner.receive(), name="twilio-stream-receive")
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wake = wake
        try:
            await asyncio.wait((self._pending, wake), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wake = None
            wake.cancel()
        if not self._pending.done():
            return None
        task, self._pending = self._pending, None
        try:
            return task.result()
        except TransportClosed:
            self._ended = True
            raise

    def _push(self, command: Command, *, first: bool = False) -> None:
        """Queue a command for the conversation's reader; `first` puts it ahead of the queue."""
        if first:
            self._inbox.appendleft(command)
        else:
            self._inbox.append(command)
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._fail(
                ProtocolViolation(
                    "binary frames are not part of Twilio Media Streams; send JSON text",
                    code="binary_frame",
                )
            )
            return
        try:
            self._on_event(parse_twilio_event(message))
        except ProtocolViolation as exc:
            self._fail(exc)

    def _on_event(self, event: TwilioEvent | UnknownEvent) -> None:
        if isinstance(event, UnknownEvent):
            log.debug("unknown twilio event ignored", extra={**self._fields(), "event": event.name})
            return
        if isinstance(event, Connected):
            return
        if isinstance(event, Start):
            self._on_start(event)
            return
        if self.started is None:
            if isinstance(event, Stop):
                self._end_stopped()  # the call ended before its stream began: nothing to serve
                return
            raise ProtocolViolation(f"{event.event} before start", code="not_started", param="event")
        if event.stream_sid != self.started.stream_sid:
            raise ProtocolViolation(
                f"{event.event}: streamSid is not this call's stream", code="invalid_value", param="streamSid"
            )
        match event:
            case Media():
                if event.media.track not in ("inbound", "inbound_track"):
                    return  # a bidirectional stream carries only the caller's track
                self._inbox.append(AppendAudio(media_audio(event)))
            case Dtmf():
                self._on_digit(check_digit(event))
            case Mark():
                if self._ledger.push_returned(event.mark.name) is None:
                    log.debug("unknown mark ignored", extra=self._fields())
            case Stop():
                self._end_stopped()

    def _on_start(self, event: Start) -> None:
        if self.started is not None:
            raise ProtocolViolation("a second start event", code="duplicate_start", param="event")
        check_start(event)
        details = event.start
        self.started = StreamStart(
            stream_sid=event.stream_sid,
            call_sid=details.call_sid,
            account_sid=details.account_sid,
            custom_parameters=dict(details.custom_parameters),
        )
        log.info(
            "twilio stream started",
            extra={**self._fields(), "custom_parameters": sorted(details.custom_parameters)},
        )

    def _end_stopped(self) -> None:
        self.stopped = True
        self._ended = True
        self._inbox.clear()
        log.info("twilio stream stopped", extra=self._fields())

    def _fail(self, violation: ProtocolViolation) -> None:
        self.violation = violation
        self._ended = True
        self._inbox.clear()
        log.warning(
            "twilio stream rejected",
            extra={
                **self._fields(),
                "code": violation.code,
                "param": violation.param,
                "reason": str(violation),
            },
        )

    # --- DTMF ---------------------------------------------------------------------------------

    def _on_digit(self, digit: str) -> None:
        log.info("twilio dtmf", extra=self._fields())  # which key stays out of the logs: PINs
        if self._options.dtmf == "ignore":
            return
        self._digits += digit
        if digit == "#" or len(self._digits) >= MAX_DTMF_DIGITS or self._options.dtmf_pause_ms <= 0:
            self._digits_deadline_s = self._clock()  # due now
        else:
            self._digits_deadline_s = self._clock() + self._options.dtmf_pause_ms / 1000

    def _dtmf_wait_s(self) -> float | None:
        if self._digits_deadline_s is None:
            return None
        return max(0.0, self._digits_deadline_s - self._clock())

    async def _flush_digits(self) -> None:
        digits, self._digits, self._digits_deadline_s = self._digits, "", None
        if not digits:
            return
        if self._responding:
            self._push(CancelResponse())  # a key press interrupts, as speech does
        elif self._ledger.is_playing:
            await self._cut("dtmf")
        self._push(AddUserText(f"[DTMF {digits}]"))
        self._push(CreateResponse())

    # --- ClientPort: outbound -----------------------------------------------------------------

    async def send(self, output: Output) -> None:
        if self._ended:
            raise TransportClosed
        match output:
            case ResponseAudio():
                await self._send_audio(output.item_id, output.audio)
            case SessionCreated() | SessionUpdated():
                self._configured = output.config.output_format == ULAW_8K
                if not self._configured:
                    log.error("session output is not mu-law; call audio is dropped", extra=self._fields())
            case ResponseStarted():
                self._responding = True
            case ResponseEnded():
                self._responding = False
                if output.status == "cancelled":
                    await self._cut("response_cancelled")
            case ItemTruncated():
                await self._on_truncated(output.item_id, output.audio_end_ms)
            case SpeechStarted():
                await self._cut("speech_started")
            case Failed():
                log.warning(
                    "conversation error on a twilio call",
                    extra={**self._fields(), "code": output.code, "reason": output.message},
                )

    async def _send_audio(self, item_id: str, audio: bytes) -> None:
        if not self._configured:
            log.error("reply audio before the session was configured; dropped", extra=self._fields())
            return
        if not self._ledger.accepts(item_id):
            return  # a late chunk of a cleared item: the caller must not hear it
        assert self.started is not None
        samples = len(audio)  # mu-law: one byte per sample
        payload = base64.b64encode(audio).decode("ascii")
        await self._inner.send_text(media_message(self.started.stream_sid, payload))
        name = self._ledger.push_sent(item_id, samples)
        if name is not None:
            await self._inner.send_text(mark_message(self.started.stream_sid, name))

    async def _cut(self, reason: str) -> None:
        """Barge-in: empty Twilio's buffer, and cut the item to what the caller heard."""
        if self.started is None:
            return
        cleared = self._ledger.clear()
        if not cleared:
            return
        await self._inner.send_text(clear_message(self.started.stream_sid))
        for item in cleared:
            log.info(
                "twilio playback cleared",
                extra={
                    **self._fields(),
                    "reason": reason,
                    "item_id": item.item_id,
                    "audio_end_ms": item.played_ms,
                    "sent_ms": item.sent_ms,
                },
            )
            # only the latest item is still the conversation's to truncate
            if item.item_id == self._ledger.last_item_id:
                self._truncate(item.item_id, item.played_ms)

    async def _on_truncated(self, item_id: str, audio_end_ms: int) -> None:
        """The conversation cut an item with its own estimate; answer with the marks' figure."""
        if item_id in self._truncated:
            return  # our own truncation, echoed
        await self._cut("truncated")
        if item_id == self._ledger.last_item_id and item_id not in self._truncated:
            played_ms = self._ledger.played_ms(item_id)
            if played_ms != audio_end_ms:
                self._truncate(item_id, played_ms)

    def _truncate(self, item_id: str, audio_end_ms: int) -> None:
        if item_id in self._truncated:
            return
        self._truncated.add(item_id)
        # ahead of anything queued (a key press's message and response.create): the item must
        # be cut while it is still the conversation's last reply
        self._push(TruncateItem(item_id, 0, audio_end_ms), first=True)

    def _fields(self) -> dict[str, Any]:
        started = self.started
        if started is None:
            return {}
        return {"call_sid": started.call_sid, "stream_sid": started.stream_sid}
