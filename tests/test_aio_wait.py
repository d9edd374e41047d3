"""wait_event(): wait_for(event.wait(), timeout) without a Task per call, on a real loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.aio import wait_event


async def test_an_event_set_before_returns_true_at_once() -> None:
    event = asyncio.Event()
    event.set()
    assert await wait_event(event, 10.0) is True
    assert await wait_event(event, None) is True


async def test_an_event_set_while_waiting_returns_true_before_the_timeout() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    started = time.monotonic()
    assert await wait_event(event, 10.0) is True
    assert time.monotonic() - started < 5.0


async def test_a_timeout_returns_false_after_about_the_timeout() -> None:
    event = asyncio.Event()
    started = time.monotonic()
    assert await wait_event(event, 0.05) is False
    assert 0.03 <= time.monotonic() - started < 5.0
    assert not event.is_set()


async def test_no_timeout_waits_until_the_event_is_set() -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, None))
    await asyncio.sleep(0.1)
    assert not waiter.done()
    event.set()
    assert await waiter is True


async def test_waiting_creates_no_task() -> None:
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, 10.0))
    await asyncio.sleep(0.01)
    assert asyncio.all_tasks() == {asyncio.current_task(), waiter}
    event.set()
    assert await waiter is True


async def test_cancelling_the_waiter_propagates() -> None:
    waiter = asyncio.create_task(wait_event(asyncio.Event(), 10.0))
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert waiter.cancelled()


async def test_a_cancelled_wait_leaves_no_timer_to_fire_later() -> None:
    """A stray timer would cancel the task again later: here, the sleep after the wait."""
    event = asyncio.Event()

    async def wait_then_sleep() -> str:
        try:
            await wait_event(event, 0.05)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()  # this task chooses to carry on
        await asyncio.sleep(0.3)
        return "slept through"

    waiter = asyncio.create_task(wait_then_sleep())
    await asyncio.sleep(0.01)
    waiter.cancel()
    assert await waiter == "slept through"


async def test_a_cancel_in_the_same_loop_iteration_as_the_timeout_still_propagates() -> None:
    loop = asyncio.get_running_loop()
    waiter = asyncio.create_task(wait_event(asyncio.Event(), 0))
    await asyncio.sleep(0)  # the waiter has armed its timer, due in this coming iteration
    loop.call_later(0, waiter.cancel)  # due in the same iteration, before the waiter resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_cancel_as_the_event_is_set_still_propagates() -> None:
    """asyncio.wait_for on 3.11 returns the result here and loses the cancellation."""
    for timeout_s in (10.0, None):
        event = asyncio.Event()
        waiter = asyncio.create_task(wait_event(event, timeout_s))
        await asyncio.sleep(0.01)
        event.set()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter


async def test_an_event_set_in_the_same_loop_iteration_as_the_timeout_counts_as_set() -> None:
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    waiter = asyncio.create_task(wait_event(event, 0))
    await asyncio.sleep(0)
    loop.call_later(0, event.set)
    assert await waiter is True


async def test_a_task_already_being_cancelled_still_times_out_normally() -> None:
    """Cleanup after a caught cancellation may wait with a timeout; the timeout is its own."""

    async def cleanup_after_cancel() -> bool:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return await wait_event(asyncio.Event(), 0.01)
        return True

    task = asyncio.create_task(cleanup_after_cancel())
    await asyncio.sleep(0.01)
    task.cancel()
    assert await task is False
