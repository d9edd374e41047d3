"""Scripted fakes of every backend Protocol, for tests and the gateway-overhead benchmark.

These are fakes: they recognise nothing and understand nothing. `FakeAsr` returns scripted
transcripts, `FakeLlm` scripted replies, `FakeTts` a tone whose length follows the text, and
`EnergyClassifier` calls a frame speech when it is loud.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from server.audio import PcmFrame
from server.errors import BackendError
from server.model.base import Message, SessionOptions, ToolCallRequest, Transcript, TranscriptionOptions
from server.model.tool_calls import ToolChoice


class FakeAsrStream:
    def __init__(self, text: str, delay_s: float, fail_with: type[BaseException] | None = None) -> None:
        self._text = text
        self._delay_s = delay_s
        self._fail_with = fail_with
        self._ended = asyncio.Event()
        self.pushed_ms = 0.0
        self.hypothesis = ""

    def push_audio(self, frame: PcmFrame) -> None:
        self.pushed_ms += frame.duration_ms
        self.hypothesis = self._text  # a fake: it "hears" the scripted words at once

    @property
    def decoded_ms(self) -> int:
        return int(self.pushed_ms)

    def end_input(self) -> None:
        self._ended.set()

    async def _results(self) -> AsyncIterator[Transcript]:
        await self._ended.wait()
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        if self._fail_with is not None:
            raise self._fail_with("fake speech recogniser failure")
        words = self._text.split()
        if len(words) > 1:
            yield Transcript(" ".join(words[: len(words) // 2]), is_final=False)
        yield Transcript(self._text, is_final=True)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._results()

    async def aclose(self) -> None:
        self._ended.set()


@dataclass
class FakeAsr:
    """Each stream's final transcript is the next of `script` (the last one repeats).

    `delay_s`: between the end of input and the transcripts. `fail_with`: an exception type
    raised instead of the transcripts (a recogniser failing at the end of a turn).
    """

    script: list[str] = field(default_factory=lambda: ["hello there"])
    delay_s: float = 0.0
    fail_with: type[BaseException] | None = None
    sample_rate_hz: int = 16_000
    streams: list[FakeAsrStream] = field(default_factory=list)
    languages: frozenset[str] | None = None  # None: any language
    opened_with: list[TranscriptionOptions] = field(default_factory=list)

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> FakeAsrStream:
        self.opened_with.append(transcription or TranscriptionOptions())
        index = min(len(self.streams), len(self.script) - 1)
        stream = FakeAsrStream(self.script[index], self.delay_s, self.fail_with)
        self.streams.append(stream)
        return stream


@dataclass
class FakeListeningAsr(FakeAsr):
    """A FakeAsr that also decodes for a listener's words (HearsListeners): each listener
    stream hears the next of `listener_script` (the last one repeats) from its first audio."""

    listener_script: list[str] = field(default_factory=lambda: ["mm-hmm"])
    listener_streams: list[FakeAsrStream] = field(default_factory=list)

    def open_listener_stream(self) -> FakeAsrStream:
        index = min(len(self.listener_streams), len(self.listener_script) - 1)
        stream = FakeAsrStream(self.listener_script[index], self.delay_s)
        self.listener_streams.append(stream)
        return stream


@dataclass
class FakeLlm:
    """Replies with the next of `script`, word by word, `delay_s` apart.

    `fail_after_words`: raise `fail_with` after that many words (a backend failing mid-reply).
    `hang_after_words`: wait forever after that many words (a hung backend; 0: no first word).
    """

    script: list[str] = field(default_factory=lambda: ["Sure, I can help with that."])
    delay_s: float = 0.0
    fail_after_words: int | None = None
    fail_with: type[BaseException] = BackendError
    hang_after_words: int | None = None
    calls: list[list[Message]] = field(default_factory=list)
    accepts_images: bool = False  # a fake vision model when True: the calls keep the images

    async def complete(self, history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        index = min(len(self.calls), len(self.script) - 1)
        self.calls.append([Message(m.role, m.text, m.interrupted, images=m.images) for m in history])
        for n, word in enumerate(self.script[index].split()):
            if self.fail_after_words is not None and n >= self.fail_after_words:
                raise self.fail_with("fake language model failure")
            if self.hang_after_words is not None and n >= self.hang_after_words:
                await asyncio.Event().wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield word + " "


@dataclass
class FakeTts:
    """A 220 Hz tone, `ms_per_char` per character of text, in `frame_ms` frames.

    `hang_after_frames`: each phrase waits forever after that many frames (a hung backend).
    """

    ms_per_char: float = 50.0
    sample_rate_hz: int = 24_000
    frame_ms: int = 40
    delay_s: float = 0.0
    hang_after_frames: int | None = None

    async def synthesize(self, text: str, voice: str, speed: float = 1.0) -> AsyncIterator[PcmFrame]:
        total = int(len(text) * self.ms_per_char / speed * self.sample_rate_hz / 1000)
        t = np.arange(total) / self.sample_rate_hz
        samples = (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)
        step = self.frame_ms * self.sample_rate_hz // 1000
        for n, i in enumerate(range(0, total, step)):
            if self.hang_after_frames is not None and n >= self.hang_after_frames:
                await asyncio.Event().wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            yield PcmFrame(samples[i : i + step], self.sample_rate_hz)


class EnergyClassifier:
    """Speech when the frame's RMS exceeds `rms_threshold` (a fake VAD for tests)."""

    def __init__(self, rms_threshold: float = 500.0, frame_ms: int = 20) -> None:
        self.frame_ms = frame_ms
        self.sample_rate_hz = 16_000
        self.rms_threshold = rms_threshold

    def speech_probability(self, frame: PcmFrame) -> float:
        rms = float(np.sqrt(np.mean(frame.samples.astype(np.float64) ** 2))) if frame.sample_count else 0.0
        return 1.0 if rms > self.rms_threshold else 0.0


