"""TwilioMediaStream: a Conversation `Transport` that speaks Twilio Media Streams outside.

The Conversation is unchanged: it believes it serves an OpenAI Realtime client that asked for
mu-law audio both ways and server VAD. This adapter translates, in both directions.

Order of calls: `await stream.start()` reads `connected`/`start` and returns the call's
`StreamStart`; hand the stream to a `Conversation` as its transport and run it; `await
stream.aclose()` when the conversation returns. `stream.violation` then says whether the stream
ended on bad input (the route picks the close code), `stream.stopped` whether Twilio said
`stop`.

Inbound, Twilio -> conversation (pulled by the conversation's reader through `receive()`):
- `connected`: dropped. `start`: becomes a `session.update` (audio/pcmu in and out, server
  VAD that may interrupt, plus `instructions` and `voice` from customParameters if present).
- `media`: `input_audio_buffer.append` with the same base64 payload (checked first).
- `dtmf` (option `dtmf="message"`): keys are gathered until `#` or `dtmf_pause_ms` without a
  key, then become a user text message "[DTMF 12#]" and a `response.create`; a reply that is
  being spoken is cut first, as if the caller had spoken. With `dtmf="ignore"` keys are dropped.
- `mark`: fed to the MarkLedger, which keeps the caller's played position.
- `stop`: the transport closes; the conversation ends cleanly.
- An unknown event is ignored (debug log): Twilio adds events over time.
- Anything else malformed ends the stream (see `violation`): a binary frame, bad JSON, a known
  event with missing fields, media/dtmf/mark before `start`, a second `start`, an unsupported
  media format, a payload that is not base64, a streamSid other than the call's, or no
  `start` within `start_timeout_s`.

Outbound, conversation -> Twilio (pushed through `send_text()`):
- `response.output_audio.delta` -> `media` (already mu-law: the session's output format) and a
  `mark` named "<item id>@<ms of the item's audio up to here>".
- `response.done` (cancelled), `conversation.item.truncated`, or
  `input_audio_buffer.speech_started`, while audio is still queued at Twilio -> `clear`, and a
  `conversation.item.truncate` back to the conversation with `audio_end_ms` = the item's played
  position as proven by returned marks (mark_ledger.py explains why marks returning after the
  clear do not count). It overrides the server's own estimate, which assumes the client plays
  audio the moment it is sent.
- `error` is logged; every other event is consumed here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.aio import cancel_and_wait
from server.errors import ProtocolViolation
from server.streaming.conversation import Transport, TransportClosed
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
AUDIO_DELTAS = frozenset(("response.output_audio.delta", "response.audio.delta"))
MAX_DTMF_DIGITS = 32  # a longer run of keys is sent at once


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


def call_session(parameters: Mapping[str, str]) -> dict[str, Any]:
    """The `session.update` body for a call: what a Realtime client of Twilio would ask for."""
    output: dict[str, Any] = {"format": {"type": "audio/pcmu"}}
    if parameters.get("voice"):
        output["voice"] = parameters["voice"]
    session: dict[str, Any] = {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcmu"},
                "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
            },
            "output": output,
        },
    }
    if "instructions" in parameters:
        session["instructions"] = parameters["instructions"]
    return session


def upgrade_is_signed(
    headers: Mapping[str, str], scope: Mapping[str, Any], auth_token: str, public_url: str | None
) -> bool:
    """Whether the websocket upgrade carries a valid `X-Twilio-Signature` for its URL."""
    raw_path = scope.get("raw_path") or str(scope.get("path", "")).encode()
    url = stream_url(headers.get("host", ""), raw_path, scope.get("query_string") or b"", public_url)
    return is_valid_signature(auth_token, url, headers.get("x-twilio-signature"))


class TwilioMediaStream:
    """Wraps the websocket's own Transport; is itself the Conversation's Transport."""

    def __init__(
        self, inner: Transport, options: TwilioOptions, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._inner = inner
        self._options = options
        self._clock = clock
        self._ledger = MarkLedger(SAMPLE_RATE_HZ)
        self._inbox: deque[str] = deque()  # client events waiting for the conversation's reader
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

    # --- Transport: inbound -----------------------------------------------------------------

    async def receive(self) -> str:
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

    def _push(self, event: dict[str, Any], *, first: bool = False) -> None:
        """Queue an event for the conversation's reader; `first` puts it ahead of the queue."""
        if first:
            self._inbox.appendleft(json.dumps(event))
        else:
            self._inbox.append(json.dumps(event))
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
                media_audio(event)  # checks the payload; the conversation decodes it again
                self._inbox.append(
                    json.dumps({"type": "input_audio_buffer.append", "audio": event.media.payload})
                )
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
        self._inbox.append(
            json.dumps({"type": "session.update", "session": call_session(details.custom_parameters)})
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
            self._push({"type": "response.cancel"})  # a key press interrupts, as speech does
        elif self._ledger.is_playing:
            await self._cut("dtmf")
        self._push(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": f"[DTMF {digits}]"}],
                },
            }
        )
        self._push({"type": "response.create"})

    # --- Transport: outbound ------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        if self._ended:
            raise TransportClosed
        event = json.loads(text)
        kind = event.get("type")
        if kind in AUDIO_DELTAS:
            await self._send_audio(event["item_id"], event["delta"])
        elif kind == "session.updated":
            fmt = event["session"].get("audio", {}).get("output", {}).get("format", {})
            self._configured = fmt.get("type") == "audio/pcmu"
            if not self._configured:
                log.error("session output is not mu-law; call audio is dropped", extra=self._fields())
        elif kind == "response.created":
            self._responding = True
        elif kind == "response.done":
            self._responding = False
            if event["response"]["status"] == "cancelled":
                await self._cut("response_cancelled")
        elif kind == "conversation.item.truncated":
            await self._on_truncated(event["item_id"], int(event["audio_end_ms"]))
        elif kind == "input_audio_buffer.speech_started":
            await self._cut("speech_started")
        elif kind == "error":
            error = event.get("error") or {}
            log.warning(
                "conversation error on a twilio call",
                extra={**self._fields(), "code": error.get("code"), "reason": error.get("message")},
            )

    async def _send_audio(self, item_id: str, payload: str) -> None:
        if not self._configured:
            log.error("reply audio before the session was configured; dropped", extra=self._fields())
            return
        if not self._ledger.accepts(item_id):
            return  # a late chunk of a cleared item: the caller must not hear it
        assert self.started is not None
        samples = len(base64.b64decode(payload))  # mu-law: one byte per sample
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
        self._push(
            {
                "type": "conversation.item.truncate",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": audio_end_ms,
            },
            first=True,
        )

    def _fields(self) -> dict[str, Any]:
        started = self.started
        if started is None:
            return {}
        return {"call_sid": started.call_sid, "stream_sid": started.stream_sid}
