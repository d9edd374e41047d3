"""Shared pieces of the property-based fuzz tests (tests/test_fuzz_*.py).

Hypothesis drives plain synchronous test functions; the server under test runs on the test's
event loop. `LoopBridge.run(coro)` runs one example's coroutine on that loop from the
Hypothesis thread, bounded in time, so a hung server fails the example instead of the suite.

Order of use in a test: start the server (`running_server`), take `baseline = await
Baseline.take(url)`, then `await asyncio.to_thread(fuzz, LoopBridge(...))` where `fuzz` is a
`@given` function; after each example call `await baseline.settle()` (it asserts no session and
no asyncio task outlived the example).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from hypothesis import strategies as st

T = TypeVar("T")

EXAMPLE_TIMEOUT_S = 60.0  # a whole example, as a backstop: every wait inside is bounded already
SETTLE_TIMEOUT_S = 5.0  # after an example, for its tasks and session to end

# any JSON value, non-finite floats and lone surrogates included (json.dumps escapes them)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
NOT_A_STRING = JSON_VALUES.filter(lambda v: not isinstance(v, str))
NOT_AN_OBJECT = JSON_VALUES.filter(lambda v: not isinstance(v, dict))
# (not larger: Hypothesis warns, an error here, when it prints a failing example over ~1 MB)
HUGE_TEXT = st.sampled_from([10_000, 200_000]).map(lambda n: "é" * n)
ODD_TEXT = (
    st.text(max_size=40)
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=4)
    | HUGE_TEXT
)


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


RAW_TEXT = ODD_TEXT.filter(_is_utf8)  # a text frame must be UTF-8 (lone surrogates go in JSON)
BAD_BASE64 = st.one_of(
    st.text(alphabet="ABCDabcd0123+/=@!*- \n", min_size=1, max_size=40).map(lambda s: s + "@"),
    st.sampled_from(["A", "AB=", "AAA", "====", "QUJD\x00", "QUJ\ud800"]),
)


def pick(*strategies: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """One of `strategies`, each as likely as the others. (`st.one_of` flattens nested one_ofs
    and weighs every leaf alike, so a group of many alternatives would crowd out a small one.)"""
    return st.sampled_from(strategies).flatmap(lambda chosen: chosen)


def shaped(keys: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects whose keys are mostly the known ones (values: `keys[k]` if a strategy, else any
    JSON), sometimes unknown ones: random but close enough to reach deep validation code."""
    known = [
        (name, value if isinstance(value, st.SearchStrategy) else JSON_VALUES) for name, value in keys.items()
    ]
    pairs = st.lists(
        st.one_of(
            *[st.tuples(st.just(name), value) for name, value in known],
            st.tuples(st.text(max_size=8), JSON_VALUES),
        ),
        max_size=len(known) + 1,
    )
    return pairs.map(dict)


class LoopBridge:
    """Runs coroutines on the test's event loop from the Hypothesis (worker) thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = EXAMPLE_TIMEOUT_S) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"the example hung: nothing finished within {timeout_s:g} s") from None


@dataclass
class Baseline:
    """The server's task count before any example; `settle()` checks every example against it."""

    url: str
    tasks: int
    examples: int = 0

    @classmethod
    async def take(cls, url: str) -> Baseline:
        return cls(url, len(asyncio.all_tasks()))

    async def settle(self) -> None:
        """Until the example's sessions and tasks are gone; fails if they outlive the bound."""
        self.examples += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT_S
        sessions = -1
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            while True:
                sessions = (await http.get(self.url + "/healthz")).json()["sessions"]
                # this coroutine runs as a task of its own, not counted in the baseline
                tasks = len(asyncio.all_tasks()) - 1
                if sessions == 0 and tasks <= self.tasks:
                    return
                if loop.time() > deadline:
                    break
                await asyncio.sleep(0.02)
        names = sorted(t.get_name() for t in asyncio.all_tasks())
        raise AssertionError(
            f"leak after an example: {sessions} sessions, tasks {names} (baseline {self.tasks})"
        )
