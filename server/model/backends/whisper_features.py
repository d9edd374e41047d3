"""Whisper's log-Mel features, computed exactly as Whisper (and faster-whisper) computes them.

Pure numpy, no model: `filters = mel_filters(model.n_mels)` once per model, then
`log_mel(audio, filters, window_frames)` per decode. The tests check both against
faster-whisper's `FeatureExtractor`.

Why not faster-whisper's extractor: it always pads to 30 s and is mutated by its
`chunk_length` argument, so it is not safe to share between decode threads. `log_mel`
computes only the frames that see audio and fills the silent rest with the value computing
it would give, so padding a short utterance to a 15 or 30 s window costs nothing.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_RATE_HZ = 16_000
HOP = 160  # samples per feature frame (10 ms)
FULL_WINDOW_FRAMES = 3000  # 30 s, the window Whisper was trained on
_N_FFT = 400


def mel_filters(n_mels: int) -> npt.NDArray[np.float32]:
    """Slaney-style Mel filterbank of Whisper (librosa's, as faster-whisper computes it)."""
    fft_freqs = np.fft.rfftfreq(n=_N_FFT, d=1.0 / SAMPLE_RATE_HZ)
    mels = np.linspace(0.0, 45.245640471924965, n_mels + 2)
    freqs = 200.0 / 3 * mels
    min_log_mel = 1000.0 / (200.0 / 3)
    log_region = mels >= min_log_mel
    freqs[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - min_log_mel))
    ramps = freqs.reshape(-1, 1) - fft_freqs.reshape(1, -1)
    widths = np.diff(freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2 : n_mels + 2] - freqs[:n_mels]))[:, None]
    return weights.astype(np.float32)


_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)).astype(np.float32)


def log_mel(
    audio: npt.NDArray[np.float32], filters: npt.NDArray[np.float32], n_frames: int | None = None
) -> npt.NDArray[np.float32]:
    """Whisper's log-Mel spectrogram of float audio in [-1, 1] followed by silence: `n_frames`
    frames of 10 ms (default `len(audio) // 160 + 1`, faster-whisper's `FeatureExtractor()(audio)`).

    Only frames that see audio are computed; the silent rest gets the floor value that
    computing it would give, so padding a short utterance to 15 or 30 s costs nothing."""
    if n_frames is None:
        n_frames = len(audio) // HOP + 1
    computed = min(n_frames, len(audio) // HOP + 3)  # later frames see only zeros
    signal = np.zeros(computed * HOP + HOP, dtype=np.float32)
    used = min(len(audio), computed * HOP)
    signal[:used] = audio[:used]
    padded = np.pad(signal, (_N_FFT // 2, _N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::HOP][:computed]
    spectrum = np.fft.rfft(frames * _HANN, axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel: npt.NDArray[np.float32] = filters @ power.T
    logs: npt.NDArray[np.float32] = np.full((len(filters), n_frames), -10.0, dtype=np.float32)
    logs[:, :computed] = np.log10(np.maximum(mel, np.float32(1e-10)))  # -10: log10 of the floor
    logs = np.maximum(logs, logs.max() - np.float32(8.0))
    return (logs + np.float32(4.0)) / np.float32(4.0)
