"""Task helpers: bounded cancellation that never swallows the caller's own cancellation."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[object] | None, timeout_s: float = 1.0) -> None:
    """Cancel `task` and wait up to `timeout_s` for it to finish; log it if it does not.

    Exceptions of the cancelled task are consumed here (its owner already reported them);
    a cancellation of the *caller* propagates.
    """
    if task is None or task.done():
        if task is not None and not task.cancelled():
            task.exception()  # mark retrieved
        return
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.error("task did not stop after cancel", extra={"task": task.get_name()})
        return
    if not task.cancelled():
        task.exception()


async def wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait until `event` is set or `timeout_s` has passed: True if it is set, False on timeout.

    `timeout_s=None` waits forever. This is `asyncio.wait_for(event.wait(), timeout_s)` without
    the Task that wait_for creates per call on Python 3.11 (the writer and timer loops wait
    every 20 ms): a `call_later` timer cancels the waiting task itself, and the task's cancel
    count tells that cancellation apart from any other, so the caller's own cancellation always
    propagates. The timer is cancelled on every way out, so none fires later.
    """
    if event.is_set():
        return True
    if timeout_s is None:
        return await event.wait()
    task = asyncio.current_task()
    if task is None:
        raise RuntimeError("wait_event() must run in a task")
    cancelling = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    try:
        return await event.wait()
    except asyncio.CancelledError:
        # uncancel() withdraws the timer's own request; any other request still counts
        if expired and task.uncancel() <= cancelling:
            return event.is_set()  # True if it was set in the iteration the timer fired
        raise
    finally:
        timer.cancel()
