"""KnowledgeIndex: the caller's words -> the operator's entries that answer them, and the
choice of how to reply (`choose_answer`, pure).

Each entry is found by its example questions; facts by their own text. A text's score is
the cosine between its sentence embedding and the caller's (embedding.py), and an entry's
score is that of its best question. BM25 over the same texts (lexical.py) is kept beside it
for the measurements, and as the retriever when no encoder is given.

Choice of path (`choose_answer`):
- SpeakAnswer: the best entry scores at least `answer_score` and leads the next entry by
  `margin`: its answer is spoken as written, no language model;
- SpeakAnswer(hedged=True): with `hedge_score` set, a best entry between it and
  `answer_score` (leading by `margin`) is spoken too, after a hedge that names the question
  it answers ("If you mean ...:"), so a caller who meant something else can tell;
- GroundModel: some entries or facts score at least `hint_score`: the best `hint_entries`
  of them go into the language model's prompt;
- AskModel: nothing matches: the model answers alone (under the specifics guard).

Hedging exists because the shipped Gemma 3 270M, a base model, does not use entries put in
its prompt (measured: BENCHMARKS.md); a model that does is better served with
`hedge_score=None`, which grounds the model in that band instead.

Measured on recognised speech (BENCHMARKS.md, `python -m loadtests.knowledge_eval`), which
fixed the retriever and the default thresholds.

Invariants: `search` is blocking and thread-safe (one search at a time; results cached per
normalised text, so a look-ahead on the caller's hypothesis makes the reply's lookup of the
same words free).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from server.knowledge.embedding import SentenceEncoder
from server.knowledge.knowledge import Fact, Knowledge, KnowledgeEntry
from server.knowledge.lexical import Bm25Index, stem, topic_words

Retriever = Literal["hybrid", "embedding", "bm25"]
_CACHE_SIZE = 256
_WORD_CACHE_SIZE = 20_000
# BM25's share of the hybrid score: measured best of 0.01-0.1 on recognised speech; it breaks
# ties the recogniser's errors leave between entries (BENCHMARKS.md)
BM25_WEIGHT = 0.03
# two topic words are one topic when their embeddings are this close: postage~shipping 0.68,
# delivery~shipping 0.69, guarantee~warranty 0.57; order~shop 0.39, refund~cancel 0.53
TOPIC_WORD_SCORE = 0.55


@dataclass(frozen=True, slots=True)
class MatchThresholds:
    """answer_score: score at or above which the best entry's answer is spoken as written,
    if it leads the runner-up entry by `margin`. hedge_score: the same, below answer_score,
    for an answer spoken after a hedge (None: never). hint_score: cosine at or above which entries
    and facts are put in the model's prompt (at most `hint_entries`). On the BM25 scale when
    the retriever is BM25."""

    answer_score: float = 0.6
    margin: float = 0.03
    hedge_score: float | None = 0.45
    hint_score: float = 0.4
    hint_entries: int = 2
    # speak an answer only when the caller's words share a topic word with the entry (or the
    # score reaches sure_score): "where is my order" is close to "where is your shop" for the
    # encoder, but shares no topic
    sure_score: float = 0.8


@dataclass(frozen=True, slots=True)
class Scored:
    """An entry (or fact) and its score for the caller's words. `shares_topic`: the caller's
    words and the item's share a topic word (lexical.topic_words: the same stem, or, with an
    encoder, two words whose embeddings are TOPIC_WORD_SCORE close), not only a frame."""

    item: KnowledgeEntry | Fact
    score: float
    shares_topic: bool = True


@dataclass(frozen=True, slots=True)
class SpeakAnswer:
    entry: KnowledgeEntry
    score: float
    hedged: bool = False


@dataclass(frozen=True, slots=True)
class GroundModel:
    items: tuple[Scored, ...]


@dataclass(frozen=True, slots=True)
class AskModel:
    best_score: float | None


AnswerPlan = SpeakAnswer | GroundModel | AskModel


def choose_answer(ranked: Sequence[Scored], thresholds: MatchThresholds) -> AnswerPlan:
    """How to reply, from the items ranked best first (module docstring)."""
    if not ranked:
        return AskModel(None)
    best = ranked[0]
    entries = [s for s in ranked if isinstance(s.item, KnowledgeEntry)]
    if entries and entries[0] is best and isinstance(best.item, KnowledgeEntry):
        runner_up = entries[1].score if len(entries) > 1 else float("-inf")
        sure = best.shares_topic or best.score >= thresholds.sure_score
        if sure and best.score - runner_up >= thresholds.margin:
            if best.score >= thresholds.answer_score:
                return SpeakAnswer(best.item, best.score)
            if thresholds.hedge_score is not None and best.score >= thresholds.hedge_score:
                return SpeakAnswer(best.item, best.score, hedged=True)
    hints = tuple(s for s in ranked if s.score >= thresholds.hint_score)[: thresholds.hint_entries]
    if hints:
        return GroundModel(hints)
    return AskModel(best.score)


def normalise(words: str) -> str:
    return " ".join(words.lower().split())


class KnowledgeIndex:
    """The knowledge, indexed. Building it embeds every question and fact (blocking).

    retriever "hybrid" (default): an item's score is the best cosine of its texts plus
    `BM25_WEIGHT` x its BM25 score (its questions and answer as one document); "embedding":
    the cosine alone; "bm25": BM25 alone (no encoder needed)."""

    def __init__(
        self,
        knowledge: Knowledge,
        encoder: SentenceEncoder | None,
        retriever: Retriever = "hybrid",
        thresholds: MatchThresholds | None = None,
    ) -> None:
        if retriever != "bm25" and encoder is None:
            raise ValueError(f"the {retriever} retriever needs a sentence encoder")
        self.knowledge = knowledge
        self.retriever = retriever
        self.thresholds = thresholds or MatchThresholds()
        self._encoder = encoder
        self._items: list[KnowledgeEntry | Fact] = [*knowledge.entries, *knowledge.facts]
        # one row per text: each question of each entry, then each fact
        self._rows: list[int] = []
        texts: list[str] = []
        for number, entry in enumerate(knowledge.entries):
            self._rows += [number] * len(entry.questions)
            texts += entry.questions
        for number, fact in enumerate(knowledge.facts, start=len(knowledge.entries)):
            self._rows.append(number)
            texts.append(fact.text)
        self._bm25 = Bm25Index([_document(item) for item in self._items])
        self._topics = [topic_words(_document(item)) for item in self._items]
        self._word_vectors: dict[str, NDArray[np.float32]] = {}
        self._item_word_vectors: list[NDArray[np.float32] | None] = []
        if encoder is not None:
            vocabulary = sorted(set().union(*self._topics))
            self._remember_words(vocabulary)
            for words in self._topics:
                rows = [self._word_vectors[w] for w in sorted(words)]
                self._item_word_vectors.append(np.stack(rows) if rows else None)
        self._vectors = encoder.encode(texts) if retriever != "bm25" and encoder is not None else None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[Scored, ...]] = OrderedDict()

    def search(self, words: str) -> tuple[Scored, ...]:
        """Entries and facts by score, best first (blocking; cached)."""
        key = normalise(words)
        if not key:
            return ()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
            ranked = self._rank(key)
            self._cache[key] = ranked
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return ranked

    def is_cached(self, words: str) -> bool:
        return normalise(words) in self._cache

    def plan(self, words: str) -> AnswerPlan:
        """`choose_answer` over `search(words)` (blocking)."""
        return choose_answer(self.search(words), self.thresholds)

    def _rank(self, words: str) -> tuple[Scored, ...]:
        scores = [0.0] * len(self._items)
        if self._vectors is not None and self._encoder is not None:
            scores = [-1.0] * len(self._items)
            cosines = self._vectors @ self._encoder.encode([words])[0]
            for row, cosine in zip(self._rows, cosines, strict=True):
                scores[row] = max(scores[row], float(cosine))
        if self.retriever != "embedding":
            weight = 1.0 if self.retriever == "bm25" else BM25_WEIGHT
            for number, lexical in enumerate(self._bm25.scores(words)):
                scores[number] += weight * lexical
        ranked = [
            Scored(item, score, shared)
            for item, score, shared in zip(self._items, scores, self._shared_topics(words), strict=True)
        ]
        return tuple(sorted(ranked, key=lambda s: s.score, reverse=True))

    def _shared_topics(self, words: str) -> list[bool]:
        """Per item: whether it shares a topic word with `words` (Scored.shares_topic)."""
        caller = topic_words(words)
        stems = {stem(w) for w in caller}
        shared = [bool(stems & {stem(w) for w in topic}) for topic in self._topics]
        if self._encoder is None or not caller:
            return shared
        self._remember_words(sorted(caller))
        mine = np.stack([self._word_vectors[w] for w in sorted(caller)])
        for number, vectors in enumerate(self._item_word_vectors):
            if not shared[number] and vectors is not None:
                shared[number] = bool((vectors @ mine.T).max() >= TOPIC_WORD_SCORE)
        return shared

    def _remember_words(self, words: Sequence[str]) -> None:
        new = [w for w in words if w not in self._word_vectors]
        if new and self._encoder is not None:
            for word, vector in zip(new, self._encoder.encode(new), strict=True):
                self._word_vectors[word] = vector
        if len(self._word_vectors) > _WORD_CACHE_SIZE:  # callers' words: keep the knowledge's
            known = set().union(*self._topics)
            for word in [w for w in self._word_vectors if w not in known][: len(self._word_vectors) // 2]:
                del self._word_vectors[word]


def _document(item: KnowledgeEntry | Fact) -> str:
    return " ".join([*item.questions, item.answer]) if isinstance(item, KnowledgeEntry) else item.text
