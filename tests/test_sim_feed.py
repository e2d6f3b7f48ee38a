"""The sim feed: seeded, ordered, warm history, and the engine never trades on history."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

from quantshift.domain import Bar
from quantshift.feeds.sim import SimFeed


def test_history_is_ordered_in_the_past_and_continues_into_live_bars() -> None:
    feed = SimFeed(["A", "B"], interval=1.0, seed=3)
    now = time.time_ns()
    hist = asyncio.run(feed.history(20))
    assert len(hist) == 40 and feed.validator.rejected == 0
    assert all(b.ts < now for b in hist)
    a = [b for b in hist if b.symbol == "A"]
    assert all(x.ts < y.ts for x, y in pairwise(a))
    live: list[Bar] = []

    async def one_round() -> None:
        task = asyncio.create_task(feed.run(live.append))
        await asyncio.sleep(0.05)
        feed.stop()
        await task

    asyncio.run(one_round())
    first_a = next(b for b in live if b.symbol == "A")
    assert first_a.ts > a[-1].ts
    assert first_a.open == a[-1].close  # the walk goes on where history ended


def test_same_seed_same_prices() -> None:
    one = asyncio.run(SimFeed(["A"], 1.0, seed=9).history(50))
    two = asyncio.run(SimFeed(["A"], 1.0, seed=9).history(50))
    assert [b.close for b in one] == [b.close for b in two]
    other = asyncio.run(SimFeed(["A"], 1.0, seed=10).history(50))
    assert [b.close for b in one] != [b.close for b in other]


def test_as_fast_as_possible_mode_delivers_many_rounds() -> None:
    feed = SimFeed(["A", "B", "C"], interval=0.0, seed=1)
    got: list[Bar] = []

    async def go() -> None:
        task = asyncio.create_task(feed.run(got.append))
        await asyncio.sleep(0.2)
        feed.stop()
        await task

    asyncio.run(go())
    assert len(got) > 300 and feed.validator.rejected == 0
