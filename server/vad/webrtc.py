"""Voice activity classifier backed by WebRTC's VAD (`webrtcvad-wheels`).

Order of calls:

    vad = load()                           # once; checks the package
    classifier = vad.open(threshold=0.5)   # one per session: WebRTC's VAD adapts its noise
                                           # estimate, so sessions never share one
    p = classifier.speech_probability(frame)   # each 20 ms frame at 16 kHz, in order

WebRTC's VAD answers yes or no, so the "probability" is 1.0 or 0.0, and the threshold picks
the VAD's aggressiveness instead (how readily it calls noise non-speech):

    threshold   [0, 0.25)  [0.25, 0.5)  [0.5, 0.75)  [0.75, 1]
    mode            0           1            2           3

The default 0.5 gives mode 2. The same threshold later compared against 1.0 / 0.0 by the
`SpeechDetector` passes every voiced frame, as long as it is above 0.
A frame costs ≈2-3 µs of C code, so it is classified synchronously on the caller's thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.audio import AudioFormatError, PcmFrame
from server.errors import BackendError, BackendUnavailable

SAMPLE_RATE_HZ = 16_000
FRAME_MS = 20
_FRAME_SAMPLES = SAMPLE_RATE_HZ * FRAME_MS // 1000


def load(options: Mapping[str, object] | None = None) -> WebrtcVad:
    """Return the WebRTC VAD factory; it takes no options.
    Raises `BackendUnavailable` if the `webrtcvad-wheels` package is missing."""
    if options:
        raise BackendError(f"unknown webrtc VAD options: {', '.join(sorted(options))}")
    try:
        import webrtcvad
    except ImportError as exc:
        raise BackendUnavailable("the webrtc VAD backend needs the `webrtcvad-wheels` package") from exc
    return WebrtcVad(webrtcvad)


def aggressiveness_for(threshold: float) -> int:
    """WebRTC VAD mode 0..3 for a threshold in [0, 1] (see the module docstring)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"VAD threshold must be in [0, 1], got {threshold}")
    return min(3, int(threshold * 4))


class WebrtcVad:
    """The loaded backend (a ClassifierFactory)."""

    def __init__(self, module: Any) -> None:
        self._module = module

    def open(self, threshold: float) -> WebrtcClassifier:
        """A classifier for one session; `threshold` in [0, 1] sets the aggressiveness."""
        return WebrtcClassifier(self._module.Vad(aggressiveness_for(threshold)))


class WebrtcClassifier:
    """Per-session WebRTC VAD over 20 ms frames at 16 kHz (a FrameClassifier)."""

    frame_ms: int = FRAME_MS
    sample_rate_hz: int = SAMPLE_RATE_HZ

    def __init__(self, vad: Any) -> None:
        self._vad = vad

    def speech_probability(self, frame: PcmFrame) -> float:
        """1.0 if WebRTC calls the frame speech, else 0.0. The frame must be 20 ms at 16 kHz."""
        if frame.sample_rate_hz != SAMPLE_RATE_HZ or frame.sample_count != _FRAME_SAMPLES:
            raise AudioFormatError(
                f"webrtc VAD needs {_FRAME_SAMPLES} samples at {SAMPLE_RATE_HZ} Hz, got "
                f"{frame.sample_count} at {frame.sample_rate_hz} Hz"
            )
        return 1.0 if self._vad.is_speech(frame.to_bytes(), SAMPLE_RATE_HZ) else 0.0
