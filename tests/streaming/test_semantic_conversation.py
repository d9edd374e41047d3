"""semantic_vad in a whole conversation on the virtual clock: the words' score decides the
silence that ends the turn (fake models that score by a table, named as such)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest

from server.audio import PcmFrame
from server.model.base import Message, SessionOptions
from server.model.fakes import FakeAsr, FakeLlm, tone
from server.streaming.commands import CommitAudio
from server.streaming.conversation import Conversation
from server.streaming.end_of_turn import semantic_policy
from server.streaming.outputs import InputCommitted, ResponseAudio, SpeechStopped
from server.streaming.session_config import ConversationOptions
from server.streaming.turns import TurnOptions
from tests.streaming.memory_port import MemoryPort
from tests.streaming.test_conversation import converse

POLICY = semantic_policy("auto")
OPTIONS = ConversationOptions(turn=TurnOptions(semantic=POLICY, speculative_silence_ms=0))


@dataclass
class FakeScoringLlm(FakeLlm):
    """A fake language model that also scores turn ends: from `scores` by words (else 0.5)."""

    scores: dict[str, float] = field(default_factory=dict)
    delay_s: float = 0.0
    scored: list[str] = field(default_factory=list)

    async def end_of_turn_probability(
        self, history: Sequence[Message], words: str, options: SessionOptions
    ) -> float:
        self.scored.append(words)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.scores.get(words, 0.5)


def converse_semantic(
    script: Callable[[MemoryPort, Conversation], Awaitable[None]],
    asr: FakeAsr,
    llm: FakeLlm,
    options: ConversationOptions = OPTIONS,
) -> MemoryPort:
    return converse(script, asr, llm, options)


def silence(ms: int) -> PcmFrame:
    return PcmFrame.silence(ms, 24_000)


def test_complete_words_end_the_turn_after_the_short_silence() -> None:
    llm = FakeScoringLlm(["It ships today."], scores={"where is my order": 0.9})

    async def script(port: MemoryPort, conversation: Conversation) -> None:
        clock = asyncio.get_running_loop().time
        await port.stream(silence(200))
        await port.stream(tone(600))
        speech_end = clock()
        first_audio = await port.stream_until(ResponseAudio)
        waited_ms = (first_audio.at_s - speech_end) * 1000
        assert POLICY.complete_silence_ms <= waited_ms <= POLICY.complete_silence_ms + 20
        assert [s.audio_end_ms for s in port.all(SpeechStopped)] == [800]
        scores = conversation._metrics.turn_end_scores  # the histogram and counter of /metrics
        assert scores.labels(outcome="complete")._value.get() == 1

    converse_semantic(script, FakeAsr(["where is my order"]), llm)
    assert llm.scored == ["where is my order"]  # scored once while the caller spoke (prefill), reused


def test_a_caller_pausing_mid_sentence_is_not_answered_in_the_pause() -> None:
    llm = FakeScoringLlm(["Thank you."], scores={"my order number is": 0.01})

    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        await port.stream(silence(800))  # looking for the number
        assert port.all(SpeechStopped) == []
        await port.stream(tone(600))
        await port.stream_until(ResponseAudio)
        assert len(port.all(InputCommitted)) == 1

    converse_semantic(script, FakeAsr(["my order number is"]), llm)


@pytest.mark.parametrize(
    "llm",
    [
        FakeScoringLlm(["Sure."], scores={"hello": 0.9}, delay_s=5.0),  # a score too late
        FakeLlm(["Hi."]),  # a model that cannot score
    ],
    ids=["slow-score", "no-scorer"],
)
def test_the_turn_ends_on_the_unscored_silence_without_a_score_in_time(llm: FakeLlm) -> None:
    async def script(port: MemoryPort, _: Conversation) -> None:
        clock = asyncio.get_running_loop().time
        await port.stream(tone(600))
        speech_end = clock()
        stopped = await port.stream_until(SpeechStopped)
        waited_ms = (stopped.at_s - speech_end) * 1000
        assert POLICY.unscored_silence_ms <= waited_ms <= POLICY.unscored_silence_ms + 20
        await port.stream_until(ResponseAudio)

    converse_semantic(script, FakeAsr(["hello"]), llm)


def test_high_eagerness_answers_sooner_than_low() -> None:
    waits: dict[str, float] = {}
    for eagerness in ("high", "low"):
        policy = semantic_policy(eagerness)
        options = replace(OPTIONS, turn=replace(OPTIONS.turn, semantic=policy))

        async def script(port: MemoryPort, _: Conversation, eagerness: str = eagerness) -> None:
            clock = asyncio.get_running_loop().time
            await port.stream(tone(600))
            speech_end = clock()
            stopped = await port.stream_until(SpeechStopped)
            waits[eagerness] = (stopped.at_s - speech_end) * 1000

        converse_semantic(
            script, FakeAsr(["thanks"]), FakeScoringLlm(["Bye."], scores={"thanks": 0.25}), options
        )
    assert waits["high"] < 200 < waits["low"]


def test_a_manual_commit_during_the_score_leaves_one_turn() -> None:
    llm = FakeScoringLlm(["Okay."], scores={"hello": 0.9}, delay_s=0.1)

    async def script(port: MemoryPort, _: Conversation) -> None:
        await port.stream(tone(600))
        await port.stream(silence(40))
        port.push(CommitAudio())  # the client commits while the pause is being scored
        await port.stream(silence(600))  # the score arrives: stale, it ends no second turn
        assert len(port.all(InputCommitted)) == 1
        assert port.all(SpeechStopped) == []

    converse_semantic(script, FakeAsr(["hello"]), llm)
