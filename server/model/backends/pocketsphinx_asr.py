"""Streaming speech-to-text with CMU PocketSphinx and the en-us model inside its wheel.

Order of calls:

    asr = load({"max_decoders": 4})       # once per process; checks the model files
    stream = asr.open_stream()            # one per utterance, cheap
    stream.push_audio(frame)              # 16 kHz mono frames, any length; never blocks
    stream.end_input()                    # the utterance is over
    async for transcript in stream: ...   # partials (is_final=False) whenever the best
                                          # hypothesis changes, then exactly one final
    await stream.aclose()                 # always; returns the decoder to the pool
    asr.close()                           # at shutdown: stops the idle decoder processes

Why decoders live in worker processes: PocketSphinx's Python binding holds the GIL for the
whole of `process_raw` and `end_utt` (its Cython code has no `nogil` section), so running a
decoder in a thread still stalls the event loop for as long as each call takes (measured:
55 ms stalls with 20 ms chunks, 470 ms with 1 s chunks, 150-390 ms for a two-pass
`end_utt`). Each pooled decoder therefore runs in its own child process (`python -m` this
module); the stream talks to it over a socket pair from a worker thread that only waits on
I/O, so the loop never waits and two utterances decode on two cores.

The pool: one decoder per process, created lazily (≈1 s: interpreter start plus 0.4 s of
model loading, ≈90 MB each), reused for later utterances (`end_utt` / `start_utt`), shared
by every session and guarded by one lock. An utterance holds its decoder from its first
audio to its final result. When `max_decoders` are busy a new stream waits (its audio is
kept) up to `acquire_timeout_s`, then fails with `BackendUnavailable(retryable=True)`.
The acoustic model and the language model cannot be shared between decoders: the binding
has no API to share an acoustic model, and scoring an n-gram (`lm_trie_score`) writes
history caches inside the model, so each decoder loads its own copy, with the settings
`load()` checked once.

Channel adaptation: a decoder keeps its cepstral mean (13 numbers describing the average
spectrum of the audio it heard) from one utterance to the next, as PocketSphinx does by
default; resetting it per utterance raised the word error rate from 23 % to 35 % on our
human test recordings. New decoders start from a mean measured on real speech (see
`_CMN_INIT`). So the words recognised can depend a little on which earlier utterances the
pooled decoder heard; no audio or text carries over.

Search settings: one pass (`fwdflat=False, bestpath=False`) by default; `two_pass=True`
adds the flat-lexicon pass and the lattice best path (no better on our test audio, and
several times slower to finalise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from server.audio import AudioFormatError, PcmFrame
from server.errors import BackendError, BackendUnavailable
from server.model.backends.pocketsphinx_listener import ListenerModelOptions, write_listener_model
from server.model.base import Transcript, TranscriptionOptions, WordSpan
from server.model.worker_process import launch, read_exactly

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
_BYTES_PER_MS = SAMPLE_RATE_HZ * 2 // 1000
_MAX_BATCH_BYTES = 200 * _BYTES_PER_MS  # audio per decoder request: bounds request latency
_MAX_PENDING_BYTES = 60_000 * _BYTES_PER_MS  # undecoded audio kept before the oldest is dropped
_SPAWN_TIMEOUT_S = 30.0  # interpreter start + model load, on a busy 2-core machine
_REQUEST_TIMEOUT_S = 10.0  # one batch or one end_utt; far above anything measured
_CLOSE_TIMEOUT_S = 0.5  # bound on aclose() and on stopping a worker process
_INFLIGHT_WAIT_S = 0.4  # how long a closing stream waits for its last decoder request
# Initial cepstral mean of every new decoder: the mean this model measured over five
# LibriVox sentences (Debian's pocketsphinx-testdata). PocketSphinx's own default
# (40,3,-1) is far from real speech, and a decoder only updates its mean at the end of an
# utterance (or every 8 s), so a new decoder's first utterance would be decoded with it:
# 38 % word error rate on held-out human recordings (the card names) instead of 14 %.
_CMN_INIT = "52.80,6.35,-3.12,20.30,-14.18,3.96,-7.17,-6.59,1.47,-4.19,3.04,-1.81,-2.62"
_RETRY_CHECKOUT_S = 0.05
DECODER_FRAME_MS = 10  # the decoder's frames (its default frame rate, 100 a second)
_ALTERNATE = re.compile(r"\(\d+\)$")  # "want(2)": the dictionary's second pronunciation
_LISTENER_KEY = "voxgate_listener_model"  # in a worker's config: decode with a listener's model

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class PocketsphinxOptions:
    """max_decoders: decoder processes at most (each ≈90 MB, one utterance at a time).
    acquire_timeout_s: how long a new utterance waits for a busy pool before failing.
    two_pass: add PocketSphinx's fwdflat and bestpath passes (slower final, see module doc).
    listener_model: also offer streams decoded with a model that expects a listener's short
    words (`open_listener_stream`, `pocketsphinx_listener`), from a pool of their own.
    """

    max_decoders: int = 4
    acquire_timeout_s: float = 5.0
    two_pass: bool = False
    listener_model: bool = True


def load(options: Mapping[str, object] | None = None) -> PocketsphinxAsr:
    """Check the model in the `pocketsphinx` wheel and return the shared backend.

    Options: `max_decoders` (int), `acquire_timeout_s` (float), `two_pass` (bool),
    `listener_model` (bool).
    Raises `BackendUnavailable` if the package or its model files are missing.
    """
    parsed = _parse_options(options or {})
    try:
        import pocketsphinx
    except ImportError as exc:
        raise BackendUnavailable("the pocketsphinx ASR backend needs the `pocketsphinx` package") from exc
    decoder_config = decoder_settings(two_pass=parsed.two_pass)
    files = {key: Path(str(decoder_config[key])) for key in ("hmm", "lm", "dict")}
    missing = [str(path) for path in files.values() if not path.exists()]
    if not (files["hmm"] / "mdef").exists():
        missing.append(str(files["hmm"] / "mdef"))
    if missing:
        raise BackendUnavailable(
            "the en-us model of the `pocketsphinx` package is incomplete; missing: " + ", ".join(missing)
        )
    try:
        pocketsphinx.Config(**decoder_config)  # rejects unknown keys and bad values now
    except (KeyError, ValueError, RuntimeError) as exc:
        raise BackendUnavailable(f"pocketsphinx rejected its configuration: {exc}") from exc
    return PocketsphinxAsr(decoder_config, parsed)


def decoder_settings(*, two_pass: bool = False) -> dict[str, object]:
    """The decoder configuration this backend runs with: the `pocketsphinx` wheel's en-us
    model and our settings (what `pocketsphinx.Config(**...)` takes; measurement tools decode
    with it too). Needs the package installed; `load` checks the files."""
    import pocketsphinx

    model_dir = Path(pocketsphinx.get_model_path()) / "en-us"
    return {
        "hmm": str(model_dir / "en-us"),
        "lm": str(model_dir / "en-us.lm.bin"),
        "dict": str(model_dir / "cmudict-en-us.dict"),
        "samprate": SAMPLE_RATE_HZ,
        "fwdflat": two_pass,
        "bestpath": two_pass,
        "cmninit": _CMN_INIT,
        "loglevel": "ERROR",
    }


def _parse_options(options: Mapping[str, object]) -> PocketsphinxOptions:
    unknown = set(options) - {"max_decoders", "acquire_timeout_s", "two_pass", "listener_model"}
    if unknown:
        raise BackendError(f"unknown pocketsphinx options: {', '.join(sorted(unknown))}")
    defaults = PocketsphinxOptions()
    max_decoders = options.get("max_decoders", defaults.max_decoders)
    timeout_s = options.get("acquire_timeout_s", defaults.acquire_timeout_s)
    two_pass = options.get("two_pass", defaults.two_pass)
    listener_model = options.get("listener_model", defaults.listener_model)
    if not isinstance(max_decoders, int) or isinstance(max_decoders, bool) or max_decoders < 1:
        raise BackendError("pocketsphinx option max_decoders must be an integer >= 1")
    if not isinstance(timeout_s, int | float) or isinstance(timeout_s, bool) or timeout_s < 0:
        raise BackendError("pocketsphinx option acquire_timeout_s must be a number >= 0")
    if not isinstance(two_pass, bool):
        raise BackendError("pocketsphinx option two_pass must be a boolean")
    if not isinstance(listener_model, bool):
        raise BackendError("pocketsphinx option listener_model must be a boolean")
    return PocketsphinxOptions(max_decoders, float(timeout_s), two_pass, listener_model)


class PocketsphinxAsr:
    """The loaded backend: a lazily filled pool of decoder processes shared by all streams."""

    sample_rate_hz: int = SAMPLE_RATE_HZ

    def __init__(self, decoder_config: Mapping[str, object], options: PocketsphinxOptions):
        self.options = options
        self._pool = _DecoderPool(dict(decoder_config), options.max_decoders)
        self._listener_pool: _DecoderPool | None = None
        if options.listener_model:  # one pass: it only has to name a listener's short words
            listener_config = {**decoder_config, "fwdflat": False, "bestpath": False}
            listener_config[_LISTENER_KEY] = asdict(ListenerModelOptions())
            self._listener_pool = _DecoderPool(listener_config, options.max_decoders)

    languages = frozenset({"en"})  # its acoustic model and dictionary are US English

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> PocketsphinxStream:
        """A stream for one utterance; its decoder is taken from the pool at the first audio.
        `transcription`: English only (a prompt is ignored: the language model is fixed)."""
        if transcription is not None and transcription.language not in (None, "en"):
            raise BackendError(f"pocketsphinx transcribes English only, not {transcription.language!r}")
        return PocketsphinxStream(self._pool, self.options.acquire_timeout_s)

    def open_listener_stream(self) -> PocketsphinxStream:
        """A stream decoded with the listener's model (HearsListeners): its words say whether
        speech over a reply is a listener's "mm-hmm" or "okay", not what a caller said."""
        if self._listener_pool is None:
            raise BackendError("this pocketsphinx backend was loaded without listener_model")
        return PocketsphinxStream(self._listener_pool, self.options.acquire_timeout_s)

    def warm_up(self) -> None:
        """Start one decoder process now (blocking, ≈1 s), and one with the listener's model
        (≈1.5 s), so that neither the first utterance nor the first speech over a reply after
        start-up waits for one. Called by the model catalog at load."""
        for pool in (self._pool, self._listener_pool):
            if pool is None:
                continue
            reserved = pool.reserve()
            if reserved == "spawn":
                reserved = pool.spawn()
            if isinstance(reserved, _DecoderProcess):
                pool.release(reserved)

    @property
    def decoder_count(self) -> int:
        """Decoder processes alive (idle or in use), the listener's aside."""
        return self._pool.count

    @property
    def listener_decoder_count(self) -> int:
        """Listener's decoder processes alive (idle or in use)."""
        return self._listener_pool.count if self._listener_pool is not None else 0

    def close(self) -> None:
        """Stop idle decoder processes now and busy ones when their stream lets go.
        Blocking (up to ≈0.5 s per process); call at shutdown, off the event loop if busy."""
        self._pool.close()
        if self._listener_pool is not None:
            self._listener_pool.close()


