"""server.audio_processing: echo cancellation and noise reduction of the caller's audio.

The signals are synthetic and seeded: a "voice" is a harmonic tone whose pitch glides and
whose loudness rises and falls in syllables, so WebRTC's canceller and suppressor treat it as
speech. Tests that need WebRTC's processing skip when `livekit` (a declared dependency) is
not installed; the pass-through and the missing-package error never need it.
"""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt
import pytest

from server.audio import AudioFormatError, PcmFrame
from server.audio_processing import (
    SUPPORTED_RATES_HZ,
    PassThrough,
    ProcessingOptions,
    open_input_processor,
)
from server.errors import BackendUnavailable

Signal = npt.NDArray[np.float64]

ECHO = ProcessingOptions(echo_cancellation=True)
ECHO_AND_NOISE = ProcessingOptions(echo_cancellation=True, noise_reduction="near_field")
ALL_OPTIONS = [
    ECHO,
    ProcessingOptions(noise_reduction="near_field"),
    ProcessingOptions(noise_reduction="far_field"),
    ECHO_AND_NOISE,
]


def needs_livekit() -> None:
    pytest.importorskip("livekit.rtc", reason="the audio processing backend `livekit` is not installed")


def voice(seconds: float, rate_hz: int, seed: int, pitch_hz: float) -> Signal:
    """Speech-like: 8 harmonics of a gliding pitch, in 4-per-second syllables with pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate_hz)
    t = np.arange(n) / rate_hz
    f0 = pitch_hz * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)))
    phase = 2 * np.pi * np.cumsum(f0) / rate_hz
    harmonics = sum(
        np.sin(k * phase + rng.uniform(0, 6)) / k for k in range(1, 9) if k * pitch_hz < rate_hz / 2.5
    )
    syllables = np.clip(np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    words = (np.sin(2 * np.pi * 0.45 * t + rng.uniform(0, 6)) > -0.3).astype(np.float64)
    x = np.asarray(harmonics) * syllables * words
    return np.asarray(x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (-20 / 20), dtype=np.float64)  # -20 dBFS


def echo_of(far: Signal, rate_hz: int, delay_ms: int, level_db: float, seed: int = 3) -> Signal:
    """`far` as the caller's microphone hears it: delayed, attenuated, through a small room."""
    rng = np.random.default_rng(seed)
    taps = int(0.2 * rate_hz)
    room = rng.standard_normal(taps) * 10 ** (-3 * np.arange(taps) / (0.2 * rate_hz)) * 0.2
    room[0] = 1.0
    wet = np.convolve(far, room)[: len(far)]
    wet *= np.sqrt(np.mean(far**2) / np.mean(wet**2)) * 10 ** (level_db / 20)
    delay = delay_ms * rate_hz // 1000
    return np.concatenate([np.zeros(delay), wet[: len(far) - delay]])


def int16(x: Signal) -> npt.NDArray[np.int16]:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def run(options: ProcessingOptions, near: Signal, far: Signal, rate_hz: int, chunk_ms: int = 20) -> Signal:
    """Everything through one processor in `chunk_ms` chunks, then its flush."""
    processor = open_input_processor(options, rate_hz)
    near16, far16 = int16(near), int16(far)
    chunk = rate_hz * chunk_ms // 1000
    parts = [
        processor.process(
            PcmFrame(near16[i : i + chunk], rate_hz), PcmFrame(far16[i : i + chunk], rate_hz)
        ).samples
        for i in range(0, len(near16), chunk)
    ]
    parts.append(processor.flush().samples)
    processor.close()
    return np.concatenate(parts).astype(np.float64)


def power_db(x: Signal) -> float:
    return float(10 * np.log10(np.mean(x**2) + 1e-9))


# --- echo ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate_hz", [8_000, 16_000, 24_000, 48_000])
@pytest.mark.parametrize(("delay_ms", "level_db"), [(40, -6.0), (200, -12.0)])
def test_echo_is_reduced_after_convergence(rate_hz: int, delay_ms: int, level_db: float) -> None:
    """Measured (loadtests.measure_echo, flite speech): 17-27 dB over noise at -45 dBFS; here
    the echo must lose at least 15 dB after the first 1.5 s."""
    needs_livekit()
    far = voice(5.0, rate_hz, seed=1, pitch_hz=140)
    mic = echo_of(far, rate_hz, delay_ms, level_db)
    out = run(ECHO, mic, far, rate_hz)
    settled = slice(int(1.5 * rate_hz), None)
    erle_db = power_db(mic[settled]) - power_db(out[settled])
    assert erle_db >= 15.0, f"echo reduced by only {erle_db:.1f} dB"


def envelope(x: Signal, rate_hz: int) -> Signal:
    """Log energy of 10 ms blocks: blind to the processor's delay and phase shift."""
    block = rate_hz // 100
    blocks = len(x) // block
    return np.log10(np.mean(x[: blocks * block].reshape(blocks, -1) ** 2, axis=1, dtype=np.float64) + 1.0)


