"""Text-to-speech with eSpeak NG, through the libespeak-ng the `espeakng-loader` wheel ships.

Order of calls:

    tts = load({"voice": "en-us", "rate_wpm": 175})   # once; starts the library
    async for frame in tts.synthesize("Hello there.", voice=""):   # "" = the default voice
        ...   # PcmFrame chunks of ≈40 ms at tts.sample_rate_hz (22050), as they are made

libespeak-ng keeps all its state in globals and is not thread-safe, so the process has one
`_Engine` (created by the first `load()`), and every library call happens under its lock.
Synthesis runs in a worker thread in synchronous mode: espeak calls our callback with each
≈40 ms buffer as it is produced, the callback hands the samples to the event loop
(`call_soon_threadsafe`), and `synthesize` yields them while the rest is still being made.
Leaving the loop early (or cancelling) makes the next callback abort the synthesis.
eSpeak renders ≈1000x faster than real time, so a phrase's audio waits in memory, bounded by
the phrase; callers pace playout.

Voices: `voice` is an eSpeak voice name ("en-us", "en" for British English, "en-us+f3" with
a variant, ...). An empty name means the default voice. An unknown name falls back to the default voice and
logs a warning (once per name): clients of the Realtime protocol send OpenAI voice names
such as "alloy", which must not break the call. An unknown *default* voice is a
configuration error and fails `load()`.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import numpy as np

from server.audio import PcmFrame, Samples
from server.errors import BackendError, BackendUnavailable
from server.model.backends import espeak_library

log = logging.getLogger(__name__)

_CHUNK_MS = 40  # espeak's callback buffer length: the granularity of streaming
_STOP_TIMEOUT_S = 0.5  # bound on waiting for an aborted synthesis to return
_MAX_WARNED_VOICES = 64  # unknown voice names remembered to warn once (bounded)

# From espeak-ng's speak_lib.h (API revision 12).
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EE_OK = 0
_PARAM_RATE = 1
_RATE_MIN_WPM, _RATE_MAX_WPM = 80, 450

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True, slots=True)
class EspeakOptions:
    """voice: default eSpeak voice name. rate_wpm: speaking rate, 80-450 words per minute."""

    voice: str = "en-us"
    rate_wpm: int = 175


def load(options: Mapping[str, object] | None = None) -> EspeakTts:
    """Start libespeak-ng (once per process) and return a backend using `options`.

    Options: `voice` (str, default "en-us"), `rate_wpm` (int, default 175).
    Raises `BackendUnavailable` if the `espeakng-loader` package or its library is missing,
    `BackendError` for a bad option or an unknown default voice.
    """
    parsed = _parse_options(options or {})
    engine = _shared_engine()
    if not engine.has_voice(parsed.voice):
        raise BackendError(f"unknown espeak voice {parsed.voice!r} configured as the default")
    return EspeakTts(engine, parsed)


def _parse_options(options: Mapping[str, object]) -> EspeakOptions:
    unknown = set(options) - {"voice", "rate_wpm"}
    if unknown:
        raise BackendError(f"unknown espeak options: {', '.join(sorted(unknown))}")
    defaults = EspeakOptions()
    voice = options.get("voice", defaults.voice)
    rate_wpm = options.get("rate_wpm", defaults.rate_wpm)
    if not isinstance(voice, str) or not voice:
        raise BackendError("espeak option voice must be a non-empty voice name")
    if (
        not isinstance(rate_wpm, int)
        or isinstance(rate_wpm, bool)
        or not _RATE_MIN_WPM <= rate_wpm <= _RATE_MAX_WPM
    ):
        raise BackendError(f"espeak option rate_wpm must be an integer in {_RATE_MIN_WPM}..{_RATE_MAX_WPM}")
    return EspeakOptions(voice, rate_wpm)


class EspeakTts:
    """The loaded backend; `synthesize` may run for many sessions at once (calls queue on
    the engine lock, each phrase takes about a millisecond per second of speech)."""

    def __init__(self, engine: _Engine, options: EspeakOptions) -> None:
        self._engine = engine
        self.options = options
        self.sample_rate_hz = engine.sample_rate_hz

    def has_voice(self, voice: str) -> bool:
        """Whether eSpeak knows `voice` (blocking: waits for the engine's lock, which a
        phrase being synthesized holds for about a millisecond per second of speech)."""
        return self._engine.has_voice(voice)

    async def synthesize(self, text: str, voice: str, speed: float = 1.0) -> AsyncIterator[PcmFrame]:
        """Speak one phrase with `voice` ("" = default) at `speed` times the configured rate
        (within eSpeak's 80-450 words a minute); yields chunks as espeak makes them.
        Raises `BackendError` if the library fails."""
        rate_wpm = min(_RATE_MAX_WPM, max(_RATE_MIN_WPM, round(self.options.rate_wpm * speed)))
        text = text.replace("\0", " ").strip()
        if not text:
            return
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Samples | None] = asyncio.Queue()
        stop = threading.Event()

        def deliver(samples: Samples) -> bool:
            if stop.is_set():
                return False
            loop.call_soon_threadsafe(chunks.put_nowait, samples)
            return True

        def run() -> None:
            try:
                self._engine.speak(
                    text,
                    voice or self.options.voice,
                    self.options.voice,
                    rate_wpm,
                    deliver,
                )
            finally:
                if not stop.is_set():
                    loop.call_soon_threadsafe(chunks.put_nowait, None)

        job = loop.run_in_executor(None, run)
        try:
            while (samples := await chunks.get()) is not None:
                yield PcmFrame(samples, self.sample_rate_hz)
            await job  # raises what the engine raised
        finally:
            stop.set()
            if not job.done():
                done, _ = await asyncio.wait({job}, timeout=_STOP_TIMEOUT_S)
                if not done:
                    log.warning("espeak synthesis did not stop in time")
            if job.done() and not job.cancelled():
                job.exception()  # retrieved here when the consumer left early


class _Engine:
    """The process-wide libespeak-ng. Every call into the library holds `_lock`."""

    def __init__(self, lib: ctypes.CDLL, data_path: str) -> None:
        self._lib = lib
        self._lock = espeak_library.LOCK  # shared with every user of the library
        self._sink: Callable[[Samples], bool] | None = None
        self._sink_error: BaseException | None = None
        self._warned_voices: set[str] = set()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        with self._lock:
            rate = espeak_library.initialize(
                lib, _AUDIO_OUTPUT_SYNCHRONOUS, _CHUNK_MS, data_path, _INITIALIZE_DONT_EXIT
            )
            if rate <= 0:
                raise BackendUnavailable(
                    f"libespeak-ng from `espeakng-loader` failed to start (data at {data_path})"
                )
            self.sample_rate_hz: int = rate
            self._callback = _SynthCallback(self._on_audio)  # kept alive: espeak holds it
            lib.espeak_SetSynthCallback(self._callback)

    def has_voice(self, voice: str) -> bool:
        with self._lock:
            return self._select_voice(voice)

    def speak(
        self,
        text: str,
        voice: str,
        fallback_voice: str,
        rate_wpm: int,
        sink: Callable[[Samples], bool],
    ) -> None:
        """Blocking: synthesize `text`, passing each chunk to `sink` (which returns False to
        abort). Falls back to `fallback_voice` for an unknown `voice`."""
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            if not self._select_voice(voice):
                self._warn_unknown_voice(voice)
                if not self._select_voice(fallback_voice):
                    raise BackendError(f"espeak cannot select voice {fallback_voice!r}")
            # Selecting a voice resets the rate, so set it for every phrase.
            self._lib.espeak_SetParameter(_PARAM_RATE, rate_wpm, 0)
            self._sink, self._sink_error = sink, None
            try:
                result = self._lib.espeak_Synth(
                    data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
            finally:
                self._sink = None
            if self._sink_error is not None:
                raise self._sink_error
            if result != _EE_OK:
                raise BackendError(f"espeak_Synth failed with code {result}")

    def _select_voice(self, voice: str) -> bool:
        return espeak_library.select_voice(self._lib, voice)

    def _warn_unknown_voice(self, voice: str) -> None:
        if voice in self._warned_voices:
            return
        if len(self._warned_voices) < _MAX_WARNED_VOICES:
            self._warned_voices.add(voice)
        log.warning("unknown espeak voice, using the default", extra={"voice": voice})

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int | None) -> int:
        """espeak's callback, on the synthesizing thread: 0 = go on, 1 = abort."""
        sink = self._sink
        if sink is None:
            return 1
        if not wav or count <= 0:
            return 0  # no samples in this call (or the end of synthesis)
        try:
            samples = np.ctypeslib.as_array(wav, shape=(count,)).astype(np.int16, copy=True)
            return 0 if sink(samples) else 1
        except BaseException as exc:  # an exception cannot cross the C stack: re-raised
            self._sink_error = exc
            return 1


_engine: _Engine | None = None
_engine_lock = threading.Lock()


def _shared_engine() -> _Engine:
    """The one engine of this process, started on first use (the library is global)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            try:
                import espeakng_loader

                library_path = espeakng_loader.get_library_path()
                data_path = espeakng_loader.get_data_path()
                lib = ctypes.CDLL(library_path)
            except (ImportError, OSError, RuntimeError) as exc:
                raise BackendUnavailable(
                    "the espeak TTS backend needs the `espeakng-loader` package "
                    f"(libespeak-ng and its data): {exc}"
                ) from exc
            _engine = _Engine(lib, data_path)
        return _engine
