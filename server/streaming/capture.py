"""InputAudio: the caller's audio on its own clock (no asyncio, no sockets).

Cleans it first when asked (echo cancellation against the reply audio the caller is hearing,
noise reduction: server/audio_processing.py), converts it to the model's rate, keeps the
input stream's clock by sample count, cuts it into the VAD's fixed frames (the caller
classifies them), keeps a short pre-roll (so a turn can start before its onset was
confirmed) and remembers when each stretch of audio arrived (to time latency from the end of
speech as the server received it).

The echo canceller's far end: the conversation reports each chunk of reply audio with the
time the caller starts hearing it (`reply_plays(frame, at_s)`); that time is placed on the
input stream's clock from the newest input's arrival (echo_reference.py). The echo itself
comes back later than that by the network's round trip and the device's delay, which the
canceller finds. A client that stops sending while the reply plays (a half-duplex client: a
muted microphone, push-to-talk) leaves a gap in the input that its clock, counting samples,
does not see: when audio comes again, the reference read beside it moves on by the gap, or the
caller's next words would be judged against the reply that played while they were silent.
Audio that arrives late and then in a burst (network jitter) is told apart by the burst: the
stream catches up with real time, and the reference moves back.

`now_s` values are passed in by the caller; nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from server.audio import FrameChunker, PcmFrame, StreamResampler, ms_to_samples
from server.audio_processing import InputProcessor
from server.streaming.echo_reference import EchoReference
from server.vad.detector import SessionClassifier

_MAX_ARRIVALS = 2000
# the input falling this much further behind real time at one append is a gap in the stream (the
# client stopped sending), not a late packet: jitter on a websocket is tens of milliseconds, and
# a client that goes quiet for a reply does so for seconds
STREAM_GAP_MS = 500


@dataclass(frozen=True, slots=True)
class VadFrame:
    """One frame for the classifier, at its rate, covering [start_ms, start_ms + duration_ms)
    of the input stream's VAD clock."""

    start_ms: int
    duration_ms: int
    frame: PcmFrame
    reference: PcmFrame | None = None  # the reply audio the caller heard over the same span


