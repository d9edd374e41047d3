"""The barge-in benchmark: trial planning, outcomes classified from scripted event timelines
(pure: a TurnRecorder fed events with receive times), the report's rows, and trials against the
real server code running fake models (named as such)."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from loadtests.bench_barge_in import (
    CANCEL_EXPECTED_MS,
    Corpora,
    PlanOptions,
    RealEnding,
    Status,
    Target,
    Trial,
    TrialOutcome,
    build_parser,
    format_rows,
    is_listener_led,
    only_clips,
    outcome_of,
    parse_compare,
    plan_options,
    plan_trials,
    pooled_outcomes,
    real_ending_of,
    row_of,
    rows_of,
    run_trial,
    voice_lag_ms,
)
from loadtests.bench_latency import BenchError
from loadtests.corpus import (
    SAMPLE_RATE_HZ,
    Utterance,
    insert_pause,
    make_utterance,
    speech_span_ms,
    voice_start_ms,
)
from loadtests.microphone import Speech
from loadtests.recorder import TurnRecorder
from loadtests.room import EchoOptions, RoomOptions
from loadtests.session import SessionError, SessionResult
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
    assert all(600 <= t.after_ms <= 1500 for t in by["backchannel"] + by["noise"])
    assert all(300 <= t.after_ms <= 900 for t in by["real"])  # PlanOptions.real_after_ms
    again = plan_trials(corpora, options, random.Random(5))
    assert [t.after_ms for t in again] == [t.after_ms for t in trials]
    assert [t.index for t in trials] == list(range(len(trials)))


def test_overlay_echo_adds_backchannels_and_noises_over_the_echo_without_changing_the_rest() -> None:
    corpora = Corpora([QUESTION], [OVERLAY], [tone_clip("noise-cough")], [tone_clip("interrupt")])
    options = PlanOptions(scenarios=["backchannel", "noise", "real"], repeat=2)
    plain = plan_trials(corpora, options, random.Random(5))
    both = plan_trials(corpora, dataclasses.replace(options, overlay_echo=True), random.Random(5))
    overlays = [t for t in both if t.scenario in ("backchannel", "noise")]
    assert [t.variant for t in overlays] == [OVERLAY.reference, f"{OVERLAY.reference}, echo"] * 2 + [
        "cough",
        "cough, echo",
    ] * 2
    echo = [t for t in overlays if t.variant.endswith(", echo")]
    assert all(t.room.echo is not None and t.delay_ms == options.real_echo_delay_ms for t in echo)
    assert all(t.room.echo is None for t in overlays if t not in echo)
    # without it the plan is what it was
    assert [t.variant for t in plain if t.scenario == "real"] == ["clean", "echo"] * 2
    assert len(plain) == 8 and len(both) == 12
    assert build_parser().parse_args(["--overlay-echo"]).overlay_echo

    def out(variant: str, config: str) -> TrialOutcome:
        return TrialOutcome(0, config, "backchannel", variant, "completed", "q", "o", overlay_sent=True)

    rows = rows_of([out("yeah", "A"), out("yeah, echo", "A")])
    assert [r.group for r in rows] == ["yeah", "yeah, echo", "clean", "echo", "all"]


def test_clips_narrow_the_plan_to_one_clip_and_a_typo_is_an_error() -> None:
    corpora = Corpora(
        [QUESTION], [OVERLAY], [tone_clip("noise-cough")], [tone_clip("int-a"), tone_clip("pauses-kal-sure")]
    )
    narrowed = only_clips(corpora, ["real"], ["kal-sure"])
    assert [c.name for c in narrowed.interruptions] == ["pauses-kal-sure"]
    trials = plan_trials(narrowed, PlanOptions(scenarios=["real"], repeat=3), random.Random(1))
    assert {t.overlay.name for t in trials if t.overlay is not None} == {"pauses-kal-sure"}
    assert only_clips(corpora, ["real"], []) is corpora
    with pytest.raises(BenchError, match="no real clip matches"):
        only_clips(corpora, ["real"], ["kal-sur3"])
    args = build_parser().parse_args(["--clips", "kal-sure,cards-002"])
    assert args.clips == "kal-sure,cards-002"


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


async def test_a_warmup_turn_is_heard_out_and_the_next_reply_is_measured() -> None:
    """--warmup-turns 1: the session asks its question once and hears the reply out (no
    overlay), then asks again; the backchannel goes over the second reply, and that is the
    reply the outcome describes."""
    script = Script(reply_audio_ms=1500, backchannel_hold_ms=300)
    async with scripted_server(script) as (url, log):
        options = quick_options(url)
        backchannel = Trial(
            0, "backchannel", "uh-huh", QUESTION, RoomOptions(), OVERLAY, after_ms=400, warmup_turns=1
        )
        outcome = await run_trial(backchannel, Target("scripted", url), options, seed=0)
    assert outcome.error is None and outcome.overlay_sent
    assert outcome.status == "completed" and outcome.pause_ms is not None and outcome.pause_ms > 0
    assert len(log.speech_end_received) == 2  # the question, twice


# --- real interruptions: replies that ended by themselves, stale audio from the voice -------------


def burst_then_tone() -> Utterance:
    """Like flite kal's "where": 200 ms of silence, a 60 ms noise burst at about -37 dBFS, 170 ms
    of silence, then 400 ms of a loud tone (the word) and 100 ms of silence."""
    rate = SAMPLE_RATE_HZ
    burst = np.random.default_rng(3).normal(0, 460, 60 * rate // 1000)
    t = np.arange(400 * rate // 1000) / rate
    parts = (np.zeros(200 * rate // 1000), burst, np.zeros(170 * rate // 1000))
    tone = np.sin(2 * np.pi * 300 * t) * 8000
    samples = np.concatenate((*parts, tone, np.zeros(100 * rate // 1000)))
    return make_utterance("burst-where", samples.astype(np.int16), rate, "where", "synthetic")


def test_the_voice_starts_with_the_first_sustained_voiced_run_not_a_burst_before_it() -> None:
    clip = burst_then_tone()
    assert clip.speech_start_ms == 200  # the first sound: the burst counts (a run of 30 ms or more)
    assert speech_span_ms(clip.samples, SAMPLE_RATE_HZ) == (200, 830)
    assert voice_start_ms(clip.samples, SAMPLE_RATE_HZ) == 430  # the tone: the word
    assert voice_lag_ms(clip) == 230
    assert voice_lag_ms(QUESTION) == 0  # a clip that opens with its voice
    silence = np.zeros(SAMPLE_RATE_HZ // 2, dtype=np.int16)
    assert voice_start_ms(silence, SAMPLE_RATE_HZ) is None


@pytest.mark.parametrize(
    ("status", "stale_ms", "expected"),
    [
        ("cancelled", 120.0, "cancelled"),  # cut: a success, however early
        ("cancelled", 900.0, "cancelled"),
        ("completed", 0.0, "ended_by_itself"),  # no audio after the interruption began
        ("completed", float(CANCEL_EXPECTED_MS), "ended_by_itself"),
        ("completed", CANCEL_EXPECTED_MS + 1.0, "missed"),  # still playing, and played on
        ("incomplete", 100.0, "ended_by_itself"),  # ended another way before a cancel was possible
        ("cancelled_other", 700.0, "missed"),
        ("completed", None, "missed"),  # no timing: no excuse
    ],
)
def test_a_real_interruptions_ending(status: Status, stale_ms: float | None, expected: RealEnding) -> None:
    assert real_ending_of(status, stale_ms) == expected


def test_a_real_trial_is_judged_from_the_interruptions_voice() -> None:
    # the reply's last delta at 2.5 s; the interruption's first sound went out at 2.1 s, its voice
    # 230 ms later: 400 ms of stale audio from the burst, 170 ms from the voice
    chunks = [(1.4 + 0.1 * i, 100) for i in range(12)]
    clip = burst_then_tone()
    real = Trial(0, "real", "clean", QUESTION, RoomOptions(), clip, 800)
    outcome = outcome_of(real, "x", recorded(reply(chunks, 2.6, "completed"), overlay_voiced_s=2.1))
    assert outcome.stale_audio_ms == pytest.approx(400)
    assert outcome.stale_from_voice_ms == pytest.approx(170)
    assert outcome.counts and outcome.real_ending == "ended_by_itself"
    # the same reply over a clip without the burst: 400 ms after the voice began, a miss
    plain = dataclasses.replace(real, overlay=OVERLAY)
    missed = outcome_of(plain, "x", recorded(reply(chunks, 2.6, "completed"), overlay_voiced_s=2.1))
    assert missed.stale_from_voice_ms == pytest.approx(400) and missed.real_ending == "missed"
    # a reply that ended between the burst and the voice left no stale audio from the voice
    early = outcome_of(real, "x", recorded(reply(chunks, 2.6, "completed"), overlay_voiced_s=2.4))
    assert early.stale_audio_ms == pytest.approx(100) and early.stale_from_voice_ms == 0.0


def real_outcome(
    status: Status, stale_ms: float | None, from_voice_ms: float | None = None, sent: bool = True
) -> TrialOutcome:
    return TrialOutcome(
        0,
        "A",
        "real",
        "clean",
        status,
        "q",
        "o",
        overlay_sent=sent,
        stale_audio_ms=stale_ms if sent else None,
        stale_from_voice_ms=from_voice_ms if sent else None,
    )


def test_real_rows_leave_out_replies_that_ended_by_themselves_and_unsent_interruptions() -> None:
    outcomes = [
        real_outcome("cancelled", 340, 110),  # a kal "where": 230 ms of burst and silence
        real_outcome("cancelled", 150, 150),
        real_outcome("completed", 250, 250),  # ended by itself
        real_outcome("completed", 680, 680),  # missed
        real_outcome("completed", None, sent=False),  # the reply ended before the interruption
        real_outcome("error", None, sent=False),
    ]
    (row,) = [r for r in rows_of(outcomes) if r.group == "all"]
    assert (row.trials, row.n, row.unsent, row.ended_by_itself, row.playing) == (6, 4, 1, 1, 3)
    assert row.cancelled == 2 and row.rate == pytest.approx(2 / 3)
    assert row.stale_max == 340 and row.voice_stale_max == 150  # cancelled replies only
    assert row.stale_p50 == pytest.approx(245) and row.voice_stale_p50 == pytest.approx(130)
    table = format_rows([row])
    assert "cancelled, of the replies still playing 300 ms" in table
    assert "from voice p50/p90/max" in table and "(+2)" in table
    every_reply_ended = row_of("real", "all", "A", [real_outcome("completed", 0, 0)])
    assert every_reply_ended.playing == 0 and every_reply_ended.rate is None


def test_the_pool_reads_files_without_the_new_fields(tmp_path: Path) -> None:
    """A file from before stale_from_voice_ms: its real trials are judged from the first sound,
    and the rows show no figure from the voice."""
    old = real_outcome("completed", 250)
    trial_json = {k: v for k, v in dataclasses.asdict(old).items() if k != "stale_from_voice_ms"}
    missed = {**trial_json, "stale_audio_ms": 681.0}
    cancelled = {**trial_json, "status": "cancelled", "stale_audio_ms": 333.0}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"trials": [trial_json, missed, cancelled]}))
    outcomes = pooled_outcomes([f"old={path}"])
    assert [o.real_ending for o in outcomes] == ["ended_by_itself", "missed", "cancelled"]
    (row,) = [r for r in rows_of(outcomes) if r.group == "all"]
    assert row.config == "old" and row.playing == 2 and row.rate == pytest.approx(1 / 2)
    assert row.stale_max == 333 and row.voice_stale_max is None
    assert "old" in format_rows(rows_of(outcomes))


def test_the_pool_keeps_a_compare_runs_configs_without_a_label(tmp_path: Path) -> None:
    trials = [
        {**dataclasses.asdict(real_outcome("cancelled", 150, 150)), "config": "before"},
        {**dataclasses.asdict(real_outcome("cancelled", 120, 120)), "config": "after"},
    ]
    for name in ("run-1.json", "run-2.json"):
        (tmp_path / name).write_text(json.dumps({"trials": trials}))
    outcomes = pooled_outcomes([str(tmp_path / "run-1.json"), str(tmp_path / "run-2.json")])
    assert sorted(o.config for o in outcomes) == ["after", "after", "before", "before"]
    assert {o.config for o in pooled_outcomes([f"x={tmp_path / 'run-1.json'}"])} == {"x"}
    with pytest.raises(BenchError, match="LABEL=FILE or FILE"):
        pooled_outcomes([f"={tmp_path / 'run-1.json'}"])


def test_the_real_scenario_has_its_own_delay_range() -> None:
    options = plan_options(build_parser().parse_args([]))
    assert options.real_after_ms == (300, 900) and options.after_ms == (600, 1500)
    args = build_parser().parse_args(["--real-after-ms", "200,400", "--after-ms", "700-800"])
    assert (plan_options(args).real_after_ms, plan_options(args).after_ms) == ((200, 400), (700, 800))
    for bad in ("200,x", "900,300"):
        with pytest.raises(BenchError):
            plan_options(build_parser().parse_args(["--real-after-ms", bad]))


def test_a_listener_led_interruption_takes_the_floor_after_its_pause() -> None:
    """ "okay ... but where is my order": the listener's word rightly resumes the reply, so
    the voice that takes the floor is the one after the pause."""
    rate = SAMPLE_RATE_HZ
    t = np.arange(300 * rate // 1000) / rate
    word = (np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16)
    gap = np.zeros(200 * rate // 1000, np.int16)
    whole = make_utterance("okay-but", np.concatenate((gap, word, word, gap)), rate, "okay but", "synthetic")
    clip = insert_pause(whole, whole.speech_start_ms + 300, 400, "pauses-test-okay-but")
    assert is_listener_led(clip.name) and not is_listener_led("int-kal-where-is-my-order")
    lag = voice_lag_ms(clip)
    assert 300 + 400 - 20 <= lag <= 300 + 400 + 20  # the second word, after the pause (faded edges)
    assert voice_lag_ms(whole) == 0
    led = dataclasses.replace(real_outcome("cancelled", 900, 150), overlay=clip.name)
    rows = {r.group: r for r in rows_of([led, real_outcome("cancelled", 120, 120)])}
    assert rows["listener-led"].n == 1 and rows["sentences"].n == 1 and rows["all"].n == 2


def test_a_session_that_timed_out_after_the_interruption_is_a_miss_not_a_bench_error() -> None:
    """Live, a caller whose interruption was taken for a listener's and whose words were then
    lost was never answered: the session timed out waiting. That counts as a miss (under
    `other`), not as an error left out of the rate."""
    chunks = [(1.4 + 0.1 * i, 100) for i in range(12)]
    session = recorded(reply(chunks, 2.55, "completed"), overlay_voiced_s=2.25)
    session.errors.append(SessionError("timeout", "turn 0: no response.done within 30 s", 32000.0))
    stuck = outcome_of(trial("real"), "x", session)
    assert stuck.status == "error" and stuck.stuck and stuck.counts
    assert stuck.real_ending == "missed"
    row = row_of("real", "all", "x", [stuck])
    assert (row.playing, row.cancelled, row.other, row.rate) == (1, 0, 1, 0.0)
    # before the interruption went out, a timeout is the bench's (or the server's) fault
    unsent = recorded(reply(chunks, 2.55, "completed"), overlay_voiced_s=None)
    unsent.errors.append(SessionError("timeout", "turn 0: no response.done within 30 s", 32000.0))
    assert not outcome_of(trial("real"), "x", unsent).counts
