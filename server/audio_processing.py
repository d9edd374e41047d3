"""Clean-up of the caller's audio before VAD and recognition: echo cancellation, noise reduction.

Order of calls, one processor per session:

    processor = open_input_processor(ProcessingOptions(echo_cancellation=True), 8_000)
    cleaned = processor.process(near, far)   # each inbound chunk, with the reply audio that
    ...                                      # played over the same span (silence if none)
    tail = processor.flush()                 # at the end of the stream
    processor.close()

Invariants:
- Output is at the input's rate, and over time holds exactly as many samples as went in:
  `process` returns whole 10 ms blocks and holds back the remainder (< 10 ms) for the next
  call; `flush` returns it (processed, zero-padded to a block, the padding dropped).
- `far` must be aligned with `near` sample for sample: the far end as it was being played
  while `near` was captured, so that its echo arrives in `near` 0-400 ms later. The canceller
  finds the echo path's delay itself: measured converged (22-28 dB) from 30 to 400 ms behind
  a 0.3 s room, and failed (1-2 dB) at 600 and 1000 ms; `set_stream_delay_ms` did not change
  that (and refuses hints above 500 ms). Echo that comes back *before* its `far` samples are
  given (a reference taken too late) cannot be cancelled at all, so take `far` from the
  earliest point the audio is known to play, and keep the lead under ~400 ms.
- WebRTC's audio processing delays the caller's audio by under one block (≈9 ms at 16 kHz with
  the echo canceller, ≈7 ms with noise suppression alone) and phase-shifts it (its high-pass
  filter inverts speech polarity); neither matters to a VAD or a recogniser.

The processor is WebRTC's audio processing module (AEC3 echo canceller, its noise suppressor,
an 80 Hz high-pass filter) from the `livekit` package (`livekit.rtc.AudioProcessingModule`).
It needs no LiveKit server, room or asyncio loop: each call is one synchronous FFI request
into `liblivekit_ffi.so`. Measured on the shared 2-core box (`python -m loadtests.measure_echo`):
ERLE 17-28 dB after the first second for echo at -6/-12/-20 dB and 30-250 ms delay (the
noise floor at -45 dBFS caps it at -20 dB), and no voiced run >= 60 ms left for Silero VAD,
where the raw echo gives 5-6 runs >= 250 ms per 10 s of reply; ≈7-11 ms of CPU per second of
audio, 0.23-0.32 ms per 20 ms chunk at 8-48 kHz. The price is double talk: while the caller
talks over an echo at -6 dB, the VAD finds 76-82 % of the caller's voiced frames (88-93 % at
-12 dB, 96-97 % at -20 dB). Rejected: speexdsp's canceller (`pyaec`, 512 ms filter):
8.5-12.7 dB, 3-4 false runs >= 250 ms remain, and twice the CPU. Tables: BENCHMARKS.md.

Noise reduction levels (the OpenAI Realtime `input_audio_noise_reduction.type`). The `livekit`
build exposes WebRTC's suppressor only as on/off (its level measures as "moderate": the same
-12.5 dB on white and -16.7 dB on pink noise as webrtc-noise-gain's level 2), so:
- "near_field" (a headset or handset microphone close to the mouth): one suppressor pass,
  moderate: stationary noise -12 to -17 dB, Silero VAD recall on speech in pink noise at
  10 dB SNR 0.95 -> 0.90;
- "far_field" (a laptop or speakerphone microphone, more room noise): a second suppressor pass
  on the output of the first: white/pink noise -24.7/-28.6 dB, stronger than webrtc-noise-gain's
  "very high" level 4 (-21.0/-25.5 dB), at the same speech cost (VAD recall 0.89).
WebRTC's automatic gain control was tried for far_field and rejected: it lifted coughs and
keyboard clicks by 6-7 dB and cut the VAD's recall on speech to 0.85.
Neither level removes transients (coughs, clicks) or music; Silero VAD ignored all of the
synthetic noises with or without suppression (0 voiced runs).

Threads and processes: a processor is not thread-safe (one call at a time), but any thread
may drive it, and sessions in different threads run at once (tested with two sessions under
`asyncio.to_thread`). A 20 ms chunk costs ~0.3 ms, so calling `process` on the event loop is
also acceptable for a few sessions. The first `open_input_processor` imports `livekit`
(≈0.1-0.2 s, +19 MB RSS) and starts the FFI library's runtime (5 native threads). The
library cannot be used across fork(): a child process forked after the parent used it must
not use it (livekit raises RuntimeError). A panic inside the library makes livekit send
SIGTERM to the whole process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

import numpy as np

from server.audio import AudioFormatError, PcmFrame, Samples
from server.errors import BackendUnavailable

NoiseReduction = Literal["near_field", "far_field"]

BLOCK_MS: Final = 10  # WebRTC's audio processing takes exactly 10 ms per call
SUPPORTED_RATES_HZ: Final = (8_000, 16_000, 24_000, 32_000, 48_000)
_PACKAGE_HINT: Final = (
    "echo cancellation and noise reduction need the `livekit` package (pip install livekit==1.2.1)"
)


@dataclass(frozen=True, slots=True)
class ProcessingOptions:
    """What to do to the caller's audio. Both off (the default) means no processing."""

    echo_cancellation: bool = False
    noise_reduction: NoiseReduction | None = None

    @property
    def enabled(self) -> bool:
        return self.echo_cancellation or self.noise_reduction is not None


