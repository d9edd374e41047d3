"""Deadlines on model calls: a hung backend fails the call instead of the conversation.

Every stream the cascade reads from a backend (transcripts after the end of input, language
model text, synthesized audio) is wrapped in `DeadlineIterator`, which bounds the wait for
each item: the first within `first_item_s`, every later one within `gap_s` of asking for it.
Only the time spent waiting on the backend counts, never the time the consumer takes between
items. On expiry the wait is cancelled (the backend sees `CancelledError` where it was
waiting, so an async generator backend is finished) and `ModelTimeout` (a `BackendError`
naming the stage) is raised to the consumer, which fails the response. A `CancelledError`
that comes out of a backend while nobody cancelled the consumer becomes a `BackendError`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

from server.errors import BackendError, ModelTimeout

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ModelDeadlines:
    """How long the cascade waits on each backend before it gives up (seconds).

    asr_final_timeout_s: after the end of the user's turn, for each transcript event up to
        the final one.
    llm_first_token_timeout_s: from the request to the language model's first text.
    llm_token_gap_timeout_s: between two pieces of the language model's text.
    tts_phrase_timeout_s: from a phrase's request to its first audio, and between frames.
    """

    # above a pooled recogniser's legitimate worst case: waiting for a busy pool (pocketsphinx:
    # up to 5 s) plus starting a decoder process (measured 5.0-5.7 s on a loaded 2-core box)
    asr_final_timeout_s: float = 15.0
    llm_first_token_timeout_s: float = 10.0
    llm_token_gap_timeout_s: float = 5.0
    tts_phrase_timeout_s: float = 10.0


class DeadlineIterator(AsyncIterator[_T]):
    """The items of `items`, each waited for at most `first_item_s` (the first) or `gap_s`
    (the later ones); `ModelTimeout(stage, ...)` when one is late.

    A plain iterator, not a generator: leaving the loop early leaves nothing to finalize, just
    as iterating `items` directly would; `aclose()` closes `items` if it can be closed.
    """

    def __init__(self, items: AsyncIterator[_T], *, stage: str, first_item_s: float, gap_s: float) -> None:
        self._items = items
        self._stage = stage
        self._limit_s = first_item_s
        self._gap_s = gap_s

    def __aiter__(self) -> DeadlineIterator[_T]:
        return self

    async def __anext__(self) -> _T:
        deadline = asyncio.timeout(self._limit_s)
        try:
            async with deadline:
                item = await anext(self._items)
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the backend's own TimeoutError, not ours
            raise ModelTimeout(self._stage, self._limit_s) from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # we are being cancelled
            # a cancellation of the backend's own escaped it: to us a failure, not a cancel
            # (left as a cancel, it would end the reply task silently, the response never done)
            raise BackendError(f"the {self._stage} was cancelled from inside") from exc
        self._limit_s = self._gap_s
        return item

    async def aclose(self) -> None:
        aclose = getattr(self._items, "aclose", None)
        if aclose is not None:
            await aclose()
