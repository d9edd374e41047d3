"""The room around the benchmark's microphone: the echo of the reply it plays, and background noise.

A caller on a speakerphone or a laptop hears the reply from a loudspeaker, and their microphone
picks that sound up again, delayed (the audio path and the distance), quieter and smeared by the
room's reverberation, on top of whatever hum the room has. The benchmark models that, so it can
measure whether a server interrupts itself on its own voice (see `loadtests.bench_barge_in`).

Call order, all on one clock (the session uses `time.monotonic()`; tests pass numbers):
- `EchoPath(options, origin_s)`; then, as reply audio arrives, `push_reply(samples, arrival_s)`;
  as the microphone captures frame k (the interval starting at `start_s`, `n` samples long),
  `pull(start_s, n)` gives the echo in it, float samples in int16 units. Pulls go forward in
  time: audio before the last pull's end is forgotten.
- `BackgroundNoise(level_db, seed).pull(n)`: the next n samples of steady noise.
- `Room` is both together, what `loadtests.session` mixes into every microphone frame.

The model (pure arithmetic, exact to the sample):
- the player: reply audio plays as it arrives, at real time, one chunk after another: a chunk
  starts when it arrives or when the one before it has finished, whichever is later (the same
  player as `loadtests.recorder.audio_stalls_ms`). Nothing is flushed on a cancellation: the
  server paces its audio with little lead (~150 ms), so a client's queue is short anyway;
- the echo of a sample played at time t reaches the microphone at t + `delay_ms`, convolved with
  the room's impulse response (`room_impulse_response`: a direct path, then exponentially
  decaying noise reaching -60 dB after `rt60_s`, normalised to unit energy) and scaled by
  `level_db`. With the response at unit energy, the echo of a broadband signal carries
  `level_db` of the reply's energy: "-12 dB" means the echo's RMS is 1/4 of the reply's;
- levels are relative to the reply audio as received (the player plays it at unit gain).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

from loadtests.corpus import SAMPLE_RATE_HZ

FloatArray = NDArray[np.float64]
FULL_SCALE: Final = 32768.0  # dBFS of int16 audio are relative to this
TAIL_START_MS: Final = 2.5  # the first reflections follow the direct path after this


@dataclass(frozen=True, slots=True)
class EchoOptions:
    """How the reply comes back into the microphone. `level_db` is relative to the reply."""

    delay_ms: float = 120.0
    level_db: float = -12.0
    rt60_s: float = 0.3  # reverberation time: the tail falls 60 dB in this long; 0: no reverb
    direct_to_reverb_db: float = 3.0  # energy of the direct path against that of the tail

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or self.rt60_s < 0:
            raise ValueError("the echo's delay and reverberation time cannot be negative")


@dataclass(frozen=True, slots=True)
class RoomOptions:
    """The echo (None: none) and the background noise (None: digital silence) of a room."""

    echo: EchoOptions | None = None
    noise_db: float | None = None  # background noise RMS, dBFS

    @property
    def is_quiet(self) -> bool:
        return self.echo is None and self.noise_db is None


def room_impulse_response(
    rt60_s: float, direct_to_reverb_db: float = 3.0, seed: int = 0, rate_hz: int = SAMPLE_RATE_HZ
) -> FloatArray:
    """A synthetic room: 1 at t = 0 (the direct path), then, from `TAIL_START_MS` to `rt60_s`,
    Gaussian noise whose amplitude decays as 10^(-3 t / rt60) (-60 dB at rt60), its energy
    `direct_to_reverb_db` below the direct path's; the whole normalised to unit energy (sum of
    squares 1). `rt60_s` 0 gives [1.0]: a plain delay."""
    if rt60_s <= 0:
        return np.ones(1)
    start = max(1, round(TAIL_START_MS * rate_hz / 1000))
    length = max(start + 1, round(rt60_s * rate_hz))
    t_s = np.arange(start, length) / rate_hz
    tail = np.random.default_rng(seed).standard_normal(len(t_s)) * 10 ** (-3 * t_s / rt60_s)
    tail *= math.sqrt(10 ** (-direct_to_reverb_db / 10) / float(np.sum(tail**2)))
    response = np.zeros(length)
    response[0] = 1.0
    response[start:] = tail
    normalised: FloatArray = response / math.sqrt(float(np.sum(response**2)))
    return normalised


class EchoPath:
    """The reply as the microphone hears it again; see the module docstring for the model."""

    def __init__(
        self, options: EchoOptions, origin_s: float, seed: int = 0, rate_hz: int = SAMPLE_RATE_HZ
    ) -> None:
        self.options = options
        self._origin_s = origin_s
        self._rate_hz = rate_hz
        self._delay = round(options.delay_ms * rate_hz / 1000)
        self._gain = 10 ** (options.level_db / 20)
        self._response = room_impulse_response(options.rt60_s, options.direct_to_reverb_db, seed, rate_hz)
        self._spectra: dict[int, NDArray[np.complex128]] = {}  # FFT size -> the response's spectrum
        self._plays_until = 0  # the player's position, samples since origin
        self._base = 0  # sample index (since origin) of self._pending[0]
        self._pending: FloatArray = np.zeros(0)  # echo not pulled yet
        self.played_ms = 0.0

    def _sample(self, t_s: float) -> int:
        return round((t_s - self._origin_s) * self._rate_hz)

    def push_reply(self, samples: NDArray[np.int16], arrival_s: float) -> int:
        """Queue reply audio on the player; returns where it starts playing (samples since
        origin). Its echo goes into the microphone `delay_ms` later."""
        start = max(self._sample(arrival_s), self._plays_until)
        self._plays_until = start + len(samples)
        self.played_ms += len(samples) * 1000 / self._rate_hz
        if len(samples) == 0:
            return start
        echo = self._convolve(samples.astype(np.float64) * self._gain)
        at = start + self._delay
        if at < self._base:  # its echo should already have been captured: keep the rest
            echo = echo[self._base - at :]
            at = self._base
        end = at + len(echo)
        if end - self._base > len(self._pending):
            self._pending = np.concatenate((self._pending, np.zeros(end - self._base - len(self._pending))))
        self._pending[at - self._base : end - self._base] += echo
        return start

    def pull(self, start_s: float, n: int) -> FloatArray:
        """The echo captured in the `n` samples from `start_s`; forgets everything before their end."""
        begin = self._sample(start_s)
        out = np.zeros(n)
        lo, hi = max(begin, self._base), min(begin + n, self._base + len(self._pending))
        if hi > lo:
            out[lo - begin : hi - begin] = self._pending[lo - self._base : hi - self._base]
        drop = begin + n - self._base
        if drop > 0:
            self._pending = self._pending[drop:]
            self._base += drop
        return out

    def _convolve(self, x: FloatArray) -> FloatArray:
        if len(self._response) == 1:
            plain: FloatArray = x * float(self._response[0])
            return plain
        size = len(x) + len(self._response) - 1
        nfft = 1 << (size - 1).bit_length()
        spectrum = self._spectra.get(nfft)
        if spectrum is None:
            spectrum = self._spectra[nfft] = np.fft.rfft(self._response, nfft)
        result: FloatArray = np.fft.irfft(np.fft.rfft(x, nfft) * spectrum, nfft)[:size]
        return result


class BackgroundNoise:
    """Steady Gaussian noise at `level_db` dBFS RMS, low-passed by a one-pole filter (~2 kHz)
    so it sounds like a room's hum and hiss rather than pure hiss; seeded, so runs repeat."""

    CUTOFF_HZ: Final = 2000.0

    def __init__(self, level_db: float, seed: int = 0, rate_hz: int = SAMPLE_RATE_HZ) -> None:
        self._rng = np.random.default_rng(seed)
        self._pole = math.exp(-2 * math.pi * self.CUTOFF_HZ / rate_hz)
        # a one-pole low-pass keeps (1 - p)^2 / (1 - p^2) of white noise's power
        power_gain = (1 - self._pole) ** 2 / (1 - self._pole**2)
        self._scale = FULL_SCALE * 10 ** (level_db / 20) / math.sqrt(power_gain)
        self._state = 0.0

    def pull(self, n: int) -> FloatArray:
        white = self._rng.standard_normal(n) * self._scale * (1 - self._pole)
        out = np.empty(n)
        state = self._state
        for i in range(n):  # 480 samples a frame: cheap enough, and exact across frames
            state = white[i] + self._pole * state
            out[i] = state
        self._state = state
        return out


class Room:
    """What the microphone hears besides the caller: the echo path and the background noise.
    `push_reply` feeds the player; `pull(start_s, n)` is the room's share of a frame."""

    def __init__(self, options: RoomOptions, origin_s: float, seed: int = 0) -> None:
        self.options = options
        self.echo = None if options.echo is None else EchoPath(options.echo, origin_s, seed)
        self.noise = None if options.noise_db is None else BackgroundNoise(options.noise_db, seed + 1)

    def push_reply(self, samples: NDArray[np.int16], arrival_s: float) -> None:
        if self.echo is not None:
            self.echo.push_reply(samples, arrival_s)

    def pull(self, start_s: float, n: int) -> FloatArray:
        out = np.zeros(n) if self.echo is None else self.echo.pull(start_s, n)
        if self.noise is not None:
            out += self.noise.pull(n)
        return out


def rms_dbfs(samples: NDArray[np.floating] | NDArray[np.integer]) -> float:
    """RMS level in dBFS (int16 full scale); -inf for silence."""
    power = float(np.mean(np.asarray(samples, dtype=np.float64) ** 2)) if len(samples) else 0.0
    return -math.inf if power == 0 else 10 * math.log10(power) - 20 * math.log10(FULL_SCALE)
