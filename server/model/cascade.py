"""CascadeModel: an OmniModel assembled from streaming ASR, a language model and TTS.

Per reply the language model streams text, `PhraseSplitter` cuts it into phrases, and each
phrase is synthesized as soon as it is complete; the model keeps writing while earlier phrases
are spoken. The session remembers how long each phrase's audio is, so a barge-in can cut the
history to the words the user actually heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from server.model.base import (
    AsrBackend,
    AsrStream,
    AudioChunk,
    Capabilities,
    LlmBackend,
    Message,
    ReplyEvent,
    ResponseOptions,
    SessionOptions,
    StageTimings,
    TextDelta,
    TranscriptDelta,
    TtsBackend,
)
from server.model.phrases import PhraseSplitter, cut_text_to_fraction
from server.streaming.aio import cancel_and_wait
from server.streaming.audio import PcmFrame, StreamResampler

OUTPUT_SAMPLE_RATE_HZ = 24_000
_END = object()


@dataclass(slots=True)
class _SpokenPhrase:
    text: str
    audio_ms: float = 0.0


@dataclass(slots=True)
class _ReplyRecord:
    """The last reply: its phrases and their audio length, for truncation."""

    message: Message
    phrases: list[_SpokenPhrase] = field(default_factory=list)


class CascadeModel:
    """Loaded once; `open()` gives each connection its own session over the shared backends."""

    def __init__(self, asr: AsrBackend, llm: LlmBackend, tts: TtsBackend) -> None:
        self.asr = asr
        self.llm = llm
        self.tts = tts
        self.capabilities = Capabilities(
            handles_turn_taking=False,
            can_truncate=True,
            input_sample_rate_hz=asr.sample_rate_hz,
            output_sample_rate_hz=OUTPUT_SAMPLE_RATE_HZ,
        )

    async def open(self, options: SessionOptions) -> CascadeSession:
        return CascadeSession(self, options)


class CascadeSession:
    def __init__(self, model: CascadeModel, options: SessionOptions) -> None:
        self._model = model
        self.capabilities = model.capabilities
        self.options = options
        self.timings = StageTimings()
        self._history: list[Message] = []
        self._asr: AsrStream | None = None
        self._last_reply: _ReplyRecord | None = None

    def update(self, options: SessionOptions) -> None:
        self.options = options

    # -- input

    def push_audio(self, frame: PcmFrame) -> None:
        if self._asr is None:
            self._asr = self._model.asr.open_stream()
        self._asr.push_audio(frame)

    async def clear_audio(self) -> None:
        stream, self._asr = self._asr, None
        if stream is not None:
            await stream.aclose()

    async def commit_audio(self) -> AsyncIterator[TranscriptDelta]:
        stream, self._asr = self._asr, None
        started = time.perf_counter()
        final = ""
        if stream is not None:
            try:
                stream.end_input()
                async for transcript in stream:
                    if transcript.is_final:
                        final = transcript.text.strip()
                        break
                    yield TranscriptDelta(transcript.text, is_final=False)
            finally:
                await stream.aclose()
        self.timings.asr_final_ms = (time.perf_counter() - started) * 1000
        if final:
            self._history.append(Message("user", final))
        yield TranscriptDelta(final, is_final=True)

    def add_user_text(self, text: str) -> None:
        self._history.append(Message("user", text))

    def history(self) -> Sequence[Message]:
        return tuple(self._history)

    def checkpoint(self) -> int:
        return len(self._history)

    def rollback(self, checkpoint: int) -> None:
        del self._history[checkpoint:]
        if self._last_reply is not None and self._last_reply.message not in self._history:
            self._last_reply = None

    # -- output

    async def respond(self, options: ResponseOptions) -> AsyncIterator[ReplyEvent]:
        session_options = self.options
        if options.instructions is not None:
            session_options = replace(session_options, instructions=options.instructions)
        if options.temperature is not None:
            session_options = replace(session_options, temperature=options.temperature)
        if options.max_output_tokens is not None:
            session_options = replace(session_options, max_output_tokens=options.max_output_tokens)
        voice = options.voice or self.options.voice
        self.timings = StageTimings(asr_final_ms=self.timings.asr_final_ms)
        record = _ReplyRecord(Message("assistant", ""))
        self._history.append(record.message)
        self._last_reply = record
        phrases: asyncio.Queue[str | object] = asyncio.Queue()
        writer = asyncio.create_task(
            self._write_phrases(list(self._history[:-1]), session_options, phrases),
            name="cascade-llm",
        )
        try:
            while True:
                phrase = await phrases.get()
                if phrase is _END:
                    break
                assert isinstance(phrase, str)
                spoken = _SpokenPhrase(phrase)
                record.phrases.append(spoken)
                record.message.text = " ".join(p.text for p in record.phrases)
                yield TextDelta(phrase if len(record.phrases) == 1 else " " + phrase)
                if options.with_audio:
                    async for frame in self._speak(phrase, voice):
                        spoken.audio_ms += frame.duration_ms
                        yield AudioChunk(frame)
            await writer  # re-raises a language model failure
        finally:
            await cancel_and_wait(writer, timeout_s=2.0)
            if not record.message.text:
                with contextlib.suppress(ValueError):
                    self._history.remove(record.message)

    async def _write_phrases(
        self, history: list[Message], options: SessionOptions, out: asyncio.Queue[str | object]
    ) -> None:
        splitter = PhraseSplitter()
        started = time.perf_counter()
        try:
            async for piece in self._model.llm.complete(history, options):
                if self.timings.llm_first_token_ms is None:
                    self.timings.llm_first_token_ms = (time.perf_counter() - started) * 1000
                for phrase in splitter.push(piece):
                    out.put_nowait(phrase)
            rest = splitter.flush()
            if rest is not None:
                out.put_nowait(rest)
        finally:
            out.put_nowait(_END)

    async def _speak(self, phrase: str, voice: str) -> AsyncIterator[PcmFrame]:
        tts = self._model.tts
        resampler = StreamResampler(tts.sample_rate_hz, OUTPUT_SAMPLE_RATE_HZ)
        started = time.perf_counter()
        first = True
        async for frame in tts.synthesize(phrase, voice):
            if first and self.timings.tts_first_audio_ms is None:
                self.timings.tts_first_audio_ms = (time.perf_counter() - started) * 1000
            first = False
            out = resampler.push(frame)
            if out.sample_count:
                yield out
        tail = resampler.flush()
        if tail.sample_count:
            yield tail

    def truncate_reply(self, heard_ms: int) -> str:
        record = self._last_reply
        if record is None:
            return ""
        kept: list[str] = []
        elapsed = 0.0
        for phrase in record.phrases:
            if elapsed + phrase.audio_ms <= heard_ms:
                kept.append(phrase.text)
            else:
                fraction = (heard_ms - elapsed) / phrase.audio_ms if phrase.audio_ms else 0.0
                partial = cut_text_to_fraction(phrase.text, fraction)
                if partial:
                    kept.append(partial)
                break
            elapsed += phrase.audio_ms
        text = " ".join(kept)
        full = " ".join(p.text for p in record.phrases)
        record.message.text = text
        record.message.interrupted = text != full
        if not text and record.message in self._history:
            self._history.remove(record.message)
        return text

    async def aclose(self) -> None:
        await self.clear_audio()
