"""Ids and client-event parsing in server/realtime/wire.py."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from server.errors import ProtocolViolation
from server.realtime.wire import InputAudioAppend, _validate_client_event, new_id, parse_client_event


def test_ids_are_the_prefix_and_20_hex_digits() -> None:
    for prefix in ("event", "item", "resp", "sess"):
        assert re.fullmatch(prefix + r"_[0-9a-f]{20}", new_id(prefix))


def test_100k_ids_are_unique() -> None:
    ids = [new_id("event") for _ in range(100_000)]
    assert len(set(ids)) == len(ids)


def _outcome(parse: Any, arg: Any) -> tuple[object, ...]:
    """Everything a caller can observe: the model, its set fields and extras, or the error."""
    try:
        event = parse(arg)
    except ProtocolViolation as exc:
        return ("error", str(exc), exc.code, exc.param)
    return ("event", type(event), event.__dict__, event.model_fields_set, event.__pydantic_extra__)


APPENDS = [
    {"type": "input_audio_buffer.append", "audio": "AAAA"},
    {"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "evt_1"},
    {"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": None},
    {"type": "input_audio_buffer.append"},
    {"type": "input_audio_buffer.append", "audio": 123},
    {"type": "input_audio_buffer.append", "audio": None},
    {"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": 5},
    {"type": "input_audio_buffer.append", "audio": 123, "event_id": 5},
    {"type": "input_audio_buffer.append", "audio": "AAAA", "item_id": "x", "extra": {"nested": [1]}},
]


@pytest.mark.parametrize("message", APPENDS, ids=lambda m: ",".join(f"{k}={v!r}" for k, v in m.items()))
def test_an_append_parses_as_through_the_general_path(message: dict[str, Any]) -> None:
    """The append fast path gives the same event, or the same error, as the event union."""
    assert _outcome(parse_client_event, json.dumps(message)) == _outcome(_validate_client_event, message)


@pytest.mark.parametrize(
    ("message", "event_id"),
    [
        ({"type": "input_audio_buffer.append", "audio": "AAAA"}, None),
        ({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": "evt_1"}, "evt_1"),
        ({"type": "input_audio_buffer.append", "audio": "AAAA", "unknown": 1, "event": {}}, None),
    ],
)
def test_a_valid_append_is_an_input_audio_append(message: dict[str, Any], event_id: str | None) -> None:
    event = parse_client_event(json.dumps(message))
    assert isinstance(event, InputAudioAppend)
    assert (event.type, event.audio, event.event_id) == ("input_audio_buffer.append", "AAAA", event_id)
    assert event.__pydantic_extra__ is None  # unknown fields are ignored
    assert event.model_dump() == {"event_id": event_id, "type": "input_audio_buffer.append", "audio": "AAAA"}


@pytest.mark.parametrize(
    ("message", "code", "param", "text"),
    [
        (
            {"type": "input_audio_buffer.append"},
            "missing_field",
            "audio",
            "input_audio_buffer.append: audio: Field required",
        ),
        (
            {"type": "input_audio_buffer.append", "audio": 123},
            "invalid_value",
            "audio",
            "input_audio_buffer.append: audio: Input should be a valid string",
        ),
        (
            {"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": 5},
            "invalid_value",
            "event_id",
            "input_audio_buffer.append: event_id: Input should be a valid string",
        ),
    ],
)
def test_an_invalid_append_names_its_field(message: dict[str, Any], code: str, param: str, text: str) -> None:
    with pytest.raises(ProtocolViolation) as raised:
        parse_client_event(json.dumps(message))
    assert (raised.value.code, raised.value.param, str(raised.value)) == (code, param, text)
