"""The overlay clips: the synthetic noises' lengths and levels, the voicing check that tells a
spoken backchannel from a noise, and the backchannels as the TTS engines render them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from loadtests.corpus import SAMPLE_RATE_HZ
from loadtests.overlays import (
    BACKCHANNEL_MAX_MS,
    BACKCHANNELS,
    KEYBOARD_CLICKS,
    MIN_VOICED_SHARE,
    PAD_MS,
    band_pass,
    load_backchannels,
    noise_clips,
    sound_span_ms,
    voiced_share,
)
from loadtests.room import FULL_SCALE, rms_dbfs


def peak_dbfs(samples: np.ndarray) -> float:
    return 20 * float(np.log10(np.max(np.abs(samples.astype(np.float64))) / FULL_SCALE))


def test_noises_have_their_lengths_and_levels() -> None:
    clips = {u.name: u for u in noise_clips(seed=0)}
    assert list(clips) == ["noise-door_slam", "noise-cough", "noise-keyboard", "noise-music"]
    for clip in clips.values():
        assert clip.source == "noise" and clip.speech_start_ms >= PAD_MS - 1
        assert clip.duration_ms - clip.speech_end_ms >= PAD_MS - 1
    slam = clips["noise-door_slam"]
    assert peak_dbfs(slam.samples) == pytest.approx(-3.0, abs=0.1)
    assert 200 <= slam.speech_end_ms - slam.speech_start_ms <= 400  # fast decay within its 400 ms
    cough = clips["noise-cough"]
    assert cough.speech_end_ms - cough.speech_start_ms == pytest.approx(320 + 120 + 250, abs=20)
    assert peak_dbfs(clips["noise-keyboard"].samples) == pytest.approx(-12.0, abs=0.1)
    music = clips["noise-music"]
    sound = music.samples[PAD_MS * SAMPLE_RATE_HZ // 1000 : -PAD_MS * SAMPLE_RATE_HZ // 1000]
    assert len(sound) == 1500 * SAMPLE_RATE_HZ // 1000
    assert rms_dbfs(sound) == pytest.approx(-20.0, abs=0.1)


def test_keyboard_clicks_are_short_and_spaced() -> None:
    keyboard = next(u for u in noise_clips(seed=4) if u.name == "noise-keyboard")
    loud = np.abs(keyboard.samples.astype(np.float64)) > FULL_SCALE * 10 ** (-40 / 20)
    onsets = np.flatnonzero(np.diff(loud.astype(int)) == 1)
    gaps_ms = np.diff(onsets) * 1000 / SAMPLE_RATE_HZ
    clicks = [g for g in gaps_ms if g > 20]  # ringing inside one click is not a new click
    assert len(clicks) == KEYBOARD_CLICKS - 1 and all(85 <= g <= 135 for g in clicks)


def test_noises_repeat_with_the_seed() -> None:
    first, again, other = noise_clips(seed=1), noise_clips(seed=1), noise_clips(seed=2)
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1].samples, other[1].samples)


def test_band_pass_keeps_only_its_band() -> None:
    t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
    mixed = np.sin(2 * np.pi * 100 * t) + np.sin(2 * np.pi * 1000 * t)
    kept = band_pass(mixed, 500, 2000)
    assert np.allclose(kept, np.sin(2 * np.pi * 1000 * t), atol=1e-9)


def test_sound_span_is_the_first_and_last_loud_sample() -> None:
    samples = np.zeros(SAMPLE_RATE_HZ, dtype=np.int16)
    samples[2400:4800] = 5000
    assert sound_span_ms(samples) == (100, 200)
    assert sound_span_ms(np.zeros(100, dtype=np.int16)) is None


def test_voicing_tells_a_pitched_sound_from_noise() -> None:
    t = np.arange(SAMPLE_RATE_HZ // 2) / SAMPLE_RATE_HZ
    vowel = (np.sin(2 * np.pi * 150 * t) + 0.5 * np.sin(2 * np.pi * 300 * t)) * 8000
    assert voiced_share(vowel.astype(np.int16)) == pytest.approx(1.0)
    hiss = np.random.default_rng(0).standard_normal(SAMPLE_RATE_HZ // 2) * 8000
    assert voiced_share(hiss.astype(np.int16)) == 0.0
    for clip in noise_clips():
        assert voiced_share(clip.samples) < MIN_VOICED_SHARE


@pytest.mark.skipif(
    not (shutil.which("flite") and shutil.which("espeak-ng")), reason="needs flite and espeak-ng"
)
def test_backchannels_are_short_and_voiced_in_every_voice(tmp_path: Path) -> None:
    clips = load_backchannels(tmp_path)
    assert len(clips) == len(BACKCHANNELS) * 5
    assert {c.reference for c in clips} == set(BACKCHANNELS)
    for clip in clips:
        assert 150 <= clip.speech_end_ms - clip.speech_start_ms <= BACKCHANNEL_MAX_MS, clip.name
