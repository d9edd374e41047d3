"""Would an audio end-of-turn model do better than the language model's score? Offline.

    pip install --no-deps pipecat-ai==1.14.0   # its wheel ships the model; nothing else is used
    python -m loadtests.measure_smart_turn

Pipecat's Smart Turn v3.2 (`smart-turn-v3.2-cpu.onnx`, 8.7 MB, BSD-2, inside the `pipecat-ai`
wheel on PyPI) classifies the last 8 s of a caller's audio as a finished turn or not from its
sound (Whisper-tiny encoder; intonation, lengthening, the words' rhythm), with no recogniser.
This scores it, with pipecat's own feature code so the model sees what it was trained on, on
the audio the server would hand it when the voice stops (plus 200 ms of the silence):
- the pause corpus (`loadtests.corpus.load_pauses`): each utterance cut at its mid-sentence
  pause (unfinished: should score low) and whole (finished: high);
- the bench corpus (flite sentences and pocketsphinx-testdata recordings), whole.

Reported per source: the share scored complete (> 0.5, the model's threshold) and the time of
one inference on one thread. Nothing here is used by the server.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from importlib import resources

import numpy as np
import onnxruntime as ort
import soxr
from numpy.typing import NDArray

from loadtests.corpus import SAMPLE_RATE_HZ, CorpusUnavailable, load_human, load_pauses, load_synthetic

MODEL_RATE_HZ = 16_000
WINDOW_S = 8
SILENCE_AFTER_MS = 200


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from pipecat.audio.turn.smart_turn._whisper_features import (  # type: ignore[import-not-found]
            compute_whisper_log_mel_features,
        )
    except ImportError:
        print("needs the model: pip install --no-deps pipecat-ai==1.14.0", file=sys.stderr)
        return 2
    model = resources.files("pipecat.audio.turn.smart_turn.data").joinpath("smart-turn-v3.2-cpu.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model), sess_options=options)
    times_ms: list[float] = []

    def score(samples: NDArray[np.int16]) -> float:
        audio = soxr.resample(samples.astype(np.float32) / 32768.0, SAMPLE_RATE_HZ, MODEL_RATE_HZ)
        audio = audio[-WINDOW_S * MODEL_RATE_HZ :]
        audio = np.pad(audio, (WINDOW_S * MODEL_RATE_HZ - len(audio), 0))
        features = compute_whisper_log_mel_features(audio, do_normalize=True)[np.newaxis]
        started = time.perf_counter()
        output = session.run(None, {"input_features": features})[0]
        times_ms.append((time.perf_counter() - started) * 1000)
        return float(np.asarray(output).reshape(-1)[0])

    def until(samples: NDArray[np.int16], end_ms: int) -> NDArray[np.int16]:
        return samples[: (end_ms + SILENCE_AFTER_MS) * SAMPLE_RATE_HZ // 1000]

    try:
        pauses = load_pauses()
        bench = load_synthetic() + load_human()
    except CorpusUnavailable as exc:
        print(f"corpus unavailable: {exc}", file=sys.stderr)
        return 2
    rows: list[tuple[str, str, float]] = []  # (set, name, probability)
    for u in pauses:
        assert u.pause_ms is not None
        kind = "human" if "austen" in u.name else "flite"
        rows.append(
            (
                f"pause corpus, {kind}, cut at the pause (want low)",
                u.name,
                score(until(u.samples, u.pause_ms[0])),
            )
        )
        rows.append(
            (f"pause corpus, {kind}, whole (want high)", u.name, score(until(u.samples, u.speech_end_ms)))
        )
    for u in bench:
        kind = "flite" if u.source == "synthetic" else "human"
        rows.append(
            (f"bench corpus, {kind}, whole (want high)", u.name, score(until(u.samples, u.speech_end_ms)))
        )
    for name, clip, p in rows:
        print(f"{name:52} {clip[:48]:48} {p:.3f}")
    print()
    for name in dict.fromkeys(r[0] for r in rows):
        ps = [p for n, _, p in rows if n == name]
        complete = sum(p > 0.5 for p in ps)
        print(f"{name:52} scored complete {complete}/{len(ps)} ({complete / len(ps):.0%})")
    print(f"inference, one thread: p50 {statistics.median(times_ms):.0f} ms, max {max(times_ms):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
