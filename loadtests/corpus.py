"""Test utterances: recorded human speech and synthetic customer-service sentences.

Every `Utterance` holds 24 kHz mono int16 samples (the Realtime API's pcm16 rate), its
reference transcript and the span of its speech, measured from the audio itself (see
`speech_span_ms`), never from a server event, so the client's clock of "when the user stopped
talking" is independent of the server under test.

Sources:
- "human": Debian's `pocketsphinx-testdata` (`goforward.raw`, `cards/*.wav`, `librivox/*.wav`),
  16 kHz recordings with transcripts; `load_human()` raises `CorpusUnavailable` without it.
- "synthetic": sentences spoken by Debian's `flite` (voice `slt`), cached as WAV files in a
  directory so a rerun does not call flite again; `load_synthetic()` raises
  `CorpusUnavailable` when flite is missing and a sentence is not cached yet.
- "file": any directory of 16-bit PCM WAV files, each with an optional transcript in a `.txt`
  file of the same name beside it (`load_directory()`).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np
import soxr
from numpy.typing import NDArray

SAMPLE_RATE_HZ: Final = 24_000
HUMAN_DATA_DIR: Final = Path("/usr/share/pocketsphinx/test/data")
DEFAULT_CACHE_DIR: Final = Path(".cache/voxgate/corpus")
FLITE_VOICE: Final = "slt"

# The energy envelope that finds speech: RMS over 10 ms frames; see `speech_span_ms`.
ENVELOPE_FRAME_MS: Final = 10
SPEECH_RELATIVE_DB: Final = 40.0  # voiced: within this of the loudest frame...
NOISE_MARGIN_DB: Final = 6.0  # ...and this far above the clip's noise floor...
SPEECH_ABSOLUTE_FLOOR_RMS: Final = 100.0  # ...and above -50 dBFS (int16 units)
MIN_VOICED_RUN_MS: Final = 30  # shorter voiced runs are clicks, not speech

Source = Literal["human", "synthetic", "file"]
SOURCES: Final[tuple[Source, ...]] = ("human", "synthetic")

SYNTHETIC_SENTENCES: Final[tuple[str, ...]] = (
    "Where is my order?",
    "I would like a refund for my last purchase.",
    "Can I talk to a human agent please?",
    "My package arrived damaged yesterday.",
    "How do I reset my password?",
    "I want to cancel my subscription.",
    "What are your opening hours on Sunday?",
    "Please change my delivery address.",
    "Why was my card charged twice this month?",
    "Thank you, that is all for today.",
)


class CorpusUnavailable(Exception):
    """A source cannot be loaded on this machine (data package or flite not installed)."""


@dataclass(frozen=True, slots=True, eq=False)
class Utterance:
    """One clip to speak. `speech_start_ms`/`speech_end_ms` bound its speech (see `speech_span_ms`)."""

    name: str
    samples: NDArray[np.int16]  # mono, SAMPLE_RATE_HZ
    reference: str
    source: Source
    speech_start_ms: int
    speech_end_ms: int

    @property
    def duration_ms(self) -> int:
        return len(self.samples) * 1000 // SAMPLE_RATE_HZ


def speech_span_ms(
    samples: NDArray[np.int16],
    sample_rate_hz: int,
    *,
    frame_ms: int = ENVELOPE_FRAME_MS,
    relative_db: float = SPEECH_RELATIVE_DB,
    noise_margin_db: float = NOISE_MARGIN_DB,
    floor_rms: float = SPEECH_ABSOLUTE_FLOOR_RMS,
    min_run_ms: int = MIN_VOICED_RUN_MS,
) -> tuple[int, int] | None:
    """(start_ms, end_ms) of the speech in a clip, or None if no frame is voiced.

    Method (an energy envelope; no model, no server):
    1. cut the clip into consecutive `frame_ms` frames (a last partial frame is zero-padded)
       and take each frame's RMS;
    2. the threshold is the largest of: the loudest frame's RMS less `relative_db`; the noise
       floor (10th percentile of frame RMS) plus `noise_margin_db`; `floor_rms`. The noise term
       matters for the recorded clips, whose background noise sits only 25-40 dB below the
       peak, so a threshold relative to the peak alone would count trailing noise as speech;
    3. frames at or above the threshold are voiced, but runs shorter than `min_run_ms` (clicks,
       lip smacks) are dropped;
    4. the span runs from the start of the first voiced frame to the end of the last one:
       `end_ms` is the end of the last voiced frame, a multiple of `frame_ms` capped at the
       clip's length.
    Checked against pocketsphinx's word alignment of the pocketsphinx-testdata and flite clips:
    `end_ms` lands within about 120 ms of the last word's end (50 ms on most clips); `start_ms`
    tends to be 20-90 ms late, since a soft first consonant ("h", "th") or breath sits near
    the noise floor, where a server's VAD may already hear voice.
    """
    step = sample_rate_hz * frame_ms // 1000
    if step <= 0 or len(samples) == 0:
        return None
    count = -(-len(samples) // step)
    padded = np.zeros(count * step, dtype=np.float64)
    padded[: len(samples)] = samples
    rms = np.sqrt(np.mean(padded.reshape(count, step) ** 2, axis=1))
    threshold = max(
        float(rms.max()) * 10 ** (-relative_db / 20),
        float(np.percentile(rms, 10)) * 10 ** (noise_margin_db / 20),
        floor_rms,
    )
    min_frames = max(1, -(-min_run_ms // frame_ms))
    runs = _runs(rms >= threshold)
    runs = [(start, end) for start, end in runs if end - start >= min_frames]
    if not runs:
        return None
    duration_ms = len(samples) * 1000 // sample_rate_hz
    return runs[0][0] * frame_ms, min(runs[-1][1] * frame_ms, duration_ms)


def _runs(flags: NDArray[np.bool_]) -> list[tuple[int, int]]:
    """[start, end) index ranges of the True runs in `flags`."""
    edges = np.diff(np.concatenate(([0], flags.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def to_24k(samples: NDArray[np.int16], sample_rate_hz: int) -> NDArray[np.int16]:
    """Resample int16 mono audio to 24 kHz with soxr (high quality), clipping to int16."""
    if sample_rate_hz == SAMPLE_RATE_HZ:
        return samples.astype(np.int16, copy=True)
    resampled = soxr.resample(samples.astype(np.float32), sample_rate_hz, SAMPLE_RATE_HZ, quality="HQ")
    return np.asarray(np.clip(np.round(resampled), -32768, 32767), dtype=np.int16)


def make_utterance(
    name: str, samples: NDArray[np.int16], sample_rate_hz: int, reference: str, source: Source
) -> Utterance:
    """An Utterance from mono int16 audio at any rate; raises ValueError if it holds no speech."""
    audio = to_24k(samples, sample_rate_hz)
    span = speech_span_ms(audio, SAMPLE_RATE_HZ)
    if span is None:
        raise ValueError(f"utterance {name!r} holds no speech above the energy threshold")
    return Utterance(
        name=name,
        samples=audio,
        reference=reference,
        source=source,
        speech_start_ms=span[0],
        speech_end_ms=span[1],
    )


def read_wav(path: Path) -> tuple[NDArray[np.int16], int]:
    """Samples (mono int16, channels averaged) and rate of a 16-bit PCM WAV file."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported, not {8 * wav.getsampwidth()}-bit")
        channels = wav.getnchannels()
        rate = wav.getframerate()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    return data.astype(np.int16), rate


