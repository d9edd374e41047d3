"""Parsing Twilio's events: typed, tolerant of new events, strict about known ones."""

from __future__ import annotations

import json

import pytest

from server.errors import ProtocolViolation
from server.telephony.twilio_wire import (
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    UnknownEvent,
    check_digit,
    check_start,
    clear_message,
    mark_message,
    media_audio,
    media_message,
    parse_twilio_event,
)

SID = "MZ1"
START = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": SID,
    "start": {
        "streamSid": SID,
        "accountSid": "AC1",
        "callSid": "CA1",
        "tracks": ["inbound"],
        "customParameters": {"voice": "en-gb"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
}


def test_known_events_parse_into_typed_models() -> None:
    start = parse_twilio_event(json.dumps(START))
    assert isinstance(start, Start)
    check_start(start)
    assert start.start.call_sid == "CA1" and start.start.custom_parameters == {"voice": "en-gb"}
    media = parse_twilio_event(json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "//8="}}))
    assert isinstance(media, Media) and media_audio(media) == b"\xff\xff"
    dtmf = parse_twilio_event(json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "#"}}))
    assert isinstance(dtmf, Dtmf) and check_digit(dtmf) == "#"
    mark = parse_twilio_event(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "a@20"}}))
    assert isinstance(mark, Mark) and mark.mark.name == "a@20"
    assert isinstance(parse_twilio_event(json.dumps({"event": "stop", "streamSid": SID})), Stop)


def test_an_unknown_event_is_reported_not_refused() -> None:
    assert parse_twilio_event('{"event": "transcription", "x": 1}') == UnknownEvent("transcription")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{nope", "invalid_json"),
        ("[1]", "invalid_json"),
        ('{"type": "media"}', "missing_field"),
        ('{"event": "media", "streamSid": "MZ1"}', "missing_field"),
        ('{"event": "start", "streamSid": "MZ1", "start": {"streamSid": 5}}', "invalid_value"),
        ('{"event": "mark", "streamSid": "MZ1", "mark": {}}', "missing_field"),
    ],
)
def test_malformed_frames_raise(raw: str, code: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        parse_twilio_event(raw)
    assert info.value.code == code


def test_checks_on_start_media_and_digits() -> None:
    other_format = json.loads(json.dumps(START))
    other_format["start"]["mediaFormat"] = {"encoding": "audio/l16", "sampleRate": 16000, "channels": 1}
    start = parse_twilio_event(json.dumps(other_format))
    assert isinstance(start, Start)
    with pytest.raises(ProtocolViolation, match="unsupported media format"):
        check_start(start)
    media = parse_twilio_event(json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "@@"}}))
    assert isinstance(media, Media)
    with pytest.raises(ProtocolViolation, match="base64"):
        media_audio(media)
    dtmf = parse_twilio_event(json.dumps({"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "x"}}))
    assert isinstance(dtmf, Dtmf)
    with pytest.raises(ProtocolViolation, match="not a key"):
        check_digit(dtmf)


def test_outbound_messages() -> None:
    assert json.loads(media_message(SID, "//8=")) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": "//8="},
    }
    assert json.loads(mark_message(SID, "a@20")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "a@20"},
    }
    assert json.loads(clear_message(SID)) == {"event": "clear", "streamSid": SID}
