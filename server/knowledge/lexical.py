"""BM25 over short texts (pure): the lexical side of retrieval.

Words are lowercased letters and digits; a few function words that say nothing about what a
caller wants ("the", "a", "is", ...) are dropped, and a crude suffix strip makes "shipping",
"ships" and "shipped" one term. Scores are BM25 (k1 = 1.2, b = 0.75) with the non-negative
IDF of Lucene, so a word found in every document scores a little, never below zero.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

K1 = 1.2
B = 0.75
_WORD = re.compile(r"[a-z0-9]+")
STOP_WORDS = frozenset(
    "a an the is are was were be been am i you we it its it's to of in on for at by and or "
    "do does did can could would will shall should may might my your our me us please "
    "hi hello um uh er so that this there what".split()
)


# words a question is built with, which say nothing of its topic ("where is my order" and
# "where is your shop" share only these)
FRAME_WORDS = frozenset(
    "where when how why which who whom whose much many long want need like get know tell help have has "
    "had does any some with from about there their they them thing things one got calling".split()
)


def topic_words(text: str) -> set[str]:
    """The words of `text` that name its topic (lowercase, as written): no stop words, no
    FRAME_WORDS."""
    words = _WORD.findall(text.lower().replace("'", ""))
    return {w for w in words if w not in STOP_WORDS and w not in FRAME_WORDS and not w.isdigit()}


def terms(text: str) -> list[str]:
    """The indexable terms of `text`, in order."""
    return [stem(w) for w in _WORD.findall(text.lower().replace("'", "")) if w not in STOP_WORDS]


def stem(word: str) -> str:
    """A crude suffix strip: shipping, ships, shipped -> ship."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            if (
                suffix in ("ing", "ed")
                and len(word) > 2
                and word[-1] == word[-2]
                and word[-1] not in "aeiouls"
            ):
                word = word[:-1]  # shipp -> ship, but not call -> cal
            return word
    return word


class Bm25Index:
    """Documents are term lists; `scores(query)` gives one BM25 score per document."""

    def __init__(self, documents: Sequence[str]) -> None:
        self._docs = [Counter(terms(d)) for d in documents]
        self._lengths = [sum(d.values()) for d in self._docs]
        self._average = (sum(self._lengths) / len(self._docs)) if self._docs else 0.0
        frequency: Counter[str] = Counter()
        for doc in self._docs:
            frequency.update(doc.keys())
        n = len(self._docs)
        self._idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in frequency.items()}

    def scores(self, query: str) -> list[float]:
        wanted = set(terms(query))
        out = []
        for doc, length in zip(self._docs, self._lengths, strict=True):
            norm = K1 * (1 - B + B * length / self._average) if self._average else K1
            score = 0.0
            for term in wanted:
                tf = doc.get(term, 0)
                if tf:
                    score += self._idf[term] * tf * (K1 + 1) / (tf + norm)
            out.append(score)
        return out
