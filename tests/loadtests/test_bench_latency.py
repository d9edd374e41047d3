"""The benchmark command's planning, reporting and server spawning; and the client against the
real server code running fake models (named as such)."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from loadtests.bench_latency import (
    BenchError,
    format_report,
    parse_env_spec,
    plan_turns,
    read_proc_status_kb,
    report_json,
    run_plans,
    spawned_server,
    split_checkout,
    wer_by_source,
)
from loadtests.session import TurnPlan, run_session
from server.model.fakes import FakeAsr, FakeLlm
from tests.conftest import fake_app
from tests.harness import running_server
from tests.loadtests.scripted_server import Script, quick_options, scripted_server, tone_clip


def test_parse_env_spec() -> None:
    assert parse_env_spec('VOXGATE_LLM=rules VOXGATE_INSTRUCTIONS="be brief" EMPTY=') == {
        "VOXGATE_LLM": "rules",
        "VOXGATE_INSTRUCTIONS": "be brief",
        "EMPTY": "",
    }
    assert parse_env_spec("") == {}
    with pytest.raises(BenchError, match="NAME=VALUE"):
        parse_env_spec("rules")


def test_a_spawn_spec_may_name_another_checkout(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert split_checkout({"A": "1"}) == ({"A": "1"}, repo)
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "__main__.py").write_text("")
    assert split_checkout({"A": "1", "VOXGATE_BENCH_CHECKOUT": str(tmp_path)}) == ({"A": "1"}, tmp_path)
    with pytest.raises(BenchError, match="not a Voxgate checkout"):
        split_checkout({"VOXGATE_BENCH_CHECKOUT": str(tmp_path / "nowhere")})


def test_plan_turns_repeats_and_draws_interrupters_from_the_rest() -> None:
    corpus = [tone_clip("a"), tone_clip("b"), tone_clip("c")]
    plain = plan_turns(corpus, 2, barge_in_probability=0.0, barge_in_after_ms=500, rng=random.Random(1))
    assert [p.utterance.name for p in plain] == ["a", "b", "c", "a", "b", "c"]
    assert all(p.barge_in is None for p in plain)
    every = plan_turns(corpus, 1, barge_in_probability=1.0, barge_in_after_ms=700, rng=random.Random(1))
    for plan in every:
        assert plan.barge_in is not None and plan.barge_in.after_ms == 700
        assert plan.barge_in.utterance is not plan.utterance
    again = plan_turns(corpus, 1, barge_in_probability=1.0, barge_in_after_ms=700, rng=random.Random(1))
    assert [p.barge_in.utterance.name for p in again if p.barge_in] == [
        p.barge_in.utterance.name for p in every if p.barge_in
    ]


async def test_report_of_measured_sessions() -> None:
    script = Script(transcript="hello world")
    plans = [TurnPlan(tone_clip(reference="hello there")), TurnPlan(tone_clip(reference="hello world"))]
    async with scripted_server(script) as (url, _):
        sessions = await run_plans(quick_options(url), plans, session_per_utterance=True)
    assert len(sessions) == 2 and all(len(s.turns) == 1 for s in sessions)
    wer = wer_by_source([t for s in sessions for t in s.turns])
    assert wer["synthetic"].errors.substitutions == 1 and wer["synthetic"].rate == pytest.approx(0.25)
    text = format_report(sessions, None)
    assert "voice_to_voice_ms" in text and "WER  25.0%" in text and "errors: none" in text
    report = json.loads(json.dumps(report_json({"corpus": "test"}, sessions, None)))
    assert report["summary"]["voice_to_voice_ms"]["n"] == 2
    assert [t["session"] for t in report["turns"]] == [0, 1]
    assert report["turns"][1]["wer"]["substitutions"] == 0
    assert report["errors"] == {}


def test_peak_rss_comes_from_proc_status() -> None:
    peak = read_proc_status_kb(os.getpid(), "VmHWM")
    assert peak is not None and peak > 1000
    assert read_proc_status_kb(2**22 + 12345, "VmHWM") is None


async def test_a_server_that_cannot_start_is_reported_not_waited_for(tmp_path: Path) -> None:
    began = time.monotonic()
    with pytest.raises(BenchError, match="exited with status"):
        async with spawned_server({"VOXGATE_ASR": "no-such-asr"}, tmp_path / "server.log", 60):
            pass
    assert time.monotonic() - began < 60


async def test_the_client_hears_a_servers_greeting_out_before_its_first_turn() -> None:
    """A server with a session greeting speaks first: the caller listens to it (its audio in
    the room, if any), then asks; the greeting is no turn's reply."""
    greeting = "Thanks for calling."
    app = fake_app(FakeAsr(["where is my order"]), FakeLlm(["It ships tomorrow."]), greeting=greeting)
    async with running_server(app) as base_url:
        url = base_url.replace("http://", "ws://") + "/v1/realtime"
        result = await run_session(quick_options(url, silence_duration_ms=300), [TurnPlan(tone_clip())])
        plain = await run_session(
            quick_options(base_url.replace("http://", "ws://") + "/v1/realtime", silence_duration_ms=300), []
        )
    assert result.errors == [] and result.greeting_ms is not None
    assert result.greeting_ms >= len(greeting) * 50 - 200  # heard out: the fake speaks 50 ms a character
    (turn,) = result.turns
    assert turn.reply_transcript.strip() == "It ships tomorrow." and turn.response_status == "completed"
    assert turn.speech_started_during_reply == 0 and turn.responses == 1
    assert plain.greeting_ms is not None  # the same server greets every session
    async with running_server(fake_app()) as base_url:
        silent = await run_session(quick_options(base_url.replace("http://", "ws://") + "/v1/realtime"), [])
    assert silent.greeting_ms is None and silent.errors == []


async def test_the_client_against_the_server_with_fake_models() -> None:
    app = fake_app(FakeAsr(["where is my order"]), FakeLlm(["It ships tomorrow."]))
    async with running_server(app) as base_url:
        url = base_url.replace("http://", "ws://") + "/v1/realtime"
        result = await run_session(quick_options(url, silence_duration_ms=300), [TurnPlan(tone_clip())] * 2)
    assert result.errors == []
    for turn in result.turns:
        assert turn.user_transcript == "where is my order"
        assert turn.reply_transcript.strip() == "It ships tomorrow."
        assert turn.response_status == "completed"
        assert turn.voice_to_voice_ms is not None and 200 <= turn.voice_to_voice_ms < 2000
        assert turn.reply_audio_ms > 500  # the fake speaks 50 ms per character
