"""The shared feed on a real redis-server: the instance holding the feed lease runs the
venue's feed and publishes; another reads the same bars in the same order, rejects an
entry that is not a bar, skips what it has seen, and takes the venue's connection over
(from the last bar it saw) when the source stops."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from quantshift.domain import NS_PER_SECOND, Bar
from quantshift.feeds.base import BarValidator
from quantshift.feeds.shared import SharedFeed
from tests.redis_server import RedisServer
from tests.test_shared_store import Instance, wait_for

T0 = 1_800_000_000 * NS_PER_SECOND


class Ticker:
    """A venue feed of its own making: one bar a tick after the last one it was told."""

    name = "ticker"
    bar_seconds = 1.0

    def __init__(self, last: dict[str, int], made: list[Ticker]) -> None:
        self.validator = BarValidator(self.name)
        self.last_bar_at = 0.0
        self.after = dict(last)
        self._stop = asyncio.Event()
        made.append(self)

    async def history(self, count: int) -> list[Bar]:
        return []

    async def run(self, on_bar: Callable[[Bar], None]) -> None:
        ts = self.after.get("AAA", T0)
        while not self._stop.is_set():
            ts += NS_PER_SECOND
            on_bar(Bar("AAA", ts, 100.0, 101.0, 99.0, 100.5, 10.0))
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()


async def test_one_source_publishes_and_a_reader_sees_the_same_bars_then_takes_over(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a").start()
    b = await Instance(tmp_path, redis_server.url, "b").start()
    made_a: list[Ticker] = []
    made_b: list[Ticker] = []
    fa = SharedFeed(lambda last: Ticker(last, made_a), a.store, "equity", 1.0)
    fb = SharedFeed(lambda last: Ticker(last, made_b), b.store, "equity", 1.0)
    got_a: list[int] = []
    got_b: list[int] = []
    ta = asyncio.create_task(fa.run(lambda bar: got_a.append(bar.ts)))
    await wait_for(lambda: fa.source and len(got_a) >= 3)
    tb = asyncio.create_task(fb.run(lambda bar: got_b.append(bar.ts)))
    try:
        await wait_for(lambda: len(got_b) >= 10)
        assert not fb.source and fb.holder == "a"
        assert got_b == sorted(set(got_b))  # in order, none twice
        assert set(got_b) <= set(got_a)
        # Something that is not a bar in the stream: rejected and counted, never a crash.
        await a.store.client.xadd(a.store.key("bars:equity"), {"s": "AAA", "t": "soon"})
        await wait_for(lambda: fb.validator.reasons["not a bar"] == 1)
        fa.stop()
        await ta
        await wait_for(lambda: fb.source, 3.0)  # a released the feed lease: b takes it
        # from the last bar it saw, which was a's last: a published everything before it let go
        assert made_b[-1].after["AAA"] == got_a[-1] and got_a[-1] in got_b
        n = len(got_b)
        await wait_for(lambda: len(got_b) >= n + 5)
        assert got_b == sorted(set(got_b))
    finally:
        fa.stop()
        fb.stop()
        await asyncio.gather(ta, tb, return_exceptions=True)
        for x in (a, b):
            await x.stop()
