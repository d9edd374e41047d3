"""Where the embedded language model's time goes, per turn of a scripted call.

Loads Gemma 3 270M and plays a five-turn customer call through it, printing for each turn:
the prompt's tokens and how many were evaluated (the rest came from the KV cache), the time
to the first token, and the decode time per generated token.

`--where` picks the thread that generates, same build, same model, same threads:
- process (default): the server's way, the worker process (server/model/llm_worker.py),
  generating on its main thread, driven from an asyncio loop here;
- main: the engine in this process, on its main thread;
- thread: the engine in this process, from a worker thread (how the server generated before
  the worker process).

    python -m loadtests.measure_llm --runs 3 --where process
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from server.model.backends.gemma_llm import GemmaEngine, TurnStats, load, load_engine
from server.model.base import Message, SessionOptions

CALLER_TURNS = (
    "where is my order",
    "it is four eight two one three",
    "how long does the refund take",
    "can i pay by card",
    "thanks bye",
)
Generate = Callable[[list[Message]], tuple[str, TurnStats, float]]


def engine_turns(engine: GemmaEngine, on_thread: bool) -> tuple[Generate, Callable[[], None]]:
    executor = ThreadPoolExecutor(max_workers=1) if on_thread else None

    def run(history: list[Message]) -> tuple[str, TurnStats, float]:
        pieces: list[str] = []
        first: list[float] = []
        started = time.perf_counter()

        def emit(text: str) -> None:
            if not first:
                first.append((time.perf_counter() - started) * 1000)
            pieces.append(text)

        def generate() -> TurnStats:
            return engine.generate(history, SessionOptions(), emit, lambda: False)

        stats = executor.submit(generate).result() if executor is not None else generate()
        return "".join(pieces), stats, first[0] if first else 0.0

    def close() -> None:
        if executor is not None:
            executor.shutdown()
        engine.close()

    return run, close


def process_turns() -> tuple[Generate, Callable[[], None]]:
    llm = load({})
    loop = asyncio.new_event_loop()

    async def turn(history: list[Message]) -> tuple[str, TurnStats, float]:
        started = time.perf_counter()
        first_ms = 0.0
        reply = ""
        async for piece in llm.complete(history, SessionOptions()):
            if not reply:
                first_ms = (time.perf_counter() - started) * 1000
            reply += piece
        return reply, llm.last_stats, first_ms

    def close() -> None:
        loop.close()
        llm.close()

    return (lambda history: loop.run_until_complete(turn(history))), close


def one_call(generate: Generate) -> list[dict[str, float]]:
    history: list[Message] = []
    rows = []
    for words in CALLER_TURNS:
        history.append(Message("user", words))
        reply, stats, first_text_ms = generate(history)
        rows.append(
            {
                "prompt_tokens": stats.prompt_tokens,
                "evaluated_tokens": stats.evaluated_tokens,
                "first_token_ms": stats.first_token_ms,
                "first_text_ms": first_text_ms,
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
    parser.add_argument(
        "--where", choices=("process", "main", "thread"), default="process", help="who generates (see above)"
    )
    args = parser.parse_args(argv)
    pair: tuple[Generate, Callable[[], None]]
    if args.where == "process":
        pair = process_turns()
    else:
        pair = engine_turns(load_engine({}), on_thread=args.where == "thread")
    generate, close = pair
    rows: list[dict[str, Any]] = []
    try:
        for run in range(args.runs):
            print(f"call {run + 1} ({args.where}):")
            rows += one_call(generate)
    finally:
        close()
    for key in ("evaluated_tokens", "first_token_ms", "ms_per_token"):
        values = [row[key] for row in rows]
        print(f"{key}: median {statistics.median(values):.1f}, min {min(values):.1f}, max {max(values):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
