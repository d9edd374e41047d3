"""Voice activity classifier backed by Silero VAD's ONNX model, run with onnxruntime.

Order of calls:

    vad = load()                           # once: loads the model into one InferenceSession
    classifier = vad.open(threshold=0.5)   # one per session: its own RNN state and context
    p = classifier.speech_probability(frame)   # each 32 ms (512-sample) frame at 16 kHz,
                                               # in order; p in [0, 1]

The model file is the `silero_vad.onnx` inside the `silero-vad` package. That package's own
Python code imports torch, so it is never imported: the file is found with
`importlib.util.find_spec`, which does not run the package. Per call the model takes
`input` (1, 64 + 512) float32 in [-1, 1]: the last 64 samples of the previous frame (zeros at
first) followed by the new frame; `state` (2, 1, 128) float32, the recurrent state returned
as `stateN` by the previous call; and `sr` = 16000 as an int64 scalar. It returns the speech
probability as `output` (1, 1). This mirrors `OnnxWrapper` in the package's utils_vad.py.

The session is shared by all classifiers (onnxruntime's `run` is thread-safe) and uses one
intra-op and one inter-op thread: a 32 ms frame costs ≈230 µs, too little to split across
threads.

The model also takes a batch: `input` (B, 576) and `state` (2, B, 128), one row per
classifier. `SileroVad.speech_probabilities` classifies the next frame of B sessions in one
call, which costs far less per frame than B calls (measured on the 2-core box: 1 frame 0.23
ms; 8 frames 0.61 ms; 50 frames 3.6 ms, 72 µs each), because a call's fixed cost dominates.
The server uses that path in a worker process (`server.vad.worker`, driven by
`server.vad.process`), or on its event loop (`server.vad.batch`) when
`VOXGATE_VAD_PROCESS=false`; `speech_probability` stays for one classifier used alone.
The threshold only matters to the `SpeechDetector`; the classifier reports probabilities.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from server.audio import AudioFormatError, PcmFrame
from server.errors import BackendError, BackendUnavailable
from server.vad.detector import FrameClassifier

SAMPLE_RATE_HZ = 16_000
FRAME_MS = 32
_FRAME_SAMPLES = 512
_CONTEXT_SAMPLES = 64
_STATE_SHAPE = (2, 1, 128)
_MODEL_FILE = "silero_vad.onnx"


def load(options: Mapping[str, object] | None = None) -> SileroVad:
    """Load the bundled ONNX model once; it takes no options.
    Raises `BackendUnavailable` if `onnxruntime` or the `silero-vad` model file is missing."""
    if options:
        raise BackendError(f"unknown silero VAD options: {', '.join(sorted(options))}")
    model_path = _model_path()
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable("the silero VAD backend needs `onnxruntime`") from exc
    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = 1
    session_options.inter_op_num_threads = 1
    session_options.log_severity_level = 3  # errors only
    try:
        session = onnxruntime.InferenceSession(
            str(model_path), sess_options=session_options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BackendUnavailable(f"onnxruntime cannot load {model_path}: {exc}") from exc
    return SileroVad(session)


def _model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "data" / _MODEL_FILE
        if candidate.is_file():
            return candidate
    raise BackendUnavailable(
        f"the silero VAD backend needs {_MODEL_FILE} from the `silero-vad` package "
        "(installing it with --no-deps is enough: torch is not used)"
    )


class SileroVad:
    """The loaded backend (a ClassifierFactory) holding the shared InferenceSession."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def open(self, threshold: float) -> SileroClassifier:
        """A classifier for one session. `threshold` must be in [0, 1]; the classifier does
        not use it (it reports probabilities; the SpeechDetector applies the threshold)."""
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"VAD threshold must be in [0, 1], got {threshold}")
        return SileroClassifier(self._session)

    def speech_probabilities(self, batch: Sequence[tuple[FrameClassifier, PcmFrame]]) -> list[float]:
        """One inference over the next frame of each classifier in `batch` (each opened
        here, each at most once); the same probabilities and state updates as calling their
        `speech_probability` one by one, up to float rounding."""
        if not batch:
            return []
        classifiers: list[SileroClassifier] = []
        model_input = np.empty((len(batch), _CONTEXT_SAMPLES + _FRAME_SAMPLES), dtype=np.float32)
        state = np.empty((_STATE_SHAPE[0], len(batch), _STATE_SHAPE[2]), dtype=np.float32)
        for row, (classifier, frame) in enumerate(batch):
            if not isinstance(classifier, SileroClassifier) or classifier._session is not self._session:
                raise BackendError("speech_probabilities takes classifiers opened by this silero VAD")
            _check_frame(frame)
            classifiers.append(classifier)
            model_input[row, :_CONTEXT_SAMPLES] = classifier._context[0]
            model_input[row, _CONTEXT_SAMPLES:] = frame.samples
            state[:, row, :] = classifier._state[:, 0, :]
        if len({id(c) for c in classifiers}) != len(classifiers):
            raise BackendError("a batch holds at most one frame per classifier (its state is sequential)")
        model_input[:, _CONTEXT_SAMPLES:] /= np.float32(32768.0)
        output, new_state = self._session.run(
            None, {"input": model_input, "state": state, "sr": np.array(SAMPLE_RATE_HZ, dtype=np.int64)}
        )
        new_state = np.asarray(new_state, dtype=np.float32)
        for row, classifier in enumerate(classifiers):
            classifier._state = new_state[:, row : row + 1, :].copy()
            classifier._context = model_input[row : row + 1, -_CONTEXT_SAMPLES:].copy()
        return [float(p) for p in np.asarray(output).reshape(-1)]


def _check_frame(frame: PcmFrame) -> None:
    if frame.sample_rate_hz != SAMPLE_RATE_HZ or frame.sample_count != _FRAME_SAMPLES:
        raise AudioFormatError(
            f"silero VAD needs {_FRAME_SAMPLES} samples at {SAMPLE_RATE_HZ} Hz, got "
            f"{frame.sample_count} at {frame.sample_rate_hz} Hz"
        )


class SileroClassifier:
    """Per-session Silero VAD over 32 ms frames at 16 kHz (a FrameClassifier)."""

    frame_ms: int = FRAME_MS
    sample_rate_hz: int = SAMPLE_RATE_HZ

    def __init__(self, session: Any) -> None:
        self._session = session
        self._sample_rate = np.array(SAMPLE_RATE_HZ, dtype=np.int64)
        self._state: npt.NDArray[np.float32] = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context: npt.NDArray[np.float32] = np.zeros((1, _CONTEXT_SAMPLES), dtype=np.float32)

    def speech_probability(self, frame: PcmFrame) -> float:
        """Speech probability of the next frame (exactly 512 samples at 16 kHz)."""
        _check_frame(frame)
        audio = frame.samples.astype(np.float32)[np.newaxis, :] / np.float32(32768.0)
        model_input = np.concatenate([self._context, audio], axis=1)
        output, state = self._session.run(
            None, {"input": model_input, "state": self._state, "sr": self._sample_rate}
        )
        self._state = np.asarray(state, dtype=np.float32)
        self._context = model_input[:, -_CONTEXT_SAMPLES:]
        return float(np.asarray(output).reshape(-1)[0])

    def reset(self) -> None:
        """Forget the audio heard so far (as if newly opened)."""
        self._state = np.zeros(_STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros((1, _CONTEXT_SAMPLES), dtype=np.float32)
