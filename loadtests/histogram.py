"""Latency histograms: HDR histograms (the `hdrhistogram` package) in milliseconds.

A `LatencyHistogram` records values in ms and keeps them, in microseconds, in an HDR histogram
covering 1 µs .. 1 hour with 3 significant digits: any percentile it reports is within 0.1 % of
the exact order statistic (it reports the highest value equivalent to that sample). Memory is
fixed (a few tens of kB) whatever the number of samples, and histograms merge exactly, which is
how the load test combines its worker processes: `encode()` in the worker, `decode()` and
`add()` in the parent.

Negative values (a clock quirk: a reply "before" its origin) are recorded as 0 and counted in
`clamped`; None values are not recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]  # the package ships no types

LOWEST_US: Final = 1
HIGHEST_US: Final = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS: Final = 3
STATS: Final = ("p50", "p90", "p95", "p99", "p999", "max", "mean")
PERCENTILE_OF_STAT: Final = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0, "p999": 99.9}


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """One metric's distribution, in ms (from the HDR histogram: within 0.1 % of exact)."""

    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    p999: float
    max: float
    min: float

    def stat(self, name: str) -> float:
        """`p50` .. `p999`, `max` or `mean` by name."""
        if name not in STATS:
            raise KeyError(f"unknown statistic {name!r}; use {', '.join(STATS)}")
        value: float = getattr(self, name)
        return value


class LatencyHistogram:
    """Records latencies in ms; answers percentiles in ms. See the module docstring."""

    def __init__(self) -> None:
        self._hdr = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.clamped = 0

    @classmethod
    def of(cls, values_ms: Iterable[float | None]) -> LatencyHistogram:
        histogram = cls()
        for value in values_ms:
            histogram.record(value)
        return histogram

    def record(self, value_ms: float | None) -> None:
        if value_ms is None:
            return
        if value_ms < 0:
            self.clamped += 1
            value_ms = 0.0
        self._hdr.record_value(min(round(value_ms * 1000), HIGHEST_US))

    @property
    def count(self) -> int:
        count: int = self._hdr.get_total_count()
        return count

    def percentile(self, percentile: float) -> float:
        """The value (ms) at or below which `percentile` % of the samples lie; 0.0 if empty."""
        value: int = self._hdr.get_value_at_percentile(percentile)
        return value / 1000

    def percentiles(self, percentiles: Sequence[float]) -> list[float]:
        return [self.percentile(p) for p in percentiles]

    def summary(self) -> LatencySummary | None:
        """The distribution, or None if nothing was recorded."""
        if self.count == 0:
            return None
        hdr = self._hdr
        p50, p90, p95, p99, p999 = self.percentiles([50, 90, 95, 99, 99.9])
        return LatencySummary(
            n=self.count,
            mean=float(hdr.get_mean_value()) / 1000,
            p50=p50,
            p90=p90,
            p95=p95,
            p99=p99,
            p999=p999,
            max=int(hdr.get_max_value()) / 1000,
            min=int(hdr.get_min_value()) / 1000,
        )

    def add(self, other: LatencyHistogram) -> None:
        """Merge `other`'s samples into this histogram (exact: same bucket layout)."""
        self._hdr.add(other._hdr)
        self.clamped += other.clamped

    def encode(self) -> bytes:
        """A compact, portable form (HDR's compressed base64) for `decode()`."""
        encoded: bytes = self._hdr.encode()
        return encoded

    @classmethod
    def decode(cls, encoded: bytes, clamped: int = 0) -> LatencyHistogram:
        histogram = cls()
        histogram._hdr = HdrHistogram.decode(encoded)
        histogram.clamped = clamped
        return histogram


def merge(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
    merged = LatencyHistogram()
    for histogram in histograms:
        merged.add(histogram)
    return merged
