"""The server's own view: its Prometheus `/metrics`, scraped before and after a run.

Call order: `url = metrics_url(ws_url)`; `before = scrape(url)`; run; `after = scrape(url)`;
`view = stage_view(after.minus(before))`. Every histogram and counter is kept by its full
name and labels (`voxgate_responses_total{status="completed"}`), so any server that exports
Prometheus text works; one without `/metrics` yields a `ScrapeError` that the report prints.

Quantiles come from cumulative bucket counts, as Prometheus' `histogram_quantile` does:
linear interpolation inside the bucket where the rank falls (from 0 for the first bucket);
a rank in the +Inf bucket gives the highest finite bound. So they are estimates, as coarse as
the server's buckets; the mean (sum / count) is exact.

Only the host and port of the websocket URL the user gave are ever contacted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 5.0


class ScrapeError(Exception):
    """/metrics could not be read or parsed."""


@dataclass(frozen=True, slots=True)
class HistogramState:
    """Cumulative buckets [(upper bound, count <= bound)], ascending, ending with +Inf."""

    buckets: tuple[tuple[float, float], ...]
    count: float
    sum: float

    def minus(self, earlier: HistogramState | None) -> HistogramState:
        if earlier is None:
            return self
        before = dict(earlier.buckets)
        return HistogramState(
            buckets=tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            count=self.count - earlier.count,
            sum=self.sum - earlier.sum,
        )

    def quantile(self, q: float) -> float | None:
        """Estimated q-quantile (0 < q < 1), in the metric's unit; None without samples."""
        if self.count <= 0 or not self.buckets:
            return None
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(le):
                    return lower_bound
                if cumulative == lower_count:
                    return le
                return lower_bound + (le - lower_bound) * (rank - lower_count) / (cumulative - lower_count)
            lower_bound, lower_count = le, cumulative
        return lower_bound

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    histograms: dict[str, HistogramState] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)

    def minus(self, earlier: MetricsSnapshot) -> MetricsSnapshot:
        """What happened in between: histograms and counters differenced, gauges as now."""
        return MetricsSnapshot(
            histograms={k: h.minus(earlier.histograms.get(k)) for k, h in self.histograms.items()},
            counters={k: v - earlier.counters.get(k, 0.0) for k, v in self.counters.items()},
            gauges=dict(self.gauges),
        )


def metrics_url(ws_url: str) -> str:
    """http(s)://HOST:PORT/metrics of a ws(s):// realtime URL (same host and port)."""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a websocket URL: {ws_url!r}")
    return urlunsplit((scheme, parts.netloc, "/metrics", "", ""))


# labels that name the server scraped, not what it measured (Voxgate's `replica`): dropped from
# the keys, so a snapshot reads the same whatever the server calls itself; samples that differ
# only in them are added up
SERVER_LABELS = frozenset({"replica"})


def _key(name: str, labels: Mapping[str, str]) -> str:
    kept = {k: v for k, v in labels.items() if k not in SERVER_LABELS}
    if not kept:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(kept.items()))
    return f"{name}{{{inner}}}"


def parse_metrics(text: str) -> MetricsSnapshot:
    """Histograms, counters and gauges of a Prometheus text exposition."""
    snapshot = MetricsSnapshot()
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise ScrapeError(f"not Prometheus text: {exc}") from exc
    for family in families:
        if family.type == "histogram":
            buckets: dict[str, dict[float, float]] = {}
            counts: dict[str, float] = {}
            sums: dict[str, float] = {}
            for sample in family.samples:
                labels = {k: v for k, v in sample.labels.items() if k != "le"}
                key = _key(family.name, labels)
                if sample.name.endswith("_bucket"):
                    rows = buckets.setdefault(key, {})
                    le = float(sample.labels["le"])
                    rows[le] = rows.get(le, 0.0) + float(sample.value)
                elif sample.name.endswith("_count"):
                    counts[key] = counts.get(key, 0.0) + float(sample.value)
                elif sample.name.endswith("_sum"):
                    sums[key] = sums.get(key, 0.0) + float(sample.value)
            for key, by_le in buckets.items():
                ordered = tuple(sorted(by_le.items()))
                snapshot.histograms[key] = HistogramState(
                    ordered, counts.get(key, ordered[-1][1] if ordered else 0.0), sums.get(key, 0.0)
                )
        elif family.type in ("counter", "gauge"):
            target = snapshot.counters if family.type == "counter" else snapshot.gauges
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = _key(sample.name, sample.labels)
                target[key] = target.get(key, 0.0) + float(sample.value)
    return snapshot


def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> MetricsSnapshot:
    """GET `url` (no proxies, no redirects) and parse it; raises ScrapeError."""
    try:
        with httpx.Client(timeout=timeout_s, trust_env=False, follow_redirects=False) as client:
            response = client.get(url)
    except httpx.HTTPError as exc:
        raise ScrapeError(f"cannot read {url}: {exc!r}") from exc
    if response.status_code != 200:
        raise ScrapeError(f"{url} answered {response.status_code}")
    return parse_metrics(response.text)


@dataclass(frozen=True, slots=True)
class StageRow:
    """One server histogram over the run, in ms (p50/p95 estimated from its buckets)."""

    name: str
    count: int
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None


def stage_view(delta: MetricsSnapshot) -> list[StageRow]:
    """The histograms that saw samples during the run; `*_seconds` ones converted to ms."""
    rows = []
    for name, state in sorted(delta.histograms.items()):
        if state.count <= 0:
            continue
        scale = 1000.0 if "_seconds" in name else 1.0

        def scaled(value: float | None, scale: float = scale) -> float | None:
            return None if value is None else value * scale

        rows.append(
            StageRow(
                name=name,
                count=round(state.count),
                mean_ms=scaled(state.mean),
                p50_ms=scaled(state.quantile(0.5)),
                p95_ms=scaled(state.quantile(0.95)),
            )
        )
    return rows
