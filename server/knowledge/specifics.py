"""The specifics guard (pure): a reply may only state numbers, prices, dates, times, phone
numbers, emails and URLs that someone gave it (the operator's knowledge, the instructions, the
conversation, the caller's words).

A *specific* is one of:
- a number, written in digits ("12", "$12.50", "5:00", "236-847-1508", "2nd") or in words
  ("twelve", "twenty five", "four eight two one three"); values are compared, not spellings,
  so "twelve dollars" supports "$12". A run of several spoken numbers ("four eight two one
  three", "twelve thirty four") also stands for its digits joined ("48213", "1234"), the way
  callers read out order and phone numbers. The word "one" on its own is not a number ("one
  of our agents"), nor are zero minutes ("5:00" states 5);
- a day or month name ("Monday", "December"; "May" only before a number), or "tomorrow";
- an email address or a URL (compared lowercased, without scheme, "www." or a final slash).

`SpecificsGuard(known_texts).unsupported(phrase)` lists the specifics of `phrase` not found in
any known text; an empty list means the phrase may be spoken.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["number", "date", "email", "url"]

_EMAIL = re.compile(r"[a-z0-9][a-z0-9._%+-]*@[a-z0-9-]+(?:\.[a-z0-9-]+)+", re.I)
_URL = re.compile(
    r"(?:https?://|www\.)[^\s,;]+|\b[a-z0-9-]+(?:\.[a-z0-9-]+)*\.(?:com|org|net|io|co|uk|de|fr|shop|store|info|biz)\b(?:/[^\s,;]*)?",
    re.I,
)
_DIGITS = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d", re.I)
_DAYS = frozenset("monday tuesday wednesday thursday friday saturday sunday".split())
_MONTHS = frozenset(
    "january february march april june july august september october november december".split()
)
_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
        " fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}


@dataclass(frozen=True, slots=True)
class Specific:
    kind: Kind
    value: str  # canonical: "12", "12.5", "monday", "shop.example.com/returns"
    text: str  # as written


def find_specifics(text: str) -> list[Specific]:
    """The specifics of `text`, in order of kind (emails, URLs, numbers, dates)."""
    found: list[Specific] = []
    for match in _EMAIL.finditer(text):
        found.append(Specific("email", match.group().lower(), match.group()))
    text = _EMAIL.sub(" ", text)
    for match in _URL.finditer(text):
        found.append(Specific("url", _url_value(match.group()), match.group()))
    text = _URL.sub(" ", text)
    for group in _number_groups(text):
        found.extend(group)
    found.extend(_dates(text))
    return found


class SpecificsGuard:
    """Knows the specifics of `known_texts`; tells which of a phrase's are unknown."""

    def __init__(self, known_texts: Iterable[str]) -> None:
        self._known: set[tuple[Kind, str]] = set()
        for text in known_texts:
            self.learn(text)

    def learn(self, text: str) -> None:
        """Add the specifics of `text` (a conversation line, a knowledge entry) to the known."""
        for specific in find_specifics(text):
            self._known.add((specific.kind, specific.value))
        for run in _number_runs(text):  # "four eight two one three" also stands for "48213"
            self._known.add(("number", run))

    def unsupported(self, phrase: str) -> list[Specific]:
        """The specifics of `phrase` that no known text contains ([] if it may be spoken)."""
        out: list[Specific] = []
        text = phrase
        for match in _EMAIL.finditer(text):
            s = Specific("email", match.group().lower(), match.group())
            if (s.kind, s.value) not in self._known:
                out.append(s)
        text = _EMAIL.sub(" ", text)
        for match in _URL.finditer(text):
            s = Specific("url", _url_value(match.group()), match.group())
            if (s.kind, s.value) not in self._known:
                out.append(s)
        text = _URL.sub(" ", text)
        for group in _number_groups(text):
            missing = [s for s in group if (s.kind, s.value) not in self._known]
            joined = "".join(s.value for s in group)
            if missing and not (len(group) > 1 and ("number", joined) in self._known):
                out.extend(missing)
        out.extend(s for s in _dates(text) if (s.kind, s.value) not in self._known)
        return out