class InputAudio:
    def __init__(
        self,
        input_rate_hz: int,
        model_rate_hz: int,
        classifier: SessionClassifier,
        preroll_ms: int,
        start_s: float,
    ) -> None:
        self.model_rate_hz = model_rate_hz
        self.input_rate_hz = input_rate_hz
        self.preroll_ms = preroll_ms
        self.start_s = start_s
        self.last_push_s: float | None = None
        self._resampler = StreamResampler(input_rate_hz, model_rate_hz)
        self._input_samples = 0  # at the input rate since the last format change
        self._input_ms_before = 0  # the clock at that change
        self._model_samples = 0  # at the model rate: positions of the pre-roll
        self._vad_samples = 0
        self._preroll: deque[tuple[int, PcmFrame]] = deque()
        self._arrivals: deque[tuple[int, float]] = deque()  # (input ms at end of a push, when)
        self._classifier = classifier
        self.set_classifier(classifier)
        self._processor: InputProcessor | None = None
        self._reference = EchoReference(input_rate_hz)
        self.tracks_reply = False  # keep the reply the caller hears beside their audio (echo)
        self._least_lag_ms: float | None = None  # the input's least lag behind real time
        self.gap_ms = 0.0  # how far the reference was moved on past gaps in the input

    def set_processor(self, processor: InputProcessor | None) -> None:
        """Clean the caller's audio with `processor` from now on (None: as it comes); the
        previous one is closed, and what it held back (< 10 ms) is lost."""
        if self._processor is not None:
            self._processor.close()
        self._processor = processor
        self._reference.reset()

    def reply_plays(self, frame: PcmFrame, at_s: float) -> None:
        """Reply audio the caller starts hearing at `at_s`: the reference of its echo, for the
        echo canceller and the VAD frames (`tracks_reply`)."""
        if not self.tracks_reply or self.last_push_s is None:
            return
        at_sample = self._reference.position + round((at_s - self.last_push_s) * self.input_rate_hz)
        self._reference.played(frame, at_sample)

    @property
    def input_ms(self) -> int:
        """The input stream's clock: audio received so far, by its own sample count."""
        return int(self._input_samples * 1000 // self.input_rate_hz) + self._input_ms_before

    def set_input_rate(self, input_rate_hz: int) -> None:
        if input_rate_hz != self.input_rate_hz:
            self._input_ms_before = self.input_ms
            self._input_samples = 0
            self.input_rate_hz = input_rate_hz
            self._resampler = StreamResampler(input_rate_hz, self.model_rate_hz)
            self.set_classifier(self._classifier)
            self._reference.reset(input_rate_hz)

    def set_classifier(self, classifier: SessionClassifier) -> None:
        # The VAD hears the input through a resampler that never holds audio back: the end of
        # a turn is decided on the frame that completes the silence, not ~30 ms later.
        vad_ms = self._vad_samples * 1000 // self._classifier.sample_rate_hz if self._vad_samples else 0
        self._classifier = classifier
        self._vad_resampler = StreamResampler(self.input_rate_hz, classifier.sample_rate_hz, quality="QQ")
        self._vad_chunker = FrameChunker(classifier.frame_ms, classifier.sample_rate_hz)
        # the reply's reference goes through the same steps, so its frames match the VAD's
        self._ref_resampler = StreamResampler(self.input_rate_hz, classifier.sample_rate_hz, quality="QQ")
        self._ref_chunker = FrameChunker(classifier.frame_ms, classifier.sample_rate_hz)
        self._ref_frames: deque[PcmFrame] = deque(maxlen=64)
        self._vad_samples = vad_ms * classifier.sample_rate_hz // 1000  # the clock goes on

    def ahead_ms(self, extra_ms: float, now_s: float) -> float:
        """How far the stream would run ahead of real time with `extra_ms` more audio."""
        return self.input_ms + extra_ms - (now_s - self.start_s) * 1000

    def push(self, frame: PcmFrame, now_s: float, classify: bool) -> tuple[PcmFrame, list[VadFrame]]:
        """Audio at the input rate in; the same at the model rate (possibly empty: the
        resampler holds some back), and the VAD frames it completed (none unless `classify`)."""
        self._input_samples += frame.sample_count
        self.last_push_s = now_s
        self._follow_gaps(now_s)
        far = self._reference.take(frame.sample_count) if self.tracks_reply else None
        if self._processor is not None:
            silence = PcmFrame(np.zeros(frame.sample_count, dtype=np.int16), frame.sample_rate_hz)
            frame = self._processor.process(frame, far if far is not None else silence)
        self._arrivals.append((self.input_ms, now_s))
        if len(self._arrivals) > _MAX_ARRIVALS:
            self._arrivals.popleft()
        vad_frames = self._vad_frames(frame, far) if classify else []
        model_frame = self._resampler.push(frame)
        if model_frame.sample_count:
            start_ms = self._model_samples * 1000 // self.model_rate_hz
            self._model_samples += model_frame.sample_count
            self._preroll.append((start_ms, model_frame))
            end_ms = self._model_samples * 1000 // self.model_rate_hz
            while (
                self._preroll
                and self._preroll[0][0] + self._preroll[0][1].duration_ms < end_ms - self.preroll_ms
            ):
                self._preroll.popleft()
        return model_frame, vad_frames

    def _follow_gaps(self, now_s: float) -> None:
        """Move the reference on by a gap in the input stream, and back as late audio catches
        up. The input's lag behind real time is least when its audio arrives on time; a gap
        raises it for good, a late packet until the burst behind it arrives. The reference
        stays where it is while the lag stays between its least since the last gap and
        STREAM_GAP_MS above that (jitter; a client's clock running slow)."""
        lag_ms = (now_s - self.start_s) * 1000 - self.input_ms
        if self._least_lag_ms is None or lag_ms < self._least_lag_ms:
            self._least_lag_ms = lag_ms
        behind_ms = lag_ms - self._least_lag_ms
        if behind_ms > self.gap_ms + STREAM_GAP_MS or behind_ms < self.gap_ms:
            self._reference.shift(round((behind_ms - self.gap_ms) * self.input_rate_hz / 1000))
            self.gap_ms = behind_ms

    def _vad_frames(self, frame: PcmFrame, far: PcmFrame | None) -> list[VadFrame]:
        out: list[VadFrame] = []
        if far is not None:
            self._ref_frames.extend(self._ref_chunker.push(self._ref_resampler.push(far)))
        for chunk in self._vad_chunker.push(self._vad_resampler.push(frame)):
            start_ms = self._vad_samples * 1000 // chunk.sample_rate_hz
            self._vad_samples += chunk.sample_count
            reference = self._ref_frames.popleft() if self._ref_frames else None
            out.append(VadFrame(start_ms, self._classifier.frame_ms, chunk, reference))
        return out

    def preroll_since(self, from_ms: int) -> list[PcmFrame]:
        """The kept audio from `from_ms` on (cut inside a frame where needed)."""
        out: list[PcmFrame] = []
        for start_ms, frame in self._preroll:
            if start_ms + frame.duration_ms <= from_ms:
                continue
            if start_ms < from_ms:
                skip = ms_to_samples(from_ms - start_ms, frame.sample_rate_hz)
                frame = PcmFrame(frame.samples[skip:], frame.sample_rate_hz)
            out.append(frame)
        return out

    def clear_preroll(self) -> None:
        self._preroll.clear()

    def arrival_of(self, input_ms: int) -> float | None:
        """When the audio at `input_ms` of the stream arrived (None if too old or not yet)."""
        for end_ms, when_s in self._arrivals:
            if end_ms >= input_ms:
                return when_s
        return None