def read_raw_s16le(path: Path) -> NDArray[np.int16]:
    return np.fromfile(path, dtype="<i2").astype(np.int16)


_TRANSCRIPTION_LINE = re.compile(r"^\s*(?:<s>)?\s*(?P<words>.*?)\s*(?:</s>)?\s*\((?P<fileid>[^()]+)\)\s*$")


def parse_transcription(text: str) -> dict[str, str]:
    """Sphinx transcription files: one `<s> words </s> (fileid)` per line -> {fileid: words}."""
    result: dict[str, str] = {}
    for line in text.splitlines():
        match = _TRANSCRIPTION_LINE.match(line)
        if match is not None:
            result[match["fileid"].strip()] = " ".join(match["words"].split())
    return result


def load_human(data_dir: Path = HUMAN_DATA_DIR) -> list[Utterance]:
    """The recorded utterances of pocketsphinx-testdata, in a stable order (11 clips)."""
    if not data_dir.is_dir():
        raise CorpusUnavailable(
            f"{data_dir} is missing; install Debian's pocketsphinx-testdata (scripts/system-deps.sh)"
        )
    utterances = [
        make_utterance(
            "goforward", read_raw_s16le(data_dir / "goforward.raw"), 16_000, "go forward ten meters", "human"
        )
    ]
    for folder, listing, prefix in (
        ("cards", "cards.transcription", "cards"),
        ("librivox", "transcription", ""),
    ):
        references = parse_transcription((data_dir / folder / listing).read_text(encoding="utf-8"))
        for fileid, reference in sorted(references.items()):
            samples, rate = read_wav(data_dir / folder / f"{fileid}.wav")
            name = f"{prefix}-{fileid}" if prefix else fileid
            utterances.append(make_utterance(name, samples, rate, reference, "human"))
    return utterances


