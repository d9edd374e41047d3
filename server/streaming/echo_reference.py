"""EchoReference: the reply audio the caller is hearing, placed on the input stream's clock.

An echo canceller needs, beside each stretch of the caller's audio, the far-end signal that
was playing while it was captured. The server paces the reply itself (playout.py), so it knows
when each chunk will play: the conversation tells this buffer `played(frame, at_input_ms)`,
where `at_input_ms` is the input-stream position the caller's microphone will be at when the
chunk starts playing (the wall-clock play time mapped onto the input clock). `take(n)` then
returns the reference for the next `n` samples of input, silence where nothing played. What
remains (network, device and room delay) is the canceller's to find: it estimates the delay
itself, within its range.

`shift(n)` moves the read position without reading: forward over reply audio that played
while no input was captured (a client that stops sending while the reply plays), back when
audio captured earlier arrives late (network jitter). What was placed stays readable for
`capacity_ms` behind the newest audio placed, so moving back finds it again.

No clock and no I/O here: positions are sample counts at `sample_rate_hz`.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from server.audio import PcmFrame, resample


class EchoReference:
    """A ring of `capacity_ms` of reference audio ahead of the input position."""

    def __init__(self, sample_rate_hz: int, capacity_ms: int = 4000) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.capacity_ms = capacity_ms
        self._ring: NDArray[np.int16] = np.zeros(sample_rate_hz * capacity_ms // 1000, dtype=np.int16)
        self._position = 0  # the sample the next take() starts at
        # the end of the reference written so far (absolute samples): every ring slot holds the
        # audio (or silence) of one position in [_written_to - capacity, _written_to)
        self._written_to = 0

    @property
    def position(self) -> int:
        return self._position

    def played(self, frame: PcmFrame, at_sample: int) -> None:
        """`frame` of reply audio starts playing at input sample `at_sample`. Audio placed
        before the current position (it played before this input arrived) is dropped, as is
        what falls beyond the ring's capacity."""
        if frame.sample_rate_hz != self.sample_rate_hz:
            frame = resample(frame, self.sample_rate_hz)
        samples = frame.samples
        start = max(at_sample, self._position)
        skip = start - at_sample
        size = len(self._ring)
        end = min(at_sample + len(samples), self._position + size)
        if end <= start:
            return
        if start > self._written_to:  # nothing played in between: silence, not older audio
            self._ring[np.arange(max(self._written_to, start - size), start) % size] = 0
        index = np.arange(start, end) % size
        self._ring[index] = samples[skip : skip + (end - start)]
        self._written_to = max(self._written_to, end)

    def take(self, sample_count: int) -> PcmFrame:
        """The reference for the next `sample_count` samples of input (the position moves on)."""
        size = len(self._ring)
        start, end = self._position, self._position + sample_count
        out = np.zeros(sample_count, dtype=np.int16)
        known_start, known_end = max(start, self._written_to - size), min(end, self._written_to)
        if known_end > known_start:
            out[known_start - start : known_end - start] = self._ring[
                np.arange(known_start, known_end) % size
            ]
        self._position = end
        return PcmFrame(out, self.sample_rate_hz)

    def shift(self, sample_count: int) -> None:
        """Move the read position by `sample_count` (negative: back) without reading."""
        self._position += sample_count

    def reset(self, sample_rate_hz: int | None = None) -> None:
        """Forget everything (the input format changed); the position is kept."""
        if sample_rate_hz is not None and sample_rate_hz != self.sample_rate_hz:
            self._position = self._position * sample_rate_hz // self.sample_rate_hz
            self.sample_rate_hz = sample_rate_hz
            self._ring = np.zeros(sample_rate_hz * self.capacity_ms // 1000, dtype=np.int16)
        else:
            self._ring[:] = 0
        self._written_to = self._position
