"""Where the embedded language model's time goes, per turn of a scripted call.

Loads Gemma 3 270M as the server does and plays a five-turn customer call through it,
printing for each turn: the prompt's tokens and how many were evaluated (the rest came from
the KV cache), the time to the first token, and the decode time per generated token.

    python -m loadtests.measure_llm --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence

from server.model.backends.gemma_llm import GemmaLlm, load
from server.model.base import Message, SessionOptions

CALLER_TURNS = (
    "where is my order",
    "it is four eight two one three",
    "how long does the refund take",
    "can i pay by card",
    "thanks bye",
)


async def one_call(llm: GemmaLlm) -> list[dict[str, float]]:
    history: list[Message] = []
    rows = []
    for words in CALLER_TURNS:
        history.append(Message("user", words))
        started = time.perf_counter()
        first_text_ms: float | None = None
        reply = ""
        async for piece in llm.complete(history, SessionOptions()):
            if first_text_ms is None:
                first_text_ms = (time.perf_counter() - started) * 1000
            if isinstance(piece, str):
                reply += piece
        stats = llm.last_stats
        assert stats is not None
        rows.append(
            {
                "prompt_tokens": stats.prompt_tokens,
                "evaluated_tokens": stats.evaluated_tokens,
                "first_token_ms": stats.first_token_ms,
                "first_text_ms": first_text_ms or 0.0,
                "generated_tokens": stats.generated_tokens,
                "ms_per_token": stats.decode_ms / max(1, stats.generated_tokens),
            }
        )
        print(
            f"  {words!r:36} prompt {stats.prompt_tokens} tokens, evaluated {stats.evaluated_tokens};"
            f" first token {stats.first_token_ms:.0f} ms; {stats.generated_tokens} tokens at"
            f" {rows[-1]['ms_per_token']:.1f} ms each -> {reply!r}"
        )
        history.append(Message("assistant", reply))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.measure_llm", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--runs", type=int, default=3, help="calls to play (default 3)")
    args = parser.parse_args(argv)
    llm = load({})
    try:
        rows = []
        for run in range(args.runs):
            print(f"call {run + 1}:")
            rows += asyncio.run(one_call(llm))
    finally:
        llm.close()
    for key in ("evaluated_tokens", "first_token_ms", "ms_per_token"):
        values = [row[key] for row in rows]
        print(f"{key}: median {statistics.median(values):.1f}, min {min(values):.1f}, max {max(values):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
