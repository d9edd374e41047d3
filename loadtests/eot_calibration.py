"""How well the language model tells a finished caller line from an unfinished one.

The end-of-turn signal (issue 14, groundwork): `GemmaEngine.end_of_turn_probability(history,
words)` is the model's probability that the `Customer:` line of its transcript prompt ends right
after the words heard so far. This tool scores customer-service utterances twice each: complete,
and cut at a point where a caller pauses mid-sentence (before a number, inside an address,
after "because", ...), both as a recogniser writes them (lowercase, no punctuation). It prints
each score, the detection rates at a range of thresholds, and the time per request through the
worker process, as the server would ask.

    python -m loadtests.eot_calibration

Text only: the same set spoken (flite/espeak voices, pauses of 400-800 ms) through the
recogniser, and the adaptive silence built on this signal, are the rest of issue 14.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence

from server.model.backends.gemma_llm import load
from server.model.base import Message, SessionOptions

# (the complete line, the same line cut where a caller pauses)
PAIRS: tuple[tuple[str, str], ...] = (
    ("where is my order", "where is my"),
    ("my order number is four eight two one three", "my order number is"),
    ("my order number is four eight two one three", "my order number is four eight"),
    ("can i pay by card", "can i pay by"),
    ("i want to return these shoes because they dont fit", "i want to return these shoes because"),
    ("i want to return these shoes", "i want to return"),
    ("how much is shipping to canada", "how much is shipping to"),
    ("my address is twelve main street springfield", "my address is twelve main street"),
    ("my address is twelve main street springfield", "my address is"),
    ("the package arrived damaged", "the package arrived"),
    ("i ordered a blue jacket last week", "i ordered a blue"),
    ("can you change the delivery date to friday", "can you change the delivery date to"),
    ("my phone number is five five five one two three four", "my phone number is five five five"),
    ("my email is john at example dot com", "my email is john at"),
    ("i was charged twice for the same order", "i was charged twice for the"),
    ("i would like to cancel my subscription", "i would like to"),
    ("do you have this in a larger size", "do you have this in a"),
    ("the tracking number doesnt work", "the tracking number"),
    ("can i speak to a manager", "can i speak to"),
    ("i need a refund for order seven seven three", "i need a refund for order"),
    ("it says delivered but i never got it", "it says delivered but"),
    ("when will my refund arrive", "when will my"),
    ("i changed my mind about the order", "i changed my mind about"),
    ("the card ending in four four two one was declined", "the card ending in"),
    ("thanks thats all", "thanks thats"),
)
CALL_SO_FAR = [
    Message("user", "hi i have a question about an order"),
    Message("assistant", "Of course. What would you like to know?"),
]
THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


async def score(words: Sequence[str], with_history: bool) -> list[tuple[float, float]]:
    """(probability, ms) per line, through the worker process as the server would ask."""
    llm = load({})
    try:
        history = CALL_SO_FAR if with_history else []
        out = []
        for line in words:
            started = time.perf_counter()
            probability = await llm.end_of_turn_probability(history, line, SessionOptions())
            out.append((probability, (time.perf_counter() - started) * 1000))
        return out
    finally:
        llm.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.eot_calibration", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--no-history", action="store_true", help="score each line as the call's first")
    args = parser.parse_args(argv)
    complete = sorted({c for c, _ in PAIRS})
    cut = [c for _, c in PAIRS]
    scored = asyncio.run(score([*complete, *cut], with_history=not args.no_history))
    complete_p = [p for p, _ in scored[: len(complete)]]
    cut_p = [p for p, _ in scored[len(complete) :]]
    print("complete lines:")
    for line, p in zip(complete, complete_p, strict=True):
        print(f"  {p:6.3f}  {line}")
    print("cut lines (a caller pausing mid-sentence):")
    for line, p in zip(cut, cut_p, strict=True):
        print(f"  {p:6.3f}  {line}")
    print("threshold  complete detected  cut taken as complete (premature)")
    for threshold in THRESHOLDS:
        hit = sum(p >= threshold for p in complete_p) / len(complete_p)
        premature = sum(p >= threshold for p in cut_p) / len(cut_p)
        print(f"  {threshold:5.2f}    {hit:6.0%}             {premature:6.0%}")
    times = [ms for _, ms in scored]
    print(
        f"time per request through the worker: median {statistics.median(times):.0f} ms,"
        f" max {max(times):.0f} ms ({len(times)} requests)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