def word_spans_of(segments: Iterable[Any]) -> tuple[WordSpan, ...]:
    """A decoder's segmentation (`Decoder.seg()`, also mid-utterance) as the hypothesis's
    words with their spans in the utterance's audio: fillers (`<s>`, `<sil>`, `[NOISE]`) left
    out, as `hyp()` leaves them, and a pronunciation's number taken off ("want(2)")."""
    spans = []
    for segment in segments:
        word = str(segment.word)
        if word.startswith(("<", "[", "+")):
            continue
        start_ms = int(segment.start_frame) * DECODER_FRAME_MS
        end_ms = (int(segment.end_frame) + 1) * DECODER_FRAME_MS  # end_frame is its last frame
        spans.append(WordSpan(_ALTERNATE.sub("", word), start_ms, end_ms))
    return tuple(spans)


def placed_words(decoder: Any, hypothesis: Any) -> tuple[WordSpan, ...]:
    """The words of `hypothesis` (`decoder.hyp()`) placed in the utterance's audio; none
    without a hypothesis. The binding's segmentation can hold no search result to iterate
    (`TypeError: 'NoneType' object is not iterable`, met on a decoder started after another
    was killed): the words then go unplaced for this step rather than failing the utterance."""
    if hypothesis is None:
        return ()
    try:
        return word_spans_of(decoder.seg())
    except TypeError:
        return ()


