"""The load test's arithmetic without a network: HDR histograms, targets and verdicts, sweep
capacity, the Prometheus view, planning, merging, counting, the CSV and the plots."""

from __future__ import annotations

import csv
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loadtests.gateway_overhead import cpu_seconds
from loadtests.histogram import LatencyHistogram, merge
from loadtests.load import CallerSession, LoadPlan, LoadResult, LoadSnapshot, plan_call, turns_needed
from loadtests.loadtest import build_parser, check_url, parse_range_ms, room_options, settings_from_args
from loadtests.plot import plot_distribution, plot_sweep
from loadtests.prometheus import HistogramState, ScrapeError, metrics_url, parse_metrics, stage_view
from loadtests.recorder import BargeInResult, TurnResult
from loadtests.report import (
    METRIC_NAMES,
    count,
    format_step,
    histograms_of,
    summarize_step,
    write_samples_csv,
)
from loadtests.session import SessionError, SessionOptions, SessionResult
from loadtests.step import merge_results, merge_snapshots
from loadtests.target import (
    Capacity,
    capacity,
    check_targets,
    parse_duration_s,
    parse_sweep,
    parse_target,
    verdict_line,
)
from tests.loadtests.scripted_server import tone_clip

# --- HDR histograms ---------------------------------------------------------------------------


def test_histogram_percentiles_are_within_a_thousandth_of_exact() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(mean=np.log(400), sigma=0.4, size=5000)
    histogram = LatencyHistogram.of(float(v) for v in values)
    summary = histogram.summary()
    assert summary is not None and summary.n == 5000
    for stat, percentile in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        # the HDR value is the highest value equivalent to the sample at that rank
        exact = float(np.percentile(values, percentile, method="inverted_cdf"))
        assert summary.stat(stat) == pytest.approx(exact, rel=1e-3), stat
    assert summary.max == pytest.approx(values.max(), rel=1e-3)
    assert summary.min == pytest.approx(values.min(), rel=1e-3)
    assert summary.mean == pytest.approx(values.mean(), rel=1e-3)


def test_histograms_merge_exactly_and_survive_encoding() -> None:
    a = LatencyHistogram.of([10.0, 20.0, 30.0])
    b = LatencyHistogram.of([40.0, 500.0, -2.0, None])
    assert b.clamped == 1 and b.count == 3  # the negative one is recorded as 0; None is not
    decoded = LatencyHistogram.decode(b.encode(), b.clamped)
    merged = merge([a, decoded])
    together = LatencyHistogram.of([10.0, 20.0, 30.0, 40.0, 500.0, 0.0])
    assert merged.summary() == together.summary()
    assert merged.clamped == 1
    assert LatencyHistogram().summary() is None


# --- targets, verdicts, capacity -------------------------------------------------------------------


def test_durations_ranges_and_sweeps_parse() -> None:
    assert parse_duration_s("60s") == 60 and parse_duration_s("2m") == 120
    assert parse_duration_s("500ms") == 0.5 and parse_duration_s("1.5") == 1.5
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s("soon")
    assert parse_range_ms("300ms-900ms") == (300, 900) and parse_range_ms("1s") == (1000, 1000)
    with pytest.raises(ValueError, match="ends before"):
        parse_range_ms("2s-1s")
    assert parse_sweep("1,2,4,8") == [1, 2, 4, 8]
    for bad in ("4,2", "0,1", "1,1", "a"):
        with pytest.raises(ValueError, match="sweep"):
            parse_sweep(bad)


