"""The bar side of the matching engine: warm-up history, the timed bar loop, manual
steps and pushed bars, and history queries (a mixin of MatchingEngine)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import TYPE_CHECKING

from quantshift.emulators.bars import Bar, RandomWalk, aggregate
from quantshift.emulators.orders import Instrument, OrderError


class BarFeed:
    """Needs ``_on_bar(bar)`` from the engine; keeps history, last prices and time."""

    instruments: dict[str, Instrument]
    interval: float
    bar_seconds: float
    is_open: bool
    history: dict[str, deque[Bar]]
    last: dict[str, float]
    last_bar_time: float | None
    walk: RandomWalk | None
    _rounds: deque[list[Bar]] | None
    _warmup: int
    _primed: bool

    if TYPE_CHECKING:
        def _on_bar(self, bar: Bar) -> None: ...
        def report(self, where: str, exc: BaseException) -> None: ...

    def prime(self) -> None:
        """Fill the history with ``warmup`` random-walk bars ending at the current bar."""
        if self._primed or self.walk is None:
            self._primed = True
            return
        self._primed = True
        now_slot = math.floor(time.time() / self.interval) * self.interval
        for k in range(self._warmup, 0, -1):
            t = now_slot - k * self.interval
            for symbol in self.instruments:
                self.history[symbol].append(self.walk.next_bar(symbol, t))
            self.last_bar_time = t
        if self.walk is not None:
            self.last.update(self.walk.last)

    def step(self, t: float | None = None) -> list[Bar]:
        """Emit one round of bars (one per symbol) now; [] when closed or out of data.

        A random-walk round is stamped ``t``, by default the bar that just ended (or the
        slot after the last bar, whichever is later)."""
        if not self.is_open:
            return []
        if self._rounds is not None:
            if not self._rounds:
                return []
            bars = self._rounds.popleft()
        else:
            assert self.walk is not None
            iv = self.interval
            slot = math.floor(time.time() / iv) - 1 if t is None else round(t / iv)
            if self.last_bar_time is not None and slot <= round(self.last_bar_time / iv):
                slot = round(self.last_bar_time / iv) + 1
            t = slot * iv
            bars = [self.walk.next_bar(s, t) for s in self.instruments]
        for bar in bars:
            self._on_bar(bar)
        return bars

    def push(self, symbol: str, close: float, *, open: float | None = None,
             high: float | None = None, low: float | None = None,
             volume: float = 1000.0) -> Bar:
        """Emit a bar of your own for ``symbol`` now (the next time slot); the random
        walk continues from its close. Resting orders match against it as usual."""
        if symbol not in self.instruments:
            raise OrderError("unknown_symbol", f"unknown symbol {symbol!r}")
        values = [close, open, high, low, volume]
        if any(v is not None and (not math.isfinite(v) or v < 0) for v in values) \
                or close <= 0:
            raise OrderError("invalid", "prices must be finite and > 0")
        opn = self.last[symbol] if open is None else open
        hi = max(x for x in (high, opn, close) if x is not None)
        lo = min(x for x in (low, opn, close) if x is not None)
        t = (math.floor(time.time() / self.interval) - 1) * self.interval
        if self.last_bar_time is not None and t <= self.last_bar_time:
            t = self.last_bar_time + self.interval
        bar = Bar(symbol, t, opn, hi, lo, close, volume, 1, (hi + lo + close) / 3)
        if self.walk is not None:
            self.walk.last[symbol] = close
        self._on_bar(bar)
        return bar

    async def run(self) -> None:
        """Emit a round of bars at every interval boundary until cancelled; a late wake-up
        catches up on the slots it missed, so random-walk bars have no gaps."""
        self.prime()
        iv, resume = self.interval, False
        while True:
            now = time.time()
            await asyncio.sleep(max((math.floor(now / iv) + 1) * iv - now, 0.0))
            if not self.is_open:
                resume = True  # no bars while closed, and no catching up on them after
                continue
            try:
                due = math.floor(time.time() / iv + 1e-6) - 1  # the slot that just ended
                if self.walk is None or self.last_bar_time is None or resume:
                    self.step(due * iv)
                    resume = False
                    continue
                for slot in range(round(self.last_bar_time / iv) + 1, due + 1)[-1000:]:
                    self.step(slot * iv)
            except Exception as exc:  # a bug must not stop the bars
                self.report("emulator bar round", exc)

    def bars(self, symbol: str, start: float | None = None, end: float | None = None,
             timeframe: float | None = None) -> list[Bar]:
        """History of ``symbol`` (oldest first), aggregated to ``timeframe`` seconds when
        that is longer than one bar (incomplete last bucket left out)."""
        hist: list[Bar] = list(self.history.get(symbol, ()))
        if timeframe and timeframe > self.bar_seconds + 1e-9 and hist:
            newest_end = hist[-1].time + self.bar_seconds
            hist = [b for b in aggregate(hist, timeframe) if b.time + timeframe <= newest_end]
        return [b for b in hist if (start is None or b.time >= start)
                and (end is None or b.time <= end)]
