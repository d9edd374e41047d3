"""The "pauses" corpus: one mid-sentence silence per utterance, where it should be, held out
from the end-of-turn calibration set. The flite and pocketsphinx-testdata halves skip (with the
reason) where those Debian packages are missing; the rest runs on tones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from loadtests.corpus import (
    HUMAN_DATA_DIR,
    LIBRIVOX_SPLITS,
    PAUSE_FADE_MS,
    PAUSE_LENGTHS_MS,
    PAUSE_VOICES,
    SAMPLE_RATE_HZ,
    SOURCES,
    SPLIT_SEARCH_MS,
    Utterance,
    insert_pause,
    load_corpus,
    load_human,
    load_pauses_human,
    load_pauses_synthetic,
    paused_sentences,
    quietest_frame_ms,
)
from loadtests.eot_calibration import PAIRS
from loadtests.wer import normalize
from tests.loadtests.scripted_server import tone_clip

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="Debian flite is not installed")
needs_human = pytest.mark.skipif(
    not HUMAN_DATA_DIR.is_dir(), reason="Debian pocketsphinx-testdata is not installed"
)
PER_MS = SAMPLE_RATE_HZ // 1000


def assert_one_pause(utterance: Utterance) -> tuple[int, int]:
    """The inserted pause is digital silence of 400-800 ms inside the speech span."""
    assert utterance.source == "pauses" and utterance.pause_ms is not None
    start_ms, end_ms = utterance.pause_ms
    assert 400 <= end_ms - start_ms <= 800
    assert utterance.speech_start_ms < start_ms < end_ms < utterance.speech_end_ms <= utterance.duration_ms
    assert not np.any(utterance.samples[start_ms * PER_MS : end_ms * PER_MS])  # RMS 0
    return start_ms, end_ms


def rms(samples: NDArray[np.int16]) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


# --- the plan and the arithmetic, without flite ----------------------------------------------------


def test_sentences_rotate_every_voice_and_pause_length() -> None:
    sentences = paused_sentences()
    assert len(sentences) == 16
    assert set(PAUSE_VOICES) == {"kal", "awb", "rms", "slt"}  # flite's English voices but kal16, awb_time
    assert {s.voice for s in sentences} == set(PAUSE_VOICES)
    assert {s.pause_ms for s in sentences} == set(PAUSE_LENGTHS_MS) == {400, 500, 600, 700, 800}
    assert paused_sentences() == sentences  # deterministic
    assert len({s.text for s in sentences}) == len(sentences)


def test_sentences_are_held_out_from_the_end_of_turn_calibration() -> None:
    calibration = {" ".join(normalize(line)) for pair in PAIRS for line in pair}
    for sentence in paused_sentences():
        assert " ".join(normalize(sentence.text)) not in calibration, sentence.text
        assert " ".join(normalize(sentence.first)) not in calibration, sentence.first
    assert "pauses" in SOURCES


def test_insert_pause_puts_silence_inside_the_speech_and_moves_its_end() -> None:
    clip = tone_clip(lead_ms=200, tone_ms=1000, tail_ms=200)
    paused = insert_pause(clip, 700, 600, "paused")
    assert paused.pause_ms == (700, 1300) and paused.name == "paused"
    assert assert_one_pause(paused) == (700, 1300)
    assert (paused.speech_start_ms, paused.speech_end_ms) == (200, 1800)
    assert paused.duration_ms == clip.duration_ms + 600
    assert paused.reference == clip.reference
    fade = PAUSE_FADE_MS * PER_MS
    assert np.array_equal(paused.samples[: 700 * PER_MS - fade], clip.samples[: 700 * PER_MS - fade])
    assert np.array_equal(paused.samples[1300 * PER_MS + fade :], clip.samples[700 * PER_MS + fade :])
    edge = paused.samples[700 * PER_MS - fade : 700 * PER_MS]
    assert abs(int(edge[-1])) < 8000 * 0.2  # faded towards the silence, not cut at full level
    with pytest.raises(ValueError, match="outside the speech"):
        insert_pause(clip, 100, 500, "before the speech")


def test_quietest_frame_finds_a_gap_between_tones() -> None:
    rate = SAMPLE_RATE_HZ
    t = np.arange(rate) / rate
    tone = np.sin(2 * np.pi * 300 * t) * 8000
    tone[int(0.61 * rate) : int(0.65 * rate)] *= 0.01  # a 40 ms dip at 610-650 ms
    samples = tone.astype(np.int16)
    assert abs(quietest_frame_ms(samples, 500, 800) - 630) <= 10
    assert 110 <= quietest_frame_ms(samples, 100, 400) <= 390  # only frames inside the range
    with pytest.raises(ValueError, match="no 20 ms frame"):
        quietest_frame_ms(samples, 100, 110)


# --- the flite half ---------------------------------------------------------------------------------


@needs_flite
def test_flite_sentences_have_one_pause_between_their_parts(tmp_path: Path) -> None:
    corpus = load_pauses_synthetic(tmp_path)
    plan = paused_sentences()
    assert len(corpus) == len(plan) == 16
    assert len(list(tmp_path.glob("part-*.wav"))) == 32  # each part spoken once, by its voice
    for utterance, sentence in zip(corpus, plan, strict=True):
        start_ms, end_ms = assert_one_pause(utterance)
        assert end_ms - start_ms == sentence.pause_ms
        assert utterance.reference == sentence.text
        assert utterance.name.startswith(f"pauses-{sentence.voice}-{sentence.pause_ms}ms-")
        # speech on both sides: the end of the first part, the start of the second
        assert rms(utterance.samples[(start_ms - 200) * PER_MS : start_ms * PER_MS]) > 100
        assert rms(utterance.samples[end_ms * PER_MS : (end_ms + 200) * PER_MS]) > 100
    assert {u.name.split("-")[1] for u in corpus} == set(PAUSE_VOICES)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = load_pauses_synthetic(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == mtimes  # read from the cache
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(corpus, again, strict=True))


# --- the human half ---------------------------------------------------------------------------------


@needs_human
def test_human_sentences_are_split_in_their_middle_third() -> None:
    originals = {u.name: u for u in load_human()}
    corpus = load_pauses_human()
    assert [u.name for u in corpus] == [f"pauses-{fileid}" for fileid in LIBRIVOX_SPLITS]
    for utterance in corpus:
        start_ms, end_ms = assert_one_pause(utterance)
        original = originals[utterance.name.removeprefix("pauses-")]
        span_ms = original.speech_end_ms - original.speech_start_ms
        assert 0.35 <= (start_ms - original.speech_start_ms) / span_ms <= 0.65
        boundary_ms = LIBRIVOX_SPLITS[original.name][1]
        assert abs(start_ms - boundary_ms) <= SPLIT_SEARCH_MS
        assert utterance.speech_end_ms == original.speech_end_ms + (end_ms - start_ms)
        assert utterance.reference == original.reference
        assert LIBRIVOX_SPLITS[original.name][0] + " " in original.reference + " "
        fade = PAUSE_FADE_MS * PER_MS
        cut = start_ms * PER_MS
        assert np.array_equal(utterance.samples[: cut - fade], original.samples[: cut - fade])


@needs_human
def test_human_split_points_are_word_boundaries_by_forced_alignment() -> None:
    """The boundaries of LIBRIVOX_SPLITS, as pocketsphinx aligns each clip with its transcript."""
    pocketsphinx = pytest.importorskip("pocketsphinx")
    import soxr

    originals = {u.name: u for u in load_human()}
    for fileid, (words_before, boundary_ms) in LIBRIVOX_SPLITS.items():
        original = originals[fileid]
        audio = soxr.resample(original.samples.astype(np.float32), SAMPLE_RATE_HZ, 16_000)
        decoder = pocketsphinx.Decoder(samprate=16_000, bestpath=False, loglevel="ERROR")
        decoder.set_align_text(original.reference)
        decoder.start_utt()
        decoder.process_raw(np.clip(np.round(audio), -32768, 32767).astype("<i2").tobytes(), full_utt=True)
        decoder.end_utt()
        words = [s for s in decoder.seg() if s.word not in ("<s>", "</s>", "<sil>", "(NULL)")]
        before = words[len(words_before.split()) - 1]
        after = words[len(words_before.split())]
        assert abs((before.end_frame + 1) * 10 - boundary_ms) <= 30, (fileid, before.word)
        assert abs(after.start_frame * 10 - boundary_ms) <= 60, (fileid, after.word)


@needs_flite
@needs_human
def test_the_pauses_source_loads_both_halves(tmp_path: Path) -> None:
    corpus = load_corpus(["pauses"], cache_dir=tmp_path)
    assert len(corpus) == 21 and {u.source for u in corpus} == {"pauses"}
    assert sum(u.name.startswith("pauses-sense_and_sensibility") for u in corpus) == 5