class EnergyClassifierFactory:
    def __init__(self, rms_threshold: float = 500.0) -> None:
        self.rms_threshold = rms_threshold

    def open(self, threshold: float) -> EnergyClassifier:
        return EnergyClassifier(self.rms_threshold)


# Settings for a server whose audio is the fakes' pure tones: the echo canceller takes a tone
# spoken over the reply's tone for its echo (WebRTC's suppressor silences it during double
# talk), and the echo gate learns a steady tone held over a whole reply as the echo's level, so
# a tone barge-in would vanish. Both are tested on their own (tests/streaming/test_echo_*.py).
FAKE_AUDIO_SETTINGS: dict[str, object] = {"echo_cancellation": False, "echo_gate": False}


def tone(duration_ms: int, sample_rate_hz: int = 24_000, amplitude: int = 8000) -> PcmFrame:
    """A loud 300 Hz tone: 'speech' to EnergyClassifier."""
    t = np.arange(duration_ms * sample_rate_hz // 1000) / sample_rate_hz
    return PcmFrame((np.sin(2 * np.pi * 300 * t) * amplitude).astype(np.int16), sample_rate_hz)


def load_fake_asr(options: object = None) -> FakeAsr:
    return FakeAsr()


def load_fake_llm(options: object = None) -> FakeLlm:
    return FakeLlm()


def load_fake_tts(options: object = None) -> FakeTts:
    return FakeTts()


@dataclass
class FakeToolCallingLlm:
    """A fake that "calls tools": each `complete()` plays the next of `script` (the last one
    repeats), a list of text (streamed word by word) and `ToolCallRequest`s, yielded in order.
    It understands nothing; `calls` records the history each call saw (copied, tool fields
    included) and `offered` the tool names each call was offered."""

    script: list[list[str | ToolCallRequest]] = field(default_factory=lambda: [["Sure."]])
    calls: list[list[Message]] = field(default_factory=list)
    offered: list[list[str]] = field(default_factory=list)
    choices: list[ToolChoice | str] = field(default_factory=list)

    async def complete(
        self, history: Sequence[Message], options: SessionOptions
    ) -> AsyncIterator[str | ToolCallRequest]:
        index = min(len(self.calls), len(self.script) - 1)
        self.calls.append([replace(m) for m in history])
        tools = options.tools
        self.offered.append([] if tools is None else [spec.name for spec in tools.specs()])
        self.choices.append("" if tools is None else tools.choice)
        for step in self.script[index]:
            if isinstance(step, ToolCallRequest):
                yield step
                continue
            for word in step.split():
                yield word + " "


class FakeSentenceEncoder:
    """A fake of the sentence encoder (server/knowledge/embedding.py): it understands nothing;
    a text's vector is its bag of lowercased words hashed into `dimension` slots, normalised,
    so texts that share words score high and others near zero."""

    def __init__(self, dimension: int = 256) -> None:
        self.dimension = dimension
        self.calls = 0

    def encode(self, texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
        self.calls += 1
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().replace("?", " ").split():
                vectors[row, zlib.crc32(word.encode()) % self.dimension] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        unit: np.ndarray[Any, np.dtype[np.float32]] = (vectors / np.clip(norms, 1e-9, None)).astype(
            np.float32
        )
        return unit