def _shifted(spans: tuple[WordSpan, ...], by_ms: int) -> tuple[WordSpan, ...]:
    if not by_ms:
        return spans
    return tuple(WordSpan(span.word, span.start_ms + by_ms, span.end_ms + by_ms) for span in spans)


# --- Streams -----------------------------------------------------------------------------


class PocketsphinxStream:
    """One utterance. See the module docstring for the order of calls.

    A task owned by the stream takes a decoder, feeds it the audio in batches of up to
    200 ms as it arrives and publishes hypotheses; `aclose()` cancels it (bounded) and hands
    the decoder back to the pool, after its last request if one is still running. If the
    stream cannot get or keep a decoder, iterating it raises `BackendError`.
    Iterate it once: partials that nobody read yet are replaced by newer ones.
    """

    def __init__(self, pool: _DecoderPool, acquire_timeout_s: float) -> None:
        self._pool = pool
        self._acquire_timeout_s = acquire_timeout_s
        self._pending = bytearray()
        self.dropped_ms = 0  # audio dropped because the decoder fell a minute behind
        self._input_ended = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._wake_worker: asyncio.Event | None = None
        self._wake_reader: asyncio.Event | None = None
        self._partial: Transcript | None = None  # newest partial not yet read
        self.hypothesis = ""  # newest partial, read or not
        self.word_spans: tuple[WordSpan, ...] = ()  # ... its words, placed (TimesWords)
        self._decoded_bytes = 0  # audio the decoder has processed (the hypothesis covers it)
        self._final: Transcript | None = None
        self._error: BackendError | None = None
        self._final_read = False
        self._inflight: asyncio.Future[Any] | None = None  # decoder request still running

    @property
    def decoded_ms(self) -> int:
        """The pushed audio the hypothesis covers: decoded, or dropped unheard."""
        return self._decoded_bytes // _BYTES_PER_MS + self.dropped_ms

    def push_audio(self, frame: PcmFrame) -> None:
        """Queue 16 kHz audio for decoding; never blocks. Call from the event loop."""
        if self._closed or self._input_ended:
            raise BackendError("audio pushed after end_input() or aclose()")
        if frame.sample_rate_hz != SAMPLE_RATE_HZ:
            raise AudioFormatError(
                f"pocketsphinx expects {SAMPLE_RATE_HZ} Hz audio, got {frame.sample_rate_hz} Hz"
            )
        self._pending += frame.to_bytes()
        overflow = len(self._pending) - _MAX_PENDING_BYTES
        if overflow > 0:
            overflow += overflow % 2
            del self._pending[:overflow]
            self.dropped_ms += overflow // _BYTES_PER_MS
        self._start().set()

    def end_input(self) -> None:
        """No more audio; the final transcript follows. Idempotent."""
        if self._closed:
            return
        self._input_ended = True
        self._start().set()

    async def __aiter__(self) -> AsyncIterator[Transcript]:
        """Partials as the hypothesis changes, then one final (after `end_input()`)."""
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
        """Stop decoding and give the decoder back; returns within about 0.5 s."""
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

    # --- the worker task ---------------------------------------------------------------

    def _start(self) -> asyncio.Event:
        """Start the worker on first use (needs the running loop); returns its wake-up."""
        if self._task is None:
            self._wake_worker = asyncio.Event()
            self._wake_reader = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pocketsphinx-utterance")
        assert self._wake_worker is not None
        return self._wake_worker

    async def _run(self) -> None:
        wake = self._wake_worker
        assert wake is not None
        decoder: _DecoderProcess | None = None
        started_s = time.perf_counter()
        checkout_s = decode_s = 0.0
        try:
            decoder = await self._checkout()
            checkout_s = time.perf_counter() - started_s
            await self._call(decoder.start_utterance)
            last_text = ""
            while True:
                while self._pending:
                    batch = bytes(self._pending[:_MAX_BATCH_BYTES])
                    del self._pending[:_MAX_BATCH_BYTES]
                    request_s = time.perf_counter()
                    text, spans = await self._call(decoder.process, batch)
                    decode_s += time.perf_counter() - request_s
                    self._decoded_bytes += len(batch)
                    if text:  # the words may move while they stay the same words
                        # on the pushed audio's clock: audio dropped unheard came before them
                        self.word_spans = _shifted(spans, self.dropped_ms)
                    if text and text != last_text:
                        last_text = self.hypothesis = text
                        self._publish(partial=Transcript(text, is_final=False))
                if self._input_ended:
                    break
                await wake.wait()
                wake.clear()
            text = await self._call(decoder.finish)
            self._publish(final=Transcript(text, is_final=True))
        except BackendError as exc:
            self._publish(error=exc)
        except Exception as exc:  # not swallowed: the reader gets it, cause attached
            error = BackendError(f"pocketsphinx stream failed: {exc!r}")
            error.__cause__ = exc
            self._publish(error=error)
        finally:
            if log.isEnabledFor(logging.DEBUG):  # how fast the decoder keeps up, under load
                log.debug(
                    "pocketsphinx utterance",
                    extra={
                        "decoded_ms": self.decoded_ms,
                        "checkout_ms": round(checkout_s * 1000, 1),
                        "decode_ms": round(decode_s * 1000, 1),
                        "open_ms": round((time.perf_counter() - started_s) * 1000, 1),
                    },
                )
            await self._hand_back(decoder)

    async def _checkout(self) -> _DecoderProcess:
        deadline = time.monotonic() + self._acquire_timeout_s
        while True:
            reserved = self._pool.reserve()
            if isinstance(reserved, _DecoderProcess):
                return reserved
            if reserved == "spawn":
                return await self._call(self._pool.spawn)
            if time.monotonic() >= deadline:
                raise BackendUnavailable(
                    f"all {self._pool.max_decoders} pocketsphinx decoders are busy",
                    retryable=True,
                )
            await asyncio.sleep(_RETRY_CHECKOUT_S)

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run a blocking pool/decoder call in a thread. If we are cancelled meanwhile the
        call keeps running: remember it so the decoder is handed back only once it ends."""
        future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self._inflight = future
            raise

    async def _hand_back(self, decoder: _DecoderProcess | None) -> None:
        """Return our decoder to the pool (or the one a cancelled spawn produced) once no
        request runs on it any more: wait a little for a request cut off by a cancel, and
        if it takes longer, let it release the decoder when it ends."""
        inflight, self._inflight = self._inflight, None

        def release(future: asyncio.Future[Any] | None) -> None:
            owned = decoder
            if future is not None and not future.cancelled() and future.exception() is None:
                result = future.result()
                if isinstance(result, _DecoderProcess):
                    owned = result
            if owned is not None:
                self._pool.release(owned)

        if inflight is not None and not inflight.done():
            try:
                await asyncio.wait({inflight}, timeout=_INFLIGHT_WAIT_S)
            finally:  # also when cancelled again meanwhile
                if not inflight.done():
                    inflight.add_done_callback(release)
            if not inflight.done():
                return
        release(inflight)

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


# --- The pool and its worker processes -------------------------------------------------


class _DecoderPool:
    """Idle decoder processes plus a count of all of them; every field under `_lock`."""

    def __init__(self, decoder_config: dict[str, object], max_decoders: int) -> None:
        self.max_decoders = max_decoders
        self._config_json = json.dumps(decoder_config)
        self._lock = threading.Lock()
        self._idle: list[_DecoderProcess] = []
        self._count = 0
        self._closed = False

    @property
    def count(self) -> int:
        with self._lock:
            return self._count

    def reserve(self) -> _DecoderProcess | Literal["spawn", "busy"]:
        """Non-blocking: an idle decoder, or "spawn" (a slot is now reserved for a new one,
        which the caller must create with `spawn()`), or "busy". An idle decoder whose process
        died (killed, out of memory) is dropped here, its slot freed for a new one."""
        dead: list[_DecoderProcess] = []
        try:
            with self._lock:
                if self._closed:
                    raise BackendUnavailable("the pocketsphinx backend is closed")
                while self._idle:
                    decoder = self._idle.pop()
                    if decoder.is_alive:
                        return decoder
                    dead.append(decoder)
                    self._count -= 1
                if self._count < self.max_decoders:
                    self._count += 1
                    return "spawn"
                return "busy"
        finally:
            for decoder in dead:
                log.warning("pocketsphinx decoder process died while idle; replacing it")
                decoder.is_healthy = False
                decoder.close()  # reaps it; quick, the process is gone

    def spawn(self) -> _DecoderProcess:
        """Blocking: start a decoder process in a slot reserved by `reserve()`."""
        try:
            return _DecoderProcess.launch(self._config_json)
        except BaseException:
            with self._lock:
                self._count -= 1
            raise

    def release(self, decoder: _DecoderProcess) -> None:
        """Take a decoder back; a broken one (or any, once closed) is stopped instead."""
        with self._lock:
            if decoder.is_healthy and not self._closed:
                self._idle.append(decoder)
                return
            self._count -= 1
        decoder.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for decoder in idle:
            decoder.close()


# Messages on the socket: a one-byte kind, a 4-byte length, then the payload.
# Parent -> worker: START, AUDIO (PCM16 bytes), END, QUIT.
# Worker -> parent: READY, OK, HYPOTHESIS and FINAL (UTF-8 text), ERROR (UTF-8 message).
_HEADER = struct.Struct("!cI")
_START, _AUDIO, _END, _QUIT = b"S", b"A", b"E", b"Q"
_READY, _OK, _HYPOTHESIS, _FINAL, _ERROR = b"R", b"K", b"H", b"F", b"X"


class _DecoderProcess:
    """The parent's handle on one worker process (`python -m` this module) over a socket
    pair. Requests block (run them in a thread) and are strictly request/reply, so the
    socket never holds a stale answer. A finalizer stops the process if the handle is
    dropped without `close()`."""

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self._process = process
        self._sock = sock
        self.is_healthy = True
        self._finalizer = weakref.finalize(self, _stop_worker, process, sock)

    @classmethod
    def launch(cls, config_json: str) -> _DecoderProcess:
        process, parent_sock = launch(__name__, config_json, what="a pocketsphinx decoder")
        decoder = cls(process, parent_sock)
        try:
            decoder._receive(_READY, _SPAWN_TIMEOUT_S)
        except BackendError as exc:
            decoder.close()
            raise BackendUnavailable(f"pocketsphinx decoder did not start: {exc}") from exc
        return decoder

    @property
    def is_alive(self) -> bool:
        """The worker process has not exited (non-blocking)."""
        return self._process.poll() is None

    def start_utterance(self) -> None:
        """Begin an utterance, first ending whatever the previous user left unfinished."""
        self._request(_START, b"", _OK)

    def process(self, audio: bytes) -> tuple[str, tuple[WordSpan, ...]]:
        """Decode 16-bit audio; returns the current best hypothesis ("" if none) and its
        words placed in the utterance's audio."""
        answer = self._request(_AUDIO, audio, _HYPOTHESIS)
        try:
            decoded = json.loads(answer)
            spans = tuple(WordSpan(str(w), int(start), int(end)) for w, start, end in decoded["words"])
            return str(decoded["text"]), spans
        except (ValueError, KeyError, TypeError) as exc:
            self.is_healthy = False
            raise BackendError(f"pocketsphinx decoder sent a malformed hypothesis: {answer[:80]!r}") from exc

    def finish(self) -> str:
        """End the utterance; returns the final hypothesis ("" if nothing was recognised)."""
        return self._request(_END, b"", _FINAL)

    def close(self) -> None:
        """Stop the process: a healthy one is asked to quit (it is idle, so it exits at once);
        a broken one may be stuck in a request, so it is killed first (reaping it is then quick)."""
        if not self.is_healthy:
            self._process.kill()
        self.is_healthy = False
        self._finalizer()

    def _request(self, kind: bytes, payload: bytes, expect: bytes) -> str:
        try:
            self._sock.sendall(_HEADER.pack(kind, len(payload)) + payload)
        except OSError as exc:
            self.is_healthy = False
            raise BackendError("pocketsphinx decoder process is gone", retryable=True) from exc
        return self._receive(expect, _REQUEST_TIMEOUT_S)

    def _receive(self, expect: bytes, timeout_s: float) -> str:
        self._sock.settimeout(timeout_s)
        try:
            kind, payload = _read_message(self._sock)
        except TimeoutError as exc:
            self.is_healthy = False
            raise BackendError("pocketsphinx decoder did not answer", retryable=True) from exc
        except (EOFError, OSError) as exc:
            self.is_healthy = False
            raise BackendError("pocketsphinx decoder process is gone", retryable=True) from exc
        text = payload.decode("utf-8", "replace")
        if kind != expect:
            self.is_healthy = False
            raise BackendError(f"pocketsphinx decoder failed: {text}", retryable=True)
        return text


