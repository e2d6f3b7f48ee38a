"""A simulated feed: a seeded geometric random walk, one bar per symbol per interval.

Bar times are wall-clock nanoseconds (strictly increasing), so bars stay in order
across restarts; prices continue from the last marks the daemon restored.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable

from quantshift.aio import within
from quantshift.domain import Bar
from quantshift.feeds.base import BarValidator

_SIGMA = 0.002  # per-bar volatility: enough movement for crossovers within a minute


class SimFeed:
    name = "sim"

    def __init__(self, symbols: list[str], interval: float, seed: int,
                 start_prices: dict[str, float] | None = None, start_price: float = 100.0,
                 batch: int = 1) -> None:
        self.symbols = list(symbols)
        self.interval = interval
        self.validator = BarValidator(self.name)
        self.bar_seconds = interval
        self.last_bar_at = 0.0
        self._rng = random.Random(seed)
        self._prices = {s: (start_prices or {}).get(s, start_price) for s in self.symbols}
        self._last_ts = 0
        self._batch = batch  # rounds per loop turn when running as fast as possible
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    def next_bar(self, symbol: str, ts: int) -> Bar:
        rng = self._rng
        o = self._prices[symbol]
        c = o * math.exp(_SIGMA * rng.gauss(0.0, 1.0))
        hi = max(o, c) * (1.0 + abs(rng.gauss(0.0, _SIGMA / 2)))
        lo = min(o, c) * (1.0 - abs(rng.gauss(0.0, _SIGMA / 2)))
        self._prices[symbol] = c
        return Bar(symbol, ts, round(o, 4), round(hi, 4), round(lo, 4), round(c, 4),
                   float(rng.randint(100, 10_000)))

    async def history(self, count: int) -> list[Bar]:
        """``count`` bars per symbol ending now, so strategies start warm (as a real feed's
        backfill does); the live walk continues from where the history ends."""
        if count <= 0:
            return []
        step = max(int(self.interval * 1e9), 1_000_000)
        start = time.time_ns() - count * step
        bars = []
        for i in range(count):
            ts = start + i * step
            for symbol in self.symbols:
                bar = self.next_bar(symbol, ts)
                if self.validator.accept(bar):
                    bars.append(bar)
        self._last_ts = start + (count - 1) * step
        return bars

    def _round(self, on_bar: Callable[[Bar], None]) -> None:
        ts = max(time.time_ns(), self._last_ts + 1_000)
        self._last_ts = ts
        accept = self.validator.accept
        for symbol in self.symbols:
            bar = self.next_bar(symbol, ts)
            if accept(bar):
                on_bar(bar)
        self.last_bar_at = time.monotonic()

    async def run(self, on_bar: Callable[[Bar], None]) -> None:
        stopping = self._stopping
        if self.interval <= 0:
            while not stopping.is_set():
                for _ in range(self._batch):
                    self._round(on_bar)
                await asyncio.sleep(0)  # let the rest of the loop breathe
            return
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not stopping.is_set():
            self._round(on_bar)
            next_at += self.interval
            delay = next_at - loop.time()
            if delay < 0:  # fell behind: skip ahead instead of bursting
                next_at, delay = loop.time(), 0.0
            with contextlib.suppress(TimeoutError):
                await within(stopping.wait(), delay)
