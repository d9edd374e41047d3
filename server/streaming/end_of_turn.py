"""Semantic end of turn: how long a pause ends the caller's turn, given their words so far.

`semantic_vad` (OpenAI's name) ends a turn after a silence that depends on how complete the
caller's words are: the language model's probability that their line ends where the voice
stopped (`GemmaEngine.end_of_turn_probability`). Complete words end the turn after a short
silence; words that cannot end a sentence ("my order number is") wait up to the eagerness'
maximum (8 / 3 / 1.5 s for low / medium / high; OpenAI documents 8 / 4 / 2 s), so a caller who
stops to find a number is not answered in the pause. Medium's 3 s, not 4: a complete line the
model misjudges (a number, a line unlike a customer's) waits the maximum too. Between the two
the wait grows as the probability falls, on a log scale (the scores of unfinished lines spread
over decades: 0.001-0.1).

Pure functions and frozen values; the TurnTaker (turns.py) asks `silence_ms(probability)`.
The thresholds come from `python -m loadtests.eot_calibration` and the spoken pause corpus
(`python -m loadtests.bench_latency --corpus pauses`, BENCHMARKS.md): on text 0.2-0.3 separates
complete lines from cut ones; spoken, the recogniser's errors make some cut lines look complete
(0.2-0.4: "the technician was supposed to command"), so medium asks for 0.4 (chosen after
two runs of the pause corpus at 0.3 answered 6 of 42 pauses; see BENCHMARKS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

EAGERNESS_LEVELS = ("low", "medium", "high", "auto")


@dataclass(frozen=True, slots=True)
class SemanticPolicy:
    """The silences of one eagerness, all measured from the end of the caller's voice.

    complete_probability: at or above it, the words end a turn (`complete_silence_ms`).
    uncertain_silence_ms: the wait just below it, growing to `max_silence_ms` at
        `floor_probability` and below.
    unscored_silence_ms: the wait while no score is known (not yet, or the model cannot
        score: then `semantic_vad` is plain server VAD with this silence; medium's is the
        server-VAD default, 250 ms).
    """

    eagerness: str
    complete_probability: float
    complete_silence_ms: int
    uncertain_silence_ms: int
    max_silence_ms: int
    unscored_silence_ms: int
    floor_probability: float = 0.002

    def silence_ms(self, probability: float | None) -> int:
        """The silence after which the turn ends, for words scored `probability` (None:
        unscored)."""
        if probability is None:
            return self.unscored_silence_ms
        if probability >= self.complete_probability:
            return self.complete_silence_ms
        if probability <= self.floor_probability:
            return self.max_silence_ms
        span = math.log(self.complete_probability) - math.log(self.floor_probability)
        below = (math.log(self.complete_probability) - math.log(probability)) / span
        return round(self.uncertain_silence_ms + below * (self.max_silence_ms - self.uncertain_silence_ms))

    def is_complete(self, probability: float | None) -> bool:
        return probability is not None and probability >= self.complete_probability


POLICIES: dict[str, SemanticPolicy] = {
    "low": SemanticPolicy("low", 0.5, 400, 1500, 8000, 500),
    "medium": SemanticPolicy("medium", 0.4, 200, 900, 3000, 250),
    "high": SemanticPolicy("high", 0.15, 120, 400, 1500, 200),
}


def semantic_policy(eagerness: str) -> SemanticPolicy:
    """The policy of an eagerness level ("auto" is "medium", as OpenAI documents, under its
    own name)."""
    try:
        if eagerness == "auto":
            return replace(POLICIES["medium"], eagerness="auto")
        return POLICIES[eagerness]
    except KeyError:
        raise ValueError(
            f"unknown eagerness {eagerness!r}; use one of {', '.join(EAGERNESS_LEVELS)}"
        ) from None
