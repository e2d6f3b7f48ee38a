"""Jittered exponential backoff for reconnects and retries.

Delay n (counting from 0) is drawn uniformly from ``[floor, min(cap, base * factor**n)]``
("full jitter", with a small floor so that a retry never spins). A healthy period of
``reset_after`` seconds since the last ``succeeded()`` (with no failure in between)
starts the sequence again at ``base``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from quantshift.aio import within

T = TypeVar("T")


class Stopped(Exception):
    """The feed was asked to stop while it waited for something."""


async def until_stopped(aw: Awaitable[T], stopping: asyncio.Event,
                        timeout: float | None = None) -> T:
    """``aw``'s result, unless ``stopping`` is set first (``Stopped``; ``aw`` is cancelled)
    or ``timeout`` passes (``TimeoutError``)."""
    task = asyncio.ensure_future(aw)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait({task}, timeout=1.0)  # let it unwind (a cancelled task never raises)
    if task.done() and not task.cancelled():
        # A gather cancelled mid-way ends with CancelledError set as its exception (3.11):
        # retrieved here, or asyncio logs "exception was never retrieved" when it is freed.
        task.exception()
    if stopping.is_set():
        raise Stopped
    raise TimeoutError(f"no answer within {timeout} s")


class Backoff:
    def __init__(self, base: float = 0.5, factor: float = 2.0, cap: float = 60.0,
                 reset_after: float = 30.0, floor: float | None = None,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if base <= 0 or factor < 1 or cap <= 0:
            raise ValueError("backoff needs base > 0, factor >= 1 and cap > 0")
        self.base = base
        self.factor = factor
        self.cap = cap
        self.reset_after = reset_after
        # Full jitter may draw ~0: the floor keeps every retry at least this far apart.
        self.floor = min(base / 5 if floor is None else floor, cap)
        self.attempts = 0  # failures since the last reset
        self._rng = rng or random.Random()
        self._clock = clock
        self._healthy_since: float | None = None

    def ceiling(self, attempt: int) -> float:
        """The upper bound of the delay after ``attempt`` earlier failures."""
        # Stop multiplying once past the cap (a huge exponent would overflow).
        bound = self.base
        for _ in range(attempt):
            bound *= self.factor
            if bound >= self.cap:
                return self.cap
        return min(bound, self.cap)

    def next_delay(self) -> float:
        """Record a failure and return how long to wait before the next attempt."""
        if (self._healthy_since is not None
                and self._clock() - self._healthy_since >= self.reset_after):
            self.attempts = 0
        self._healthy_since = None
        delay = self._rng.uniform(self.floor, max(self.floor, self.ceiling(self.attempts)))
        self.attempts += 1
        return delay

    def succeeded(self) -> None:
        """Record a success; after ``reset_after`` healthy seconds the next failure starts
        over at ``base``."""
        if self._healthy_since is None:
            self._healthy_since = self._clock()

    def reset(self) -> None:
        self.attempts = 0
        self._healthy_since = None

    async def wait(self, stopping: asyncio.Event) -> float:
        """Sleep for the next delay or until ``stopping`` is set; return the delay drawn."""
        delay = self.next_delay()
        with contextlib.suppress(TimeoutError):
            await within(stopping.wait(), delay)
        return delay
