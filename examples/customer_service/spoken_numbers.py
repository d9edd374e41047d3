"""Numbers as a speech recogniser writes them: "one two three four", "twelve thirty four",
"one thousand two hundred thirty four", "1234", "nineteen oh five", "double five".

Pure functions, no I/O. `digit_runs(text)` turns every run of number words in a transcript
into its digit string; `order_number(text)` picks the first run of `ORDER_ID_DIGITS` digits.

How a run is read:
- a run is a maximal sequence of number tokens: digit words (zero..nine, "oh"), teens,
  tens, "hundred"/"thousand", "double"/"triple", and numerals ("1234", "12");
- with "hundred" or "thousand" in it the run is a cardinal ("twelve hundred thirty four" ->
  1234); otherwise the run is said in groups that are written one after the other: "twelve
  thirty four" -> "12" + "34", "one two three four" -> "1234", "twenty one" -> "21",
  "thirty oh five" -> "3005", "double five" -> "55";
- recognisers often write a spoken digit as its homophone ("for", "to", "too", "won",
  "ate"). Those count as digits only inside a run that holds a real number word, and a run
  that is one digit too long keeps its 4 digits if dropping a homophone at either edge
  gives them ("refund for one two three four" -> 1234).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

ORDER_ID_DIGITS: Final = 4

DIGITS: Final[dict[str, int]] = {
    "zero": 0,
    "oh": 0,
    "o": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
}
TEENS: Final[dict[str, int]] = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
TENS: Final[dict[str, int]] = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fourty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
SCALES: Final[dict[str, int]] = {"hundred": 100, "thousand": 1000}
REPEATS: Final[dict[str, int]] = {"double": 2, "triple": 3}
# words a recogniser writes for a spoken digit; digits only next to real number words
HOMOPHONES: Final[dict[str, int]] = {"for": 4, "fore": 4, "to": 2, "too": 2, "won": 1, "ate": 8}

_TOKEN = re.compile(r"[a-z]+|\d+")


@dataclass(frozen=True, slots=True)
class _Token:
    word: str
    is_homophone: bool


def _is_number_word(word: str) -> bool:
    return (
        word.isdigit() or word in DIGITS or word in TEENS or word in TENS or word in SCALES or word in REPEATS
    )


def _runs(text: str) -> list[list[_Token]]:
    """The runs of number tokens in `text`, homophones included only in runs with a real one.
    "oh"/"o" alone is not a number (an exclamation), nor is a lone "double"."""
    words = _TOKEN.findall(text.lower().replace("-", " "))
    runs: list[list[_Token]] = []
    current: list[_Token] = []
    for i, word in enumerate([*words, ""]):
        if word and (_is_number_word(word) or word in HOMOPHONES):
            current.append(_Token(word, word in HOMOPHONES and not _is_number_word(word)))
            continue
        following = words[i + 1] if i + 1 < len(words) else ""
        if word == "and" and current and current[-1].word in SCALES and _is_number_word(following):
            continue  # "twelve hundred and thirty four" is one number
        if current:
            runs.extend(_keep_numeric(current))
            current = []
    return runs


def _keep_numeric(run: list[_Token]) -> list[list[_Token]]:
    """Trim homophones and lone fillers off a run; a run with no real number word is dropped."""
    while run and run[0].is_homophone and not _has_real_number(run[1:2]):
        run = run[1:]
    while run and run[-1].is_homophone and not _has_real_number(run[-2:-1]):
        run = run[:-1]
    meaningful = [
        t for t in run if not t.is_homophone and t.word not in ("oh", "o") and t.word not in REPEATS
    ]
    return [run] if meaningful else []


def _has_real_number(tokens: list[_Token]) -> bool:
    return any(not t.is_homophone for t in tokens)


def _value(token: _Token) -> int | None:
    word = token.word
    if word in DIGITS:
        return DIGITS[word]
    if word in HOMOPHONES:
        return HOMOPHONES[word]
    return None


def _cardinal(run: list[_Token]) -> str:
    """A run with "hundred"/"thousand": the number it names, e.g. 'one thousand two hundred
    thirty four' -> '1234'. Numerals and digit words add; scales multiply."""
    total = 0
    group = 0
    for token in run:
        word = token.word
        if word.isdigit():
            group += int(word)
        elif word in TEENS:
            group += TEENS[word]
        elif word in TENS:
            group += TENS[word]
        elif word == "hundred":
            group = max(group, 1) * 100
        elif word == "thousand":
            total += max(group, 1) * 1000
            group = 0
        else:
            value = _value(token)
            if value is not None:
                group += value
    return str(total + group)


def _grouped(run: list[_Token]) -> str:
    """A run without scales, said in groups written one after another."""
    out: list[str] = []
    repeat = 1
    i = 0
    while i < len(run):
        token = run[i]
        word = token.word
        if word in REPEATS:
            repeat = REPEATS[word]
            i += 1
            continue
        if word.isdigit():
            out.append(word * repeat)
        elif word in TEENS:
            out.append(str(TEENS[word]) * repeat)
        elif word in TENS:
            tens = TENS[word]
            following = run[i + 1] if i + 1 < len(run) else None
            unit = None if following is None else _value(following)
            if following is not None and unit is not None and unit > 0 and following.word not in ("oh", "o"):
                out.append(str(tens + unit))  # "thirty four" -> 34
                i += 1
            else:
                out.append(str(tens))  # "thirty" -> 30; "thirty oh five" -> 30, 0, 5
        else:
            value = _value(token)
            if value is not None:
                out.append(str(value) * repeat)
        repeat = 1
        i += 1
    return "".join(out)


def _digits(run: list[_Token]) -> str:
    if any(t.word in SCALES for t in run):
        return _cardinal(run)
    return _grouped(run)


def digit_runs(text: str) -> list[str]:
    """Every number said in `text`, as digit strings, in order of appearance."""
    return [digits for run in _runs(text) if (digits := _digits(run))]


def order_number(text: str) -> str | None:
    """The first order number (ORDER_ID_DIGITS digits) said in `text`, or None.

    A run one digit too long keeps its order number when a homophone at an edge accounts for
    the extra digit ("refund for 1234" -> "1234")."""
    for run in _runs(text):
        candidates = [run]
        if len(run) > 1 and run[0].is_homophone:
            candidates.append(run[1:])
        if len(run) > 1 and run[-1].is_homophone:
            candidates.append(run[:-1])
        for candidate in candidates:
            digits = _digits(candidate)
            if len(digits) == ORDER_ID_DIGITS:
                return digits
    return None


def spoken_digits(digits: str) -> str:
    """Digits as a voice reads them back one at a time: '1204' -> 'one two oh four'."""
    names = {v: k for k, v in DIGITS.items() if k not in ("o", "zero")}
    return " ".join(names[int(d)] for d in digits if d.isdigit())
