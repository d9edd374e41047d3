"""The cascade's semantic end-of-turn scoring and prefill (fake recogniser and fake scoring
language model, named as such)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from server.audio import PcmFrame
from server.errors import BackendError
from server.model.base import Message, SessionOptions, Transcript, TranscriptionOptions, TurnEndScoring
from server.model.cascade import CascadeModel, CascadeSession
from server.model.fakes import FakeLlm, FakeTts

FRAME = PcmFrame.silence(20, 16_000)


class HypothesisStream:
    """A fake recogniser stream whose hypothesis the test sets; records its closing."""

    def __init__(self) -> None:
        self.hypothesis = ""
        self.decoded_ms: int | None = None  # a fake: it cannot say
        self.closed = False
        self._ended = asyncio.Event()

    def push_audio(self, frame: PcmFrame) -> None:
        pass

    def end_input(self) -> None:
        self._ended.set()

    async def _results(self) -> AsyncIterator[Transcript]:
        await self._ended.wait()
        yield Transcript(self.hypothesis, is_final=True)

    def __aiter__(self) -> AsyncIterator[Transcript]:
        return self._results()

    async def aclose(self) -> None:
        self.closed = True


class HypothesisAsr:
    sample_rate_hz = 16_000

    def __init__(self) -> None:
        self.streams: list[HypothesisStream] = []

    def open_stream(self, transcription: TranscriptionOptions | None = None) -> HypothesisStream:
        self.streams.append(HypothesisStream())
        return self.streams[-1]


class FakeScoringLlm(FakeLlm):
    """A fake language model that scores a line by its last word ("please": complete)."""

    def __init__(self, delay_s: float = 0.01, fail: bool = False) -> None:
        super().__init__(["Sure."])
        self.score_delay_s = delay_s
        self.fail = fail
        self.scored: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def end_of_turn_probability(
        self, history: Sequence[Message], words: str, options: SessionOptions
    ) -> float:
        self.scored.append(words)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.score_delay_s)
            if self.fail:
                raise BackendError("fake scorer failure")
            return 0.9 if words.endswith("please") else 0.01
        finally:
            self.in_flight -= 1


def session_of(asr: HypothesisAsr, llm: FakeLlm, *, score: bool = True) -> CascadeSession:
    return CascadeSession(CascadeModel(asr, llm, FakeTts()), SessionOptions(score_turn_end=score))


async def speak(session: CascadeSession, asr: HypothesisAsr, words: str) -> None:
    session.push_audio(FRAME)
    asr.streams[-1].hypothesis = words
    session.push_audio(FRAME)
    await asyncio.sleep(0.02)  # the prefill of these words, if one starts, is done


async def test_words_are_scored_while_the_caller_speaks_and_the_pause_reuses_the_score() -> None:
    asr, llm = HypothesisAsr(), FakeScoringLlm()
    session = session_of(asr, llm)
    assert isinstance(session, TurnEndScoring)
    for words in ("one more", "one more thing", "one more thing please"):
        await speak(session, asr, words)
    assert llm.scored == ["one more", "one more thing", "one more thing please"]
    assert session.words_so_far() == "one more thing please"
    assert await session.end_of_turn_probability("one more thing please") == 0.9
    assert len(llm.scored) == 3  # the pause's score was the prefill's
    await session.aclose()


async def test_prefill_sends_one_request_at_a_time_and_skips_hypotheses_meanwhile() -> None:
    asr, llm = HypothesisAsr(), FakeScoringLlm(delay_s=0.2)
    session = session_of(asr, llm)
    session.push_audio(FRAME)
    for words in ("a", "a b", "a b c"):
        asr.streams[-1].hypothesis = words
        session.push_audio(FRAME)
        await asyncio.sleep(0.01)
    assert llm.scored == ["a"] and llm.most_in_flight == 1
    assert await session.end_of_turn_probability("a b c") == 0.01  # the pause asks for the newest
    assert llm.scored == ["a", "a b c"]
    await session.aclose()


async def test_no_prefill_unless_the_session_scores_turns() -> None:
    asr, llm = HypothesisAsr(), FakeScoringLlm()
    session = session_of(asr, llm, score=False)
    await speak(session, asr, "hello please")
    assert llm.scored == []
    await session.aclose()


async def test_a_model_without_a_scorer_or_with_a_failing_one_gives_none() -> None:
    asr = HypothesisAsr()
    plain = session_of(asr, FakeLlm(["Hi."]))
    await speak(plain, asr, "hello")
    assert await plain.end_of_turn_probability("hello") is None
    failing = session_of(asr, FakeScoringLlm(fail=True))
    await speak(failing, asr, "hello")
    assert await failing.end_of_turn_probability("hello") is None
    assert await failing.end_of_turn_probability("") is None
    for session in (plain, failing):
        await session.aclose()


async def test_the_commit_stops_a_prefill_in_flight() -> None:
    asr, llm = HypothesisAsr(), FakeScoringLlm(delay_s=5.0)
    session = session_of(asr, llm)
    await speak(session, asr, "where is my order")
    assert llm.in_flight == 1
    finals = [t.text async for t in session.commit_audio() if t.is_final]
    assert finals == ["where is my order"]
    await asyncio.sleep(0)
    assert llm.in_flight == 0
    await session.aclose()


async def test_a_commit_cancelled_at_its_first_step_still_closes_the_recogniser_stream() -> None:
    asr, llm = HypothesisAsr(), FakeScoringLlm(delay_s=5.0)
    session = session_of(asr, llm)
    await speak(session, asr, "where is my")

    async def commit() -> None:
        async for _ in session.commit_audio():
            pass

    task = asyncio.create_task(commit())
    await asyncio.sleep(0)  # inside commit_audio: stopping the prefill
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert asr.streams[0].closed
    await session.aclose()
