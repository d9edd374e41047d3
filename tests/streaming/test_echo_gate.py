"""EchoGate: frames of the reply's echo are told from the caller's voice by energy alone."""

from __future__ import annotations

import numpy as np
import pytest

from server.audio import PcmFrame
from server.streaming.echo_gate import EchoGate, EchoGateOptions

RATE = 16_000
FRAME = 512  # 32 ms


def speechlike(seconds: float, seed: int, level: float = 3000.0) -> np.ndarray:
    """Noise under a syllable-rate envelope: loud and quiet stretches, as speech has."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    envelope = 0.15 + 0.85 * np.abs(np.sin(2 * np.pi * 2.5 * t + rng.uniform(0, 3)))
    return rng.normal(0, level, n) * envelope


def frames(x: np.ndarray) -> list[PcmFrame]:
    x = np.clip(x, -32768, 32767).astype(np.int16)
    return [PcmFrame(x[i : i + FRAME], RATE) for i in range(0, len(x) - FRAME + 1, FRAME)]


def run(
    mic: np.ndarray, reference: np.ndarray, gate: EchoGate | None = None, caller: range = range(0)
) -> list[bool]:
    """The gate's decision per frame. Frames of `caller` (frame indices: the caller talking)
    are held and then settled as the caller's, as the conversation does with a voice it hears
    and then judges to be the caller's words."""
    gate = gate or EchoGate(EchoGateOptions(), frame_ms=32)
    decisions = []
    for i, (m, r) in enumerate(zip(frames(mic), frames(reference), strict=True)):
        decisions.append(gate.is_echo(m, r, hold=i in caller))
        if caller and i == caller[-1]:
            gate.settle_held(echo=False)
    return decisions


def echo_of(reference: np.ndarray, delay_ms: int, level_db: float) -> np.ndarray:
    delay = RATE * delay_ms // 1000
    out = np.zeros_like(reference)
    out[delay:] = reference[: len(reference) - delay] * 10 ** (level_db / 20)
    return out


@pytest.mark.parametrize("delay_ms", [30, 120, 250])
@pytest.mark.parametrize("level_db", [-6, -12, -20])
def test_the_echo_alone_is_echo(delay_ms: int, level_db: float) -> None:
    reference = speechlike(6, seed=1)
    mic = echo_of(reference, delay_ms, level_db) + np.random.default_rng(2).normal(0, 20, len(reference))
    decisions = run(mic, reference)
    loud = [i for i, f in enumerate(frames(mic)) if np.sqrt(np.mean(f.samples.astype(float) ** 2)) > 200]
    passed = [i for i in loud if not decisions[i]]
    assert len(passed) <= len(loud) // 20  # nearly every audible echo frame is caught


def test_the_delay_is_learned() -> None:
    reference = speechlike(6, seed=3)
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    run(echo_of(reference, 160, -12), reference, gate)
    assert gate.delay_frames == 5
    assert gate.echo_return == pytest.approx(10 ** (-12 / 10), rel=1.0)


