"""Knowledge served: the answer path in response.done's metadata, the AssistantTurn event and
the metrics; knowledge per session from the setup hook; a malformed file stops `voxgate serve`.
Recogniser, speech and sentence encoder are fakes (named as such); the language model is the
keyword responder ("rules")."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from server import AgentEvent, AssistantTurn, SessionRequest, SessionSetup, Settings
from server.cli import main as cli_main
from server.events import EventHandler
from server.http.app import create_app
from server.http.knowledge_service import KnowledgeService
from server.http.session_setup import SessionSetupHook
from server.knowledge.knowledge import parse_knowledge
from server.knowledge.retrieval import MatchThresholds
from server.model import registry
from server.model.fakes import EnergyClassifierFactory, FakeSentenceEncoder
from tests.harness import realtime_client, running_server

SHOP = parse_knowledge(
    """\
- q: [do you ship to canada, how much is shipping to canada]
  a: Yes, shipping to Canada costs twelve dollars.
"""
)
LAMPS = parse_knowledge("- q: do you sell lamps\n  a: Yes, we sell desk lamps.\n")


@pytest.fixture
def fake_speech(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ASR_BACKENDS, "fake-asr", "server.model.fakes:load_fake_asr")
    monkeypatch.setitem(registry.TTS_BACKENDS, "fake-tts", "server.model.fakes:load_fake_tts")


def app_with(on_event: EventHandler | None = None, setup: SessionSetupHook | None = None) -> object:
    service = KnowledgeService(
        MatchThresholds(), checks_replies=True, knowledge=SHOP, encoder=FakeSentenceEncoder()
    )
    settings = Settings(asr="fake-asr", tts="fake-tts", llm="rules")
    return create_app(
        settings, vad=EnergyClassifierFactory(), knowledge=service, on_event=on_event, session_setup=setup
    )


async def test_a_knowledge_answer_is_reported_in_response_done_events_and_metrics(fake_speech: None) -> None:
    events: list[AgentEvent] = []

    async def on_event(event: AgentEvent) -> None:
        events.append(event)

    app = app_with(on_event)
    async with running_server(app) as url:  # type: ignore[arg-type]
        async with realtime_client(url) as client:
            await client.wait_for("session.created")
            await client.say("do you ship to canada")
            done = await client.wait_for("response.done")
            assert done["response"]["metadata"] == {"voxgate_answer_path": "knowledge"}
            transcript = client.of_type("response.output_audio_transcript.done")[0]["transcript"]
            assert transcript == "Yes, shipping to Canada costs twelve dollars."
            await client.say("hello there")
            second = await client.wait_for("response.done", after=client.index_of(done) + 1)
            assert second["response"]["metadata"] == {"voxgate_answer_path": "model"}
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(url + "/metrics")).text
    assert re.search(r'voxgate_answers_total\{path="knowledge",replica="[^"]+"\} 1\.0', metrics)
    assert re.search(r'voxgate_answers_total\{path="model",replica="[^"]+"\} 1\.0', metrics)
    turns = [e for e in events if isinstance(e, AssistantTurn)]
    assert [t.answer_path for t in turns] == ["knowledge", "model"]


async def test_knowledge_per_session_from_the_setup_hook(fake_speech: None) -> None:
    async def setup(request: SessionRequest) -> SessionSetup:
        return SessionSetup(knowledge=LAMPS if request.query.get("shop") == "lamps" else None)

    async with running_server(app_with(setup=setup)) as url:  # type: ignore[arg-type]
        async with realtime_client(url, path="/v1/realtime?shop=lamps") as client:
            await client.wait_for("session.created")
            await client.say("do you sell lamps")
            await client.wait_for("response.done")
            assert (
                client.of_type("response.output_audio_transcript.done")[0]["transcript"]
                == "Yes, we sell desk lamps."
            )


async def test_a_bad_knowledge_file_from_the_setup_hook_ends_the_session_with_an_error(
    fake_speech: None, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- q: hi\n")

    async def setup(request: SessionRequest) -> SessionSetup:
        return SessionSetup(knowledge=bad)

    async with running_server(app_with(setup=setup)) as url:  # type: ignore[arg-type]
        async with realtime_client(url) as client:
            error = await client.wait_for("error")
    assert error["error"]["code"] == "knowledge_unavailable"
    assert f"{bad}, line 1: missing a (the answer)" in error["error"]["message"]


def test_voxgate_serve_refuses_a_malformed_knowledge_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "shop.yaml"
    bad.write_text("- q: how much is shipping\n  a: Five dollars.\n- q: [when are you open\n")
    monkeypatch.setenv("VOXGATE_KNOWLEDGE", str(bad))
    assert cli_main(["serve"]) == 2
    err = capsys.readouterr().err
    assert f"cannot start: {bad}, line 4: not valid YAML" in err