class InputProcessor(Protocol):
    """Per-session, stateful. Not thread-safe; one call at a time."""

    sample_rate_hz: int

    def process(self, near: PcmFrame, far: PcmFrame) -> PcmFrame:
        """`near`: the caller's audio; `far`: the reply audio the caller was hearing over the
        same span of the stream (same sample count and rate as `near`; silence when nothing
        played). Returns the cleaned caller audio: same rate, and the same total number of
        samples over time (it may hold back less than one 10 ms block and return it with the
        next call)."""
        ...

    def flush(self) -> PcmFrame:
        """Whatever is held back, processed or passed through."""
        ...

    def close(self) -> None: ...


def open_input_processor(options: ProcessingOptions, sample_rate_hz: int) -> InputProcessor:
    """A processor for one session at `sample_rate_hz` (one of SUPPORTED_RATES_HZ).

    With nothing enabled it returns a pass-through (`PassThrough`: `near` comes back as it
    is, nothing held back), so callers need not branch on `options.enabled`.
    Raises `ValueError` for an unsupported rate and `BackendUnavailable` when `livekit` is
    missing or its library does not load."""
    if sample_rate_hz not in SUPPORTED_RATES_HZ:
        raise ValueError(
            f"audio processing supports {', '.join(map(str, SUPPORTED_RATES_HZ))} Hz, not {sample_rate_hz} Hz"
        )
    if not options.enabled:
        return PassThrough(sample_rate_hz)
    return WebRtcProcessor(options, sample_rate_hz)


