"""Prometheus metrics: per-stage latency histograms and session counters.

One `Metrics` per app (its own registry), so tests and embedded apps do not collide.

Worker processes (`voxgate serve --workers N`, server/http/workers.py): prometheus-client's
multiprocess mode. The supervisor empties a directory and sets PROMETHEUS_MULTIPROC_DIR for
the workers before they start (prometheus_client picks its value store when it is first
imported, so it must be set before that); every worker writes its values to files there and
any worker's /metrics merges them all: one view per machine, whichever worker answers.
Counters and histograms are summed over the workers (a dead worker's counts stay);
`voxgate_sessions_active` is the sum over the live workers and
`voxgate_worker_sessions_active{pid=...}` each live worker's own (the supervisor marks a dead
worker's files dead, `forget_worker`). Without the variable, as in tests and a single process,
`render()` reads this app's registry.

Every sample carries `replica="<replica_id>"` when one is given (settings: the host name
unless VOXGATE_REPLICA_ID), so scrapes of several machines stay apart when summed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

# prometheus-client's own variable: set, every value lives in a file in this directory
MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Fine below one second, where a voice server lives; coarse above.
LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.125,
    0.15,
    0.175,
    0.2,
    0.225,
    0.25,
    0.275,
    0.3,
    0.35,
    0.4,
    0.45,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1.0,
    1.25,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)


class MetricsSetupError(RuntimeError):
    """PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported: this process's
    values would be missing from the merged view."""


def multiprocess_dir() -> Path | None:
    """The shared metrics directory of this process's workers, or None (one process)."""
    path = os.environ.get(MULTIPROCESS_DIR_ENV)
    if not path:
        return None
    if values.ValueClass is values.MutexValue:
        raise MetricsSetupError(
            f"{MULTIPROCESS_DIR_ENV} was set after prometheus_client was imported; set it before"
            " the process starts"
        )
    return Path(path)


def fresh_multiprocess_dir(path: Path) -> None:
    """Make `path` an empty metrics directory (the supervisor, before any worker starts):
    files from an earlier run would be counted again."""
    path.mkdir(parents=True, exist_ok=True)
    for leftover in path.glob("*.db"):
        leftover.unlink()


def forget_worker(pid: int, path: Path) -> None:
    """A worker process ended: its live gauges (sessions it had open) leave the merged view.
    Its counters and histograms stay: what it served still happened."""
    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call] # untyped upstream


class _Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class _Labelled:
    """Another collector's metrics with `labels` added to every sample."""

    def __init__(self, source: _Collector, labels: dict[str, str]) -> None:
        self._source = source
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in self._source.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            labelled.samples = [s._replace(labels={**s.labels, **self._labels}) for s in metric.samples]
            yield labelled


