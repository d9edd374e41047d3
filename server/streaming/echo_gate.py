"""EchoGate: is this VAD frame the reply's own echo, or the caller? Decided by energy (no I/O).

A speakerphone or a phone line brings the reply back into the caller's microphone; a VAD
cannot tell that voice from the caller's. The server knows what the caller is hearing (the
reply audio placed on the input clock, echo_reference.py), so it can tell how loud the echo of
it can be: a double-talk detector in the manner of Geigel's, with the echo's level learned.

For each frame, with the reference of the last `window_ms` (the longest echo delay covered):
- `reference_peak` = the loudest reference frame in the window (mean square);
- the echo return, `mic / reference_peak`, is learned as the median of that ratio over the
  last `history_ms` of frames with the reference active, less those of the caller's voice
  (the frames of a voice, its onset's included, are held until the conversation has decided
  what it was: only a voice whose words echo the reply's teaches the return; the caller's
  words, a backchannel and a burst dismissed as noise do not, since the gate itself chops a
  caller's sentence into such bursts; a headset or a client's own canceller gives almost 0);
- the frame is **echo** when the reference is active and the microphone is no louder than the
  echo could be: `mic <= return * reference_peak * margin`. The conversation then counts it
  as silence for turn-taking; the audio itself is untouched, so the recogniser hears the
  caller whole (unlike an echo canceller's suppressor, which silences a caller in double
  talk: measured in BENCHMARKS.md).

The return is learned only once the reference has played for `window_ms` (before that the
microphone may be quiet only because the echo has not come back yet, which would teach the
gate that there is none). Until `min_history_ms` more has been seen (the first reply's first
second or so), the return is unknown and taken as `initial_return_db`, the loudest echo
expected: early in the session's first reply a caller must speak within 6 dB of the reply's
level to be heard, and an echo louder than -12 dB may get through (the issue's target is 0
self-interruptions at -12 dB and below); until the delay is known, the return is the upper
quartile of the ratios. The delay is estimated as the lag at which the microphone's energy
follows the reference's best, over the frames with the reply playing (a caller's question
before the reply would hide it). With it, the echo expected now is the reference at that
delay and its room tail, not the window's loudest, and the learned frames' ratios are measured
again against it: a ratio to the window's loudest reads lower (10 dB on a short first reply in
measure_echo_gate), and its median would let the echo through.
The window and history are in frames, so nothing here reads a clock.

The cost: a caller talking over an echo louder than `margin` below their own voice is not
heard until the reply pauses or ends (measured: BENCHMARKS.md, "Barge-in in real rooms").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from server.audio import PcmFrame


@dataclass(frozen=True, slots=True)
class EchoGateOptions:
    window_ms: int = 400  # echo delays covered (the reply's play time to its echo at the server)
    history_ms: int = 4000  # the echo's delay and return are learned over this much
    min_history_ms: int = 480  # ... known once this much active reference has been seen
    initial_return_db: float = -12.0  # until then, the loudest echo the gate expects
    tail_db_per_100ms: float = 12.0  # how fast the room's echo dies away (RT60 0.5 s)
    margin_db: float = 6.0  # the caller must be this much louder than the echo could be
    active_rms: float = 100.0  # reference quieter than this (int16 units) plays no echo
    min_delay_correlation: float = 0.3  # a weaker delay estimate is not trusted
    return_quantile: float = 0.5  # the echo's return: this quantile of the learned ratios
    unaligned_quantile: float = 0.75  # ... while the delay is unknown (the window's loudest)
    onset_ms: int = 96  # a voice's first frames come before its onset is called: taught this late


# the reference's spread (std of log10 power) below which it has no delay to find: speech
# swings 20-30 dB between syllables (~0.8), a tone or a hum hardly at all
MIN_REFERENCE_SPREAD = 0.2


class EchoGate:
    def __init__(self, options: EchoGateOptions, frame_ms: int) -> None:
        self.options = options
        self.frame_ms = frame_ms
        self._window = max(1, options.window_ms // frame_ms)
        self._history = max(self._window + 2, options.history_ms // frame_ms)
        self._tail = 10 ** (-options.tail_db_per_100ms * frame_ms / 1000)  # power per frame
        self._references: deque[float] = deque(maxlen=self._history + self._window + 1)
        self._mics: deque[float] = deque(maxlen=self._history)
        self._frames = 0  # frames seen: the newest is number _frames - 1
        # the frames that teach the echo's return (by number), and their ratios mic / envelope,
        # measured again whenever the delay estimate changes: a ratio to the window's loudest
        # reference reads far below one to the reference at the delay, and a median of the
        # former applied to the latter would let the echo through
        self._taught: deque[int] = deque(maxlen=self._history)
        self._returns: deque[float] = deque(maxlen=self._history)
        self._held: deque[int] = deque(maxlen=self._history)  # ... of a voice not yet decided
        # frames of a voice settled as the caller's: their energy follows the caller, not the
        # reply, and would pull the delay estimate away from the echo's (live, from 4 frames to
        # 8-10 after a listener's "uh-huh", and the resumed reply's echo passed the gate)
        self._callers: deque[int] = deque(maxlen=self._history)
        self._pending: deque[int] = deque()  # ... the newest, which may be a voice's onset
        self._pending_frames = -(-options.onset_ms // frame_ms)
        self._margin = 10 ** (options.margin_db / 10)
        self._active = options.active_rms**2
        self.delay_frames: int | None = None  # the echo's delay, once estimated
        self._since_estimate = 0
        self._active_frames = 0  # frames with the reference playing, so far
        # the last frame judged, for a debug trace: its power and the loudest the echo could
        # have been (power units; None: no reference playing, so no echo)
        self.last_power = 0.0
        self.last_limit: float | None = None

    @property
    def echo_return(self) -> float | None:
        """The learned echo return (a power ratio), None until known."""
        if len(self._returns) * self.frame_ms < self.options.min_history_ms:
            return None
        quantile = (
            self.options.return_quantile if self.delay_frames is not None else self.options.unaligned_quantile
        )
        return float(np.quantile(np.fromiter(self._returns, dtype=np.float64), quantile))

    def is_echo(self, mic: PcmFrame, reference: PcmFrame, *, hold: bool = False) -> bool:
        """Whether the microphone frame is explained by the echo of `reference` (the reply
        audio over the same span of the input stream). `hold=True` while a voice is being
        heard that may be the caller's: the frame is judged, but what it would teach about the
        echo's return waits for `settle_held()`; a caller who talks over the session's first
        reply, before much echo has been heard, would otherwise be most of the history, and be
        taken for the echo."""
        power = _power(mic)
        self.last_power, self.last_limit = power, None
        self._references.append(_power(reference))
        self._mics.append(power)
        self._frames += 1
        self._since_estimate += 1
        if self._since_estimate >= 8 and not self._held:  # a voice being heard: wait for its verdict
            self._since_estimate = 0
            self._estimate_delay()
        envelope = self._envelope_of(self._frames - 1)
        if envelope < self._active:
            return False
        echo_return = self.echo_return
        self._active_frames += 1
        if self._active_frames > self._window:  # any echo of the window's reference is back by now
            self._pending.append(self._frames - 1)
        if hold:  # a voice began: its onset's frames are held with it
            self._held.extend(self._pending)
            self._pending.clear()
        while len(self._pending) > self._pending_frames:
            self._teach([self._pending.popleft()])
        if echo_return is None:
            echo_return = 10 ** (self.options.initial_return_db / 10)
        self.last_limit = echo_return * envelope * self._margin
        return power <= self.last_limit

    def settle_held(self, *, echo: bool) -> None:
        """The voice heard over the held frames was decided: the reply's own echo, or noise
        (`echo`: they teach the return: an echo louder than the gate expected is learned), or
        the caller's words (they teach nothing, and are left out of the delay estimate)."""
        if echo:
            self._teach(self._held)
        else:
            self._callers.extend(self._held)
        self._held.clear()

    def _teach(self, frames: Iterable[int]) -> None:
        for frame in frames:
            ratio = self._ratio_of(frame)
            if ratio is not None:
                self._taught.append(frame)
                self._returns.append(ratio)

    def _ratio_of(self, frame: int) -> float | None:
        """Frame number `frame`'s microphone over the echo envelope then (None: gone from the
        history, or no reference playing)."""
        age = self._frames - 1 - frame
        if age >= len(self._mics):
            return None
        envelope = self._envelope_of(frame)
        if envelope < self._active:
            return None
        return self._mics[len(self._mics) - 1 - age] / envelope

    def _relearn(self) -> None:
        """The delay estimate changed: the taught frames' ratios, measured again."""
        taught = list(self._taught)
        self._taught.clear()
        self._returns.clear()
        self._teach(taught)

    def _envelope_of(self, frame: int) -> float:
        """The loudest the echo can be in frame number `frame` (before the return): the
        reference at the echo's delay and its room tail; with the delay unknown, the loudest
        of the window."""
        refs = self._references
        newest = len(refs) - 1 - (self._frames - 1 - frame)  # its place in refs
        if self.delay_frames is None:
            return max((refs[i] for i in range(max(0, newest - self._window), newest + 1)), default=0.0)
        newest -= self.delay_frames
        envelope = 0.0
        weight = 1.0
        # one frame either side of the delay at full weight (a delay between two frames, an
        # estimate one off), then the room's tail
        for index in range(newest + 1, max(-1, newest - self._window), -1):
            if 0 <= index < len(refs):
                envelope = max(envelope, refs[index] * weight)
            if index <= newest - 1:
                weight *= self._tail
        return envelope

    def _estimate_delay(self) -> None:
        """The lag (frames) at which the microphone's energy follows the reference's best."""
        count = len(self._mics)
        if count * self.frame_ms < self.options.min_history_ms:
            return
        refs = np.log10(np.fromiter(self._references, dtype=np.float64) + 1.0)
        active_log = float(np.log10(self._active + 1.0))
        mics = np.log10(np.fromiter(self._mics, dtype=np.float64) + 1.0)
        first = self._frames - count  # the frame number of mics[0]
        callers = np.zeros(count, dtype=bool)
        settled = np.fromiter(self._callers, dtype=np.int64) - first
        callers[settled[settled >= 0]] = True
        correlations: dict[int, float] = {}
        for lag in range(self._window + 1):
            n = min(count, len(refs) - lag)  # the newest frames that have a reference `lag` before
            if n * self.frame_ms < self.options.min_history_ms:
                continue
            ref, mic = refs[len(refs) - lag - n : len(refs) - lag], mics[count - n :]
            # only while the reply played and the caller did not talk over it: the caller's
            # question, with no reply, says nothing of the delay and would hide it
            playing = (ref >= active_log) & ~callers[count - n :]
            if int(np.count_nonzero(playing)) * self.frame_ms < self.options.min_history_ms:
                continue
            ref, mic = ref[playing], mic[playing]
            if float(np.std(ref)) < MIN_REFERENCE_SPREAD or float(np.std(mic)) == 0.0:
                continue  # a steady reference (a tone, a hum): no delay to find
            correlations[lag] = float(np.corrcoef(ref, mic)[0, 1])
        if len(correlations) <= self._window // 2:
            return
        best_lag = max(correlations, key=correlations.__getitem__)
        best = correlations[best_lag]
        typical = float(np.median(list(correlations.values())))
        # a clear peak, or none: a steady reference (a tone, a hum) has no delay to find, and a
        # wrong one would let its echo through; the window's loudest stands in for it
        found = best_lag if best >= self.options.min_delay_correlation and best - typical >= 0.1 else None
        if found != self.delay_frames:
            self.delay_frames = found
            self._relearn()


def _power(frame: PcmFrame) -> float:
    if frame.sample_count == 0:
        return 0.0
    samples = frame.samples.astype(np.float64)
    return float(np.mean(samples * samples))
