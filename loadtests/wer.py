"""Word error rate: Levenshtein distance over normalized words.

Normalization: lowercase; apostrophes removed inside words ("don't" -> "dont"); every other
character that is not a letter or digit becomes a word break. Digits are left as they are, so
"10" against a reference "ten" is a substitution: numbers are not spelled out.

Use `word_errors()` per utterance and `WordErrors.__add__` to pool a corpus; the corpus WER is
total errors over total reference words (not the mean of per-utterance rates).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_APOSTROPHES = re.compile(r"['\u2019]")
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> list[str]:
    """The words of `text`: lowercase, punctuation stripped, digits kept."""
    return _NON_WORD.sub(" ", _APOSTROPHES.sub("", text.lower())).split()


@dataclass(frozen=True, slots=True)
class WordErrors:
    """Edit counts of one hypothesis (or a pooled corpus) against its reference."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_words: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / reference words; with an empty reference, errors / 1 (insertions count)."""
        return self.errors / max(self.reference_words, 1)

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )


def word_errors(reference: str, hypothesis: str) -> WordErrors:
    """Minimum edits turning the reference words into the hypothesis words.

    Among alignments of equal cost, the one with the most substitutions wins (the usual
    convention), so "a b" -> "a c" is one substitution, not a deletion and an insertion.
    """
    ref = normalize(reference)
    hyp = normalize(hypothesis)
    # row[j]: (cost, substitutions, deletions, insertions) for ref[:i] vs hyp[:j]
    row = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i, ref_word in enumerate(ref, start=1):
        new_row = [(i, 0, i, 0)]
        for j, hyp_word in enumerate(hyp, start=1):
            c, s, d, n = row[j - 1]
            diagonal = (c, s, d, n) if ref_word == hyp_word else (c + 1, s + 1, d, n)
            c, s, d, n = row[j]
            deletion = (c + 1, s, d + 1, n)
            c, s, d, n = new_row[j - 1]
            insertion = (c + 1, s, d, n + 1)
            new_row.append(min(diagonal, deletion, insertion, key=lambda t: (t[0], -t[1])))
        row = new_row
    _, substitutions, deletions, insertions = row[-1]
    return WordErrors(substitutions, deletions, insertions, len(ref))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis; see `WordErrors.rate`."""
    return word_errors(reference, hypothesis).rate
