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
- "pauses": utterances that each hold ONE mid-sentence pause of 400-800 ms, where the sentence
  is clearly unfinished, to count how often a server answers into a caller's pause (see
  `load_pauses()`): customer-service sentences spoken in two parts by four flite voices, and
  the five long LibriVox sentences of pocketsphinx-testdata split at a gap between words.
- "file": any directory of 16-bit PCM WAV files, each with an optional transcript in a `.txt`
  file of the same name beside it (`load_directory()`).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import tempfile
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
# A clip's voice begins with its first voiced run at least this long (`voice_start_ms`). Flite's
# kal voice opens "where"/"why" with a ~60 ms aspiration (about -37 dBFS), then ~170 ms of near
# silence before the word: the envelope counts the burst as the clip's first sound, but a VAD
# rightly does not hear it as voice, and a server wanting 120 ms of voice before it yields
# (Voxgate's min_speech_ms) cannot start counting there. 100 ms is longer than such a burst
# (or a soft opening "th") and no longer than a stressed syllable, so it finds the first word.
SUSTAINED_VOICE_MS: Final = 100

Source = Literal["human", "synthetic", "pauses", "file", "noise"]  # noise: loadtests.overlays
SOURCES: Final[tuple[Source, ...]] = ("human", "synthetic", "pauses")

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
    pause_ms: tuple[int, int] | None = None  # (start, end) of an inserted mid-sentence silence

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


def voice_start_ms(samples: NDArray[np.int16], sample_rate_hz: int) -> int | None:
    """Where the clip's voice begins: the start of its first voiced run of at least
    `SUSTAINED_VOICE_MS` (the envelope and threshold of `speech_span_ms`), or None if no run is
    that long. At or after the clip's first sound (`speech_span_ms(...)[0]`); the difference is
    a property of the clip: an aspiration or a click before the first word."""
    span = speech_span_ms(samples, sample_rate_hz, min_run_ms=SUSTAINED_VOICE_MS)
    return None if span is None else span[0]


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


def _slug(text: str, voice: str = FLITE_VOICE) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    digest = hashlib.sha1(f"{voice}:{text}".encode()).hexdigest()[:8]
    return f"{words[:40].rstrip('-')}-{digest}"


