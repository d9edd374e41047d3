"""PCM frames, G.711 codecs, resampling and re-chunking.

Invariants:
- A `PcmFrame` holds mono signed 16-bit samples at one sample rate; its duration is derived
  from the sample count, never from a clock.
- Codecs are pure functions over bytes; a malformed payload raises `AudioFormatError`.
- Resampling uses soxr's streaming resampler so consecutive chunks join without clicks.

No asyncio, no sockets, no backends here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt
import soxr

Samples = npt.NDArray[np.int16]


class AudioFormatError(ValueError):
    """Audio bytes that do not fit the declared format."""


@dataclass(frozen=True, slots=True)
class PcmFrame:
    """Mono 16-bit PCM at `sample_rate_hz`."""

    samples: Samples
    sample_rate_hz: int

    @property
    def duration_ms(self) -> float:
        return len(self.samples) * 1000.0 / self.sample_rate_hz

    @property
    def sample_count(self) -> int:
        return len(self.samples)

    def to_bytes(self) -> bytes:
        return self.samples.astype("<i2", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, sample_rate_hz: int) -> PcmFrame:
        if len(data) % 2:
            raise AudioFormatError("PCM16 audio must have an even number of bytes")
        return cls(np.frombuffer(data, dtype="<i2").astype(np.int16), sample_rate_hz)

    @classmethod
    def silence(cls, duration_ms: int, sample_rate_hz: int) -> PcmFrame:
        return cls(np.zeros(duration_ms * sample_rate_hz // 1000, dtype=np.int16), sample_rate_hz)


def ms_to_samples(ms: float, sample_rate_hz: int) -> int:
    return int(ms * sample_rate_hz) // 1000


# --- G.711 -------------------------------------------------------------------------------

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159
_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(sign != 0, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    sign = codes & 0x80
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(sign != 0, magnitude, -magnitude).astype(np.int16)


_ULAW_DECODE = _ulaw_decode_table()
_ALAW_DECODE = _alaw_decode_table()


def ulaw_encode(samples: Samples) -> bytes:
    """ITU-T G.711 mu-law, 14-bit magnitude as in the reference implementation."""
    pcm = samples.astype(np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude)
    code = np.where(segment > 7, 0x7F, (segment << 4) | ((magnitude >> (segment + 1)) & 0x0F))
    return (code ^ mask).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> Samples:
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def alaw_encode(samples: Samples) -> bytes:
    pcm = samples.astype(np.int32)
    sign = np.where(pcm >= 0, 0x80, 0)
    magnitude = np.minimum(np.where(pcm >= 0, pcm, -pcm - 1), 32767) >> 3
    exponent = np.where(magnitude >= 32, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4, 0)
    exponent = np.clip(exponent, 0, 7)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    code = (sign | (exponent << 4) | mantissa) ^ 0x55
    return bytes(code.astype(np.uint8).tobytes())


def alaw_decode(data: bytes) -> Samples:
    return _ALAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


class Encoding(Enum):
    PCM16 = "pcm16"
    ULAW = "g711_ulaw"
    ALAW = "g711_alaw"


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """A wire audio format: encoding plus sample rate (G.711 is always 8 kHz)."""

    encoding: Encoding
    sample_rate_hz: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is Encoding.PCM16 else 1

    def bytes_for_ms(self, ms: int) -> int:
        return ms_to_samples(ms, self.sample_rate_hz) * self.bytes_per_sample

    def decode(self, data: bytes) -> PcmFrame:
        if self.encoding is Encoding.PCM16:
            return PcmFrame.from_bytes(data, self.sample_rate_hz)
        if self.encoding is Encoding.ULAW:
            return PcmFrame(ulaw_decode(data), self.sample_rate_hz)
        return PcmFrame(alaw_decode(data), self.sample_rate_hz)

    def encode(self, frame: PcmFrame) -> bytes:
        if frame.sample_rate_hz != self.sample_rate_hz:
            raise AudioFormatError(
                f"frame is {frame.sample_rate_hz} Hz, format wants {self.sample_rate_hz} Hz"
            )
        if self.encoding is Encoding.PCM16:
            return frame.to_bytes()
        if self.encoding is Encoding.ULAW:
            return ulaw_encode(frame.samples)
        return alaw_encode(frame.samples)


PCM16_24K = AudioFormat(Encoding.PCM16, 24_000)
ULAW_8K = AudioFormat(Encoding.ULAW, 8_000)
ALAW_8K = AudioFormat(Encoding.ALAW, 8_000)


# --- Resampling and framing -------------------------------------------------------------


class StreamResampler:
    """Streaming resampler (soxr) from one rate to another; identity when rates match."""

    def __init__(self, in_rate_hz: int, out_rate_hz: int, quality: str = "HQ") -> None:
        """`quality` is soxr's: "HQ" for audio people or recognisers hear; "QQ" (cubic, no
        buffering: output for every input chunk at once) where latency matters more than
        aliasing, as for voice activity decisions. "HQ" holds output back and releases it in
        bursts of ~20-30 ms."""
        self.in_rate_hz = in_rate_hz
        self.out_rate_hz = out_rate_hz
        self._stream = (
            None
            if in_rate_hz == out_rate_hz
            else soxr.ResampleStream(in_rate_hz, out_rate_hz, 1, dtype="int16", quality=quality)
        )

    def push(self, frame: PcmFrame) -> PcmFrame:
        if frame.sample_rate_hz != self.in_rate_hz:
            raise AudioFormatError(f"resampler expects {self.in_rate_hz} Hz, got {frame.sample_rate_hz} Hz")
        if self._stream is None:
            return frame
        out = self._stream.resample_chunk(frame.samples, last=False)
        return PcmFrame(np.asarray(out, dtype=np.int16), self.out_rate_hz)

    def flush(self) -> PcmFrame:
        if self._stream is None:
            return PcmFrame(np.zeros(0, dtype=np.int16), self.out_rate_hz)
        out = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return PcmFrame(np.asarray(out, dtype=np.int16), self.out_rate_hz)


def resample(frame: PcmFrame, out_rate_hz: int) -> PcmFrame:
    """Resample one whole clip (not for streams: use StreamResampler)."""
    if frame.sample_rate_hz == out_rate_hz or frame.sample_count == 0:
        return PcmFrame(frame.samples, out_rate_hz)
    out = soxr.resample(frame.samples, frame.sample_rate_hz, out_rate_hz, quality="HQ")
    return PcmFrame(np.asarray(out, dtype=np.int16), out_rate_hz)


class FrameChunker:
    """Re-chunks arbitrary-length PCM into fixed `frame_ms` frames, keeping the remainder."""

    def __init__(self, frame_ms: int, sample_rate_hz: int) -> None:
        self.frame_samples = ms_to_samples(frame_ms, sample_rate_hz)
        self.sample_rate_hz = sample_rate_hz
        self._pending: Samples = np.zeros(0, dtype=np.int16)

    def push(self, frame: PcmFrame) -> list[PcmFrame]:
        if frame.sample_rate_hz != self.sample_rate_hz:
            raise AudioFormatError(f"chunker expects {self.sample_rate_hz} Hz, got {frame.sample_rate_hz} Hz")
        data = np.concatenate([self._pending, frame.samples]) if len(self._pending) else frame.samples
        whole = len(data) // self.frame_samples * self.frame_samples
        self._pending = data[whole:].copy()
        return [
            PcmFrame(data[i : i + self.frame_samples], self.sample_rate_hz)
            for i in range(0, whole, self.frame_samples)
        ]

    def flush(self) -> PcmFrame | None:
        """The partial last frame, if any (not padded)."""
        if not len(self._pending):
            return None
        frame = PcmFrame(self._pending, self.sample_rate_hz)
        self._pending = np.zeros(0, dtype=np.int16)
        return frame

    @property
    def pending_samples(self) -> int:
        return len(self._pending)
