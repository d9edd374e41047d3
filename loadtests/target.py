"""Command-line quantities and the pass/fail logic: durations, targets, verdicts, capacity.

A target is `METRIC_STAT=VALUE`:
- a latency metric of `loadtests.report.METRICS` with a statistic (`p50`, `p90`, `p95`,
  `p99`, `p999`, `max`, `mean`) and a duration: `voice_to_voice_p95=500ms`,
  `barge_in_reaction_p99=0.3s`;
- or `failed_turns=1%`: the share of attempted turns that failed (an error, or a reply
  without audio), a refused session counting as one failed attempt (a dropped session's
  turn in progress is already a failed turn).
A target with no samples to judge is missed. The verdict passes when every target is met.

Capacity (for `--sweep`): the largest session count that met every target, provided every
smaller count tried met them too; the first count that missed one is where latency crossed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from loadtests.histogram import STATS, LatencySummary

_DURATION = re.compile(r"^\s*(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|min|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
FAILED_TURNS = "failed_turns"


def parse_duration_s(text: str) -> float:
    """'60s', '2m', '500ms', '1.5' (seconds) -> seconds; raises ValueError."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 60s, 2m)")
    return float(match["value"]) * _UNIT_S[match["unit"]]


def parse_sweep(text: str) -> list[int]:
    """'1,2,4,8' -> [1, 2, 4, 8] (ascending, positive, no repeats)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"--sweep takes session counts like 1,2,4,8, not {text!r}") from exc
    if not counts or any(c < 1 for c in counts) or counts != sorted(set(counts)):
        raise ValueError(f"--sweep takes ascending positive session counts, not {text!r}")
    return counts


@dataclass(frozen=True, slots=True)
class Target:
    """`metric`'s `stat` must be <= `limit` (ms; for failed_turns, a fraction)."""

    metric: str
    stat: str
    limit: float

    @property
    def label(self) -> str:
        if self.metric == FAILED_TURNS:
            return FAILED_TURNS
        return f"{self.metric}_{self.stat}"

    def format_limit(self) -> str:
        return f"{self.limit:.1%}" if self.metric == FAILED_TURNS else f"{self.limit:g} ms"


def parse_target(text: str, metrics: Sequence[str]) -> Target:
    """'voice_to_voice_p95=500ms' or 'failed_turns=1%'; raises ValueError naming the options."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep:
        raise ValueError(f"a target is METRIC_STAT=VALUE (e.g. voice_to_voice_p95=500ms), not {text!r}")
    if name == FAILED_TURNS:
        value = value.strip()
        fraction = float(value[:-1]) / 100 if value.endswith("%") else float(value)
        if not 0 <= fraction <= 1:
            raise ValueError(f"failed_turns takes a share like 1% or 0.01, not {value!r}")
        return Target(FAILED_TURNS, "share", fraction)
    metric, _, stat = name.rpartition("_")
    if metric not in metrics or stat not in STATS:
        raise ValueError(
            f"unknown target {name!r}: use METRIC_STAT with METRIC one of {', '.join(metrics)} "
            f"and STAT one of {', '.join(STATS)}, or failed_turns"
        )
    return Target(metric, stat, parse_duration_s(value) * 1000)


@dataclass(frozen=True, slots=True)
class TargetCheck:
    target: Target
    value: float | None  # None: no samples

    @property
    def is_met(self) -> bool:
        return self.value is not None and self.value <= self.target.limit

    def describe(self) -> str:
        t = self.target
        if self.value is None:
            return f"{t.label}: no samples (target {t.format_limit()})"
        shown = f"{self.value:.1%}" if t.metric == FAILED_TURNS else f"{self.value:.0f} ms"
        return f"{t.label} {shown} {'<=' if self.is_met else '>'} {t.format_limit()}"


def check_targets(
    targets: Sequence[Target], summaries: Mapping[str, LatencySummary | None], failed_share: float | None
) -> list[TargetCheck]:
    checks = []
    for target in targets:
        if target.metric == FAILED_TURNS:
            checks.append(TargetCheck(target, failed_share))
            continue
        summary = summaries.get(target.metric)
        checks.append(TargetCheck(target, None if summary is None else summary.stat(target.stat)))
    return checks


def verdict_line(checks: Sequence[TargetCheck]) -> str:
    """'PASS: voice_to_voice_p95 412 ms <= 500 ms; ...' or 'FAIL: ...' (one line)."""
    ok = all(check.is_met for check in checks)
    return f"{'PASS' if ok else 'FAIL'}: " + "; ".join(check.describe() for check in checks)


@dataclass(frozen=True, slots=True)
class Capacity:
    """`sessions`: the capacity (None if even the smallest count missed a target);
    `crossed_at`: the first count that missed one (None if none did: capacity is at least
    the largest count tried)."""

    sessions: int | None
    crossed_at: int | None

    def describe(self) -> str:
        if self.sessions is None and self.crossed_at is not None:
            return f"below {self.crossed_at} sessions: even {self.crossed_at} missed a target"
        if self.crossed_at is None:
            return f"at least {self.sessions} sessions: every count tried met the targets"
        return f"{self.sessions} sessions (targets missed from {self.crossed_at} on)"


def capacity(steps: Sequence[tuple[int, bool]]) -> Capacity:
    """Capacity from (sessions, met every target) pairs in ascending order of sessions."""
    best: int | None = None
    for sessions, met in steps:
        if not met:
            return Capacity(best, sessions)
        best = sessions
    return Capacity(best, None)
