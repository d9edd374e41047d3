"""Voice activity: frame classifiers in, voice onsets and offsets out (sans-I/O).

`SpeechDetector` turns per-frame speech probabilities into `VoiceStarted` / `VoiceStopped`
with hysteresis measured in audio time (sample counts), so results are exact and replayable.
It filters nothing by length beyond `min_voiced_ms`: whether a short burst is a cough or a turn
is the TurnTaker's decision.

Invariants:
- Every `VoiceStopped` follows a `VoiceStarted`; events alternate.
- `VoiceStarted.at_ms` is the start of the first voiced frame of the run; `VoiceStopped.at_ms`
  is the end of the last voiced frame (the hangover is not counted as voice).

Classifier backends (webrtcvad, Silero) implement `FrameClassifier` in
`server/model/backends/`; this module imports none of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from server.audio import PcmFrame


class FrameClassifier(Protocol):
    """Per-session speech classifier over fixed frames of `frame_ms` at `sample_rate_hz`."""

    frame_ms: int
    sample_rate_hz: int

    def speech_probability(self, frame: PcmFrame) -> float:
        """Probability in [0, 1] that `frame` (exactly frame_ms long) holds speech."""
        ...


class ClassifierFactory(Protocol):
    """A loaded VAD backend; `open()` gives each session its own (stateful) classifier."""

    def open(self, threshold: float) -> FrameClassifier: ...


class QueuedClassifier(ABC):
    """A session's classifier whose frames are classified elsewhere, with other sessions'
    (a shared batch, another process): the asyncio layer awaits `classify` for each frame,
    in order, one at a time."""

    frame_ms: int
    sample_rate_hz: int

    @abstractmethod
    async def classify(self, frame: PcmFrame) -> float: ...

    @abstractmethod
    def speech_probability(self, frame: PcmFrame) -> float: ...


class SessionClassifier(Protocol):
    """What a session's audio loop awaits for each VAD frame, in order, one at a time."""

    @property
    def frame_ms(self) -> int: ...

    @property
    def sample_rate_hz(self) -> int: ...

    async def classify(self, frame: PcmFrame) -> float: ...


class InlineClassifier:
    """A classifier cheap enough to run where it is awaited (webrtcvad: a few µs of C)."""

    def __init__(self, inner: FrameClassifier) -> None:
        self.inner = inner

    @property
    def frame_ms(self) -> int:
        return self.inner.frame_ms

    @property
    def sample_rate_hz(self) -> int:
        return self.inner.sample_rate_hz

    async def classify(self, frame: PcmFrame) -> float:
        return self.inner.speech_probability(frame)


def session_classifier(classifier: FrameClassifier | QueuedClassifier) -> SessionClassifier:
    """The classifier a session awaits: a queued one (its frames classified elsewhere, in a
    shared batch or another process) as it is; any other runs inline."""
    return classifier if isinstance(classifier, QueuedClassifier) else InlineClassifier(classifier)


@runtime_checkable
class BatchableVad(ClassifierFactory, Protocol):
    """A VAD backend whose model can classify the next frame of several of its classifiers
    (each a different session's) in one inference, cheaper than one call per frame."""

    def speech_probabilities(self, batch: Sequence[tuple[FrameClassifier, PcmFrame]]) -> list[float]:
        """The probabilities of each classifier's next frame, in `batch`'s order; each
        classifier (opened by this backend) at most once. Advances each classifier's state as
        `speech_probability` would. Called from one thread at a time."""
        ...


@dataclass(frozen=True, slots=True)
class VoiceStarted:
    at_ms: int


@dataclass(frozen=True, slots=True)
class VoiceStopped:
    at_ms: int


VoiceEvent = VoiceStarted | VoiceStopped


@dataclass(frozen=True, slots=True)
class DetectorOptions:
    threshold: float = 0.5
    min_voiced_ms: int = 60  # voiced audio needed (in a row, gaps bridged) to call an onset
    hangover_ms: int = 90  # unvoiced audio needed to call an offset


class SpeechDetector:
    """Hysteresis over frame probabilities. Feed frames in order with `push`."""

    def __init__(self, options: DetectorOptions) -> None:
        self.options = options
        self._is_voiced = False
        self._run_start_ms: int | None = None  # start of the current candidate voiced run
        self._run_voiced_ms = 0
        self._last_voiced_end_ms = 0
        self._unvoiced_ms = 0

    @property
    def is_voiced(self) -> bool:
        return self._is_voiced

    @property
    def voiced_run_ms(self) -> int:
        """Voiced audio in the current run (short gaps bridged), 0 outside a run."""
        return self._run_voiced_ms if self._run_start_ms is not None else 0

    def push(self, probability: float, start_ms: int, duration_ms: int) -> list[VoiceEvent]:
        """One classified frame covering [start_ms, start_ms + duration_ms)."""
        end_ms = start_ms + duration_ms
        voiced = probability >= self.options.threshold
        events: list[VoiceEvent] = []
        if voiced:
            if self._run_start_ms is None:
                self._run_start_ms = start_ms
                self._run_voiced_ms = 0
            self._run_voiced_ms += duration_ms
            self._last_voiced_end_ms = end_ms
            self._unvoiced_ms = 0
            if not self._is_voiced and self._run_voiced_ms >= self.options.min_voiced_ms:
                self._is_voiced = True
                events.append(VoiceStarted(at_ms=self._run_start_ms))
        else:
            self._unvoiced_ms += duration_ms
            if self._unvoiced_ms >= self.options.hangover_ms:
                if self._is_voiced:
                    self._is_voiced = False
                    events.append(VoiceStopped(at_ms=self._last_voiced_end_ms))
                self._run_start_ms = None
                self._run_voiced_ms = 0
        return events