class PassThrough:
    """The InputProcessor for options with nothing enabled: returns `near` unchanged."""

    def __init__(self, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz

    def process(self, near: PcmFrame, far: PcmFrame) -> PcmFrame:
        _check_pair(near, far, self.sample_rate_hz)
        return near

    def flush(self) -> PcmFrame:
        return PcmFrame(np.zeros(0, dtype=np.int16), self.sample_rate_hz)

    def close(self) -> None:
        pass


def _check_pair(near: PcmFrame, far: PcmFrame, sample_rate_hz: int) -> None:
    if near.sample_rate_hz != sample_rate_hz or far.sample_rate_hz != sample_rate_hz:
        raise AudioFormatError(
            f"processor expects {sample_rate_hz} Hz, got near {near.sample_rate_hz} Hz "
            f"and far {far.sample_rate_hz} Hz"
        )
    if near.sample_count != far.sample_count:
        raise AudioFormatError(
            f"near and far must cover the same span: {near.sample_count} != {far.sample_count} samples"
        )


def _load_apms(options: ProcessingOptions) -> tuple[Any, list[Any]]:
    """(livekit.rtc module, the AudioProcessingModules to run in series); BackendUnavailable
    if the package or its native library cannot load."""
    try:
        from livekit import rtc
    except ImportError as exc:
        raise BackendUnavailable(_PACKAGE_HINT) from exc
    try:
        apms = [
            rtc.AudioProcessingModule(
                echo_cancellation=options.echo_cancellation,
                noise_suppression=options.noise_reduction is not None,
                high_pass_filter=True,  # AEC3 and NS both expect DC and rumble removed
            )
        ]
        if options.noise_reduction == "far_field":
            apms.append(rtc.AudioProcessingModule(noise_suppression=True))
    except Exception as exc:  # the FFI library failed to load or answer: not our bug to type
        raise BackendUnavailable(
            f"livekit's audio processing failed to start: {exc}; {_PACKAGE_HINT}"
        ) from exc
    return rtc, apms


class WebRtcProcessor:
    """An InputProcessor on WebRTC's audio processing module (see the module docstring)."""

    def __init__(self, options: ProcessingOptions, sample_rate_hz: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.options = options
        self._block_samples = sample_rate_hz * BLOCK_MS // 1000
        self._rtc, self._apms = _load_apms(options)
        self._near: Samples = np.zeros(0, dtype=np.int16)
        self._far: Samples = np.zeros(0, dtype=np.int16)

    def process(self, near: PcmFrame, far: PcmFrame) -> PcmFrame:
        _check_pair(near, far, self.sample_rate_hz)
        if not self._apms:
            raise RuntimeError("the processor is closed")
        near_samples = np.concatenate([self._near, near.samples]) if len(self._near) else near.samples
        far_samples = np.concatenate([self._far, far.samples]) if len(self._far) else far.samples
        whole = len(near_samples) // self._block_samples * self._block_samples
        self._near = near_samples[whole:].copy()
        self._far = far_samples[whole:].copy()
        out = np.empty(whole, dtype=np.int16)
        for start in range(0, whole, self._block_samples):
            end = start + self._block_samples
            out[start:end] = self._process_block(near_samples[start:end], far_samples[start:end])
        return PcmFrame(out, self.sample_rate_hz)

    def _process_block(self, near: Samples, far: Samples) -> Samples:
        rtc = self._rtc
        if self.options.echo_cancellation:
            # The far end goes in first: AEC3 buffers it until the echo shows up in `near`.
            self._apms[0].process_reverse_stream(
                rtc.AudioFrame(far.astype("<i2").tobytes(), self.sample_rate_hz, 1, len(far))
            )
        frame = rtc.AudioFrame(near.astype("<i2").tobytes(), self.sample_rate_hz, 1, len(near))
        for apm in self._apms:
            apm.process_stream(frame)  # in place, one module after the other
        return np.frombuffer(frame.data, dtype="<i2").astype(np.int16)

    def flush(self) -> PcmFrame:
        held = len(self._near)
        if held == 0 or not self._apms:
            return PcmFrame(np.zeros(0, dtype=np.int16), self.sample_rate_hz)
        pad = np.zeros(self._block_samples - held, dtype=np.int16)
        block = self._process_block(np.concatenate([self._near, pad]), np.concatenate([self._far, pad]))
        self._near = self._far = np.zeros(0, dtype=np.int16)
        return PcmFrame(block[:held].copy(), self.sample_rate_hz)

    def close(self) -> None:
        """Release the native module (idempotent); `process` afterwards raises."""
        self._apms = []
        self._near = self._far = np.zeros(0, dtype=np.int16)
