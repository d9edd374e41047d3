"""Split streamed reply text into phrases worth speaking on their own (pure).

The first phrase of a reply is cut early (at a comma, or after `first_max_words`) so speech can
start while the language model is still writing; later phrases end at sentence punctuation or
after `max_words`.
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"[.!?;:](?=\s|$)")
_CLAUSE_END = re.compile(r"[,.!?;:](?=\s|$)")


class PhraseSplitter:
    def __init__(self, first_max_words: int = 4, max_words: int = 24) -> None:
        self.first_max_words = first_max_words
        self.max_words = max_words
        self._buffer = ""
        self._phrases_out = 0

    def push(self, text: str) -> list[str]:
        """Add streamed text; returns the phrases completed by it."""
        self._buffer += text
        out: list[str] = []
        while True:
            phrase = self._take()
            if phrase is None:
                return out
            out.append(phrase)

    def flush(self) -> str | None:
        """The rest of the text, at the end of the reply."""
        rest = self._buffer.strip()
        self._buffer = ""
        if rest:
            self._phrases_out += 1
        return rest or None

    def _take(self) -> str | None:
        first = self._phrases_out == 0
        pattern = _CLAUSE_END if first else _SENTENCE_END
        match = pattern.search(self._buffer)
        # only words followed by whitespace are complete; the last one may still grow
        complete_words = self._buffer[: self._buffer.rfind(" ") + 1].split() if " " in self._buffer else []
        limit = self.first_max_words if first else self.max_words
        if match is not None and len(self._buffer[: match.end()].split()) >= 1:
            cut = match.end()
        elif len(complete_words) >= limit:
            cut = _end_of_word(self._buffer, limit)
        else:
            return None
        phrase, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:].lstrip()
        if not phrase:
            return None
        self._phrases_out += 1
        return phrase


def phrases_of(text: str) -> list[str]:
    """A whole text in the phrases PhraseSplitter cuts it into as it streams."""
    splitter = PhraseSplitter()
    phrases = splitter.push(text)
    rest = splitter.flush()
    return phrases if rest is None else [*phrases, rest]


def _end_of_word(text: str, words: int) -> int:
    count = 0
    for m in re.finditer(r"\S+", text):
        count += 1
        if count == words:
            return m.end()
    return len(text)


def cut_text_to_fraction(text: str, fraction: float) -> str:
    """The leading words of `text` covering about `fraction` of it (by characters)."""
    if fraction >= 1.0:
        return text
    if fraction <= 0.0:
        return ""
    target = len(text) * fraction
    kept = ""
    for m in re.finditer(r"\S+", text):
        if m.end() > target + 1:
            break
        kept = text[: m.end()]
    return kept
