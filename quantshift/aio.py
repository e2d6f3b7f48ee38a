"""Awaiting with a bound.

Python 3.11's ``asyncio.wait_for`` runs the awaitable in a task of its own and, when a
cancellation meets that task's completion in one loop turn, returns the result and drops
the cancellation: the caller's task goes on as if never cancelled, and whoever awaits it
after ``cancel()`` waits for ever. ``within`` awaits in the caller's own task under
``asyncio.timeout``, so a cancellation always arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], seconds: float | None) -> T:
    """``await aw``, cut after ``seconds`` (``TimeoutError``; ``None``: no bound)."""
    async with asyncio.timeout(seconds):
        return await aw


def waiting_at(task: asyncio.Task[object]) -> str:
    """Where ``task`` waits now: the innermost coroutine's file and line."""
    where, coro = "?", task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            where = f"{frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return where
