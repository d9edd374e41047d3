"""The role check (pure): does a phrase of the agent's reply talk like the caller?

A small base model continuing a call transcript sometimes writes the customer's side
("Hi, I just ordered a pair of shoes.", "I want to return my order.", "Please call me at
..."). These patterns catch the first person of a customer: what *I* bought, *my* order,
*call me*; an agent says "your order" and "I can help". They were written from Gemma 3 270M's
replies to the caller lines of `loadtests.knowledge_set.ROLE_LINES` and are a heuristic: the
measurement prints every reply for reading (BENCHMARKS.md).
"""

from __future__ import annotations

import re

_CALLER_TALK = tuple(
    re.compile(pattern, re.I)
    for pattern in (
        r"\bmy (order|package|parcel|account|card|money|refund|bill|jacket|shoes|item|purchase"
        r"|delivery|address|phone|headphones|call|sister|brother|wife|husband)\b",
        r"\bcall me\b",
        r"\bsent me\b",
        r"\bI live\b",
        r"\bI (just |already |recently |have |had )?(ordered|bought|purchased|received|paid|returned|got)\b",
        r"\bI('m| am) (calling|looking for|not happy|trying to)\b",
        r"\bI (want|need|would like|'d like) to (return|cancel|speak|talk|know|get|order|pay|buy|make|book|change|call)\b",
        r"\bI (want|need|would like|'d like) (a|an|my|this|the) (refund|return|new|replacement|order|item)\b",
        r"\bI have (an order|a question|a problem|ordered)\b",
        r"^(hi|hello)[, ]+I (just|have|want|need|live|am|'m)\b",
        r"^(customer|caller)\s*:",
        r"\b(can|could) you help me\b",
        r"^I said\b",
    )
)


def speaks_as_caller(phrase: str, caller_words: str = "") -> bool:
    """Whether `phrase` is in the caller's voice: a customer's first person (module
    docstring), or the caller's own line said back in the first person ("my name is john
    smith" -> "I'm john smith")."""
    phrase = re.sub(r'"[^"]*"', '""', phrase)  # quoting the caller is not speaking as them
    if any(pattern.search(phrase) for pattern in _CALLER_TALK):
        return True
    return _echoes_in_first_person(phrase, caller_words)


def _echoes_in_first_person(phrase: str, caller_words: str) -> bool:
    words = re.findall(r"[a-z']+", phrase.lower())
    caller = re.findall(r"[a-z']+", caller_words.lower())
    if not words or not caller or words[0] not in {"i", "i'm", "my"}:
        return False
    tail = [w for w in words[1:] if w not in {"am", "is", "was"}]
    if len(tail) < 2:
        return False
    joined = " ".join(caller)
    return " ".join(tail[-2:]) in joined and " ".join(tail) in joined