def test_targets_parse_and_judge() -> None:
    v2v = parse_target("voice_to_voice_p95=500ms", METRIC_NAMES)
    assert (v2v.metric, v2v.stat, v2v.limit) == ("voice_to_voice", "p95", 500.0)
    assert parse_target("barge_in_reaction_p99=0.3s", METRIC_NAMES).limit == pytest.approx(300)
    failed = parse_target("failed_turns=1%", METRIC_NAMES)
    assert failed.limit == pytest.approx(0.01)
    for bad in ("voice_to_voice_p42=1s", "nothing_p95=1s", "voice_to_voice_p95", "failed_turns=150%"):
        with pytest.raises(ValueError):
            parse_target(bad, METRIC_NAMES)
    summaries = {"voice_to_voice": LatencyHistogram.of([400.0] * 95 + [600.0] * 5).summary()}
    checks = check_targets([v2v, failed], summaries, failed_share=0.0)
    assert [c.is_met for c in checks] == [True, True]
    assert verdict_line(checks) == "PASS: voice_to_voice_p95 400 ms <= 500 ms; failed_turns 0.0% <= 1.0%"
    slower = {"voice_to_voice": LatencyHistogram.of([400.0] * 90 + [600.0] * 10).summary()}
    line = verdict_line(check_targets([v2v, failed], slower, failed_share=0.05))
    assert line.startswith("FAIL: ") and "600 ms > 500 ms" in line and "5.0% > 1.0%" in line
    nothing = verdict_line(check_targets([v2v], {"voice_to_voice": None}, None))
    assert nothing == "FAIL: voice_to_voice_p95: no samples (target 500 ms)"


def test_capacity_is_the_last_count_before_the_first_miss() -> None:
    assert capacity([(1, True), (2, True), (4, False), (8, True)]) == Capacity(2, 4)
    assert capacity([(1, True), (2, True)]) == Capacity(2, None)
    assert capacity([(1, False), (2, True)]) == Capacity(None, 1)
    assert "2 sessions (targets missed from 4 on)" == Capacity(2, 4).describe()
    assert "at least 2" in Capacity(2, None).describe()
    assert "below 1" in Capacity(None, 1).describe()


def test_only_websocket_urls_are_targeted() -> None:
    assert check_url("ws://127.0.0.1:8000/v1/realtime")
    for bad in ("http://127.0.0.1:8000/", "ws:///v1/realtime", "127.0.0.1:8000"):
        with pytest.raises(Exception, match="ws://"):
            check_url(bad)
    assert metrics_url("wss://voice.example:443/v1/realtime?model=x") == "https://voice.example:443/metrics"


# --- the server's view -------------------------------------------------------------------------------


def test_prometheus_delta_and_bucket_quantiles() -> None:
    registry = CollectorRegistry()
    latency = Histogram(
        "voxgate_voice_to_voice_seconds", "v2v", buckets=(0.1, 0.2, 0.4, 0.8), registry=registry
    )
    turns = Counter("voxgate_turns", "turns", ["status"], registry=registry)
    latency.observe(5.0)  # before the run: must not count
    before = parse_metrics(generate_latest(registry).decode())
    for value in [0.15] * 10 + [0.3] * 10:
        latency.observe(value)
    turns.labels(status="completed").inc(20)
    delta = parse_metrics(generate_latest(registry).decode()).minus(before)
    state = delta.histograms["voxgate_voice_to_voice_seconds"]
    assert state.count == 20 and state.sum == pytest.approx(4.5)
    # rank 10 of 20 falls at the top of the (0.1, 0.2] bucket; rank 19 in (0.2, 0.4]
    assert state.quantile(0.5) == pytest.approx(0.2)
    assert state.quantile(0.95) == pytest.approx(0.2 + 0.2 * 9 / 10)
    assert delta.counters == {'voxgate_turns_total{status="completed"}': 20.0}
    (row,) = stage_view(delta)
    assert (row.name, row.count) == ("voxgate_voice_to_voice_seconds", 20)
    assert row.mean_ms == pytest.approx(225) and row.p50_ms == pytest.approx(200)
    inf_only = HistogramState(((0.1, 0.0), (float("inf"), 3.0)), 3.0, 30.0)
    assert inf_only.quantile(0.5) == 0.1  # past the last finite bound: that bound, as Prometheus does
    with pytest.raises(ScrapeError):
        parse_metrics("this is { not prometheus")