class Metrics:
    def __init__(self, replica_id: str | None = None) -> None:
        """`replica_id`: the `replica` label of every sample (None: no such label)."""
        self.registry = CollectorRegistry()
        self._labels = {} if replica_id is None else {"replica": replica_id}
        self._shared_dir = multiprocess_dir()

        def hist(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, buckets=LATENCY_BUCKETS_S, registry=self.registry)

        self.voice_to_voice = hist(
            "voxgate_voice_to_voice_seconds",
            "End of user speech (as received) -> first reply audio sent",
        )
        self.asr_final = hist("voxgate_asr_final_seconds", "Turn commit -> final transcript")
        self.llm_first_token = hist("voxgate_llm_first_token_seconds", "Language model request -> first text")
        self.tts_first_audio = hist(
            "voxgate_tts_first_audio_seconds", "First phrase to speech -> its first audio"
        )
        self.turn_end_score = hist(
            "voxgate_turn_end_score_seconds",
            "semantic_vad: the caller paused -> their words scored (often at once: scored as spoken)",
        )
        self.turn_end_scores = Counter(
            "voxgate_turn_end_scores",
            "semantic_vad pauses scored, by outcome (complete, incomplete, unscored)",
            ["outcome"],
            registry=self.registry,
        )
        self.barge_in_reaction = hist(
            "voxgate_barge_in_reaction_seconds",
            "Barge-in detected (speech during a reply) -> reply audio stopped",
        )
        self.sessions_active = Gauge(
            "voxgate_sessions_active",
            "Open realtime sessions (with workers: of all live workers)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.worker_sessions_active = Gauge(
            "voxgate_worker_sessions_active",
            "Open realtime sessions of each live worker process (with workers: by pid)",
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self.sessions = Counter("voxgate_sessions", "Sessions opened", registry=self.registry)
        self.turns = Counter("voxgate_turns", "User turns committed", registry=self.registry)
        self.responses = Counter(
            "voxgate_responses", "Responses by final status", ["status"], registry=self.registry
        )
        self.interruptions = Counter(
            "voxgate_interruptions", "Replies cut by barge-in", registry=self.registry
        )
        self.false_interruptions = Counter(
            "voxgate_false_interruptions",
            "Speech over a reply that did not take the floor, by kind (backchannel, noise); the"
            " reply paused and resumed",
            ["kind"],
            registry=self.registry,
        )
        self.barge_in_silence = hist(
            "voxgate_barge_in_silence_seconds",
            "Silence the caller heard while the reply paused for speech that did not take the floor",
        )
        self.echo_frames = Counter(
            "voxgate_echo_frames",
            "VAD frames of the caller's audio explained by the reply's own echo (heard as silence)",
            registry=self.registry,
        )
        self.noise_ignored = Counter(
            "voxgate_noise_ignored", "Voiced bursts too short to be a turn", registry=self.registry
        )
        self.speculations = Counter(
            "voxgate_speculative_replies",
            "Replies prepared during the end-of-turn silence, by outcome (adopted, abandoned)",
            ["outcome"],
            registry=self.registry,
        )
        self.anticipations = Counter(
            "voxgate_anticipated_replies",
            "Replies started from the recogniser's hypothesis before the final transcript, by"
            " outcome (kept: the guess was right; discarded)",
            ["outcome"],
            registry=self.registry,
        )
        self.answers = Counter(
            "voxgate_answers",
            "Completed replies under grounding, by path (knowledge, knowledge_hedged, grounded_model,"
            " model, fallback; server/knowledge/grounding.py)",
            ["path"],
            registry=self.registry,
        )
        self.errors = Counter(
            "voxgate_errors", "Error events sent, by code", ["code"], registry=self.registry
        )
        self.refusals = Counter(
            "voxgate_sessions_refused",
            "Websocket upgrades refused by admission control, by reason (at_capacity,"
            " ip_rate_limited, key_rate_limited)",
            ["reason"],
            registry=self.registry,
        )
        self.vad_batch_frames = Histogram(
            "voxgate_vad_batch_frames",
            "VAD frames classified by one batched inference (Silero): sessions sharing each call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.session_ends = Counter(
            "voxgate_sessions_ended_by_server",
            "Sessions the server ended, by reason (max_duration, idle, slow_consumer, message_too_big)",
            ["reason"],
            registry=self.registry,
        )

        self.shared_state_failures = Counter(
            "voxgate_shared_state_failures",
            "Redis commands that failed or timed out, by operation (rate_limit, session_slot,"
            " slot_release, slot_renewal, slot_counts, client_secret, call_parameters); each"
            " limit's fallback applied (docs/operations.md)",
            ["operation"],
            registry=self.registry,
        )

    def session_opened(self) -> None:
        self.sessions.inc()
        self.sessions_active.inc()
        self.worker_sessions_active.inc()

    def session_closed(self) -> None:
        self.sessions_active.dec()
        self.worker_sessions_active.dec()

    def render(self) -> bytes:
        """Prometheus text: this app's metrics, or with workers those of every worker."""
        source: _Collector = (
            self.registry
            if self._shared_dir is None
            else multiprocess.MultiProcessCollector(None, path=str(self._shared_dir))  # type: ignore[no-untyped-call] # untyped upstream
        )
        view = CollectorRegistry()
        view.register(_Labelled(source, self._labels))
        return generate_latest(view)
