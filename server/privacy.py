"""Redaction of payment card numbers, phone numbers and email addresses in transcripts.

Pure functions: text in, text out, no state, no I/O. `redact()` replaces what it finds with
`[card]`, `[phone]` and `[email]`; it is idempotent (redacting twice changes nothing more).
What is redacted, and where, is described in docs/privacy.md; the rules in brief:

- emails: written (`john.smith@example.com`, `john @ example.com`) and spoken as recognisers
  write them (`john dot smith at example dot com`); a spoken `<word> at` where the word is an
  everyday one (`look at example.com`) is not an address.
- numbers are read as runs of digit groups: written groups (`4111`, `555`) and spoken digit
  words (`four`, `oh`, `double one`), separated by spaces, dashes, dots, slashes, brackets or
  commas (a comma only beside a spoken digit: `1,000,000` is an amount). Within a run:
  - a card is any stretch of whole groups with 13-19 digits that passes the Luhn check (the
    longest first), so `4111 1111 1111 1111 123` loses the card and keeps `123`; a 16-digit
    number failing Luhn (an order number) stays;
  - a phone is a stretch of whole groups that looks dialable: `+`/`plus` then 8-15 digits;
    `00` then 10-15; a leading `0` and 9-12 digits (European national numbers); 10 digits, or
    11 starting with 1 (North American, with or without the 1); or written `555-1234`.
- Limits: compound number words (`forty one`, `eleven`) are not digits; spoken digit strings
  of 13 or more digits are often partly redacted even when they are no card, since some
  stretch of them passes Luhn by chance (1 in 10 per stretch); any 10-digit number counts as a
  phone number; numbers in other scripts and spelled-out letters of an email are missed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from server.events import AgentEvent

CARD_TAG = "[card]"
PHONE_TAG = "[phone]"
EMAIL_TAG = "[email]"

CARD_MIN_DIGITS = 13
CARD_MAX_DIGITS = 19


@dataclass(frozen=True, slots=True)
class PrivacyOptions:
    """`log_transcripts`: what the caller said and the replies go into log lines (off: logs
    carry ids, counts and latencies only). `redact_transcripts`: transcripts that leave the
    conversation for storage (events handed to embedding code, logs) are redacted; the model
    and the brain still get the words as heard, so they can look an order up."""

    log_transcripts: bool = False
    redact_transcripts: bool = False


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (card numbers pass it, 9 in 10 others fail)."""
    if not digits or not (digits.isascii() and digits.isdigit()):
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# --- emails ------------------------------------------------------------------------------------

_WORDY_LOCAL = frozenset(
    """look looking looked me us him her them it this that what who where is are was were be
    been stay staying stayed arrive arrived arriving home work here there meet see call email
    mail reach contact write available located based live lives lived now just right""".split()
)
_LOCAL = r"[a-z0-9](?:[a-z0-9._%+-]*[a-z0-9])?"
_SPOKEN_SEP = r"(?:\s+(?:dot|underscore|dash|hyphen)\s+|\.)"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_DOT = r"(?:\s+dot\s+|\.)"
_EMAIL = re.compile(
    rf"(?<![\w.%+'’@-])(?P<local>{_LOCAL}(?:{_SPOKEN_SEP}{_LOCAL})*)"
    rf"(?P<at>\s*@\s*|\s+at\s+)"
    rf"{_LABEL}(?:{_DOT}{_LABEL})*{_DOT}[a-z]{{2,24}}(?![\w@-])",
    re.IGNORECASE,
)


def _email_tag(match: re.Match[str]) -> str:
    if "@" not in match["at"] and match["local"].lower() in _WORDY_LOCAL:
        return match[0]  # "look at example dot com": a sentence, not an address
    return EMAIL_TAG


def redact_emails(text: str) -> str:
    return _EMAIL.sub(_email_tag, text)


# --- numbers -----------------------------------------------------------------------------------

