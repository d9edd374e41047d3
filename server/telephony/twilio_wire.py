"""Twilio Media Streams (bidirectional) wire protocol: typed inbound events, outbound JSON.

Every frame is a JSON text object keyed on "event". `parse_twilio_event` returns one typed
event, `UnknownEvent` for an event name this module does not know (Twilio adds events over
time, so the caller logs it and goes on), or raises `ProtocolViolation` for a frame that is not
JSON, has no event name, or is a known event with missing or mistyped fields.

Audio is base64 mu-law, 8 kHz, mono, no header, both ways.

No asyncio, no sockets here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from server.errors import ProtocolViolation
from server.streaming.session_config import MAX_GREETING_CHARS

MULAW_ENCODING = "audio/x-mulaw"
SAMPLE_RATE_HZ = 8_000
DTMF_DIGITS = frozenset("0123456789*#ABCD")


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class Connected(_Model):
    event: Literal["connected"]
    protocol: str | None = None
    version: str | None = None


class MediaFormat(_Model):
    encoding: str = MULAW_ENCODING
    sample_rate_hz: int = Field(default=SAMPLE_RATE_HZ, alias="sampleRate")
    channels: int = 1


class StartDetails(_Model):
    stream_sid: str = Field(alias="streamSid")
    account_sid: str | None = Field(default=None, alias="accountSid")
    call_sid: str | None = Field(default=None, alias="callSid")
    tracks: list[str] = Field(default_factory=lambda: ["inbound"])
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")
    media_format: MediaFormat = Field(default_factory=MediaFormat, alias="mediaFormat")


class Start(_Model):
    event: Literal["start"]
    stream_sid: str = Field(alias="streamSid")
    start: StartDetails


class MediaDetails(_Model):
    track: str = "inbound"
    chunk: str | None = None
    timestamp: str | None = None
    payload: str


class Media(_Model):
    event: Literal["media"]
    stream_sid: str = Field(alias="streamSid")
    media: MediaDetails


class DtmfDetails(_Model):
    track: str | None = None
    digit: str


class Dtmf(_Model):
    event: Literal["dtmf"]
    stream_sid: str = Field(alias="streamSid")
    dtmf: DtmfDetails


class MarkDetails(_Model):
    name: str


class Mark(_Model):
    event: Literal["mark"]
    stream_sid: str = Field(alias="streamSid")
    mark: MarkDetails


class StopDetails(_Model):
    account_sid: str | None = Field(default=None, alias="accountSid")
    call_sid: str | None = Field(default=None, alias="callSid")


class Stop(_Model):
    event: Literal["stop"]
    stream_sid: str = Field(alias="streamSid")
    stop: StopDetails = Field(default_factory=StopDetails)


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """An event name this module does not know; the frame is otherwise well formed."""

    name: str


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop
_EVENT: TypeAdapter[TwilioEvent] = TypeAdapter(
    Annotated[Connected | Start | Media | Dtmf | Mark | Stop, Field(discriminator="event")]
)
_KNOWN_EVENTS = frozenset(("connected", "start", "media", "dtmf", "mark", "stop"))


def parse_twilio_event(text: str) -> TwilioEvent | UnknownEvent:
    """Parse one text frame from Twilio; raise ProtocolViolation when it is malformed."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolViolation(f"message is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(raw, dict):
        raise ProtocolViolation("message must be a JSON object", code="invalid_json")
    name = raw.get("event")
    if not isinstance(name, str):
        raise ProtocolViolation("message has no string 'event'", code="missing_field", param="event")
    if name not in _KNOWN_EVENTS:
        return UnknownEvent(name[:80])
    try:
        return _EVENT.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or name
        code = "missing_field" if first["type"] == "missing" else "invalid_value"
        raise ProtocolViolation(f"{name}: {where}: {first['msg']}", code=code, param=where) from exc


def check_start(start: Start) -> None:
    """A start this endpoint can serve: one stream id, mu-law 8 kHz mono audio, a greeting
    (a `greeting` <Parameter>) no longer than a greeting."""
    if start.start.stream_sid != start.stream_sid:
        raise ProtocolViolation(
            "start: start.streamSid differs from streamSid", code="invalid_value", param="start.streamSid"
        )
    check_greeting(start.start.custom_parameters, "start.customParameters.greeting")
    fmt = start.start.media_format
    if (fmt.encoding, fmt.sample_rate_hz, fmt.channels) != (MULAW_ENCODING, SAMPLE_RATE_HZ, 1):
        raise ProtocolViolation(
            f"unsupported media format {fmt.encoding} {fmt.sample_rate_hz} Hz x{fmt.channels}; "
            f"this endpoint serves {MULAW_ENCODING} {SAMPLE_RATE_HZ} Hz mono",
            code="unsupported_media_format",
            param="start.mediaFormat",
        )


def check_greeting(parameters: Mapping[str, str], param: str) -> None:
    """A call's `greeting` parameter, if any, holds at most MAX_GREETING_CHARS."""
    greeting = parameters.get("greeting", "")
    if len(greeting) > MAX_GREETING_CHARS:
        raise ProtocolViolation(
            f"the greeting holds {len(greeting)} characters; at most {MAX_GREETING_CHARS}",
            code="invalid_value",
            param=param,
        )


def check_digit(dtmf: Dtmf) -> str:
    digit = dtmf.dtmf.digit
    if digit not in DTMF_DIGITS:
        raise ProtocolViolation(
            f"dtmf: {digit[:8]!r} is not a key (0-9, *, #, A-D)", code="invalid_value", param="dtmf.digit"
        )
    return digit


def media_audio(media: Media) -> bytes:
    """The mu-law bytes of a media event; raises ProtocolViolation for bad base64. (The
    websocket's message limit bounds the size: server/streaming/guard.py.)"""
    try:
        return base64.b64decode(media.media.payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolViolation(
            "media: payload: audio is not valid base64", code="invalid_audio", param="media.payload"
        ) from exc


# --- outbound ----------------------------------------------------------------------------


def media_message(stream_sid: str, payload_b64: str) -> str:
    """Audio to play: base64 mu-law 8 kHz, appended to Twilio's playback buffer."""
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload_b64}})


def mark_message(stream_sid: str, name: str) -> str:
    """Twilio returns a mark of this name once everything queued before it has played (or a
    `clear` dropped it)."""
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    """Empty Twilio's playback buffer; the marks still queued come back at once."""
    return json.dumps({"event": "clear", "streamSid": stream_sid})