def test_prometheus_keys_leave_out_the_server_replica_label() -> None:
    text = (
        "# TYPE voxgate_sessions_total counter\n"
        'voxgate_sessions_total{replica="a"} 3.0\n'
        "# TYPE voxgate_worker_sessions_active gauge\n"
        'voxgate_worker_sessions_active{pid="11",replica="a"} 2.0\n'
        "# TYPE voxgate_asr_final_seconds histogram\n"
        'voxgate_asr_final_seconds_bucket{le="0.1",replica="a"} 1.0\n'
        'voxgate_asr_final_seconds_bucket{le="+Inf",replica="a"} 2.0\n'
        'voxgate_asr_final_seconds_bucket{le="0.1",replica="b"} 1.0\n'
        'voxgate_asr_final_seconds_bucket{le="+Inf",replica="b"} 1.0\n'
        'voxgate_asr_final_seconds_count{replica="a"} 2.0\n'
        'voxgate_asr_final_seconds_count{replica="b"} 1.0\n'
    )
    snapshot = parse_metrics(text)
    assert snapshot.counters == {"voxgate_sessions_total": 3.0}
    assert snapshot.gauges == {'voxgate_worker_sessions_active{pid="11"}': 2.0}
    merged = snapshot.histograms["voxgate_asr_final_seconds"]  # two replicas' samples added up
    assert merged.buckets == ((0.1, 2.0), (float("inf"), 3.0)) and merged.count == 3.0


# --- planning and merging ----------------------------------------------------------------------------


def test_callers_plan_reproducibly_with_the_barge_in_rate() -> None:
    corpus = [tone_clip("a"), tone_clip("b"), tone_clip("c")]
    kwargs = {"barge_in_rate": 0.3, "barge_in_after_ms": (200, 400), "pause_ms": (500, 900)}
    plans = plan_call(corpus, random.Random("0:7"), 2000, **kwargs)  # type: ignore[arg-type]
    again = plan_call(corpus, random.Random("0:7"), 2000, **kwargs)  # type: ignore[arg-type]
    assert [(p.utterance.name, p.pause_ms) for p in plans] == [(p.utterance.name, p.pause_ms) for p in again]
    interrupted = [p for p in plans if p.barge_in is not None]
    assert 0.25 < len(interrupted) / len(plans) < 0.35
    for plan in interrupted:
        assert plan.barge_in is not None and plan.barge_in.utterance is not plan.utterance
        assert 200 <= plan.barge_in.after_ms <= 400
    assert all(p.pause_ms is not None and 500 <= p.pause_ms <= 900 for p in plans)
    load_plan = LoadPlan(SessionOptions(url="ws://x"), sessions=2, duration_s=60, pause_ms=(800, 2000))
    assert turns_needed(corpus, load_plan) == math.ceil(60 / 1.8) + 2  # clips of 1 s, pauses from 0.8 s
    with pytest.raises(ValueError):
        LoadPlan(SessionOptions(url="ws://x"), sessions=0, duration_s=1)


def _turn(index: int, v2v: float | None, **fields: object) -> TurnResult:
    turn = TurnResult(index, "turn", "u", "synthetic", "ref", 1000, 800, voice_to_voice_ms=v2v)
    for name, value in fields.items():
        setattr(turn, name, value)
    return turn


def _session(
    caller: int, turns: list[TurnResult], *, connected: bool = True, errors: int = 0
) -> CallerSession:
    result = SessionResult(url="ws://x", connect_ms=5.0 if connected else None, turns=turns)
    result.errors = [SessionError("closed", "gone", 1.0)] * errors
    return CallerSession(caller, 0, 0.0, result, ended_s=10.0)


def _load_result(sessions: list[CallerSession]) -> LoadResult:
    plan = LoadPlan(SessionOptions(url="ws://x"), sessions=len(sessions), duration_s=10)
    return LoadResult(plan, sessions, callers=len(sessions), wall_s=10.0, client_cpu_s=1.0)