def _slug(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    digest = hashlib.sha1(f"{FLITE_VOICE}:{text}".encode()).hexdigest()[:8]
    return f"{words[:40].rstrip('-')}-{digest}"


def synthesize_with_flite(text: str, path: Path, voice: str = FLITE_VOICE, timeout_s: float = 60.0) -> None:
    """Write `text` spoken by flite to the WAV file `path` (atomically: no half-written cache)."""
    flite = shutil.which("flite")
    if flite is None:
        raise CorpusUnavailable("flite is not installed (Debian package flite; scripts/system-deps.sh)")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.wav")
    try:
        subprocess.run(
            [flite, "-voice", voice, "-t", text, "-o", str(partial)],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise CorpusUnavailable(f"flite failed for {text!r}: {exc}") from exc
    partial.replace(path)


def load_synthetic(
    cache_dir: Path = DEFAULT_CACHE_DIR, sentences: Sequence[str] = SYNTHETIC_SENTENCES
) -> list[Utterance]:
    """The sentences spoken by flite, synthesised once into `cache_dir` and read from there."""
    utterances = []
    for text in sentences:
        name = _slug(text)
        path = cache_dir / f"{name}.wav"
        if not path.exists():
            synthesize_with_flite(text, path)
        samples, rate = read_wav(path)
        utterances.append(make_utterance(f"flite-{name}", samples, rate, text, "synthetic"))
    return utterances


def load_directory(directory: Path) -> list[Utterance]:
    """Every `*.wav` in `directory` (sorted by name), its reference from `NAME.txt` if present.

    Raises CorpusUnavailable if the directory holds no usable clip; clips without speech
    above the energy threshold, or not 16-bit PCM, are skipped silently only if others remain.
    """
    if not directory.is_dir():
        raise CorpusUnavailable(f"{directory} is not a directory")
    utterances = []
    problems = []
    for path in sorted(directory.glob("*.wav")):
        transcript = path.with_suffix(".txt")
        reference = " ".join(transcript.read_text(encoding="utf-8").split()) if transcript.exists() else ""
        try:
            samples, rate = read_wav(path)
            utterances.append(make_utterance(path.stem, samples, rate, reference, "file"))
        except (ValueError, EOFError, wave.Error) as exc:
            problems.append(f"{path.name}: {exc}")
    if not utterances:
        detail = f" ({'; '.join(problems[:3])})" if problems else ""
        raise CorpusUnavailable(f"no usable 16-bit PCM WAV file with speech in {directory}{detail}")
    return utterances


def load_corpus(
    sources: Iterable[str], *, data_dir: Path = HUMAN_DATA_DIR, cache_dir: Path = DEFAULT_CACHE_DIR
) -> list[Utterance]:
    """The utterances of the named sources ("human", "synthetic"), in that order."""
    utterances: list[Utterance] = []
    for source in sources:
        if source == "human":
            utterances += load_human(data_dir)
        elif source == "synthetic":
            utterances += load_synthetic(cache_dir)
        else:
            raise ValueError(f"unknown corpus source {source!r}; use {', '.join(SOURCES)}")
    return utterances
