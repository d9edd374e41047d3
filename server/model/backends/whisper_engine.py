"""The shared Whisper model: one CTranslate2 model, the decode of one window, the decode threads.

Order of calls (from `whisper_asr`):

    engine = WhisperEngine(model, StorageView, tokenizer, min_window_s=15, max_concurrent_decodes=1)
    engine.warm_up()                              # blocking: CTranslate2 allocates on first use
    text = engine.transcribe(samples, length)     # blocking, thread-safe (tools, decode threads)
    result = await engine.run(priority, prepare)  # on the loop: gate, then a decode thread
    engine.close()                                # at shutdown

Decoding: the CTranslate2 model is called directly with `whisper_features.log_mel` features and
an encoder window shorter than Whisper's 30 s: the audio padded to `min_window_s` (default 15 s)
when it fits, else to 30 s (faster-whisper's `transcribe` always pads to 30 s, ≈75 % of the
time of a short utterance on 2 cores). Shorter windows (10 s, or audio plus a few seconds) made
tiny.en loop ("5 5 5 5 ...", "10 of clubs 10 of clubs ...") on short clips; 15 s and 30 s gave
the same word error rate on our recordings. A decode that runs to its token cap (a loop) is
redone with the 30 s window. Greedy (beam 1), no timestamps, no previous-text conditioning,
temperature 0 only; a result Whisper itself calls "no speech" (faster-whisper's rule) is empty.
A multilingual model decodes in the language of the call's `DecodeOptions` (English when none is
given: no language detection pass), and can translate into English (Whisper's `translate` task);
a `prompt` goes before the start of the transcript (`<|startofprev|>`), as Whisper's previous
text, to steer spelling and vocabulary.

Threads: at most `max_concurrent_decodes` decodes run at once (each with the model's
intra-op threads), so sessions do not oversubscribe the cores. Waiting decodes are served by
priority (lower first; `whisper_asr` uses finals, then pause decodes, then partials), then by
arrival. CTranslate2 releases the GIL while it computes. A decode whose caller was cancelled
still finishes in its thread and only then frees its slot.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np

from server.audio import Samples
from server.errors import BackendUnavailable
from server.model.backends.whisper_features import (
    FULL_WINDOW_FRAMES,
    HOP,
    SAMPLE_RATE_HZ,
    log_mel,
    mel_filters,
)

_T = TypeVar("_T")

_MAX_TOKENS = 448  # the decoder's context, prompt included
_TOKENS_PER_S = 8  # token cap per second of audio (speech needs ≈ 4): bounds a looping decode
_NO_SPEECH_PROB = 0.6  # faster-whisper's no-speech rule: this and a low average log-probability
_NO_SPEECH_LOGPROB = -1.0
_MAX_PROMPT_TOKENS = 100  # the prompt's last tokens kept (generation keeps its 224 of the 448)
_LANGUAGE_TOKEN = re.compile(r"<\|([a-z]{2,3})\|>")


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """How one stream's audio is decoded. language: ISO-639-1 code (None: English); task:
    "translate" writes English whatever the language spoken (multilingual models only);
    prompt: text that steers the transcript (names, spelling), given as previous text."""

    language: str | None = None
    task: Literal["transcribe", "translate"] = "transcribe"
    prompt: str = ""


class WhisperEngine:
    """The loaded CTranslate2 model plus what one decode needs. `transcribe` is blocking and
    thread-safe; `run` executes it on the engine's threads under the decode gate."""

    def __init__(
        self,
        model: Any,
        storage_view: Any,
        tokenizer: Any,
        *,
        min_window_s: float,
        max_concurrent_decodes: int,
    ) -> None:
        self._model = model
        self._storage_view = storage_view
        self._tokenizer = tokenizer
        self._filters = mel_filters(int(model.n_mels))
        self._min_window_frames = int(min_window_s * SAMPLE_RATE_HZ) // HOP

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
        self._sot, self._no_timestamps = sot, no_timestamps
        self._previous = token("<|startofprev|>")
        self._tasks = {"transcribe": token("<|transcribe|>"), "translate": token("<|translate|>")}
        self.languages: frozenset[str] = frozenset({"en"})
        if model.is_multilingual:
            vocabulary = tokenizer.get_vocab()
            self.languages = frozenset(
                m.group(1) for m in map(_LANGUAGE_TOKEN.fullmatch, vocabulary) if m is not None
            )
            if "en" not in self.languages or self._tasks["transcribe"] is None:
                raise BackendUnavailable("the multilingual whisper tokenizer lacks <|en|>")
        self.multilingual = bool(model.is_multilingual)
        self._prompt = self.prompt_tokens(DecodeOptions())
        specials = ("<|transcribe|>", "<|translate|>", "<|startofprev|>", "<|startoflm|>")
        no_speech = token("<|nospeech|>") or token("<|nocaptions|>")
        # -1: the symbols the model's config.json lists; plus the task tokens, as faster-whisper.
        self._suppress = sorted({-1, sot, *(t for t in map(token, specials) if t is not None)})
        if no_speech is not None:
            self._suppress.append(no_speech)
        self._gate = _DecodeGate(max_concurrent_decodes)
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent_decodes, thread_name_prefix="whisper")

    def prompt_tokens(self, options: DecodeOptions) -> list[int]:
        """The decoder's prompt for `options`; ValueError for what this model cannot do (a
        language it lacks; translation or a language other than English on an English-only
        model)."""
        language = options.language or "en"
        if language not in self.languages:
            raise ValueError(f"this whisper model does not know the language {language!r}")
        if options.task == "translate" and not self.multilingual:
            raise ValueError("an English-only whisper model cannot translate")
        prompt = [self._sot]
        if self.multilingual:
            task = self._tasks[options.task]
            language_token = self._tokenizer.token_to_id(f"<|{language}|>")
            assert task is not None and language_token is not None
            prompt += [int(language_token), task]
        prompt.append(self._no_timestamps)
        if options.prompt.strip() and self._previous is not None:
            ids = self._tokenizer.encode(" " + options.prompt.strip(), add_special_tokens=False).ids
            prompt = [self._previous, *ids[-_MAX_PROMPT_TOKENS:], *prompt]
        return prompt

    def warm_up(self) -> None:
        """One decode of silence: the first call allocates CTranslate2's buffers (slow)."""
        self.transcribe(np.zeros(SAMPLE_RATE_HZ, dtype=np.int16), SAMPLE_RATE_HZ)

    def transcribe(self, samples: Samples, length: int, prompt: list[int] | None = None) -> str:
        """Text of `samples` followed by silence up to `length` samples (≤ 30 s). Blocking.
        `prompt`: the decoder's prompt (`prompt_tokens`; default: English transcription)."""
        prompt = self._prompt if prompt is None else prompt
        content_frames = length // HOP
        window = self._min_window_frames if content_frames + 50 <= self._min_window_frames else 0
        window = window or FULL_WINDOW_FRAMES
        cap = min(_MAX_TOKENS // 2, 16 + _TOKENS_PER_S * length // SAMPLE_RATE_HZ)
        text, looped = self._decode(samples, window, cap, prompt)
        if looped and window < FULL_WINDOW_FRAMES:
            text, _ = self._decode(samples, FULL_WINDOW_FRAMES, cap, prompt)
        return text

    def _decode(
        self, samples: Samples, window_frames: int, max_tokens: int, prompt: list[int]
    ) -> tuple[str, bool]:
        audio = samples[: window_frames * HOP].astype(np.float32) / np.float32(32768.0)
        features = log_mel(audio, self._filters, window_frames)[None]
        result = self._model.generate(
            self._storage_view.from_array(np.ascontiguousarray(features)),
            [prompt],
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
