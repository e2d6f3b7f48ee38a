"""A bounded await never loses a cancellation (what hung the shared-store tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from quantshift.aio import within


async def cancelled_as_it_completes(bounded: Callable[[Awaitable[Any], float], Any]) -> bool:
    """Cancel a task in the loop turn in which what it awaits completes: True when the
    task ends cancelled, False when it goes on as if no cancel had been asked."""
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def waiter() -> None:
        await bounded(fut, 5.0)
        await asyncio.sleep(30)  # reached only when the cancellation was lost

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    fut.set_result(1)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    return task.cancelled()


async def test_a_cancel_that_meets_the_completion_still_cancels() -> None:
    assert await cancelled_as_it_completes(within)


async def test_the_race_is_real_for_the_standard_wait_for_it_replaces() -> None:
    # The reason for ``within``; when the interpreter no longer loses the cancel
    # (Python 3.12 rebuilt wait_for on asyncio.timeout) this says so.
    import sys

    lost = not await cancelled_as_it_completes(asyncio.wait_for)
    assert lost is (sys.version_info < (3, 12))


async def test_within_bounds_and_returns() -> None:
    assert await within(asyncio.sleep(0, "x"), 1.0) == "x"
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(5), 0.01)
    assert await within(asyncio.sleep(0, 7), None) == 7