def test_a_caller_louder_than_the_echo_is_heard() -> None:
    reference = speechlike(8, seed=4)
    caller = np.zeros_like(reference)
    start = 4 * RATE
    caller[start : start + 2 * RATE] = speechlike(2, seed=5, level=3000.0)
    mic = echo_of(reference, 120, -20) + caller
    spoken = range(start // FRAME + 1, (start + 2 * RATE) // FRAME - 1)
    decisions = run(mic, reference, caller=spoken)
    heard = [i for i in spoken if not decisions[i]]
    assert len(heard) >= 0.7 * len(spoken)


def test_without_an_echo_path_the_caller_is_heard_even_below_the_replys_level() -> None:
    """A headset, or a client with its own canceller: the return learned is ~0."""
    reference = speechlike(8, seed=6)
    caller = np.zeros_like(reference)
    start = 3 * RATE
    caller[start : start + 2 * RATE] = speechlike(2, seed=7, level=800.0)
    mic = caller + np.random.default_rng(8).normal(0, 10, len(reference))
    spoken = range(start // FRAME + 1, (start + 2 * RATE) // FRAME - 1)
    decisions = run(mic, reference, caller=spoken)
    assert sum(not decisions[i] for i in spoken) >= 0.9 * len(spoken)


def test_with_no_reply_playing_nothing_is_echo() -> None:
    mic = speechlike(2, seed=9)
    assert not any(run(mic, np.zeros_like(mic)))


def test_before_the_return_is_known_the_initial_guess_applies() -> None:
    gate = EchoGate(EchoGateOptions(initial_return_db=-6.0, margin_db=6.0), frame_ms=32)  # 0 dB in all
    reference = PcmFrame(np.full(FRAME, 2000, dtype=np.int16), RATE)
    assert gate.echo_return is None
    assert gate.is_echo(PcmFrame(np.full(FRAME, 1500, dtype=np.int16), RATE), reference)  # quieter
    assert not gate.is_echo(PcmFrame(np.full(FRAME, 3000, dtype=np.int16), RATE), reference)  # louder


def test_a_long_delay_is_learned_within_the_first_seconds() -> None:
    """Before the history is full the lag is estimated over what there is (it once stayed 0
    for the first 4 s, and a short reply's echo got through)."""
    reference = speechlike(2, seed=10)
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    run(echo_of(reference, 250, -12), reference, gate)
    assert gate.delay_frames in (7, 8)


def test_a_caller_heard_over_the_first_reply_does_not_teach_the_gate() -> None:
    """The caller talks 0.5 s into the session's first reply, with no echo path: before the
    return is known, most frames with the reply playing are the caller's. Learning from them
    would take the caller for the echo and gate them for the rest of the reply; frames held
    while a voice is heard, then settled as the caller's, teach the gate nothing."""
    reference = speechlike(4, seed=11)
    caller = np.zeros_like(reference)
    start, end = RATE // 2, 3 * RATE
    caller[start:end] = speechlike(2.5, seed=12, level=3000.0)
    mic = caller + np.random.default_rng(13).normal(0, 10, len(reference))
    spoken = range(start // FRAME + 3, end // FRAME - 1)  # the voice onset takes a few frames

    def heard(hold: bool) -> int:
        gate = EchoGate(EchoGateOptions(), frame_ms=32)
        decisions = []
        for i, (m, r) in enumerate(zip(frames(mic), frames(reference), strict=True)):
            decisions.append(gate.is_echo(m, r, hold=hold and i in spoken))
            if i == spoken[-1]:
                gate.settle_held(echo=False)  # the voice was the caller's
        return sum(not decisions[i] for i in spoken)

    # held: only the troughs between syllables are gated (as with the initial guess), and the
    # VAD's hangover bridges them; learned: the caller is gone within a third of a second
    assert heard(hold=True) >= 0.7 * len(spoken)
    assert heard(hold=False) < 0.3 * len(spoken)


def test_an_echo_louder_than_expected_is_learned_once_its_voice_is_settled_as_echo() -> None:
    """A -3 dB echo passes the initial guess (-12 dB) as voice; its frames are held while the
    voice is judged, and once it is settled as the reply's echo they teach the return."""
    reference = speechlike(3, seed=14)
    mic = echo_of(reference, 120, -3) + np.random.default_rng(15).normal(0, 10, len(reference))
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    for m, r in zip(frames(mic), frames(reference), strict=True):
        gate.is_echo(m, r, hold=True)
    assert gate.echo_return is None  # nothing learned while held
    gate.settle_held(echo=True)
    assert gate.echo_return == pytest.approx(10 ** (-3 / 10), rel=1.0)


def test_while_the_delay_is_unknown_the_return_is_a_high_quantile() -> None:
    """Measured against the window's loudest reference (the delay unknown), the echo's ratio
    is mostly below its true level: its median let a short first reply's echo through
    (`python -m loadtests.measure_echo_gate`, first replies). Until the delay is known the
    return is the upper quartile of the ratios; once known, their median."""
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    reference = PcmFrame(np.full(FRAME, 3000, dtype=np.int16), RATE)  # steady: no delay to find
    levels = [100 + 10 * (i % 20) for i in range(100)]
    for level in levels:
        gate.is_echo(PcmFrame(np.full(FRAME, level, dtype=np.int16), RATE), reference)
    assert gate.delay_frames is None
    ratios = [(level / 3000) ** 2 for level in levels[gate._window :]]  # once the window has played
    assert gate.echo_return == pytest.approx(float(np.quantile(ratios, 0.75)), rel=0.05)
    gate.delay_frames = 3  # a delay found: the median again
    assert gate.echo_return == pytest.approx(float(np.median(ratios)), rel=0.05)


def test_the_frames_before_a_voices_onset_is_called_are_held_with_it() -> None:
    """The detector calls a voice's onset after its first frames (60 ms voiced): those frames
    reach the gate before the conversation knows a voice is there. Live, over a short first
    reply's -12 dB echo, such frames of the caller's voices raised the learned return to -7 dB
    and the caller was gated from then on. The newest frames are taught only `onset_ms`
    later, so a voice that starts holds them too."""
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    reference = PcmFrame(np.full(FRAME, 3000, dtype=np.int16), RATE)  # steady: the delay unknown
    echo = PcmFrame(np.full(FRAME, 300, dtype=np.int16), RATE)  # -20 dB
    caller = PcmFrame(np.full(FRAME, 3000, dtype=np.int16), RATE)  # 0 dB
    for _ in range(gate._window + 18):
        gate.is_echo(echo, reference)
    assert gate.echo_return == pytest.approx(0.01, rel=0.01)
    for _ in range(5):  # five voices, each called two frames into it, then judged the caller's
        gate.is_echo(caller, reference)
        gate.is_echo(caller, reference)
        for _ in range(6):
            gate.is_echo(caller, reference, hold=True)
        gate.settle_held(echo=False)
        gate.is_echo(echo, reference)
    assert gate.echo_return == pytest.approx(0.01, rel=0.01)


def syllables(seconds: float, seed: int, level: float = 3000.0) -> np.ndarray:
    """Noise in bursts of random length (80-250 ms) and gaps (30-150 ms): speech's rhythm
    without `speechlike`'s period, which a delay estimate could mistake by a period."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    at = 0
    while at < len(out):
        n = int(rng.uniform(0.08, 0.25) * RATE)
        out[at : at + n] = rng.normal(0, level, len(out[at : at + n])) * rng.uniform(0.3, 1.0)
        at += n + int(rng.uniform(0.03, 0.15) * RATE)
    return out


def first_reply_after_a_question(delay_ms: int = 120, level_db: float = -12) -> tuple[np.ndarray, np.ndarray]:
    """A session's start: the caller's question (2 s, as loud as the reply), 300 ms, then a
    2.5 s first reply whose echo comes back `delay_ms` late at `level_db`."""
    question = syllables(2, seed=21)
    reply = syllables(2.5, seed=22)
    gap = np.zeros(RATE * 3 // 10)
    reference = np.concatenate([np.zeros_like(question), gap, reply, np.zeros(RATE)])
    mic = echo_of(reference, delay_ms, level_db)
    mic[: len(question)] += question
    return mic + np.random.default_rng(23).normal(0, 10, len(mic)), reference


def test_the_callers_question_does_not_hide_the_delay() -> None:
    """The delay is estimated over the frames with the reply playing: the question before it
    (loud microphone, no reference) would otherwise dominate the correlation, and the first
    reply would play out with the delay unknown (so measured live: never found in a short
    first reply)."""
    mic, reference = first_reply_after_a_question()
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    reply_end = (2 * RATE + RATE * 3 // 10 + int(2.5 * RATE)) // FRAME
    for i, (m, r) in enumerate(zip(frames(mic), frames(reference), strict=True)):
        gate.is_echo(m, r)
        if i == reply_end:
            break
    assert gate.delay_frames in (3, 4)


def test_once_the_delay_is_known_the_learned_ratios_are_measured_against_it() -> None:
    """Ratios learned against the window's loudest reference read far below the echo's true
    level; measured again at the delay, their median is the echo's level (-12 dB here), so the
    echo stays gated."""
    mic, reference = first_reply_after_a_question()
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    reply = range(
        (2 * RATE + RATE * 3 // 10) // FRAME, (2 * RATE + RATE * 3 // 10 + int(2.5 * RATE)) // FRAME
    )
    decisions = [gate.is_echo(m, r) for m, r in zip(frames(mic), frames(reference), strict=True)]
    assert gate.delay_frames is not None
    assert gate.echo_return is not None
    assert 10 * np.log10(gate.echo_return) == pytest.approx(-12, abs=3)
    loud = [i for i in reply if np.sqrt(np.mean(frames(mic)[i].samples.astype(float) ** 2)) > 200]
    assert sum(not decisions[i] for i in loud) <= len(loud) // 20


def test_each_decision_leaves_the_frames_level_and_the_echos_limit_for_a_trace() -> None:
    """`last_power` and `last_limit` (the debug log's "echo gate frame"): a frame is echo
    exactly when its power is within the limit; with no reference playing there is none."""
    reference = speechlike(4, seed=11)
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    mic = echo_of(reference, 120, -12) + speechlike(4, seed=12, level=1500.0) * (
        np.arange(len(reference)) > 2 * RATE
    )
    for m, r in zip(frames(mic), frames(reference), strict=True):
        echo = gate.is_echo(m, r)
        assert gate.last_limit is not None and echo == (gate.last_power <= gate.last_limit)
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    assert not gate.is_echo(frames(mic)[-1], PcmFrame(np.zeros(FRAME, np.int16), RATE))
    assert gate.last_limit is None and gate.last_power > 0


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_a_caller_talking_over_the_reply_does_not_move_the_delay(seed: int) -> None:
    """Live, after a listener's "uh-huh" over a -12 dB echo 128 ms late, the delay estimate
    went from 4 frames to 8-10: the caller's loud frames were in the correlation, and the
    resumed reply's echo then passed the gate. A voice is left out of the estimate: while it is
    heard (no estimate), and once it is settled as the caller's."""
    reference = speechlike(9, seed=seed)
    caller = np.zeros_like(reference)
    start = 5 * RATE
    caller[start : start + RATE] = speechlike(1, seed=seed + 100, level=9000.0)
    mic = echo_of(reference, 128, -12) + caller + np.random.default_rng(seed).normal(0, 20, len(reference))
    gate = EchoGate(EchoGateOptions(), frame_ms=32)
    spoken = range(start // FRAME - 1, (start + RATE) // FRAME + 2)
    delays = []
    for i, (m, r) in enumerate(zip(frames(mic), frames(reference), strict=True)):
        gate.is_echo(m, r, hold=i in spoken)
        if i == spoken[-1]:
            gate.settle_held(echo=False)
        if i > spoken[-1]:
            delays.append(gate.delay_frames)
    assert set(delays) == {4}
