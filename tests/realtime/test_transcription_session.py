"""Transcription sessions (GA `session.type: "transcription"`, beta `transcription_session.update`,
`?intent=transcription`, a client secret bound to one): live captions, never a reply; the
transcription language, prompt and model per session. Real sockets, fake models (named so)."""

from __future__ import annotations

from typing import Any

import pytest

from server.audio import PcmFrame
from server.errors import ProtocolViolation
from server.model.base import TranscriptionOptions
from server.model.fakes import FakeAsr, FakeLlm, tone
from server.realtime.session_update import apply_session_update, apply_transcription_session_update
from server.realtime.wire import Dialect, EventWriter
from server.streaming.session_config import ConversationOptions, SessionConfig
from tests.conftest import fake_app
from tests.harness import RealtimeTestClient, realtime_client, running_server

GA_TRANSCRIPTION = {
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "transcription": {"model": "gpt-4o-transcribe", "language": "es", "prompt": "Voxgate, Berlín"},
            "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
        }
    },
}


def fresh() -> SessionConfig:
    return ConversationOptions().session_config("sess_1")


# --- settings (no sockets) ------------------------------------------------------------------


def test_a_ga_transcription_update_makes_a_transcription_session_that_never_replies() -> None:
    config = fresh()
    apply_session_update(config, GA_TRANSCRIPTION)
    assert config.session_type == "transcription"
    assert (config.transcription_model, config.transcription_language) == ("gpt-4o-transcribe", "es")
    assert config.transcription_prompt == "Voxgate, Berlín"
    assert config.turn_detection is not None
    assert not config.turn_detection.create_response and not config.turn_detection.interrupt_response
    apply_session_update(config, {"type": "realtime"})  # back: replies again
    assert config.turn_detection.create_response and config.turn_detection.interrupt_response


def test_both_dialects_echo_the_transcription_shape() -> None:
    config = fresh()
    apply_session_update(config, GA_TRANSCRIPTION)
    ga = EventWriter(Dialect.GA).session_event(True, config)
    assert ga["type"] == "session.created"
    assert ga["session"]["type"] == "transcription"
    assert ga["session"]["object"] == "realtime.transcription_session"
    assert ga["session"]["audio"]["input"]["transcription"] == {
        "model": "gpt-4o-transcribe",
        "language": "es",
        "prompt": "Voxgate, Berlín",
    }
    assert "output" not in ga["session"]["audio"] and "instructions" not in ga["session"]
    beta = EventWriter(Dialect.BETA).session_event(False, config)
    assert beta["type"] == "transcription_session.updated"
    assert beta["session"]["input_audio_transcription"]["language"] == "es"
    assert beta["session"]["modalities"] == ["text"]


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"type": "transcription", "instructions": "be nice"}, "session.instructions"),
        ({"type": "transcription", "audio": {"output": {"voice": "x"}}}, "session.audio.output"),
        (
            {"type": "transcription", "audio": {"input": {"turn_detection": {"create_response": True}}}},
            "session.audio.input.turn_detection.create_response",
        ),
        (
            {"type": "realtime", "audio": {"input": {"transcription": {"model": "my-asr"}}}},
            "session.audio.input.transcription.model",
        ),
        (
            {
                "type": "realtime",
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe-diarize"}}},
            },
            "session.audio.input.transcription.model",
        ),
        (
            {"input_audio_transcription": {"language": "english"}},
            "session.input_audio_transcription.language",
        ),
        ({"input_audio_transcription": {"prompt": 7}}, "session.input_audio_transcription.prompt"),
        ({"input_audio_transcription": {"languages": ["en"]}}, "session.input_audio_transcription.languages"),
        ({"type": "translation"}, "session.type"),
    ],
)
def test_bad_transcription_settings_name_the_field(session: dict[str, Any], param: str) -> None:
    config = fresh()
    before = vars_of(config)
    with pytest.raises(ProtocolViolation) as refused:
        apply_session_update(config, session)
    assert refused.value.param == param
    assert vars_of(config) == before  # a refused update changes nothing


def vars_of(config: SessionConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def test_the_beta_transcription_update_refuses_realtime_fields() -> None:
    config = fresh()
    with pytest.raises(ProtocolViolation) as refused:
        apply_transcription_session_update(config, {"voice": "alloy"})
    assert refused.value.param == "session.voice"
    apply_transcription_session_update(
        config, {"input_audio_transcription": {"model": "whisper-1", "language": "de"}, "include": None}
    )
    assert (config.session_type, config.transcription_language) == ("transcription", "de")


# --- over a socket --------------------------------------------------------------------------


async def speak(client: RealtimeTestClient) -> None:
    await client.stream(tone(600))
    await client.stream(PcmFrame.silence(600, 24_000))


async def test_a_transcription_session_captions_the_caller_and_never_replies() -> None:
    asr = FakeAsr(["quiero cancelar mi pedido", "gracias"])
    app = fake_app(asr, FakeLlm(["(never said)"]))
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send({"type": "session.update", "session": GA_TRANSCRIPTION})
        updated = await client.wait_for("session.updated")
        assert updated["session"]["type"] == "transcription"
        await speak(client)
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert completed["transcript"] == "quiero cancelar mi pedido"
        await speak(client)
        second = await client.wait_for(
            "conversation.item.input_audio_transcription.completed", after=client.index_of(completed) + 1
        )
        assert second["transcript"] == "gracias"
        await client.send({"type": "response.create", "event_id": "ev_1"})
        error = await client.wait_for("error")
    assert error["error"]["code"] == "unsupported_event" and error["error"]["event_id"] == "ev_1"
    assert "transcription session" in error["error"]["message"]
    types = [e["type"] for e in client.events]
    for expected in (
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ):
        assert expected in types
    assert not [t for t in types if t.startswith("response.")]
    assert asr.opened_with[-1] == TranscriptionOptions("es", "Voxgate, Berlín")


async def test_intent_transcription_opens_one_and_the_beta_dialect_names_its_events() -> None:
    app = fake_app(FakeAsr(["hola"]), FakeLlm(["(never said)"]))
    headers = {"OpenAI-Beta": "realtime=v1"}
    async with (
        running_server(app) as url,
        realtime_client(url, headers, path="/v1/realtime?intent=transcription") as client,
    ):
        created = await client.wait_for("transcription_session.created")
        assert created["session"]["object"] == "realtime.transcription_session"
        await client.send(
            {
                "type": "transcription_session.update",
                "session": {"input_audio_transcription": {"model": "whisper-1", "language": "es"}},
            }
        )
        updated = await client.wait_for("transcription_session.updated")
        assert updated["session"]["input_audio_transcription"]["language"] == "es"
        await speak(client)
        completed = await client.wait_for("conversation.item.input_audio_transcription.completed")
        assert completed["transcript"] == "hola"
    assert not [e for e in client.events if e["type"].startswith("response.")]


async def test_a_language_the_recogniser_lacks_is_refused_naming_the_field() -> None:
    app = fake_app(FakeAsr(["hello"], languages=frozenset({"en"})), FakeLlm(["Hi."]))
    async with running_server(app) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"transcription": {"language": "fr"}}}},
            }
        )
        error = await client.wait_for("error")
        await client.send(
            {"type": "session.update", "session": {"input_audio_transcription": {"language": "de"}}}
        )
        beta_error = await client.wait_for("error", after=client.index_of(error) + 1)
    assert error["error"]["code"] == "unsupported_language"
    assert error["error"]["param"] == "session.audio.input.transcription.language"
    assert beta_error["error"]["param"] == "session.input_audio_transcription.language"
