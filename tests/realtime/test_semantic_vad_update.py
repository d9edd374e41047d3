"""`turn_detection: {"type": "semantic_vad", ...}` in session.update, both dialects, and its echo."""

from __future__ import annotations

import pytest

from server.errors import ProtocolViolation
from server.realtime.session_update import apply_session_update, vars_of
from server.streaming.end_of_turn import semantic_policy
from server.streaming.session_config import ConversationOptions, SessionConfig
from server.streaming.turns import TurnOptions


def fresh() -> SessionConfig:
    return ConversationOptions().session_config("sess_1")


@pytest.mark.parametrize(
    "session",
    [
        {"turn_detection": {"type": "semantic_vad", "eagerness": "high", "interrupt_response": False}},
        {
            "type": "realtime",
            "audio": {
                "input": {
                    "turn_detection": {
                        "type": "semantic_vad",
                        "eagerness": "high",
                        "interrupt_response": False,
                    }
                }
            },
        },
    ],
)
def test_semantic_vad_is_kept_and_echoed_as_openai_shows_it(session: dict[str, object]) -> None:
    config = fresh()
    apply_session_update(config, session)
    td = config.turn_detection
    assert td is not None
    assert vars_of(td) == {
        "type": "semantic_vad",
        "eagerness": "high",
        "create_response": True,
        "interrupt_response": False,
    }
    turn = ConversationOptions().turn_options(td)
    assert turn.semantic == semantic_policy("high")
    assert turn.interrupt_response is False


def test_back_to_server_vad_drops_the_policy_and_the_eagerness_from_the_echo() -> None:
    config = fresh()
    apply_session_update(config, {"turn_detection": {"type": "semantic_vad"}})
    apply_session_update(config, {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700}})
    td = config.turn_detection
    assert td is not None and "eagerness" not in vars_of(td)
    assert vars_of(td)["silence_duration_ms"] == 700
    assert ConversationOptions().turn_options(td).semantic is None


def test_a_semantic_server_default_is_announced_as_such() -> None:
    options = ConversationOptions(turn=TurnOptions(semantic=semantic_policy("auto")))
    td = options.session_config("sess_2").turn_detection
    assert td is not None and vars_of(td)["type"] == "semantic_vad" and vars_of(td)["eagerness"] == "auto"


def test_a_rejected_update_changes_nothing() -> None:
    config = fresh()
    with pytest.raises(ProtocolViolation) as raised:
        apply_session_update(config, {"turn_detection": {"type": "semantic_vad", "eagerness": 3}})
    assert raised.value.param == "session.turn_detection.eagerness"
    assert config.turn_detection is not None and config.turn_detection.type == "server_vad"
