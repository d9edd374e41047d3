"""EchoReference: reply audio placed on the input clock, taken back sample-exact."""

from __future__ import annotations

import numpy as np

from server.audio import PcmFrame
from server.streaming.echo_reference import EchoReference

RATE = 8000


def ramp(start: int, count: int) -> PcmFrame:
    return PcmFrame(np.arange(start, start + count, dtype=np.int16), RATE)


def test_audio_comes_back_at_the_input_position_it_played_at() -> None:
    ref = EchoReference(RATE, capacity_ms=1000)
    ref.played(ramp(1, 160), at_sample=100)
    first = ref.take(120).samples
    assert (first[:100] == 0).all()
    assert list(first[100:]) == list(range(1, 21))
    rest = ref.take(200).samples
    assert list(rest[:140]) == list(range(21, 161))
    assert (rest[140:] == 0).all()


def test_audio_that_played_before_the_input_arrived_is_dropped() -> None:
    ref = EchoReference(RATE, capacity_ms=1000)
    ref.take(100)
    ref.played(ramp(1, 160), at_sample=40)  # 60 samples of it are in the past
    assert list(ref.take(100).samples) == list(range(61, 161))


def test_the_ring_wraps_without_stale_audio() -> None:
    ref = EchoReference(RATE, capacity_ms=100)  # 800 samples
    for k in range(5):
        ref.played(ramp(1, 500), at_sample=k * 1000)
        taken = ref.take(1000).samples
        assert list(taken[:500]) == list(range(1, 501))
        assert (taken[500:] == 0).all()


def test_audio_beyond_the_capacity_is_not_kept() -> None:
    ref = EchoReference(RATE, capacity_ms=100)
    ref.played(ramp(1, 1000), at_sample=0)
    taken = ref.take(1000).samples
    assert list(taken[:800]) == list(range(1, 801))
    assert (taken[800:] == 0).all()


def test_other_rates_are_resampled_and_reset_keeps_the_clock() -> None:
    ref = EchoReference(RATE, capacity_ms=1000)
    ref.played(PcmFrame(np.full(480, 1000, dtype=np.int16), 24_000), at_sample=0)
    assert len(ref.take(160).samples) == 160
    ref.reset(16_000)
    assert ref.position == 320 and ref.sample_rate_hz == 16_000
    assert (ref.take(160).samples == 0).all()


def test_shifting_on_passes_over_audio_and_shifting_back_reads_it_again() -> None:
    ref = EchoReference(RATE, capacity_ms=1000)
    ref.played(ramp(1, 400), at_sample=0)
    ref.shift(300)  # no input was captured while the first 300 samples played
    assert list(ref.take(50).samples) == list(range(301, 351))
    ref.shift(-350)  # that input had only come late: read from the start again
    assert list(ref.take(100).samples) == list(range(1, 101))


def test_audio_overwritten_by_newer_is_not_read_after_shifting_back() -> None:
    ref = EchoReference(RATE, capacity_ms=100)  # 800 samples
    ref.played(ramp(1, 400), at_sample=0)
    ref.shift(1000)
    ref.played(ramp(1001, 500), at_sample=1000)  # its ring slots held the first audio's
    ref.shift(-1000)
    assert (ref.take(700).samples == 0).all()  # beyond the ring's reach behind the newest
    assert (ref.take(300).samples == 0).all()  # nothing played between the two
    assert list(ref.take(500).samples) == list(range(1001, 1501))