_DIGIT_WORDS = {
    "zero": "0",
    "oh": "0",
    "o": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_REPEAT_WORDS = {"double": 2, "triple": 3}
_TOKEN = re.compile(r"\d+|[^\W\d_]+|\S")
_SEPARATORS = frozenset("-./()")  # between groups of a run; "," only beside a spoken digit


@dataclass(frozen=True, slots=True)
class _Group:
    """One written digit group or one spoken digit word (a `double one` is one group)."""

    start: int  # character span in the text, including a leading "+"/"plus" or "("
    end: int
    digits: str
    spoken: bool
    plus: bool  # a "+" or "plus" just before it
    after_dash: bool  # a "-" between it and the group before (for the "555-1234" shape)


def _runs(text: str) -> list[list[_Group]]:
    """Runs of digit groups joined only by separators."""
    runs: list[list[_Group]] = []
    run: list[_Group] = []
    pending: list[str] = []  # separators seen since the last group
    plus_at: int | None = None
    open_at: int | None = None
    tokens = list(_TOKEN.finditer(text))
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        raw = tok[0]
        word = raw.lower()
        digits: str | None = None
        end = tok.end()
        if raw.isdigit():
            digits = raw if raw.isascii() else None
        elif word in _DIGIT_WORDS:
            if word not in ("o", "oh") or _beside_digit_word(tokens, i):
                digits = _DIGIT_WORDS[word]
        elif word in _REPEAT_WORDS and i + 1 < len(tokens) and tokens[i + 1][0].lower() in _DIGIT_WORDS:
            i += 1
            digits = _DIGIT_WORDS[tokens[i][0].lower()] * _REPEAT_WORDS[word]
            end = tokens[i].end()
        if digits is not None:
            spoken = not raw.isdigit()
            if run and "," in pending and not (spoken or run[-1].spoken):
                runs.append(run)  # "1,000,000": an amount, not one number
                run = []
            if run:
                group = _Group(tok.start(), end, digits, spoken, False, "-" in pending)
            else:
                start = plus_at if plus_at is not None else open_at if open_at is not None else tok.start()
                group = _Group(start, end, digits, spoken, plus_at is not None, False)
            run.append(group)
            pending, plus_at, open_at = [], None, None
        elif run and (word in _SEPARATORS or word == ",") and len(pending) < 2:
            pending.append(word)
        else:
            if run:
                runs.append(run)
                run = []
            pending, plus_at, open_at = [], None, None
            if word in ("+", "plus"):
                plus_at = tok.start()
            elif word == "(":
                open_at = tok.start()
        i += 1
    if run:
        runs.append(run)
    return runs


def _beside_digit_word(tokens: list[re.Match[str]], i: int) -> bool:
    """An "oh" or "o" is a zero only among other digits: the nearest word on either side that
    is no "oh" must be a digit ("oh I see" is no number, "one oh oh nine" is)."""
    for step in (-1, 1):
        j = i + step
        while 0 <= j < len(tokens) and tokens[j][0].lower() in ("o", "oh"):
            j += step
        if 0 <= j < len(tokens):
            w = tokens[j][0].lower()
            if w in _DIGIT_WORDS or w in _REPEAT_WORDS or (w.isascii() and w.isdigit()):
                return True
    return False


# a rule on the stretch groups[i:j] of a run whose digits are `digits`
_Rule = Callable[[str, list[_Group], int, int], bool]


def _is_card(digits: str, groups: list[_Group], i: int, j: int) -> bool:
    return CARD_MIN_DIGITS <= len(digits) <= CARD_MAX_DIGITS and luhn_valid(digits)


def _is_phone(digits: str, groups: list[_Group], i: int, j: int) -> bool:
    n = len(digits)
    if groups[i].plus:
        return 8 <= n <= 15
    if digits.startswith("00"):
        return 10 <= n <= 15
    if digits.startswith("0") and 9 <= n <= 12:
        return True
    if n == 10 or (n == 11 and digits.startswith("1")):
        return True
    return (
        n == 7
        and j - i == 2
        and not groups[i].spoken
        and len(groups[i].digits) == 3
        and groups[i + 1].after_dash
    )


_MIN_DIGITS = 7  # the shortest number any rule takes


def _find(groups: list[_Group], lo: int, hi: int, rule: _Rule, found: list[tuple[int, int]]) -> None:
    """Stretches of groups[lo:hi] that follow `rule` (as index pairs), the longest first, then
    the same either side of it."""
    offsets = [0]
    for g in groups[lo:hi]:
        offsets.append(offsets[-1] + len(g.digits))
    if offsets[-1] < _MIN_DIGITS:
        return
    digits = "".join(g.digits for g in groups[lo:hi])
    best: tuple[int, int] | None = None
    best_len = -1
    for i in range(hi - lo):
        for j in range(i + 1, hi - lo + 1):
            n = offsets[j] - offsets[i]
            if n > CARD_MAX_DIGITS:
                break
            if n > best_len and rule(digits[offsets[i] : offsets[j]], groups, lo + i, lo + j):
                best, best_len = (lo + i, lo + j), n
    if best is None:
        return
    _find(groups, lo, best[0], rule, found)
    found.append(best)
    _find(groups, best[1], hi, rule, found)


def _number_spans(text: str, rules: list[tuple[_Rule, str]]) -> list[tuple[int, int, str]]:
    """Character spans to replace, and their tags: each rule in turn on what the ones before
    left of each run."""
    spans: list[tuple[int, int, str]] = []
    for run in _runs(text):
        free = [(0, len(run))]
        for rule, tag in rules:
            taken: list[tuple[int, int]] = []
            for lo, hi in free:
                _find(run, lo, hi, rule, taken)
            spans.extend((run[i].start, run[j - 1].end, tag) for i, j in taken)
            free = _gaps(free, taken)
    return spans


def _gaps(free: list[tuple[int, int]], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in free:
        cut = lo
        for i, j in sorted(taken):
            if lo <= i and j <= hi:
                out.append((cut, i))
                cut = j
        out.append((cut, hi))
    return [(lo, hi) for lo, hi in out if hi > lo]


def _replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    if not spans:
        return text
    out: list[str] = []
    last = 0
    for start, end, tag in sorted(spans):
        if text[start] == "(" and ")" not in text[start:end]:
            start += 1  # the bracket was opened before a number it does not enclose
        if end < len(text) and text[end] == ")" and "(" in text[start:end]:
            end += 1
        out.append(text[last:start])
        out.append(tag)
        last = end
    out.append(text[last:])
    return "".join(out)


def redact_cards(text: str) -> str:
    return _replace_spans(text, _number_spans(text, [(_is_card, CARD_TAG)]))


def redact_phones(text: str) -> str:
    return _replace_spans(text, _number_spans(text, [(_is_phone, PHONE_TAG)]))


def redact(text: str) -> str:
    """Emails, then card numbers, then phone numbers (emails first: an address may hold digits)."""
    text = redact_emails(text)
    return _replace_spans(text, _number_spans(text, [(_is_card, CARD_TAG), (_is_phone, PHONE_TAG)]))


# --- events ------------------------------------------------------------------------------------

# fields of events that carry what was said (or what a tool was told): UserTurn.transcript,
# AssistantTurn.text, a tool call's arguments and result
_CONTENT_FIELDS = ("transcript", "text", "arguments", "result")


def redact_value(value: object) -> object:
    """Strings redacted, inside mappings and sequences too; anything else as it is."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact_value(v) for v in value)
    return value


def redact_event(event: AgentEvent) -> AgentEvent:
    """The event with the text of its content fields redacted (ids, statuses, timings and
    session metadata as they are); an event without such fields is returned as it is."""
    changes: dict[str, Any] = {
        f.name: redact_value(getattr(event, f.name)) for f in fields(event) if f.name in _CONTENT_FIELDS
    }
    return replace(event, **changes) if changes else event
