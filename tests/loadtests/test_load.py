"""The load test against the scripted fake server (tests/loadtests/scripted_server.py): many
sessions at once measure each connection's injected delays; faults are counted and the run
always ends within its duration plus grace; a sweep finds where p95 crosses the target; worker
processes merge."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from loadtests.load import HARD_MARGIN_S, Load, LoadPlan, LoadResult
from loadtests.loadtest import StepSettings, run_steps
from loadtests.report import METRIC_NAMES, count, histograms_of
from loadtests.step import run_step
from loadtests.target import Capacity, parse_target
from tests.loadtests.scripted_server import (
    AUDIO,
    TOLERANCE_MS,
    Script,
    ServerLog,
    check_timing,
    quick_options,
    scripted_server,
    tone_clip,
)

CLIP = tone_clip()  # 200 ms of silence, 600 ms of tone, 200 ms of silence
SILENCE_FRAMES_MS = 100  # the fake's endpoint: 5 silent frames, as quick_options asks


def plan(url: str, sessions: int, duration_s: float, **overrides: Any) -> LoadPlan:
    session = quick_options(url, **overrides.pop("session", {}))
    fields: dict[str, Any] = {
        "session": session,
        "sessions": sessions,
        "duration_s": duration_s,
        "ramp_s": 0.2,
        "grace_s": 5.0,
        "pause_ms": (100, 100),
        "redial_s": 0.3,
    }
    fields.update(overrides)
    return LoadPlan(**fields)


async def run_load(load_plan: LoadPlan) -> tuple[LoadResult, float]:
    began = time.monotonic()
    result = await Load(load_plan, [CLIP]).run()
    return result, time.monotonic() - began


def first_sent_after(log: ServerLog, kind: str, after_s: float) -> float:
    return min(log.sent_times(kind, after_s))


async def test_concurrent_sessions_each_measure_their_connections_delays() -> None:
    script = Script(reply_audio_ms=400)
    async with scripted_server(script) as (url, log):
        result, elapsed = await run_load(plan(url, sessions=4, duration_s=3.0))
    load_plan = result.plan
    assert elapsed < load_plan.duration_s + load_plan.grace_s
    assert result.callers == 4 and len(result.sessions) == 4 and not result.hard_stopped
    assert all(s.result.errors == [] for s in result.sessions)
    measured = 0
    for session in result.sessions:
        assert session.result.session_id is not None
        server = log.connections[session.result.session_id]  # the connection this session had
        assert len(session.result.turns) >= 2
        for i, turn in enumerate(session.result.turns):
            check_timing(turn.voice_to_voice_ms, server.realized_ms(AUDIO, i), script.first_audio_ms)
            # from the frame that completed the server's silence, as the fake received it
            endpoint = server.endpoint_received[i]
            realized = (first_sent_after(server, AUDIO, endpoint) - endpoint) * 1000
            check_timing(turn.endpoint_to_audio_ms, realized, script.first_audio_ms - SILENCE_FRAMES_MS)
            measured += 1
    histograms = histograms_of(result.sessions)
    assert histograms["voice_to_voice"].count == measured == histograms["endpoint_to_audio"].count
    summary = histograms["voice_to_voice"].summary()
    assert summary is not None and abs(summary.p50 - script.first_audio_ms) < 100
    counts = count(result)
    assert (counts.refused, counts.dropped, counts.failed_turns, counts.malformed) == (0, 0, 0, 0)


async def test_a_refusing_server_is_counted_and_redialled() -> None:
    async with scripted_server(Script(refuse=True)) as (url, log):
        result, elapsed = await run_load(plan(url, sessions=2, duration_s=1.5))
    counts = count(result)
    assert elapsed < 1.5 + 1.0
    assert counts.callers == 2 and counts.sessions > 2  # each caller dialled again
    assert counts.refused == counts.sessions == log.refused
    assert counts.turns == 0 and counts.errors == {"connect": counts.sessions}
    assert counts.failed_share == 1.0


async def test_sessions_closed_mid_turn_are_dropped_and_redialled() -> None:
    async with scripted_server(Script(close_at_speech_end=True)) as (url, _):
        result, elapsed = await run_load(plan(url, sessions=2, duration_s=2.5))
    counts = count(result)
    assert elapsed < 2.5 + 2.0
    assert counts.dropped == counts.sessions >= 4  # every session drops at its first turn
    assert counts.failed_turns == counts.turns == counts.dropped
    assert all(t.error == "closed" for t in result.turns())


async def test_malformed_events_are_counted_and_the_turns_still_measured() -> None:
    script = Script(malformed=True, reply_audio_ms=300)
    async with scripted_server(script) as (url, _):
        result, _ = await run_load(plan(url, sessions=2, duration_s=2.0))
    counts = count(result)
    assert counts.turns >= 2 and counts.failed_turns == 0
    # per reply: one non-JSON message, one event without a type, one undecodable audio delta
    assert counts.malformed == 3 * counts.turns
    assert counts.errors == {"protocol": 2 * counts.turns}
    for turn in result.turns():
        # the bad delta (sent before the audio) is no reply audio: the first audio is the real one
        assert turn.voice_to_voice_ms is not None
        assert turn.voice_to_voice_ms > script.first_audio_ms - TOLERANCE_MS


async def test_a_reply_that_stalls_times_out_and_the_caller_redials() -> None:
    script = Script(hang_after_chunks=3)
    load_plan = plan(url="", sessions=2, duration_s=2.5, grace_s=2.0)
    async with scripted_server(script) as (url, _):
        load_plan = dataclasses.replace(
            load_plan, session=dataclasses.replace(load_plan.session, url=url, reply_timeout_s=1.0)
        )
        result, elapsed = await run_load(load_plan)
    counts = count(result)
    assert elapsed < 2.5 + 2.0 + 1.0
    assert counts.errors.get("timeout", 0) >= 2 and counts.dropped >= 2
    stalled = [t for t in result.turns() if t.error == "timeout"]
    assert stalled and all(t.reply_audio_ms == pytest.approx(60) for t in stalled)  # 3 chunks, then nothing


async def test_a_server_that_never_answers_is_cut_at_duration_plus_grace() -> None:
    load_plan = plan(url="", sessions=2, duration_s=1.5, grace_s=1.0)
    async with scripted_server(Script(answer_turns=False)) as (url, _):
        load_plan = dataclasses.replace(
            load_plan, session=dataclasses.replace(load_plan.session, url=url, reply_timeout_s=30.0)
        )
        result, elapsed = await run_load(load_plan)
    assert elapsed < 1.5 + 1.0 + 1.0 < 1.5 + 1.0 + HARD_MARGIN_S
    assert not result.hard_stopped  # each session's own deadline ended it
    counts = count(result)
    assert counts.cut == 2 and counts.errors == {"deadline": 2}
    assert [t.error for t in result.turns()] == ["deadline", "deadline"]


async def test_a_sweep_reports_where_p95_crosses_the_target() -> None:
    # the fake answers 150 ms later per open session: ~250, ~400, ~700 ms at 1, 2, 4 sessions
    script = Script(stopped_ms=40, transcript_ms=50, created_ms=60, first_audio_ms=100, reply_audio_ms=300)
    script.first_audio_ms_per_session = 150
    async with scripted_server(script) as (url, _):
        settings = StepSettings(
            plan=plan(url, sessions=1, duration_s=1.5, ramp_s=0.0),
            counts=[1, 2, 4],
            targets=[parse_target("voice_to_voice_p95=550ms", METRIC_NAMES)],
            scrape_metrics=False,
            settle_s=0.3,
        )
        outcome = await asyncio.to_thread(run_steps, settings, [CLIP])
    assert [step.sessions for step in outcome.steps] == [1, 2, 4]
    p95 = []
    for step in outcome.steps:
        summary = step.summaries["voice_to_voice"]
        assert summary is not None
        p95.append(summary.p95)
    assert p95[0] < p95[1] < 550 < p95[2], p95
    assert [step.is_met for step in outcome.steps] == [True, True, False]
    assert outcome.capacity == Capacity(2, 4)


async def test_worker_processes_split_the_callers_and_merge_their_histograms() -> None:
    async with scripted_server(Script(reply_audio_ms=300)) as (url, log):
        load_plan = plan(url, sessions=3, duration_s=2.0)
        outcome = await asyncio.to_thread(run_step, load_plan, [CLIP], processes=2, progress_every_s=0.5)
    assert outcome.problems == []
    result = outcome.result
    assert result.callers == 3 and sorted(s.caller for s in result.sessions) == [0, 1, 2]
    assert len(log.connections) == 3
    turns = result.turns()
    measured = sum(t.voice_to_voice_ms is not None for t in turns)
    assert measured >= 3 and outcome.histograms["voice_to_voice"].count == measured
    assert set(outcome.histograms) == set(METRIC_NAMES)
    assert result.client_cpu_s > 0
