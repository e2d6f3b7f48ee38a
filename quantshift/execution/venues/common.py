"""What every venue adapter shares: merging a push stream with polling of open orders."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from quantshift.execution.venues.base import VenueError, VenueOrder


async def stream_and_poll(
    queue: asyncio.Queue[VenueOrder], tracked: Callable[[], list[tuple[str, str]]],
    lookup: Callable[[str, str], Awaitable[VenueOrder]], poll_every: float,
) -> AsyncIterator[VenueOrder]:
    """Yield pushed updates as they come; every ``poll_every`` seconds without one, look the
    tracked orders up, so an update the stream dropped is never lost for good."""
    while True:
        try:
            yield await asyncio.wait_for(queue.get(), poll_every)
            continue
        except TimeoutError:
            pass
        for coid, symbol in tracked():
            with contextlib.suppress(VenueError, TimeoutError):
                yield await asyncio.wait_for(lookup(coid, symbol), poll_every * 4)
