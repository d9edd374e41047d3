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