def test_counts_and_report_of_a_step(tmp_path: Path) -> None:
    barge_in = BargeInResult("b", 500, sent=True, reaction_ms=120.0, audio_after_interrupt_ms=100.0)
    barge_in.status, barge_in.reason = "cancelled", "turn_detected"
    good = [
        _turn(0, 400.0, response_status="completed", reply_audio_ms=1000.0, endpoint_to_audio_ms=3.0),
        _turn(1, 450.0, response_status="cancelled", reply_audio_ms=500.0, barge_in=barge_in),
        _turn(
            2, 420.0, response_status="completed", reply_audio_ms=900.0, audio_stalls=2, audio_stall_ms=80.0
        ),
    ]
    bad = [
        _turn(0, None, error="closed"),
        _turn(1, 380.0, response_status="completed", reply_audio_ms=0.0, malformed_audio=2),
    ]
    sessions = [_session(0, good), _session(1, bad, errors=1), _session(2, [], connected=False)]
    result = _load_result(sessions)
    counts = count(result)
    assert (counts.sessions, counts.refused, counts.dropped, counts.turns, counts.measured) == (3, 1, 1, 5, 4)
    assert (counts.failed_turns, counts.replies_without_audio) == (2, 1)
    assert (counts.gaps, counts.turns_with_gaps, counts.gap_ms) == (2, 1, 80.0)
    assert counts.malformed == 2 and counts.errors == {"closed": 1}
    assert counts.barge_ins["sent"] == 1 and counts.barge_ins["cancelled"] == 1
    assert counts.failed_share == pytest.approx((2 + 1) / (5 + 1))  # the refused session counts once
    histograms = histograms_of(result.sessions)
    assert histograms["voice_to_voice"].count == 4 and histograms["connect"].count == 2
    assert histograms["barge_in_reaction"].summary() is not None
    targets = [parse_target("voice_to_voice_p95=500ms", METRIC_NAMES)]
    step = summarize_step(result, histograms, targets)
    assert step.is_met
    text = format_step(step)
    assert "voice_to_voice" in text and "verdict: PASS" in text and "1 refused, 1 dropped" in text
    assert "server /metrics: not available" in text
    path = tmp_path / "samples.csv"
    assert write_samples_csv([step], path) == 5
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["voice_to_voice_ms"] == "400.0" and rows[3]["error"] == "closed"
    assert rows[1]["barge_in_reaction_ms"] == "120.0" and rows[3]["voice_to_voice_ms"] == ""


def test_worker_results_and_snapshots_merge() -> None:
    plan = LoadPlan(SessionOptions(url="ws://x"), sessions=4, duration_s=10)
    a = LoadResult(
        plan, [_session(2, [_turn(0, 1.0)]), _session(0, [])], callers=2, wall_s=11, client_cpu_s=2
    )
    b = LoadResult(plan, [_session(1, [])], callers=2, wall_s=12, client_cpu_s=3, hard_stopped=True)
    merged = merge_results(plan, [a, b])
    assert [s.caller for s in merged.sessions] == [0, 1, 2]
    assert (merged.callers, merged.wall_s, merged.client_cpu_s, merged.hard_stopped) == (4, 12, 5, True)
    snap = LoadSnapshot(5.0, 2, 3, 2, 1, 0, 10, 1, 2, 4.0, (1.0,))
    later = LoadSnapshot(6.0, 2, 2, 2, 0, 1, 5, 0, 1, 9.0, (2.0,))
    both = merge_snapshots([snap, later], [1.0, 2.0, 3.0])
    assert (both.elapsed_s, both.callers, both.turns, both.refused, both.dropped) == (6.0, 4, 15, 1, 1)
    assert both.max_lateness_ms == 9.0 and both.voice_to_voice_new == (1.0, 2.0, 3.0)


def test_plots_are_png_files_drawn_with_agg(tmp_path: Path) -> None:
    steps = []
    for n, latency in ((1, 300.0), (2, 450.0), (4, 700.0)):
        turns = [_turn(i, latency + i, endpoint_to_audio_ms=2.0 + i) for i in range(20)]
        result = _load_result([_session(k, turns) for k in range(n)])
        targets = [parse_target("voice_to_voice_p95=500ms", METRIC_NAMES)]
        steps.append(summarize_step(result, histograms_of(result.sessions), targets))
    distribution = plot_distribution(steps[0], tmp_path / "d.png", [])
    sweep = plot_sweep(steps, tmp_path / "s.png", [], capacity([(s.sessions, s.is_met) for s in steps]))
    for path in (distribution, sweep):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_cpu_seconds_from_proc() -> None:
    sum(i * i for i in range(200_000))  # burn a little CPU
    used = cpu_seconds(os.getpid())
    assert used is not None and used > 0
    assert cpu_seconds(2**22 + 12345) is None


