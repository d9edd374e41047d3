"""PNG plots of a load test, drawn with matplotlib's Agg renderer (no display, no pyplot state).

- `plot_distribution(step, path)`: one session count. Left, latency by percentile (HDR style:
  the x axis stretches the tail, 50 % .. 99.9 %) for every latency metric with samples; right,
  a histogram of the voice-to-voice samples with their p50 and p95 and the target.
- `plot_sweep(steps, path)`: latency against concurrency (voice-to-voice p50/p95/p99,
  endpoint-to-audio p95), the target and the capacity found; failed turns on a second panel.

matplotlib is imported inside the functions: it is an optional extra (`loadtest`), and the
load test runs and reports without it (`PlotUnavailable`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from loadtests.report import METRICS, StepReport
from loadtests.target import Capacity, Target

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PERCENTILE_TICKS: Final = (0.0, 50.0, 90.0, 99.0, 99.9)
CURVE_PERCENTILES: Final = tuple(
    sorted({round(100 * (1 - 10 ** (-k / 20)), 4) for k in range(0, 61)} | {99.9})
)  # 0 .. 99.9 %, evenly spaced on the stretched axis


class PlotUnavailable(Exception):
    """matplotlib is not installed (pip install 'voxgate[loadtest]')."""


def agg_figure(width_in: float, height_in: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailable("matplotlib is not installed: pip install 'voxgate[loadtest]'") from exc
    figure = Figure(figsize=(width_in, height_in), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)  # the Agg renderer: PNG without a display
    return figure


def stretched_percentile(percentile: float) -> float:
    """x position of a percentile: -log10(1 - p), so 90 % -> 1, 99 % -> 2, 99.9 % -> 3."""
    return -math.log10(max(1e-6, 1 - percentile / 100))


def _latency_target(targets: Sequence[Target], metric: str = "voice_to_voice") -> Target | None:
    return next((t for t in targets if t.metric == metric), None)


def plot_distribution(step: StepReport, path: Path, targets: Sequence[Target] = ()) -> Path:
    figure = agg_figure(12, 4.8)
    curves, histogram = figure.subplots(1, 2)
    for name, hist in step.histograms.items():
        if hist.count == 0 or name not in METRICS:
            continue
        xs = [stretched_percentile(p) for p in CURVE_PERCENTILES]
        curves.plot(xs, hist.percentiles(CURVE_PERCENTILES), label=f"{name} (n={hist.count})")
    curves.set_xticks(
        [stretched_percentile(p) for p in PERCENTILE_TICKS], [f"{p:g}%" for p in PERCENTILE_TICKS]
    )
    curves.set_xlabel("percentile")
    curves.set_yscale("symlog", linthresh=10.0)  # from a few ms (gateway) to seconds (replies)
    curves.set_ylabel("latency (ms, log above 10)")
    curves.set_title(f"latency by percentile, {step.sessions} concurrent sessions")
    curves.grid(True, alpha=0.3)
    if curves.has_data():
        curves.legend(fontsize="small")
    samples = [t.voice_to_voice_ms for t in step.result.turns() if t.voice_to_voice_ms is not None]
    if samples:
        histogram.hist(samples, bins=min(60, max(10, len(samples) // 5)), color="tab:blue", alpha=0.75)
        summary = step.summaries.get("voice_to_voice")
        if summary is not None:
            histogram.axvline(summary.p50, color="black", linestyle="--", label=f"p50 {summary.p50:.0f} ms")
            histogram.axvline(
                summary.p95, color="tab:orange", linestyle="--", label=f"p95 {summary.p95:.0f} ms"
            )
        target = _latency_target(targets)
        if target is not None:
            histogram.axvline(
                target.limit, color="tab:red", label=f"target {target.label} {target.limit:g} ms"
            )
        histogram.legend(fontsize="small")
    else:
        histogram.text(0.5, 0.5, "no voice-to-voice samples", ha="center", va="center")
    histogram.set_xlabel("voice-to-voice latency (ms)")
    histogram.set_ylabel("turns")
    histogram.set_title("voice-to-voice distribution")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def plot_sweep(
    steps: Sequence[StepReport], path: Path, targets: Sequence[Target] = (), found: Capacity | None = None
) -> Path:
    figure = agg_figure(12, 4.8)
    latency, failures = figure.subplots(1, 2)
    sessions = [step.sessions for step in steps]

    def series(metric: str, stat: str) -> list[float]:
        values = []
        for step in steps:
            s = step.summaries.get(metric)
            values.append(math.nan if s is None else s.stat(stat))
        return values

    for stat, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        latency.plot(sessions, series("voice_to_voice", stat), style, label=f"voice_to_voice {stat}")
    latency.plot(sessions, series("endpoint_to_audio", "p95"), "x:", label="endpoint_to_audio p95")
    for target in targets:
        if target.metric in ("voice_to_voice", "endpoint_to_audio"):
            latency.axhline(target.limit, color="tab:red", linestyle="--", label=f"target {target.label}")
    if found is not None and found.sessions is not None:
        latency.axvline(found.sessions, color="tab:green", linestyle=":", label=f"capacity {found.sessions}")
    if len(sessions) > 1 and sessions[-1] / sessions[0] >= 8:
        latency.set_xscale("log", base=2)
    latency.set_xticks(sessions, [str(n) for n in sessions])
    latency.set_xlabel("concurrent sessions")
    latency.set_ylabel("latency (ms)")
    latency.set_title("latency vs concurrency")
    latency.grid(True, alpha=0.3)
    latency.legend(fontsize="small")
    shares = [100 * (step.counts.failed_share or 0.0) for step in steps]
    failures.bar([str(n) for n in sessions], shares, color="tab:red", alpha=0.7)
    failures.set_ylim(0, max(1.0, *shares) * 1.2)
    for x, (step, share) in enumerate(zip(steps, shares, strict=True)):
        c = step.counts
        failures.annotate(
            f"{c.failed_turns} failed\n{c.refused} refused\n{c.dropped} dropped",
            (x, share),
            ha="center",
            va="bottom",
            fontsize="x-small",
        )
    failures.set_xlabel("concurrent sessions")
    failures.set_ylabel("failed turns (% of attempts)")
    failures.set_title("failures")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
