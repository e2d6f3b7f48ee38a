"""Order updates: the safety-net poll is never put off by the updates that do arrive, and
Alpaca's trade-updates stream being down (or back) changes how often the orders are polled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from quantshift.domain import OrderState, Side
from quantshift.emulators.alpaca import AlpacaEmulator
from quantshift.execution.venues.alpaca import AlpacaVenue
from quantshift.execution.venues.base import VenueOrder
from quantshift.execution.venues.common import stream_and_poll
from tests.test_venue_shutdown import until


def _vo(coid: str, filled: float) -> VenueOrder:
    return VenueOrder(coid, "v-" + coid, "AAA", Side.BUY, 2.0, filled, 100.0,
                      OrderState.PARTIALLY_FILLED if filled < 2 else OrderState.FILLED)


async def test_updates_that_keep_coming_do_not_put_the_poll_off() -> None:
    queue: asyncio.Queue[VenueOrder] = asyncio.Queue()
    looked_up: list[str] = []

    async def lookup(coid: str, symbol: str) -> VenueOrder:
        looked_up.append(coid)
        return _vo(coid, 2.0)  # the fill the stream never delivered

    async def chatter() -> None:
        n = 0
        while True:  # another order's updates, every 50 ms
            n += 1
            queue.put_nowait(_vo("busy", min(n / 1000, 1.9)))
            await asyncio.sleep(0.05)

    talk = asyncio.create_task(chatter())
    seen: list[VenueOrder] = []

    async def consume() -> None:
        async for vo in stream_and_poll(queue, lambda: [("quiet", "AAA")], lookup, 0.3):
            seen.append(vo)

    reader = asyncio.create_task(consume())
    try:
        await until(lambda: any(v.client_order_id == "quiet" for v in seen),
                    "the quiet order's fill, by the poll", timeout=3.0)
    finally:
        for task in (talk, reader):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert looked_up and looked_up[0] == "quiet"


@pytest.fixture
async def alpaca() -> AsyncIterator[tuple[AlpacaEmulator, AlpacaVenue]]:
    emu = AlpacaEmulator(["AAA"], interval=60.0, warmup=5)
    await emu.start("127.0.0.1")
    venue = AlpacaVenue("emulator-key", "emulator-secret", paper=True, base_url=emu.base_url,
                        timeout=3.0)
    await venue.connect()
    yield emu, venue
    await venue.close()
    await emu.stop()


async def test_alpaca_polls_every_second_while_its_stream_is_down_and_at_once_when_back(
        alpaca: tuple[AlpacaEmulator, AlpacaVenue]) -> None:
    emu, venue = alpaca
    await until(lambda: venue._poll_interval() == 5.0, "the stream up: the safety net")
    venue._poll_now.clear()  # (the first connection asks for a poll too)
    await emu.close_streams()  # the trade-updates socket drops
    await until(lambda: venue._poll_interval() == 1.0, "the stream down: every second")
    await until(lambda: venue._poll_interval() == 5.0, "the stream back", timeout=15.0)
    assert venue._poll_now.is_set()  # what it missed meanwhile: looked up at once
