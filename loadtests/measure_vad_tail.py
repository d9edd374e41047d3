"""How late Silero calls the end of speech, at several thresholds for the offset. Offline.

    python -m loadtests.measure_vad_tail

For each utterance of the bench corpus (flite sentences, pocketsphinx-testdata recordings),
with 500 ms of silence before and 1 s after, Silero's probability of every 32 ms frame; at
each threshold, the tail is the end of the last frame at or above it minus the end of the
speech in the audio (`Utterance.speech_end_ms`, from the signal's energy): what a turn waits
beyond its configured silence. "Dips" count voiced-to-unvoiced crossings more than 100 ms
before the end of the speech: offsets a higher threshold would call inside a sentence
(harmless in server VAD, a needless score in semantic mode). Issue 14 asked whether Silero's
own hysteresis (offset at threshold - 0.15) would shorten the tail: it lengthens it; this
measures the other direction.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence

import numpy as np
import soxr

from loadtests.corpus import SAMPLE_RATE_HZ, CorpusUnavailable, load_human, load_synthetic
from server.audio import PcmFrame
from server.vad import silero

THRESHOLDS = (0.35, 0.5, 0.65, 0.8, 0.9)
LEAD_MS = 500


def main(argv: Sequence[str] | None = None) -> int:
    try:
        utterances = load_synthetic() + load_human()
    except CorpusUnavailable as exc:
        print(f"corpus unavailable: {exc}", file=sys.stderr)
        return 2
    vad = silero.load()
    rate, frame, frame_ms = (
        silero.SAMPLE_RATE_HZ,
        silero.FRAME_MS * silero.SAMPLE_RATE_HZ // 1000,
        silero.FRAME_MS,
    )
    tails: dict[float, list[int]] = {t: [] for t in THRESHOLDS}
    dips = dict.fromkeys(THRESHOLDS, 0)
    for u in utterances:
        audio = soxr.resample(u.samples, SAMPLE_RATE_HZ, rate).astype(np.int16)
        audio = np.concatenate([np.zeros(LEAD_MS * rate // 1000, np.int16), audio, np.zeros(rate, np.int16)])
        classifier = vad.open(0.5)
        probs = [
            classifier.speech_probability(PcmFrame(audio[i : i + frame], rate))
            for i in range(0, len(audio) - frame + 1, frame)
        ]
        start_ms, end_ms = LEAD_MS + u.speech_start_ms, LEAD_MS + u.speech_end_ms
        for t in THRESHOLDS:
            voiced = [k for k, p in enumerate(probs) if p >= t and k * frame_ms < end_ms + 600]
            tails[t].append((voiced[-1] + 1) * frame_ms - end_ms if voiced else 0)
            dips[t] += sum(
                1
                for k in range(1, len(probs))
                if start_ms <= k * frame_ms < end_ms - 100 and probs[k] < t <= probs[k - 1]
            )
    print(f"{len(utterances)} utterances; tail = last frame at or above the threshold - end of speech")
    for t in THRESHOLDS:
        v = tails[t]
        print(
            f"offset threshold {t:.2f}: tail p50 {statistics.median(v):.0f} ms, p10 {np.percentile(v, 10):.0f},"
            f" p90 {np.percentile(v, 90):.0f}; dips inside speech {dips[t]}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
