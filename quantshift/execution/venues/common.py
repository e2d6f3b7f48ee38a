"""What every venue adapter shares: merging a push stream with polling of open orders."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from quantshift.aio import within
from quantshift.domain import OrderState
from quantshift.execution.venues.base import VenueError, VenueOrder

_REMEMBER = 10_000  # orders whose last update is kept to drop repeats


class _Seen:
    """The last (filled qty, state) yielded per client order id: the stream and the poll
    often report the same thing, and each transition is passed on once."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, tuple[float, OrderState]] = OrderedDict()

    def fresh(self, vo: VenueOrder) -> bool:
        key = (vo.filled_qty, vo.state)
        if self._last.get(vo.client_order_id) == key:
            return False
        self._last[vo.client_order_id] = key
        self._last.move_to_end(vo.client_order_id)
        if len(self._last) > _REMEMBER:
            self._last.popitem(last=False)
        return True


async def stream_and_poll(
    queue: asyncio.Queue[VenueOrder], tracked: Callable[[], list[tuple[str, str]]],
    lookup: Callable[[str, str], Awaitable[VenueOrder]],
    poll_every: float | Callable[[], float], *, poll_now: asyncio.Event | None = None,
) -> AsyncIterator[VenueOrder]:
    """Yield pushed updates as they come; every ``poll_every`` seconds (a number, or a
    function asked each time; updates that keep coming do not put it off, since an update
    the stream dropped is not told by the ones it delivered), and at once whenever
    ``poll_now`` is set (the
    stream reconnected: what it missed meanwhile is not coming), look the tracked orders
    up, so an update the stream dropped is never lost for good. An update that repeats the
    last one yielded for its order (same filled quantity and state) is left out."""
    seen = _Seen()
    getter: asyncio.Future[VenueOrder] | None = None
    waker: asyncio.Future[bool] | None = None
    last_poll = time.monotonic()
    try:
        while True:
            interval = poll_every() if callable(poll_every) else poll_every
            wait = max(0.0, last_poll + interval - time.monotonic())
            if getter is None:
                getter = asyncio.ensure_future(queue.get())
            if poll_now is not None and waker is None:
                waker = asyncio.ensure_future(poll_now.wait())
            waits = {getter} if waker is None else {getter, waker}
            done, _ = await asyncio.wait(waits, timeout=wait,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                vo, getter = getter.result(), None
                if seen.fresh(vo):
                    yield vo
                if waker not in done and time.monotonic() < last_poll + interval:
                    continue
            if waker is not None and waker in done:
                waker = None
                assert poll_now is not None
                poll_now.clear()
            last_poll = time.monotonic()
            for coid, symbol in tracked():
                try:
                    vo = await within(lookup(coid, symbol), interval * 4)
                except (VenueError, TimeoutError):
                    continue
                if seen.fresh(vo):
                    yield vo
    finally:
        for fut in (getter, waker):
            if fut is not None:
                fut.cancel()
