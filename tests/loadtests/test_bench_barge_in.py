"""The barge-in benchmark: trial planning, outcomes classified from scripted event timelines
(pure: a TurnRecorder fed events with receive times), the report's rows, and trials against the
real server code running fake models (named as such)."""

from __future__ import annotations

import base64
import random
from typing import Any

import numpy as np
import pytest

from loadtests.bench_barge_in import (
    Corpora,
    PlanOptions,
    Status,
    Target,
    Trial,
    TrialOutcome,
    format_rows,
    outcome_of,
    parse_compare,
    plan_trials,
    row_of,
    rows_of,
    run_trial,
)
from loadtests.bench_latency import BenchError
from loadtests.microphone import Speech
from loadtests.recorder import TurnRecorder
from loadtests.room import EchoOptions, RoomOptions
from loadtests.session import SessionResult
from server.model.fakes import FakeAsr, FakeLlm
from tests.conftest import fake_app
from tests.harness import running_server
from tests.loadtests.scripted_server import Script, quick_options, scripted_server, tone_clip

QUESTION = tone_clip("question")
OVERLAY = tone_clip("uh-huh", lead_ms=100, tone_ms=300, tail_ms=100)


def delta(ms: int) -> str:
    return base64.b64encode(np.zeros(ms * 24, dtype="<i2").tobytes()).decode()


def recorded(events: list[tuple[float, dict[str, Any]]], overlay_voiced_s: float | None) -> SessionResult:
    """A session whose one turn saw `events` (receive time s, event); the question's speech
    ended at 1.0 s, the overlay's first voiced frame went out at `overlay_voiced_s`."""
    main = TurnRecorder(0, Speech(QUESTION, voiced_sent_s=0.2, end_sent_s=1.0, done_sent_s=1.2), "turn")
    main.barge_in_after_ms = 800
    if overlay_voiced_s is not None:
        main.interrupter = Speech(OVERLAY, voiced_sent_s=overlay_voiced_s)
    for t, event in events:
        main.observe(event, t)
    return SessionResult(url="ws://test", turns=[main.result()])


def reply(chunks: list[tuple[float, int]], end_s: float, status: str, reason: str | None = None):  # type: ignore[no-untyped-def]
    """response.created at 1.3 s, an audio delta of `ms` at each time, response.done at end_s."""
    events: list[tuple[float, dict[str, Any]]] = [
        (1.3, {"type": "response.created", "response": {"id": "r1"}})
    ]
    for t, ms in chunks:
        events.append((t, {"type": "response.output_audio.delta", "response_id": "r1", "delta": delta(ms)}))
    details = {"reason": reason} if reason else None
    events.append(
        (
            end_s,
            {"type": "response.done", "response": {"id": "r1", "status": status, "status_details": details}},
        )
    )
    return events


def trial(scenario: str = "backchannel", overlay: bool = True) -> Trial:
    return Trial(0, scenario, "uh-huh", QUESTION, RoomOptions(), OVERLAY if overlay else None, 800)  # type: ignore[arg-type]


def test_a_backchannel_the_reply_pauses_for_then_completes() -> None:
    # 100 ms chunks at real time from 1.4 s; the overlay at 2.2 s; the server holds 300 ms of
    # reply at 2.5 s, then resumes where it paused
    chunks = [(1.4 + 0.1 * i, 100) for i in range(11)] + [(2.8 + 0.1 * i, 100) for i in range(5)]
    outcome = outcome_of(trial(), "words", recorded(reply(chunks, 3.3, "completed"), overlay_voiced_s=2.2))
    assert outcome.status == "completed" and outcome.overlay_sent and outcome.counts
    assert outcome.stalls == 1 and outcome.pause_ms == pytest.approx(300)
    assert not outcome.is_self_interrupted


def test_a_real_interruption_cancels_and_the_last_stale_audio_is_timed() -> None:
    chunks = [(1.4 + 0.1 * i, 100) for i in range(12)]  # the last delta at 2.5 s
    events = reply(chunks, 2.55, "cancelled", "turn_detected")
    events.append((2.56, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 2100}))
    outcome = outcome_of(trial("real"), "voice", recorded(events, overlay_voiced_s=2.25))
    assert outcome.status == "cancelled" and outcome.speech_started == 1
    assert outcome.stale_audio_ms == pytest.approx(250) and outcome.pause_ms == 0.0


def test_echo_that_triggers_speech_started_is_a_self_interruption_even_if_the_reply_completes() -> None:
    events = reply([(1.4, 500)], 2.0, "completed")
    events.insert(2, (1.7, {"type": "input_audio_buffer.speech_started", "audio_start_ms": 1500}))
    outcome = outcome_of(trial("echo", overlay=False), "voice", recorded(events, None))
    assert outcome.status == "completed" and outcome.speech_started == 1
    assert outcome.is_self_interrupted and outcome.counts


@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        ("cancelled", "client_cancelled", "cancelled_other"),
        ("incomplete", "max_output_tokens", "incomplete"),
        ("cancelled", "turn_detected", "cancelled"),
    ],
)
def test_final_statuses(status: str, reason: str, expected: str) -> None:
    outcome = outcome_of(trial("real"), "x", recorded(reply([(1.4, 100)], 1.6, status, reason), 1.45))
    assert outcome.status == expected


