"""Retrieval and the choice of answer path (pure), with the fake sentence encoder."""

from __future__ import annotations

import pytest

from server.knowledge.knowledge import Fact, KnowledgeEntry, parse_knowledge
from server.knowledge.retrieval import (
    AskModel,
    GroundModel,
    KnowledgeIndex,
    MatchThresholds,
    Scored,
    SpeakAnswer,
    choose_answer,
)
from server.model.fakes import FakeSentenceEncoder

CANADA = KnowledgeEntry(("do you ship to canada",), "Yes, for twelve dollars.", 1)
HOURS = KnowledgeEntry(("when are you open",), "Eight to eight.", 4)
FACT = Fact("We sell lamps.", 7)
T = MatchThresholds(answer_score=0.6, margin=0.05, hedge_score=0.45, hint_score=0.4, hint_entries=2)


@pytest.mark.parametrize(
    ("ranked", "expected"),
    [
        ([Scored(CANADA, 0.8), Scored(HOURS, 0.3)], SpeakAnswer(CANADA, 0.8)),
        ([Scored(CANADA, 0.5), Scored(HOURS, 0.3)], SpeakAnswer(CANADA, 0.5, hedged=True)),
        # too close to the runner-up to speak: both go to the model
        ([Scored(CANADA, 0.8), Scored(HOURS, 0.78)], GroundModel((Scored(CANADA, 0.8), Scored(HOURS, 0.78)))),
        # a fact is never spoken, only given to the model
        ([Scored(FACT, 0.9), Scored(CANADA, 0.3)], GroundModel((Scored(FACT, 0.9),))),
        ([Scored(CANADA, 0.42), Scored(HOURS, 0.1)], GroundModel((Scored(CANADA, 0.42),))),
        ([Scored(CANADA, 0.2)], AskModel(0.2)),
        ([], AskModel(None)),
    ],
)
def test_choose_answer(ranked: list[Scored], expected: object) -> None:
    assert choose_answer(ranked, T) == expected


def test_without_hedging_a_middling_match_grounds_the_model() -> None:
    ranked = [Scored(CANADA, 0.5), Scored(HOURS, 0.3)]
    assert choose_answer(ranked, MatchThresholds(hedge_score=None)) == GroundModel((Scored(CANADA, 0.5),))


KNOWLEDGE = parse_knowledge(
    """\
- q: [how much is shipping to canada, do you ship to canada]
  a: Shipping to Canada costs twelve dollars.
- q: what are your opening hours
  a: Eight to eight.
- fact: We sell lamps and chairs.
"""
)


@pytest.mark.parametrize("retriever", ["hybrid", "embedding", "bm25"])
def test_an_index_ranks_the_entry_whose_question_matches(retriever: str) -> None:
    index = KnowledgeIndex(KNOWLEDGE, FakeSentenceEncoder(), retriever)  # type: ignore[arg-type]
    ranked = index.search("how much is the shipping to canada")
    assert ranked[0].item is KNOWLEDGE.entries[0] and ranked[0].score > ranked[1].score
    assert len(ranked) == 3  # one row per entry or fact, not per question
    assert index.search("   ") == ()


def test_searches_are_cached_per_normalised_words() -> None:
    encoder = FakeSentenceEncoder()
    index = KnowledgeIndex(KNOWLEDGE, encoder)
    calls = encoder.calls
    assert not index.is_cached("Opening hours")
    first = index.search("Opening hours")
    assert index.is_cached("opening   HOURS") and index.search("opening hours") is first
    assert encoder.calls == calls + 1


def test_the_embedding_retrievers_need_an_encoder() -> None:
    with pytest.raises(ValueError, match="needs a sentence encoder"):
        KnowledgeIndex(KNOWLEDGE, None)
    assert KnowledgeIndex(KNOWLEDGE, None, "bm25").search("canada")[0].item is KNOWLEDGE.entries[0]
