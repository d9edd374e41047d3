"""OpenAI's input noise reduction in session.update, both dialects, echoed in the session, and
applied to the caller's audio (server/audio_processing.py)."""

from __future__ import annotations

import pytest

from server.realtime.session_update import apply_session_update
from server.realtime.wire import Dialect, EventWriter
from server.streaming.session_config import ConversationOptions, SessionConfig


def fresh() -> SessionConfig:
    return ConversationOptions().session_config("sess_1")


@pytest.mark.parametrize(
    ("session", "expected"),
    [
        ({"input_audio_noise_reduction": {"type": "near_field"}}, "near_field"),
        ({"input_audio_noise_reduction": None}, None),
        ({"type": "realtime", "audio": {"input": {"noise_reduction": {"type": "far_field"}}}}, "far_field"),
        ({"type": "realtime", "audio": {"input": {"noise_reduction": None}}}, None),
    ],
)
def test_noise_reduction_is_kept(session: dict[str, object], expected: str | None) -> None:
    config = fresh()
    config.noise_reduction = "near_field" if expected is None else None  # a change either way
    apply_session_update(config, session)
    assert config.noise_reduction == expected


def test_the_servers_default_is_the_sessions_and_both_dialects_show_it() -> None:
    config = ConversationOptions(noise_reduction="far_field").session_config("sess_1")
    assert config.noise_reduction == "far_field"
    assert EventWriter(Dialect.BETA).session(config)["input_audio_noise_reduction"] == {"type": "far_field"}
    ga = EventWriter(Dialect.GA).session(config)
    assert ga["audio"]["input"]["noise_reduction"] == {"type": "far_field"}
    config.noise_reduction = None
    assert EventWriter(Dialect.BETA).session(config)["input_audio_noise_reduction"] is None
