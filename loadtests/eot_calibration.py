"""How well the language model tells a finished caller line from an unfinished one.

The end-of-turn signal (issue 14, groundwork): `GemmaEngine.end_of_turn_probability(history,
words)` is the model's probability that the `Customer:` line of its transcript prompt ends right
after the words heard so far. This tool scores customer-service utterances twice each: complete,
and cut at a point where a caller pauses mid-sentence (before a number, inside an address,
after "because", ...), both as a recogniser writes them (lowercase, no punctuation). It prints
each score, the detection rates at a range of thresholds, and the time per request through the
worker process, as the server would ask.

    python -m loadtests.eot_calibration

Two sets: PAIRS below, on which the thresholds were chosen, and the held-out sentences of the
spoken "pauses" corpus (`loadtests.corpus.PAUSED_SENTENCE_PARTS`: the whole sentence, and the
words before its pause). For each eagerness of `semantic_vad` (server/streaming/end_of_turn.py)
it prints, on each set, the share of complete lines that end the turn on the short silence,
the share of cut lines that would (a premature answer if the caller pauses longer than that
silence), and the silence each would wait. The spoken test of the same policy, through the
recogniser and the VAD, is `python -m loadtests.bench_latency --corpus pauses`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence

from loadtests.corpus import PAUSED_SENTENCE_PARTS
from server.model.backends.gemma_llm import load
from server.model.base import Message, SessionOptions
from server.streaming.end_of_turn import POLICIES

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


def held_out_pairs() -> list[tuple[str, str]]:
    """(complete, cut) lines of the spoken pause corpus, as a recogniser writes them."""
    return [
        (" ".join(f"{first} {rest}".replace("'", "").split()), first.replace("'", ""))
        for first, rest in PAUSED_SENTENCE_PARTS
    ]


def policy_table(name: str, complete_p: Sequence[float], cut_p: Sequence[float]) -> list[str]:
    """Per eagerness: complete lines ending on the short silence, cut lines that would too,
    and the median silence waited after each kind."""
    rows = [
        f"{name}: eagerness  threshold  complete on short silence  cut on short silence  median wait complete / cut"
    ]
    for eagerness, policy in POLICIES.items():
        hit = sum(policy.is_complete(p) for p in complete_p) / len(complete_p)
        premature = sum(policy.is_complete(p) for p in cut_p) / len(cut_p)
        wait_complete = statistics.median(policy.silence_ms(p) for p in complete_p)
        wait_cut = statistics.median(policy.silence_ms(p) for p in cut_p)
        rows.append(
            f"  {eagerness:8s}  {policy.complete_probability:5.2f}      {hit:6.0%}                    "
            f"{premature:6.0%}              {wait_complete:5.0f} / {wait_cut:5.0f} ms"
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.eot_calibration", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--no-history", action="store_true", help="score each line as the call's first")
    args = parser.parse_args(argv)
    complete = sorted({c for c, _ in PAIRS})
    cut = [c for _, c in PAIRS]
    held_out = held_out_pairs()
    held_complete = [c for c, _ in held_out]
    held_cut = [c for _, c in held_out]
    lines = [*complete, *cut, *held_complete, *held_cut]
    scored = asyncio.run(score(lines, with_history=not args.no_history))
    probabilities = [p for p, _ in scored]
    complete_p = probabilities[: len(complete)]
    cut_p = probabilities[len(complete) : len(complete) + len(cut)]
    held_complete_p = probabilities[len(complete) + len(cut) : len(complete) + len(cut) + len(held_out)]
    held_cut_p = probabilities[len(complete) + len(cut) + len(held_out) :]
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
    print("held-out sentences (the spoken pause corpus): complete | cut")
    for (line, _), p, q in zip(held_out, held_complete_p, held_cut_p, strict=True):
        print(f"  {p:6.3f} | {q:6.3f}  {line}")
    print("\n".join(policy_table("calibration set", complete_p, cut_p)))
    print("\n".join(policy_table("held-out set", held_complete_p, held_cut_p)))
    times = [ms for _, ms in scored]
    print(
        f"time per request through the worker: median {statistics.median(times):.0f} ms,"
        f" max {max(times):.0f} ms ({len(times)} requests)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