def test_callers_say_backchannels_over_the_replies_not_talked_over() -> None:
    corpus = [tone_clip("a"), tone_clip("b")]
    backchannels = [tone_clip("bc-yeah", reference="yeah")]
    plans = plan_call(
        corpus,
        random.Random("0:1"),
        2000,
        barge_in_rate=0.2,
        barge_in_after_ms=(200, 400),
        pause_ms=(500, 900),
        backchannel_rate=0.5,
        backchannel_after_ms=(600, 1500),
        backchannels=backchannels,
    )
    overlays = [p.barge_in for p in plans if p.barge_in is not None and not p.barge_in.expects_reply]
    interruptions = [p.barge_in for p in plans if p.barge_in is not None and p.barge_in.expects_reply]
    assert 0.15 < len(interruptions) / len(plans) < 0.25
    assert 0.35 < len(overlays) / len(plans) < 0.45  # half of the 80 % not talked over
    assert all(b.utterance.name == "bc-yeah" and 600 <= b.after_ms <= 1500 for b in overlays)
    with pytest.raises(ValueError, match="backchannel clips"):
        LoadPlan(SessionOptions(url="ws://x"), sessions=1, duration_s=1, backchannel_rate=0.3)


def test_counts_of_self_interruptions_and_backchannels() -> None:
    def overlay(sent: bool, stall_ms: float) -> BargeInResult:
        return BargeInResult("bc", 800, expects_reply=False, sent=sent, max_stall_after_interrupt_ms=stall_ms)

    real = BargeInResult("b", 500, sent=True, reaction_ms=200.0)
    turns = [
        _turn(0, 400.0, response_status="cancelled", response_reason="turn_detected"),  # echo
        _turn(1, 400.0, response_status="cancelled", response_reason="turn_detected", barge_in=real),
        _turn(2, 400.0, response_status="completed", barge_in=overlay(True, 300.0)),
        _turn(
            3,
            400.0,
            response_status="cancelled",
            response_reason="turn_detected",
            barge_in=overlay(True, 0.0),
        ),
        _turn(4, 400.0, response_status="completed", barge_in=overlay(False, 0.0)),
    ]
    result = _load_result([_session(0, turns)])
    counts = count(result)
    assert counts.self_interruptions == 2  # the echo, and the reply a backchannel cancelled
    assert counts.backchannels == {
        "planned": 3,
        "sent": 2,
        "completed": 1,
        "cancelled": 1,
        "reply_ended_first": 1,
    }
    assert counts.barge_ins["planned"] == 1 and counts.barge_ins["cancelled"] == 0  # status not on it
    histograms = histograms_of(result.sessions)
    assert histograms["backchannel_pause"].count == 2 and histograms["barge_in_reaction"].count == 1
    text = format_step(summarize_step(result, histograms, []))
    assert "backchannels: 3 planned, 2 said over a reply: 1 replies completed (50%)" in text
    assert "self-interruptions: 2 replies" in text


def test_loadtest_options_build_the_room_and_load_backchannels(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["--url", "ws://x/v1/realtime", "--echo-db", "-12", "--echo-delay-ms", "80", "--noise-db", "-55"]
    )
    room = room_options(args)
    assert room is not None and room.echo is not None and room.noise_db == -55
    assert (room.echo.level_db, room.echo.delay_ms, room.echo.rt60_s) == (-12, 80, 0.3)
    assert room_options(build_parser().parse_args(["--url", "ws://x/v1/realtime"])) is None
    settings = settings_from_args(args)
    assert settings.plan.room == room and settings.plan.backchannels == ()
