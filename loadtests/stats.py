"""Percentiles of latency samples.

Exact percentiles over the raw samples with numpy (linear interpolation between order
statistics, numpy's default). The benchmark keeps every sample, so no histogram is needed at
its sizes; an HDR histogram (the optional `hdrhistogram` package) only pays off once a load
test collects millions of samples, and would quantise them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, slots=True)
class Summary:
    """Distribution of one metric. Values are in the samples' unit (milliseconds here)."""

    n: int
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    min: float


def summarize(samples: Iterable[float | None]) -> Summary | None:
    """Summary of the samples, ignoring None (a turn where the metric was not measured).

    Returns None when no sample remains.
    """
    values = np.array([s for s in samples if s is not None], dtype=np.float64)
    if values.size == 0:
        return None
    p50, p90, p95, p99 = (float(v) for v in np.percentile(values, PERCENTILES))
    return Summary(
        n=int(values.size),
        mean=float(values.mean()),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        max=float(values.max()),
        min=float(values.min()),
    )
