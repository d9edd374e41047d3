"""A fake language-model engine for the worker process (server/model/llm_worker.py): no model,
words at a steady pace, and switches that make the worker process die the ways a native
library can. Loaded by `LlmProcess.start("tests.model.fake_llm_engine:load", ...)`."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from server.model.backends.gemma_llm import TurnStats
from server.model.base import Message, SessionOptions


class FakeEngine:
    """Replies "you said: <the caller's last words>", one word every `word_s` seconds."""

    def __init__(self, word_s: float) -> None:
        self.word_s = word_s

    def generate(
        self,
        history: Sequence[Message],
        options: SessionOptions,
        emit: Callable[[str], None],
        should_stop: Callable[[], bool],
        wait_ms: float = 0.0,
    ) -> TurnStats:
        last = next((m.text for m in reversed(history) if m.role == "user"), "")
        words = ["you", "said:", *last.split()]
        limit = options.max_output_tokens or len(words)
        sent = 0
        stopped = False
        started = time.perf_counter()
        for word in words[:limit]:
            time.sleep(self.word_s)
            if should_stop():
                stopped = True
                break
            emit(word if sent == 0 else f" {word}")
            sent += 1
        decode_ms = (time.perf_counter() - started) * 1000
        return TurnStats(
            len(history), len(history), False, wait_ms, self.word_s * 1000, sent, decode_ms, stopped
        )

    def end_of_turn_probability(
        self, history: Sequence[Message], words: str, options: SessionOptions
    ) -> float:
        """Complete when the words end with "please" or "thanks" (a fake rule, no model)."""
        return 0.9 if words.split()[-1:] in (["please"], ["thanks"]) else 0.01


def load(options: Mapping[str, object]) -> FakeEngine:
    """Options: word_s (pace), crash_marker (a path: if that file exists, the worker
    segfaults while loading, as a runtime built for another CPU does)."""
    marker = options.get("crash_marker")
    if marker and Path(str(marker)).exists():
        os.kill(os.getpid(), signal.SIGSEGV)
    return FakeEngine(float(options.get("word_s", 0.05)))  # type: ignore[arg-type]