def synthesize(program: str, argv: Sequence[str], text: str, path: Path, timeout_s: float = 60.0) -> None:
    """Run the speech synthesiser `program` with `argv`, where "{out}" stands for the WAV file it
    writes; the file lands at `path` atomically (no half-written cache)."""
    executable = shutil.which(program)
    if executable is None:
        raise CorpusUnavailable(
            f"{program} is not installed (Debian package {program}; scripts/system-deps.sh)"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.wav")
    # the synthesiser writes to a short path: espeak-ng cuts its output path at 200 characters
    # (a long sentence's cache name under pytest's tmp_path), leaving the file elsewhere
    with tempfile.TemporaryDirectory() as scratch:
        written = Path(scratch) / "out.wav"
        try:
            subprocess.run(
                [executable, *(str(written) if a == "{out}" else a for a in argv)],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise CorpusUnavailable(f"{program} failed for {text!r}: {exc}") from exc
        shutil.move(written, partial)  # then into place atomically: no half-written cache
    partial.replace(path)


def synthesize_with_flite(text: str, path: Path, voice: str = FLITE_VOICE, timeout_s: float = 60.0) -> None:
    """Write `text` spoken by flite to the WAV file `path`."""
    synthesize("flite", ["-voice", voice, "-t", text, "-o", "{out}"], text, path, timeout_s)


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


# --- "pauses": one mid-sentence pause per utterance --------------------------------------------

PAUSE_LENGTHS_MS: Final = (400, 500, 600, 700, 800)  # cycled over the utterances, in order
PAUSE_VOICES: Final = ("kal", "awb", "rms", "slt")  # flite's English voices, cycled likewise
PAUSE_TRIM_MARGIN_MS: Final = 30  # kept around the speech of a part: a word's fading end
PAUSE_FADE_MS: Final = 10  # the speech fades out into the pause and in after it: no click
SPLIT_FRAME_MS: Final = 20  # a human clip is split in the quietest frame of this length...
SPLIT_SEARCH_MS: Final = 30  # ...within this distance of a word boundary (see LIBRIVOX_SPLITS)

# (the words before the pause, the words after it): cut where the sentence is plainly unfinished
# (before a number, inside an address or a date, after "because", "to", "at", "with", "that").
# Held out: none of these is a line of `loadtests.eot_calibration.PAIRS`, which calibrated the
# end-of-turn detector that this corpus measures.
PAUSED_SENTENCE_PARTS: Final[tuple[tuple[str, str], ...]] = (
    ("my account number is", "seven one four nine two"),
    ("i'm calling because", "my internet stopped working"),
    ("please send it to", "forty two oak avenue"),
    ("i live at eighty one", "elm road apartment four"),
    ("my date of birth is", "the third of march nineteen eighty"),
    ("the confirmation code is", "six zero two eight"),
    ("i can't log in because", "the app keeps crashing"),
    ("could you transfer me to", "the billing department"),
    ("the bill says i owe", "two hundred and twelve dollars"),
    ("my zip code is", "nine four one one zero"),
    ("i'd like to move my appointment to", "next tuesday morning"),
    ("the technician was supposed to come at", "ten this morning"),
    ("i'd like to pay with", "my visa card"),
    ("the last four digits are", "three eight eight one"),
    ("i was told that", "someone would call me back today"),
    ("the router in the", "living room keeps blinking red"),
)

# The long LibriVox sentences of pocketsphinx-testdata (file id: the words before the pause,
# where they end in ms). They are read fluently: in the middle third of their speech only one
# holds a gap between words (after "how"), and the quietest 20 ms frame there is a consonant
# inside a word in all five (the closure of "p" in "disposed", the "f" of "selfish", ...). So
# the boundaries come from a forced alignment by pocketsphinx (en-us model) of each clip with
# its transcript, done once and checked by tests/loadtests/test_pauses_corpus.py; each is
# where the sentence is plainly unfinished, within 35-65 % of the clip's speech span.
LIBRIVOX_SPLITS: Final[dict[str, tuple[str, int]]] = {
    "sense_and_sensibility_01_austen_64kb-0870": (
        "and mister john dashwood had then leisure to consider how",
        3975,  # a short gap (3950-4000 ms) before "much"
    ),
    "sense_and_sensibility_01_austen_64kb-0880": ("he was not an ill", 1480),
    "sense_and_sensibility_01_austen_64kb-0890": ("unless to be rather cold hearted and", 2390),
    "sense_and_sensibility_01_austen_64kb-0920": (
        "had he married a more a amiable woman he might have",
        3190,
    ),
    "sense_and_sensibility_01_austen_64kb-0930": ("he might even have been made", 1700),
}


@dataclass(frozen=True, slots=True)
class PausedSentence:
    """One sentence of the "pauses" corpus: spoken by `voice`, `pause_ms` of silence after `first`."""

    first: str
    second: str
    voice: str
    pause_ms: int

    @property
    def text(self) -> str:
        return f"{self.first} {self.second}"


def paused_sentences(
    parts: Sequence[tuple[str, str]] = PAUSED_SENTENCE_PARTS,
    pauses_ms: Sequence[int] = PAUSE_LENGTHS_MS,
) -> list[PausedSentence]:
    """The sentences with their voice and pause length, both cycled in order (deterministic)."""
    return [
        PausedSentence(first, second, PAUSE_VOICES[i % len(PAUSE_VOICES)], pauses_ms[i % len(pauses_ms)])
        for i, (first, second) in enumerate(parts)
    ]


def insert_pause(utterance: Utterance, at_ms: int, pause_ms: int, name: str) -> Utterance:
    """`utterance` with `pause_ms` of digital silence (zeros) inserted at `at_ms`, a "pauses" clip.

    The audio fades out over the `PAUSE_FADE_MS` before the cut and in over those after it, so
    the cut clicks neither into nor out of the silence. `at_ms` must fall inside the speech span; the span keeps its start and its end moves by
    `pause_ms`, so it still ends where the speech of the whole clip ends.
    """
    if not utterance.speech_start_ms < at_ms < utterance.speech_end_ms:
        raise ValueError(
            f"a pause at {at_ms} ms is outside the speech of {utterance.name!r} "
            f"({utterance.speech_start_ms}-{utterance.speech_end_ms} ms)"
        )
    cut = at_ms * SAMPLE_RATE_HZ // 1000
    fade = min(PAUSE_FADE_MS * SAMPLE_RATE_HZ // 1000, cut, len(utterance.samples) - cut)
    ramp = np.linspace(1.0, 0.0, fade + 1)[1:]  # ends at 0: the speech meets the silence at 0
    before = utterance.samples[:cut].astype(np.float64)
    after = utterance.samples[cut:].astype(np.float64)
    before[len(before) - fade :] *= ramp
    after[:fade] *= ramp[::-1]
    silence = np.zeros(pause_ms * SAMPLE_RATE_HZ // 1000)
    samples = np.round(np.concatenate((before, silence, after))).astype(np.int16)
    return Utterance(
        name=name,
        samples=samples,
        reference=utterance.reference,
        source="pauses",
        speech_start_ms=utterance.speech_start_ms,
        speech_end_ms=utterance.speech_end_ms + pause_ms,
        pause_ms=(at_ms, at_ms + pause_ms),
    )


def quietest_frame_ms(
    samples: NDArray[np.int16], low_ms: int, high_ms: int, frame_ms: int = SPLIT_FRAME_MS
) -> int:
    """The middle (ms) of the lowest-RMS `frame_ms` frame lying wholly within `low_ms`-`high_ms`
    (frames start every millisecond; the first of equally quiet ones wins)."""
    per_ms = SAMPLE_RATE_HZ // 1000
    region = samples[low_ms * per_ms : high_ms * per_ms].astype(np.float64)
    starts = (len(region) // per_ms - frame_ms) + 1
    if starts < 1:
        raise ValueError(f"no {frame_ms} ms frame fits between {low_ms} and {high_ms} ms")
    energy = np.concatenate(([0.0], np.cumsum(region**2)))
    width = frame_ms * per_ms
    offsets = np.arange(starts) * per_ms
    mean_square = (energy[offsets + width] - energy[offsets]) / width
    return low_ms + int(np.argmin(mean_square)) + frame_ms // 2


def _flite_part(text: str, voice: str, cache_dir: Path) -> NDArray[np.int16]:
    """`text` spoken by flite's `voice`, at 24 kHz, synthesised once into `cache_dir`."""
    path = cache_dir / f"part-{voice}-{_slug(text, voice)}.wav"
    if not path.exists():
        synthesize_with_flite(text, path, voice)
    samples, rate = read_wav(path)
    return to_24k(samples, rate)


def _speech_span_or_fail(samples: NDArray[np.int16], what: str) -> tuple[int, int]:
    span = speech_span_ms(samples, SAMPLE_RATE_HZ)
    if span is None:
        raise ValueError(f"{what} holds no speech above the energy threshold")
    return span


def load_pauses_synthetic(
    cache_dir: Path = DEFAULT_CACHE_DIR, sentences: Sequence[PausedSentence] | None = None
) -> list[Utterance]:
    """Each sentence's two parts spoken separately by its flite voice, joined by its pause.

    The first part ends `PAUSE_TRIM_MARGIN_MS` after its speech, the second starts as long
    before its own (each part's speech found by `speech_span_ms`), and the pause goes between
    them, so the gap between voiced frames is the pause plus up to 2 x 30 ms of the voice's
    fading end and near-silence (-60 dBFS). The clip keeps flite's lead-in before the first
    part and its tail after the second. Flite speaks the first part as a sentence of its own,
    so its last words fall in pitch as a finished sentence would: the pause is unfinished in
    its words, not (as a caller's often is) in its tune. The parts are cached in `cache_dir`
    (named by voice and words); the join is recomputed on every load.
    """
    utterances = []
    for sentence in paused_sentences() if sentences is None else sentences:
        first = _flite_part(sentence.first, sentence.voice, cache_dir)
        second = _flite_part(sentence.second, sentence.voice, cache_dir)
        first_end_ms = _speech_span_or_fail(first, repr(sentence.first))[1] + PAUSE_TRIM_MARGIN_MS
        second_start_ms = _speech_span_or_fail(second, repr(sentence.second))[0] - PAUSE_TRIM_MARGIN_MS
        per_ms = SAMPLE_RATE_HZ // 1000
        first = first[: min(len(first) // per_ms, first_end_ms) * per_ms]  # whole ms: an exact pause
        second = second[max(0, second_start_ms) * per_ms :]
        whole = make_utterance(
            sentence.text, np.concatenate((first, second)), SAMPLE_RATE_HZ, sentence.text, "pauses"
        )
        name = f"pauses-{sentence.voice}-{sentence.pause_ms}ms-{_slug(sentence.text, sentence.voice)}"
        utterances.append(insert_pause(whole, len(first) // per_ms, sentence.pause_ms, name))
    return utterances


def load_pauses_human(data_dir: Path = HUMAN_DATA_DIR) -> list[Utterance]:
    """The long LibriVox sentences of pocketsphinx-testdata, each with a pause between words.

    The pause goes in the middle of the quietest 20 ms frame within 30 ms of the word boundary
    that `LIBRIVOX_SPLITS` names, its length cycled over `PAUSE_LENGTHS_MS`. It is digital
    silence inside a real recording: the room noise drops to zero there and comes back after,
    which a listener would notice but a server's VAD simply hears as silence. The reader did
    not pause there, so the words before it keep the tune of an unfinished sentence.
    """
    by_name = {u.name: u for u in load_human(data_dir)}
    utterances = []
    for i, (fileid, (_, boundary_ms)) in enumerate(LIBRIVOX_SPLITS.items()):
        utterance = by_name[fileid]
        at_ms = quietest_frame_ms(
            utterance.samples, boundary_ms - SPLIT_SEARCH_MS, boundary_ms + SPLIT_SEARCH_MS
        )
        pause_ms = PAUSE_LENGTHS_MS[i % len(PAUSE_LENGTHS_MS)]
        utterances.append(insert_pause(utterance, at_ms, pause_ms, f"pauses-{fileid}"))
    return utterances


def load_pauses(cache_dir: Path = DEFAULT_CACHE_DIR, data_dir: Path = HUMAN_DATA_DIR) -> list[Utterance]:
    """The "pauses" source: the flite sentences (16), then the human ones (5). Raises
    CorpusUnavailable if either half cannot be made here, so runs stay comparable."""
    return load_pauses_synthetic(cache_dir) + load_pauses_human(data_dir)


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
    """The utterances of the named sources ("human", "synthetic", "pauses"), in that order."""
    utterances: list[Utterance] = []
    for source in sources:
        if source == "human":
            utterances += load_human(data_dir)
        elif source == "synthetic":
            utterances += load_synthetic(cache_dir)
        elif source == "pauses":
            utterances += load_pauses(cache_dir, data_dir)
        else:
            raise ValueError(f"unknown corpus source {source!r}; use {', '.join(SOURCES)}")
    return utterances