def _stop_worker(process: subprocess.Popen[bytes], sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(_HEADER.pack(_QUIT, 0))
    sock.close()
    try:
        process.wait(_CLOSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(_CLOSE_TIMEOUT_S)


def _read_message(sock: socket.socket) -> tuple[bytes, bytes]:
    kind, size = _HEADER.unpack(read_exactly(sock, _HEADER.size))
    return kind, read_exactly(sock, size)


def _decoder(config: dict[str, Any]) -> Any:
    """The worker's Decoder. A listener's (`_LISTENER_KEY` in the config) decodes with a
    model this process writes from the general one first (≈0.5 s, `pocketsphinx_listener`);
    the Decoder has read its files once it exists."""
    import pocketsphinx

    config = dict(config)
    listener = config.pop(_LISTENER_KEY, None)
    if listener is None:
        return pocketsphinx.Decoder(pocketsphinx.Config(**config))
    with tempfile.TemporaryDirectory(prefix="voxgate-listener-") as out_dir:
        lm, dictionary = write_listener_model(
            Path(config["lm"]), Path(config["dict"]), Path(out_dir), ListenerModelOptions(**listener)
        )
        return pocketsphinx.Decoder(pocketsphinx.Config(**{**config, "lm": str(lm), "dict": str(dictionary)}))


def _serve_decoder(sock: socket.socket, config: dict[str, Any]) -> None:
    """Worker process main: own one Decoder, answer each request with exactly one reply,
    exit when the parent says QUIT or goes away."""

    def reply(kind: bytes, text: str) -> None:
        payload = text.encode("utf-8")
        sock.sendall(_HEADER.pack(kind, len(payload)) + payload)

    try:
        decoder = _decoder(config)
    except Exception as exc:
        reply(_ERROR, f"{type(exc).__name__}: {exc}")
        return
    reply(_READY, "")
    in_utterance = False
    while True:
        try:
            kind, payload = _read_message(sock)
        except (EOFError, OSError):
            return
        try:
            if kind == _START:
                if in_utterance:  # the last user left mid-utterance
                    decoder.end_utt()
                decoder.start_utt()
                in_utterance = True
                reply(_OK, "")
            elif kind == _AUDIO:
                decoder.process_raw(payload, False, False)
                hypothesis = decoder.hyp()
                text = hypothesis.hypstr if hypothesis is not None else ""
                spans = [
                    [span.word, span.start_ms, span.end_ms] for span in placed_words(decoder, hypothesis)
                ]
                reply(_HYPOTHESIS, json.dumps({"text": text, "words": spans}))
            elif kind == _END:
                decoder.end_utt()
                in_utterance = False
                hypothesis = decoder.hyp()
                reply(_FINAL, hypothesis.hypstr if hypothesis is not None else "")
            else:
                return
        except OSError:
            return
        except Exception as exc:
            reply(_ERROR, f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    # Worker process: `python -m server.model.backends.pocketsphinx_asr FD CONFIG_JSON`.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when decoders stop
    _serve_decoder(socket.socket(fileno=int(sys.argv[1])), json.loads(sys.argv[2]))
