"""InputAudio: the reply the caller hears, read beside their audio, through gaps and jitter in
the input stream (on a clock passed in, nothing read)."""

from __future__ import annotations

import numpy as np

from server.audio import PcmFrame
from server.model.fakes import EnergyClassifier
from server.streaming.capture import STREAM_GAP_MS, InputAudio
from server.vad.detector import InlineClassifier

RATE = 16_000
FRAME_MS = 20


def input_audio() -> InputAudio:
    audio = InputAudio(RATE, RATE, InlineClassifier(EnergyClassifier()), preroll_ms=0, start_s=0.0)
    audio.tracks_reply = True
    return audio


def reply(ms: int, value: int) -> PcmFrame:
    """Reply audio of a constant `value`, which tells where the reference read comes from."""
    return PcmFrame(np.full(RATE * ms // 1000, value, dtype=np.int16), RATE)


def heard_beside(audio: InputAudio, at_s: float) -> set[int]:
    """The reference values beside one input frame arriving at `at_s`."""
    _, vad_frames = audio.push(PcmFrame.silence(FRAME_MS, RATE), at_s, classify=True)
    return {int(v) for f in vad_frames if f.reference is not None for v in f.reference.samples}


def stream(audio: InputAudio, from_s: float, to_s: float) -> None:
    """Input frames arriving on time from `from_s` to `to_s`, one every FRAME_MS."""
    for k in range(round((to_s - from_s) * 1000 / FRAME_MS)):
        audio.push(PcmFrame.silence(FRAME_MS, RATE), from_s + (k + 1) * FRAME_MS / 1000, classify=True)


def test_a_client_that_stopped_sending_while_the_reply_played_is_heard_beside_what_plays_now() -> None:
    """A half-duplex client: it speaks, goes quiet while a 2 s reply plays (sending nothing),
    and speaks again after it. Its next words are read beside the silence after the reply,
    not beside the reply's start (where the input's sample count alone would put them)."""
    audio = input_audio()
    stream(audio, 0.0, 1.0)
    for k in range(20):  # the reply plays from 1.1 s to 3.1 s, in 100 ms chunks
        audio.reply_plays(reply(100, 1000 + k), at_s=1.1 + k * 0.1)
    stream(audio, 3.5, 4.0)  # the client speaks again
    assert heard_beside(audio, 4.02) == {0}
    assert audio.gap_ms > 2000


def test_when_the_client_comes_back_during_the_reply_it_is_read_beside_what_plays_then() -> None:
    audio = input_audio()
    stream(audio, 0.0, 1.0)
    for k in range(20):  # 1.1 s to 3.1 s
        audio.reply_plays(reply(100, 1000 + k), at_s=1.1 + k * 0.1)
    assert heard_beside(audio, 2.52) == {1014}  # 2.50-2.52 s played chunk 14 (2.5-2.6 s)


def test_late_audio_that_arrives_in_a_burst_is_read_beside_the_reply_as_if_on_time() -> None:
    """Network jitter: the stream stalls for 700 ms, then what was captured meanwhile arrives at
    once, and the stream goes on in time. Once the burst is in, the reference is read where it
    would have been without the stall."""
    on_time, late = input_audio(), input_audio()
    for audio in (on_time, late):
        stream(audio, 0.0, 1.0)
        for k in range(40):  # 1.0 s to 5.0 s
            audio.reply_plays(reply(100, 1000 + k), at_s=1.0 + k * 0.1)
    stream(on_time, 1.0, 2.0)
    moves = []
    for k in range(50):  # the frames of 1.0-1.7 s all arrive at 1.72 s, the rest in time
        late.push(PcmFrame.silence(FRAME_MS, RATE), max(1.0 + (k + 1) * 0.02, 1.72), classify=True)
        moves.append(late.gap_ms)
    assert moves[0] > STREAM_GAP_MS  # the first late packet looked like a gap...
    assert moves[-1] == 0  # ... until the burst behind it came
    stream(on_time, 2.0, 2.5)
    stream(late, 2.0, 2.5)
    assert heard_beside(late, 2.52) == heard_beside(on_time, 2.52) == {1015}


def test_jitter_within_the_gap_threshold_leaves_the_reference_in_step_with_the_samples() -> None:
    audio = input_audio()
    stream(audio, 0.0, 1.0)
    rng = np.random.default_rng(3)
    for k in range(200):  # each frame up to 300 ms late, arriving in order
        audio.push(
            PcmFrame.silence(FRAME_MS, RATE), 1.0 + (k + 1) * 0.02 + rng.uniform(0, 0.3), classify=True
        )
        assert audio.gap_ms == 0
