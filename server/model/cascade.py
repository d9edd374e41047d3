"""CascadeModel: an OmniModel assembled from streaming ASR, a language model and TTS.

Per reply the language model streams text, `PhraseSplitter` cuts it into phrases, and each
phrase is synthesized as soon as it is complete; the model keeps writing while earlier phrases
are spoken. The session remembers how long each phrase's audio is, so a barge-in can cut the
history to the words the user actually heard.

Anticipation: when a reply will follow every turn (`SessionOptions.anticipate_reply`), the
session starts the language model on the recogniser's newest hypothesis as soon as the turn
is committed, while the recogniser finishes its final pass, and restarts it whenever the
hypothesis changes. If the final transcript equals the hypothesis, `respond()` adopts the
running generation (its prompt is already evaluated, maybe its first phrase written);
otherwise it is cancelled and the reply starts from the final transcript as usual. Nothing
anticipated is ever spoken before `respond()`, and the history only gains the user's words
from the final transcript.

Semantic end of turn (`TurnEndScoring`, when the language model is a `TurnEndScorer`): the
conversation asks, at each pause, how complete the recogniser's words so far are. With
`SessionOptions.score_turn_end` the session also scores each new hypothesis while the caller
speaks (prefill: one request at a time, never more), so the model has evaluated the caller's
line by the time they pause: the pause's score is usually ready at once, and the reply's
prompt shares all but its last tokens with what the model holds. A score that fails or runs
out of time is None: the turn then ends on the policy's plain silence.

Grounding (`SessionOptions.grounding`, server/knowledge/grounding.py): the language model's
stream goes through it, so a reply may be the operator's answer, a model reply grounded in
the operator's entries, or a fallback when the model states a specific nobody gave it. While
the caller speaks, each new hypothesis is looked up ahead (one lookup at a time), so the
reply's lookup is usually cached; anticipation runs the lookup on the hypothesis too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from server.aio import cancel_and_wait
from server.audio import PcmFrame, StreamResampler
from server.errors import BackendError
from server.model.base import (
    AsrBackend,
    AsrStream,
    AudioChunk,
    Capabilities,
    HearsListeners,
    ImageInput,
    LlmBackend,
    Message,
    ReplyEvent,
    ResponseOptions,
    SessionOptions,
    StageTimings,
    TextDelta,
    TimesWords,
    TranscriptDelta,
    TtsBackend,
    TurnEndScorer,
    WordSpan,
)
from server.model.deadlines import DeadlineIterator, ModelDeadlines
from server.model.phrases import PhraseSplitter, cut_text_to_fraction, phrases_of
from server.model.tool_calls import ToolCallRequest
from server.model.tool_rounds import ToolExchange, complete_with_tools, insert_before, insert_tool_result
from server.model.voices import voice_is_known

log = logging.getLogger(__name__)

OUTPUT_SAMPLE_RATE_HZ = 24_000
_END = object()
_SCORE_TIMEOUT_S = 2.0  # a score later than this is no use: the turn ended on the plain silence


@dataclass(slots=True)
class _SpokenPhrase:
    text: str
    audio_ms: float = 0.0


@dataclass(slots=True)
class _LlmRun:
    """One language-model request writing phrases into `phrases` (ends with _END)."""

    history_key: tuple[tuple[str, str, bool], ...]
    options: SessionOptions
    phrases: asyncio.Queue[str | object]
    task: asyncio.Task[None] | None = None
    first_token_ms: float | None = None
    answer_path: str | None = None  # set by grounding


def _history_key(history: Sequence[Message]) -> tuple[tuple[str, str, bool], ...]:
    return tuple((m.role, m.text, m.interrupted) for m in history)


def _same_words(a: str, b: str) -> bool:
    return a.lower().split() == b.lower().split()


@dataclass(slots=True)
class _ReplyRecord:
    """The last reply: its phrases and their audio length, for truncation."""

    message: Message
    phrases: list[_SpokenPhrase] = field(default_factory=list)


class CascadeModel:
    """Loaded once; `open()` gives each connection its own session over the shared backends."""

    def __init__(
        self,
        asr: AsrBackend,
        llm: LlmBackend,
        tts: TtsBackend,
        deadlines: ModelDeadlines | None = None,
        *,
        anticipate: bool = False,
    ) -> None:
        """`anticipate`: start `llm` on the recogniser's hypothesis (module docstring); only
        for a language model without side effects or per-request cost."""
        self.asr = asr
        self.llm = llm
        self.tts = tts
        self.anticipate = anticipate
        self.deadlines = deadlines or ModelDeadlines()  # a hung backend fails the call
        self.capabilities = Capabilities(
            input_sample_rate_hz=asr.sample_rate_hz,
            output_sample_rate_hz=OUTPUT_SAMPLE_RATE_HZ,
            accepts_images=bool(getattr(llm, "accepts_images", False)),
            transcription_languages=getattr(asr, "languages", None),
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
        self._listener: AsrStream | None = None  # the same input, for a listener's words
        self._last_reply: _ReplyRecord | None = None
        self._anticipation: _LlmRun | None = None
        self._anticipated_text = ""
        self._scores: dict[str, asyncio.Task[float | None]] = {}  # this turn's, by words
        self._prefill: asyncio.Task[float | None] | None = None  # the one prefill in flight
        self._look_ahead: asyncio.Task[None] | None = None  # the one knowledge lookup in flight
        self._looked_up = ""

    def update(self, options: SessionOptions) -> None:
        self.options = options

    # -- input

    def push_audio(self, frame: PcmFrame) -> None:
        if self._asr is None:
            self._asr = self._model.asr.open_stream(self.options.transcription)
        self._asr.push_audio(frame)
        if self._listener is not None:
            self._listener.push_audio(frame)
        if self.options.score_turn_end and (self._prefill is None or self._prefill.done()):
            words = self._asr.hypothesis
            if words and words not in self._scores:
                self._prefill = self._score_task(words)
        grounding = self.options.grounding
        if grounding is not None and (self._look_ahead is None or self._look_ahead.done()):
            words = self._asr.hypothesis
            if words and words != self._looked_up:
                self._looked_up = words
                self._look_ahead = asyncio.create_task(
                    grounding.look_ahead(words), name="cascade-knowledge-look-ahead"
                )

    async def clear_audio(self) -> None:
        stream, self._asr = self._asr, None
        if stream is not None:
            await stream.aclose()
        await self._drop_listener()
        await self._drop_anticipation()
        await self._drop_scores()
        await self._drop_look_ahead()

    async def _drop_look_ahead(self) -> None:
        task, self._look_ahead, self._looked_up = self._look_ahead, None, ""
        if task is not None:
            await cancel_and_wait(task, timeout_s=2.0)

    async def commit_audio(self) -> AsyncIterator[TranscriptDelta]:
        stream, self._asr = self._asr, None
        started = time.perf_counter()
        final = ""
        try:  # the stream is ours now: closed however this ends (a cancel at any await)
            if stream is not None:
                stream.end_input()
            await self._drop_listener()
            await self._drop_anticipation()
            await self._drop_scores()  # the reply's request goes next, not behind a prefill
            self.timings.anticipated = None
            if stream is not None:
                wait_s = self._model.deadlines.asr_final_timeout_s
                async for transcript in DeadlineIterator(
                    aiter(stream), stage="speech-to-text", first_item_s=wait_s, gap_s=wait_s
                ):
                    if transcript.is_final:
                        final = transcript.text.strip()
                        break
                    self._anticipate(transcript.text.strip())
                    yield TranscriptDelta(transcript.text, is_final=False)
        finally:
            if stream is not None:
                await stream.aclose()
        self.timings.asr_final_ms = (time.perf_counter() - started) * 1000
        if self._anticipation is not None and not (final and _same_words(final, self._anticipated_text)):
            await self._drop_anticipation()
        if final:
            self._history.append(Message("user", final))
            if self._anticipation is not None:  # adopt the guess's exact history for the match
                self._anticipation.history_key = _history_key(self._history)
        yield TranscriptDelta(final, is_final=True)

    def add_user_text(self, text: str, images: Sequence[ImageInput] = ()) -> None:
        self._history.append(Message("user", text, images=tuple(images)))

    def add_assistant_text(self, text: str) -> None:
        self._history.append(Message("assistant", text))
        self._last_reply = None  # not ours to truncate

    def add_system_text(self, text: str) -> None:
        self._history.append(Message("system", text))

    def add_tool_result(self, call_id: str, output: str) -> None:
        insert_tool_result(self._history, Message("tool", output, tool_call_id=call_id))

    def forget(self, message: Message) -> bool:
        for index, held in enumerate(self._history):
            if held is message:  # by identity: two messages may read alike
                del self._history[index]
                if self._last_reply is not None and self._last_reply.message is message:
                    self._last_reply = None
                return True
        return False

    def knows_voice(self, voice: str) -> bool:
        return voice_is_known(self._model.tts, voice)

    def add_function_call(self, call: ToolCallRequest) -> None:
        self._history.append(Message("assistant", "", tool_calls=(call,)))
        self._last_reply = None  # not ours to truncate

    # -- semantic end of turn and prefill (see the module docstring)

    def words_so_far(self) -> str:
        return self._asr.hypothesis if self._asr is not None else ""

    def words_cover_ms(self) -> int | None:
        return self._asr.decoded_ms if self._asr is not None else 0  # nothing pushed: all covered

    def word_spans_so_far(self) -> tuple[WordSpan, ...] | None:
        if self._asr is None:
            return ()
        return self._asr.word_spans if isinstance(self._asr, TimesWords) else None

    # -- a listener's words (HearsListenerWords): only while the caller talks over a reply

    def listen_for_listener_words(self, heard: Sequence[PcmFrame]) -> bool:
        if self._listener is not None:
            return True
        asr = self._model.asr
        if not isinstance(asr, HearsListeners):
            return False
        self._listener = asr.open_listener_stream()
        for frame in heard:
            self._listener.push_audio(frame)
        return True

    def listener_words_so_far(self) -> tuple[str, tuple[WordSpan, ...] | None] | None:
        listener = self._listener
        if listener is None:
            return None
        return listener.hypothesis, listener.word_spans if isinstance(listener, TimesWords) else None

    async def _drop_listener(self) -> None:
        """Its words are never final: closed, not ended (a stream that failed, a busy pool,
        leaves the words empty, and the turn's recogniser's words judge alone)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.aclose()

    async def end_of_turn_probability(self, words: str) -> float | None:
        if not words.strip():
            return None
        task = self._scores.get(words) or self._score_task(words)
        return await asyncio.shield(task)  # a waiter that leaves does not stop the score

    def _score_task(self, words: str) -> asyncio.Task[float | None]:
        task = asyncio.create_task(self._score(words), name="cascade-turn-end-score")
        self._scores[words] = task
        return task

    async def _score(self, words: str) -> float | None:
        scorer = self._model.llm
        if not isinstance(scorer, TurnEndScorer):
            return None
        try:
            async with asyncio.timeout(_SCORE_TIMEOUT_S):
                return await scorer.end_of_turn_probability(tuple(self._history), words, self.options)
        except (BackendError, TimeoutError) as exc:
            log.warning("end-of-turn score failed", extra={"error": str(exc) or type(exc).__name__})
            return None

    async def _drop_scores(self) -> None:
        tasks, self._scores, self._prefill = list(self._scores.values()), {}, None
        for task in tasks:
            await cancel_and_wait(task, timeout_s=2.0)

    # -- anticipation (see the module docstring)

    def _anticipate(self, hypothesis: str) -> None:
        """Start (or restart) the reply from the recogniser's newest hypothesis."""
        if not (self._model.anticipate and self.options.anticipate_reply) or not hypothesis:
            return
        if self.options.tools is not None and self.options.tools.specs():
            return  # a guess must not call tools (they may have side effects)
        if self._anticipation is not None and _same_words(hypothesis, self._anticipated_text):
            return
        previous = self._anticipation
        history = [*self._history, Message("user", hypothesis)]
        run = _LlmRun(_history_key(history), self.options, asyncio.Queue())
        run.task = asyncio.create_task(
            self._write_phrases(history, self.options, run, after=previous), name="cascade-anticipation"
        )
        self._anticipation, self._anticipated_text = run, hypothesis
        self.timings.anticipated = False

    async def _drop_anticipation(self) -> None:
        run, self._anticipation = self._anticipation, None
        if run is not None:
            await cancel_and_wait(run.task, timeout_s=2.0)

    def history(self) -> Sequence[Message]:
        return tuple(self._history)

    def checkpoint(self) -> int:
        return len(self._history)

    def rollback(self, checkpoint: int) -> None:
        if self._anticipation is not None and self._anticipation.task is not None:
            self._anticipation.history_key = ()  # never adopted; awaited by the next commit or close
            self._anticipation.task.cancel()
        del self._history[checkpoint:]
        if self._last_reply is not None and self._last_reply.message not in self._history:
            self._last_reply = None

    # -- output

    def _response_session_options(self, options: ResponseOptions) -> SessionOptions:
        """The session's options with a response's overrides."""
        session_options = self.options
        if options.instructions is not None:
            session_options = replace(session_options, instructions=options.instructions)
        if options.temperature is not None:
            session_options = replace(session_options, temperature=options.temperature)
        if options.max_output_tokens is not None:
            session_options = replace(session_options, max_output_tokens=options.max_output_tokens)
        return session_options

    async def respond_out_of_band(
        self, options: ResponseOptions, context: Sequence[Message] | None
    ) -> AsyncIterator[str]:
        """The language model alone, on `context` or a copy of the history; no tools (the
        answer is text for the client), the reply's deadlines."""
        history = list(self._history if context is None else context)
        session_options = replace(self._response_session_options(options), tools=None)
        deadlines = self._model.deadlines
        pieces = DeadlineIterator(
            self._model.llm.complete(history, session_options),
            stage="language model",
            first_item_s=deadlines.llm_first_token_timeout_s,
            gap_s=deadlines.llm_token_gap_timeout_s,
        )
        async for piece in pieces:
            if isinstance(piece, str):
                yield piece

    async def respond(self, options: ResponseOptions) -> AsyncIterator[ReplyEvent]:
        session_options = self._response_session_options(options)
        voice = options.voice or self.options.voice
        run = None if options.say is not None else self._adopt_anticipation(session_options)
        self.timings = StageTimings(
            asr_final_ms=self.timings.asr_final_ms,
            anticipated=self.timings.anticipated if run is None else True,
        )
        if run is None:
            await self._drop_anticipation()
            history = list(self._history)
            run = _LlmRun(_history_key(history), session_options, asyncio.Queue())
            writing = (
                self._write_phrases(history, session_options, run)
                if options.say is None
                else self._write_text(options.say, run)
            )
            run.task = asyncio.create_task(writing, name="cascade-llm")
        writer = run.task
        assert writer is not None
        record = _ReplyRecord(Message("assistant", ""))
        self._history.append(record.message)
        self._last_reply = record
        try:
            while True:
                phrase = await run.phrases.get()
                if phrase is _END:
                    break
                if isinstance(phrase, ToolExchange):  # tools ran: the calls and results precede the reply
                    insert_before(self._history, record.message, phrase.messages)
                    continue
                if isinstance(phrase, ToolCallRequest):  # a client-side call: the client answers it
                    yield phrase
                    continue
                assert isinstance(phrase, str)
                if self.timings.llm_first_token_ms is None:  # known by now; reported with the first audio
                    self.timings.llm_first_token_ms = run.first_token_ms
                spoken = _SpokenPhrase(phrase)
                record.phrases.append(spoken)
                record.message.text = " ".join(p.text for p in record.phrases)
                yield TextDelta(phrase if len(record.phrases) == 1 else " " + phrase)
                if options.with_audio:
                    async for frame in self._speak(phrase, voice):
                        spoken.audio_ms += frame.duration_ms
                        yield AudioChunk(frame)
            await writer  # re-raises a language model failure
            self.timings.llm_first_token_ms = run.first_token_ms
            self.timings.answer_path = run.answer_path
        finally:
            await cancel_and_wait(writer, timeout_s=2.0)
            if not record.message.text:
                with contextlib.suppress(ValueError):
                    self._history.remove(record.message)

    def _adopt_anticipation(self, options: SessionOptions) -> _LlmRun | None:
        """The anticipated run, if it was started from exactly this history and options."""
        run, self._anticipation = self._anticipation, None
        if run is None or run.task is None or run.task.cancelled():
            self._anticipation = run
            return None
        if run.history_key != _history_key(self._history) or run.options != options:
            self._anticipation = run
            return None
        return run

    async def _write_phrases(
        self,
        history: list[Message],
        options: SessionOptions,
        run: _LlmRun,
        *,
        after: _LlmRun | None = None,
    ) -> None:
        """Stream the language model's reply to `history` into `run.phrases`, as phrases.
        `after`: a run this one replaces; it is cancelled and waited for first."""
        if after is not None:
            await cancel_and_wait(after.task, timeout_s=2.0)
        splitter = PhraseSplitter()
        started = time.perf_counter()
        try:
            deadlines = self._model.deadlines

            def report(path: str) -> None:
                run.answer_path = path

            def stream(
                history: Sequence[Message], options: SessionOptions
            ) -> AsyncIterator[str | ToolCallRequest]:
                grounding = options.grounding
                source = (
                    self._model.llm.complete(history, options)
                    if grounding is None
                    else grounding.reply(self._model.llm.complete, history, options, report)
                )
                return DeadlineIterator(
                    source,
                    stage="language model",
                    first_item_s=deadlines.llm_first_token_timeout_s,
                    gap_s=deadlines.llm_token_gap_timeout_s,
                )

            def say(filler: str) -> None:  # a slow tool's filler, spoken as a phrase of its own
                rest = splitter.flush()
                if rest is not None:
                    run.phrases.put_nowait(rest)
                run.phrases.put_nowait(filler)

            async for piece in complete_with_tools(stream, history, options, say):
                if run.first_token_ms is None:
                    run.first_token_ms = (time.perf_counter() - started) * 1000
                if not isinstance(piece, str):  # tool calls: respond() handles them in order
                    say_rest = splitter.flush()
                    if say_rest is not None:
                        run.phrases.put_nowait(say_rest)
                    run.phrases.put_nowait(piece)
                    continue
                for phrase in splitter.push(piece):
                    run.phrases.put_nowait(phrase)
            rest = splitter.flush()
            if rest is not None:
                run.phrases.put_nowait(rest)
        finally:
            run.phrases.put_nowait(_END)

    async def _write_text(self, text: str, run: _LlmRun) -> None:
        """The reply is `text` as it is (ResponseOptions.say), in phrases: no language model
        (so no language model timing either)."""
        for phrase in phrases_of(text):
            run.phrases.put_nowait(phrase)
        run.phrases.put_nowait(_END)

    async def _speak(self, phrase: str, voice: str) -> AsyncIterator[PcmFrame]:
        tts = self._model.tts
        resampler = StreamResampler(tts.sample_rate_hz, OUTPUT_SAMPLE_RATE_HZ)
        started = time.perf_counter()
        first = True
        wait_s = self._model.deadlines.tts_phrase_timeout_s
        async for frame in DeadlineIterator(
            tts.synthesize(phrase, voice, self.options.speed),
            stage="text-to-speech",
            first_item_s=wait_s,
            gap_s=wait_s,
        ):
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
        await self._drop_anticipation()
        await self._drop_scores()
        await self._drop_look_ahead()