def _url_value(url: str) -> str:
    value = re.sub(r"^(?:https?://)?(?:www\.)?", "", url.lower())
    return value.rstrip(".!?)/")


def _number_value(digits: str) -> str:
    value = digits.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    stripped = value.lstrip("0")
    return stripped if stripped and not stripped.startswith(".") else ("0" + stripped if stripped else "0")


def _number_groups(text: str) -> list[list[Specific]]:
    """Numbers in `text`: each run of adjacent number words or digit tokens is one group of
    specifics (the numbers it says, in order)."""
    groups: list[list[Specific]] = []
    current: list[Specific] = []
    for token, is_number in _number_tokens(text):
        if is_number:
            current.append(Specific("number", token, token))
        elif current:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def _number_runs(text: str) -> list[str]:
    """The digits of each run of two or more numbers, joined ("four eight two" -> "482")."""
    return ["".join(s.value for s in g) for g in _number_groups(text) if len(g) > 1]


def _number_tokens(text: str) -> list[tuple[str, bool]]:
    """(value, True) for each number (digits, or a compound of number words), (word, False)
    for every other word; minutes of zero ("5:00") are dropped."""
    text = re.sub(r"(\d):00\b", r"\1", text)
    tokens: list[tuple[str, bool]] = []
    words: list[str] = []  # pending number words
    position = 0
    pieces = re.finditer(r"\d+(?:,\d{3})*(?:\.\d+)?(?:st|nd|rd|th)?|[a-z]+(?:'[a-z]+)?", text, re.I)
    for match in pieces:
        piece = match.group()
        if match.start() > position and re.search(r"[.!?;]", text[position : match.start()]):
            tokens.extend(_flush_words(words))  # a sentence end splits a run
            tokens.append(("", False))
        position = match.end()
        if piece[0].isdigit():
            tokens.extend(_flush_words(words))
            tokens.append((_number_value(re.sub(r"(st|nd|rd|th)$", "", piece, flags=re.I)), True))
            continue
        lower = piece.lower()
        if lower in _UNITS or lower in _TENS or (lower in _SCALES and words) or (lower == "and" and words):
            words.append(lower)
            continue
        tokens.extend(_flush_words(words))
        tokens.append((lower, False))
    tokens.extend(_flush_words(words))
    return tokens


def _flush_words(words: list[str]) -> list[tuple[str, bool]]:
    """Number words -> the numbers they say: compounds ("twenty five", "two hundred and ten")
    are one number; a word that cannot extend the compound starts the next."""
    out: list[tuple[str, bool]] = []
    if words and words[-1] == "and":
        words.pop()
        trailing_and = True
    else:
        trailing_and = False
    total, current, last = 0, 0, ""
    started = False

    def close() -> None:
        nonlocal total, current, started
        if started:
            out.append((str(total + current), True))
        total, current, started = 0, 0, False

    for word in words:
        if word == "and":
            continue
        if word in _SCALES:
            current = max(current, 1) * _SCALES[word]
            if _SCALES[word] >= 1000:
                total, current = total + current, 0
            last = "scale"
            continue
        value = _UNITS.get(word, _TENS.get(word, 0))
        extends = started and (
            (last == "tens" and word in _UNITS and value < 10)
            or (last == "scale" and (word in _UNITS or word in _TENS))
        )
        if not extends:
            close()
        current += value
        started = True
        last = "tens" if word in _TENS else "unit"
    close()
    if len(words) == 1 and words[0] == "one":
        out = []  # a lone "one" is a pronoun ("one of our agents")
    words.clear()
    if trailing_and:
        out.append(("and", False))
    return out


def _dates(text: str) -> list[Specific]:
    out = []
    for match in _WORD.finditer(text):
        word = match.group().lower()
        if word in _DAYS or word in _MONTHS or word == "tomorrow":
            out.append(Specific("date", word, match.group()))
        elif match.group() == "May" and re.match(r"\s+\d", text[match.end() :]):
            out.append(Specific("date", "may", "May"))
    return out
