"""The embedding API: Voxgate mounted in a host FastAPI app, with a brain, a per-session setup
hook and in-process events. Speech-to-text and speech synthesis are fakes (named as such)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from server import (
    AgentEvent,
    AssistantTurn,
    BrainRequest,
    SessionEnded,
    SessionRequest,
    SessionSetup,
    SessionStarted,
    Settings,
    TurnLatency,
    UserTurn,
    VoiceAgent,
)
from server.audio import PcmFrame
from server.model import registry
from server.model.fakes import EnergyClassifierFactory, FakeAsr, tone
from tests.harness import realtime_client, running_server


@pytest.fixture
def fake_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ASR_BACKENDS, "fake-asr", "server.model.fakes:load_fake_asr")
    monkeypatch.setitem(registry.TTS_BACKENDS, "fake-tts", "server.model.fakes:load_fake_tts")


async def test_mounted_agent_with_brain_setup_and_events(fake_speech: None) -> None:
    seen: list[BrainRequest] = []
    events: list[AgentEvent] = []

    async def brain(request: BrainRequest) -> AsyncIterator[str]:
        seen.append(request)
        yield "Hello "
        yield f"{request.metadata['caller']}, your order ships today."

    async def setup(request: SessionRequest) -> SessionSetup:
        caller = request.query.get("caller", "unknown")
        return SessionSetup(instructions=f"Caller {caller}.", metadata={"caller": caller})

    async def on_event(event: AgentEvent) -> None:
        events.append(event)

    host = FastAPI()

    @host.get("/orders")
    async def orders() -> dict[str, str]:
        return {"status": "the host's own route"}

    agent = VoiceAgent(
        Settings(asr="fake-asr", tts="fake-tts", llm="rules"),
        brain=brain,
        session_setup=setup,
        on_event=on_event,
        vad=EnergyClassifierFactory(),
    )
    agent.mount(host, "/voice")
    async with running_server(host) as url:
        async with httpx.AsyncClient() as http:
            assert (await http.get(url + "/orders")).json() == {"status": "the host's own route"}
            assert (await http.get(url + "/voice/healthz")).json()["status"] == "ok"
        async with realtime_client(url, path="/voice/v1/realtime?caller=Ada") as client:
            created = await client.wait_for("session.created")
            assert created["session"]["instructions"] == "Caller Ada."
            await client.stream(tone(500))
            await client.stream(PcmFrame.silence(600, 24_000))
            done = await client.wait_for("response.done")
            assert done["response"]["status"] == "completed"
            transcript = client.of_type("response.output_audio_transcript.done")[0]["transcript"]
            assert transcript == "Hello Ada, your order ships today."

    assert seen and seen[0].instructions == "Caller Ada."
    assert [m.text for m in seen[0].history if m.role == "user"] == ["hello there"]  # the fake ASR
    kinds = [type(e) for e in events]
    assert kinds[0] is SessionStarted and kinds[-1] is SessionEnded
    assert isinstance(events[0], SessionStarted) and events[0].metadata == {"caller": "Ada"}
    user = [e for e in events if isinstance(e, UserTurn)]
    assistant = [e for e in events if isinstance(e, AssistantTurn)]
    assert [u.transcript for u in user] == ["hello there"]
    assert assistant[0].text == "Hello Ada, your order ships today." and assistant[0].status == "completed"
    assert [e for e in events if isinstance(e, TurnLatency)][0].voice_to_voice_ms > 0


async def test_a_failing_event_handler_does_not_break_the_session(fake_speech: None) -> None:
    async def on_event(event: AgentEvent) -> None:
        raise RuntimeError("the CRM is down")

    agent = VoiceAgent(
        Settings(asr="fake-asr", tts="fake-tts", llm="rules"),
        on_event=on_event,
        vad=EnergyClassifierFactory(),
    )
    async with running_server(agent.app()) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.say("hi")
        done = await client.wait_for("response.done")
        assert done["response"]["status"] == "completed"


async def test_user_turn_is_reported_when_a_speculative_reply_is_adopted_before_its_transcript(
    fake_speech: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recogniser is slower than the end-of-turn silence: the prepared reply is adopted
    while its transcript is still pending, and the UserTurn must still reach the handler."""
    monkeypatch.setitem(registry.ASR_BACKENDS, "slow-fake-asr", "tests.test_agent:load_slow_fake_asr")
    events: list[AgentEvent] = []

    async def on_event(event: AgentEvent) -> None:
        events.append(event)

    agent = VoiceAgent(
        Settings(asr="slow-fake-asr", tts="fake-tts", llm="rules", silence_duration_ms=200),
        on_event=on_event,
        vad=EnergyClassifierFactory(),
    )
    async with running_server(agent.app()) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.stream(tone(500))
        await client.stream(PcmFrame.silence(700, 24_000))
        await client.wait_for("response.done")
    assert [e.transcript for e in events if isinstance(e, UserTurn)] == ["hello there"]


def load_slow_fake_asr(options: object = None) -> FakeAsr:
    return FakeAsr(delay_s=0.4)
