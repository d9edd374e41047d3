"""Reports of paired, interleaved turn benchmarks (loadtests.remote_speech, loadtests.remote_llm):
the same utterance spoken to each configuration in a round, compared per utterance.

Samples are `loadtests.bench_latency` turn samples keyed by (round, index); warm-up turns are
left out. Per metric: each configuration's p50/p90, then each pair's paired differences.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Metric = Callable[[dict[str, Any]], float | None]

# what a spoken turn is measured by, from the end of speech in the audio
TURN_METRICS: dict[str, Metric] = {
    "voice_to_voice_ms": lambda s: s["voice_to_voice_ms"],
    "user_transcript_ms": lambda s: s["transcript_ms"],
    # the rest of the turn: the language model's first phrase and the voice's first audio for it
    "transcript_to_audio_ms": lambda s: (
        None
        if s["voice_to_voice_ms"] is None or s["transcript_ms"] is None
        else s["voice_to_voice_ms"] - s["transcript_ms"]
    ),
}


def keyed_samples(
    samples: Mapping[str, Sequence[dict[str, Any]]], configs: Sequence[str]
) -> dict[str, dict[tuple[int, int], dict[str, Any]]]:
    """Each configuration's turns by (round, index), warm-ups left out."""
    return {
        name: {(s["round"], s["index"]): s for s in samples[name] if not s["warm_up"]} for name in configs
    }


def percentiles(values: Sequence[float]) -> str:
    if not values:
        return "n=0"
    a = np.asarray(values)
    return f"p50 {np.median(a):7.0f}  p90 {np.percentile(a, 90):7.0f}  (n={len(a)})"


def paired_lines(
    keyed: Mapping[str, Mapping[tuple[int, int], dict[str, Any]]],
    metrics: Mapping[str, Metric],
    configs: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    name_width: int,
) -> list[str]:
    """Per metric: each configuration's percentiles, then `left - right` paired per turn."""
    lines = []
    for label, metric in metrics.items():
        lines.append(label)
        values = {name: {k: metric(s) for k, s in keyed[name].items()} for name in configs}
        for name in configs:
            measured = [v for v in values[name].values() if v is not None]
            lines.append(f"  {name:{name_width}s} {percentiles(measured)}")
        for left, right in pairs:
            differences = []
            for key in sorted(values[left].keys() & values[right].keys()):
                a, b = values[left][key], values[right][key]
                if a is not None and b is not None:
                    differences.append(a - b)
            if differences:
                d = np.asarray(differences)
                lines.append(
                    f"  {left} - {right}, paired: median {np.median(d):+.0f}  p10 {np.percentile(d, 10):+.0f}"
                    f"  p90 {np.percentile(d, 90):+.0f}  (n={len(d)})"
                )
    return lines
