"""Grounding: the operator's answer, the model grounded or alone, and the checks that act on a
phrase before it is spoken. Language model and encoder are fakes (named as such)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from server.knowledge.grounding import FALLBACK_REPLY, ROLE_FALLBACK_REPLY, Grounding, hedged_answer
from server.knowledge.knowledge import parse_knowledge
from server.knowledge.retrieval import KnowledgeIndex, MatchThresholds
from server.model.base import Message, ResponseOptions, SessionOptions, TextDelta
from server.model.cascade import CascadeModel
from server.model.fakes import FakeAsr, FakeLlm, FakeSentenceEncoder, FakeTts

KNOWLEDGE = parse_knowledge(
    """\
- q: [how much is shipping to canada, do you ship to canada]
  a: Shipping to Canada costs twelve dollars.
- q: what are your opening hours
  a: We are open from eight to eight.
- fact: Orders before 2 pm ship the same day.
"""
)


def grounding(thresholds: MatchThresholds | None = None, *, checks: bool = True) -> Grounding:
    return Grounding(
        KnowledgeIndex(KNOWLEDGE, FakeSentenceEncoder(), thresholds=thresholds), guard_specifics=checks
    )


async def reply(
    g: Grounding, llm: FakeLlm, words: str, history: Sequence[Message] = ()
) -> tuple[list[str], list[str]]:
    paths: list[str] = []
    pieces = [
        p
        async for p in g.reply(
            llm.complete, [*history, Message("user", words)], SessionOptions(), paths.append
        )
        if isinstance(p, str)
    ]
    return pieces, paths


async def test_a_confident_match_speaks_the_answer_without_the_model() -> None:
    llm = FakeLlm(["Something else."])
    pieces, paths = await reply(grounding(), llm, "how much is shipping to canada")
    assert "".join(pieces) == "Shipping to Canada costs twelve dollars." and paths == ["knowledge"]
    assert llm.calls == []


def test_a_hedge_says_the_question_back_to_the_caller() -> None:
    entry = parse_knowledge("- q: can i change my address\n  a: Yes, in your account.\n").entries[0]
    assert hedged_answer(entry) == "If you mean can you change your address: Yes, in your account."


async def test_a_weaker_match_is_hedged_or_grounds_the_model() -> None:
    words = "shipping canada price please now"
    pieces, paths = await reply(
        grounding(MatchThresholds(answer_score=0.99, hedge_score=0.2)), FakeLlm(), words
    )
    assert "".join(pieces).startswith("If you mean how much is shipping to canada: Shipping to Canada")
    assert paths == ["knowledge_hedged"]
    llm = FakeLlm(["Yes, for twelve dollars."])
    thresholds = MatchThresholds(answer_score=0.99, hedge_score=None, hint_score=0.2)
    pieces, paths = await reply(grounding(thresholds), llm, words)
    assert "".join(pieces).strip() == "Yes, for twelve dollars." and paths == ["grounded_model"]
    note = llm.calls[0][-1]
    assert note.role == "system" and note.text.startswith("Notes: Shipping to Canada costs twelve dollars.")


async def test_no_match_asks_the_model_and_its_invented_specific_is_never_spoken() -> None:
    llm = FakeLlm(["Sure, I can check that. It will arrive on Friday, for 30 dollars."])
    pieces, paths = await reply(grounding(), llm, "where is my parcel")
    text = "".join(pieces)
    assert text == f"Sure, I can check that. {FALLBACK_REPLY}"
    assert "Friday" not in text and "30" not in text
    assert paths == ["model", "fallback"]


async def test_specifics_from_the_knowledge_or_the_caller_may_be_spoken() -> None:
    llm = FakeLlm(["Order 48213 ships today, before 2 pm."])
    pieces, paths = await reply(grounding(), llm, "my order is four eight two one three")
    assert "".join(pieces).strip() == "Order 48213 ships today, before 2 pm." and paths == ["model"]


async def test_a_phrase_in_the_callers_voice_is_replaced() -> None:
    llm = FakeLlm(["Hi, I just ordered a pair of shoes."])
    pieces, paths = await reply(grounding(), llm, "hello")
    text = "".join(pieces)  # the first phrase, "Hi,", was fine on its own
    assert text == "Hi, how can I help you?" and "shoes" not in text and paths == ["model", "fallback"]
    pieces, _ = await reply(grounding(), FakeLlm(["I ordered a jacket."]), "hello")
    assert "".join(pieces) == ROLE_FALLBACK_REPLY


async def test_unchecked_replies_pass_through() -> None:
    llm = FakeLlm(["It costs 99 dollars."])
    pieces, paths = await reply(grounding(checks=False), llm, "where is my parcel")
    assert "".join(pieces).strip() == "It costs 99 dollars." and paths == ["model"]


async def test_the_guard_stops_the_model_before_the_phrase_is_passed_on() -> None:
    """Streaming: the invented phrase is held until it is complete, then dropped; the model's
    stream is closed at once, so it writes nothing after it."""
    written: list[str] = []

    async def model(history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        for word in "Sure. Call us at 555 0199 today. And more words here.".split():
            written.append(word)
            yield word + " "

    g = grounding()
    out = [p async for p in g.reply(model, [Message("user", "help")], SessionOptions(), lambda p: None)]
    assert "".join(str(p) for p in out) == f"Sure. {FALLBACK_REPLY}"
    assert "more" not in written


async def test_checked_replies_are_sampled_cool() -> None:
    seen: list[float] = []

    async def model(history: Sequence[Message], options: SessionOptions) -> AsyncIterator[str]:
        seen.append(options.temperature)
        yield "Okay."

    g = grounding()
    _ = [
        p
        async for p in g.reply(
            model, [Message("user", "hm")], SessionOptions(temperature=0.8), lambda p: None
        )
    ]
    assert seen == [0.2]


async def test_the_cascade_reports_the_path_and_looks_up_while_the_caller_speaks() -> None:
    from server.audio import PcmFrame

    encoder = FakeSentenceEncoder()
    g = Grounding(KnowledgeIndex(KNOWLEDGE, encoder))
    model = CascadeModel(FakeAsr(["what are your opening hours"]), FakeLlm(["unused"]), FakeTts())
    session = await model.open(SessionOptions(grounding=g))
    session.push_audio(PcmFrame.silence(20, 16_000))  # the fake recogniser hears its words at once
    assert g.index is not None
    for _ in range(200):  # the look-ahead runs in a worker thread
        if g.index.is_cached("what are your opening hours"):
            break
        await asyncio.sleep(0.005)
    assert g.index.is_cached("what are your opening hours")  # looked up while the caller spoke
    calls = encoder.calls
    [_ async for _ in session.commit_audio()]
    text = [e.text async for e in session.respond(_options()) if isinstance(e, TextDelta)]
    assert "".join(text) == "We are open from eight to eight."
    assert session.timings.answer_path == "knowledge" and encoder.calls == calls
    await session.aclose()


def _options() -> ResponseOptions:
    return ResponseOptions(with_audio=False)
