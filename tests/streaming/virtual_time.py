"""A virtual clock for whole conversations in tests: the loop's time jumps to its next timer.

`run_virtual(main)` runs a coroutine on an event loop whose `time()` starts at 0 and moves only
when nothing is ready to run: then it jumps to the earliest scheduled timer. A conversation of
many seconds (audio streamed at real time, pacing, silence deadlines) runs in milliseconds,
and its timing is exact and the same on every machine, so tests need no tolerance for a busy
box. (LiveKit's tests/virtual_time.py is the model.)

Only code that waits on the loop's own timers is virtual: a thread (`asyncio.to_thread`) or a
socket takes real time and the clock does not wait for it, so conversations here use the fake
models and the energy VAD, which never leave the loop. Pass `loop.time` as the conversation's
`clock`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        # nothing to run now: the next timer is due at once (select then polls, not waits)
        ready: Any = getattr(self, "_ready")  # noqa: B009 - the loop's run queue, by its private name
        scheduled: Any = getattr(self, "_scheduled")  # noqa: B009 - its timer heap
        if not ready and scheduled:
            self._virtual_now = max(self._virtual_now, scheduled[0].when())
        super()._run_once()  # type: ignore[misc]


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main()` to completion on a fresh virtual-clock loop."""
    loop = VirtualClockLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