@pytest.mark.parametrize("level_db", [-6.0, -12.0])
def test_near_speech_survives_double_talk(level_db: float) -> None:
    """The caller talks over the echo once the canceller has converged. Against what the
    canceller passes for the caller alone: the level stays within -6..+3 dB (measured -3.1),
    and the 10 ms energy envelopes correlate >= 0.85 (measured 0.95; the raw microphone's
    with the caller's speech: 0.68-0.75)."""
    needs_livekit()
    rate_hz = 16_000
    far = voice(6.0, rate_hz, seed=1, pitch_hz=140)
    near = voice(6.0, rate_hz, seed=2, pitch_hz=210)
    near[: 3 * rate_hz] = 0.0
    echo = echo_of(far, rate_hz, 120, level_db)
    alone = run(ECHO, near, np.zeros_like(far), rate_hz)  # the canceller's own delay and filtering
    talk = run(ECHO, near + echo, far, rate_hz)
    span = slice(3 * rate_hz + rate_hz // 2, None)
    kept_db = power_db(talk[span]) - power_db(alone[span])
    assert -6.0 <= kept_db <= 3.0, f"caller's speech level changed by {kept_db:.1f} dB"
    kept = float(np.corrcoef(envelope(talk[span], rate_hz), envelope(alone[span], rate_hz))[0, 1])
    raw = float(np.corrcoef(envelope((near + echo)[span], rate_hz), envelope(near[span], rate_hz))[0, 1])
    assert kept >= 0.85 and kept > raw + 0.1, f"envelope correlation {kept:.2f} (raw microphone {raw:.2f})"


# --- noise ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "at_least_db"), [("near_field", 8.0), ("far_field", 16.0)])
def test_noise_reduction_lowers_stationary_noise(level: str, at_least_db: float) -> None:
    """Measured on white/pink noise: near_field -12.5/-16.7 dB, far_field -24.7/-28.6 dB."""
    needs_livekit()
    rate_hz = 16_000
    noise = np.random.default_rng(5).standard_normal(4 * rate_hz) * 32768 * 10 ** (-40 / 20)
    options = ProcessingOptions(noise_reduction=level)  # type: ignore[arg-type]
    out = run(options, noise, np.zeros_like(noise), rate_hz)
    settled = slice(rate_hz, None)
    reduction_db = power_db(noise[settled]) - power_db(out[settled])
    assert reduction_db >= at_least_db, f"noise reduced by only {reduction_db:.1f} dB"


# --- sample accounting and edge cases -----------------------------------------------------------


@pytest.mark.parametrize("rate_hz", SUPPORTED_RATES_HZ)
@pytest.mark.parametrize("options", ALL_OPTIONS, ids=lambda o: f"{o.echo_cancellation}-{o.noise_reduction}")
def test_sample_count_is_preserved_over_odd_chunks(rate_hz: int, options: ProcessingOptions) -> None:
    needs_livekit()
    rng = np.random.default_rng(9)
    processor = open_input_processor(options, rate_hz)
    total_in = total_out = 0
    for size in [1, 7, 333, 0, rate_hz // 100, rate_hz // 50 + 3, 1001, 2]:
        near = PcmFrame(int16(rng.standard_normal(size) * 1000), rate_hz)
        far = PcmFrame(int16(rng.standard_normal(size) * 1000), rate_hz)
        out = processor.process(near, far)
        assert out.sample_rate_hz == rate_hz
        total_in += size
        total_out += out.sample_count
        assert 0 <= total_in - total_out < rate_hz // 100  # holds back less than one block
    tail = processor.flush()
    assert total_out + tail.sample_count == total_in
    assert processor.flush().sample_count == 0
    processor.close()


@pytest.mark.parametrize("options", ALL_OPTIONS, ids=lambda o: f"{o.echo_cancellation}-{o.noise_reduction}")
def test_silence_in_gives_silence_out(options: ProcessingOptions) -> None:
    needs_livekit()
    rate_hz = 16_000
    silence = np.zeros(rate_hz)
    out = run(options, silence, silence, rate_hz)
    assert len(out) == rate_hz
    assert np.max(np.abs(out)) <= 1


def test_nothing_enabled_is_a_pass_through() -> None:
    """Documented: no options -> PassThrough, which needs no package and returns `near`."""
    processor = open_input_processor(ProcessingOptions(), 8_000)
    assert isinstance(processor, PassThrough)
    assert not ProcessingOptions().enabled
    near = PcmFrame(np.arange(37, dtype=np.int16), 8_000)
    far = PcmFrame(np.ones(37, dtype=np.int16), 8_000)
    assert np.array_equal(processor.process(near, far).samples, near.samples)
    assert processor.flush().sample_count == 0


def test_mismatched_frames_are_rejected() -> None:
    processor = open_input_processor(ProcessingOptions(), 16_000)
    with pytest.raises(AudioFormatError):
        processor.process(PcmFrame(np.zeros(160, np.int16), 16_000), PcmFrame(np.zeros(80, np.int16), 16_000))
    with pytest.raises(AudioFormatError):
        processor.process(PcmFrame(np.zeros(160, np.int16), 8_000), PcmFrame(np.zeros(160, np.int16), 8_000))


def test_unsupported_rate_is_rejected() -> None:
    with pytest.raises(ValueError, match="22050"):
        open_input_processor(ECHO, 22_050)


def test_missing_package_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """With `livekit` not importable, opening a processor says which package to install."""
    monkeypatch.setitem(sys.modules, "livekit", None)
    with pytest.raises(BackendUnavailable, match="livekit"):
        open_input_processor(ECHO_AND_NOISE, 16_000)