def test_a_turn_without_reply_or_with_errors_does_not_count() -> None:
    silent = outcome_of(trial(), "x", recorded([], None))
    assert silent.status == "no_reply" and not silent.counts
    broken = recorded(reply([(1.4, 100)], 1.6, "completed"), None)
    broken.turns[0].error = "timeout"
    assert outcome_of(trial(), "x", broken).status == "error"
    early = outcome_of(trial(), "x", recorded(reply([(1.4, 100)], 1.6, "cancelled", "turn_detected"), None))
    assert not early.counts and early.is_self_interrupted  # cut by echo before the overlay was due
    assert row_of("backchannel", "all", "x", [early]).early == 1


def test_rows_give_the_scenarios_rates_and_percentiles() -> None:
    def out(status: Status, config: str, pause: float, variant: str = "yeah") -> TrialOutcome:
        return TrialOutcome(
            0, config, "backchannel", variant, status, "q", "o", overlay_sent=True, pause_ms=pause
        )

    outcomes = [out("completed", "A", 100), out("completed", "A", 300), out("cancelled", "A", 0, "okay")]
    outcomes += [out("cancelled", "B", 0), out("cancelled", "B", 0), out("cancelled", "B", 0, "okay")]
    rows = rows_of(outcomes)
    assert [(r.group, r.config) for r in rows] == [
        ("yeah", "A"),
        ("yeah", "B"),
        ("okay", "A"),
        ("okay", "B"),
        ("all", "A"),
        ("all", "B"),
    ]
    all_a = rows[4]
    assert all_a.n == 3 and all_a.completed == 2 and all_a.rate == pytest.approx(2 / 3)
    assert all_a.pause_max == 300 and rows[5].rate == 0.0
    assert "backchannel (completed = the rate)" in format_rows(rows)


def test_plan_covers_every_cell_and_repeats_with_the_seed() -> None:
    corpora = Corpora([QUESTION], [OVERLAY], [tone_clip("noise-cough")], [tone_clip("interrupt")])
    options = PlanOptions(
        scenarios=["echo", "backchannel", "noise", "real"],
        repeat=2,
        echo_dbs=(-6, -12),
        echo_delays_ms=(30, 250),
    )
    trials = plan_trials(corpora, options, random.Random(5))
    by = {s: [t for t in trials if t.scenario == s] for s in ("echo", "backchannel", "noise", "real")}
    assert len(by["echo"]) == 8 and {(t.variant, t.delay_ms) for t in by["echo"]} == {
        ("-6 dB", 30),
        ("-6 dB", 250),
        ("-12 dB", 30),
        ("-12 dB", 250),
    }
    assert all(t.room.echo is not None and t.overlay is None for t in by["echo"])
    assert [t.variant for t in by["noise"]] == ["cough", "cough"]
    assert [t.variant for t in by["real"]] == ["clean", "echo"] * 2
    assert all(600 <= t.after_ms <= 1500 for t in by["backchannel"] + by["real"])
    again = plan_trials(corpora, options, random.Random(5))
    assert [t.after_ms for t in again] == [t.after_ms for t in trials]
    assert [t.index for t in trials] == list(range(len(trials)))


def test_compare_specs() -> None:
    assert parse_compare(["A=X=1 Y=2", "B="]) == [("A", {"X": "1", "Y": "2"}), ("B", {})]
    with pytest.raises(BenchError):
        parse_compare(["A=X=1", "A=X=2"])
    with pytest.raises(BenchError):
        parse_compare(["noequals"])


async def test_trials_against_the_server_with_fake_models() -> None:
    """Voxgate without its echo gate, in the `voice` barge-in mode (fake models, energy VAD): a
    loud echo of its own reply interrupts it, and a tone said over the reply cancels it, and the
    benchmark sees both through the protocol."""
    app = fake_app(
        FakeAsr(["hello"]),
        FakeLlm(["Sure, I can help with that, let me look it up."] * 2),
        echo_gate=False,
        barge_in_mode="voice",
    )
    async with running_server(app) as base_url:
        target = Target("fake", base_url.replace("http://", "ws://") + "/v1/realtime")
        options = quick_options(target.url, silence_duration_ms=200)
        loud_echo = RoomOptions(echo=EchoOptions(delay_ms=30, level_db=0, rt60_s=0))
        echo = await run_trial(Trial(0, "echo", "0 dB", QUESTION, loud_echo), target, options, seed=0)
        real = Trial(1, "real", "clean", QUESTION, RoomOptions(), tone_clip("stop"), after_ms=300)
        interrupted = await run_trial(real, target, options, seed=0)
    assert echo.error is None and echo.is_self_interrupted and echo.status == "cancelled"
    assert echo.speech_started == 1  # announced after the cancellation: the trial lingers for it
    assert interrupted.error is None and interrupted.overlay_sent and interrupted.status == "cancelled"
    assert interrupted.stale_audio_ms is not None and interrupted.stale_audio_ms >= 0


async def test_a_backchannel_over_a_server_that_holds_the_reply_then_resumes() -> None:
    """The scripted fake server holds its reply for 300 ms when voice starts over it and neither
    cancels nor answers: the trial waits out the unanswered overlay and sees the reply complete,
    with a pause after the backchannel began."""
    script = Script(reply_audio_ms=1500, backchannel_hold_ms=300)
    async with scripted_server(script) as (url, log):
        options = quick_options(url)
        backchannel = Trial(0, "backchannel", "uh-huh", QUESTION, RoomOptions(), OVERLAY, after_ms=400)
        outcome = await run_trial(backchannel, Target("scripted", url), options, seed=0)
    assert outcome.error is None and outcome.overlay_sent
    assert outcome.status == "completed" and not outcome.is_self_interrupted
    assert outcome.pause_ms is not None and outcome.pause_ms > 0 and outcome.stalls >= 1
    assert len(log.speech_end_received) == 1  # the server answered the question only
