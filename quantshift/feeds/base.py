"""The feed protocol and the validation every bar passes before anything sees it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from loguru import logger

from quantshift.domain import Bar

_INF = math.inf
# No instrument trades outside these; a price past them is a broken source, and would
# overflow the sizing downstream (equity / 5e-324 is infinite).
MIN_PRICE, MAX_PRICE = 1e-12, 1e15
_LOG_FIRST = 20  # rejects logged one by one per feed; after that one line per 1000


class Feed(Protocol):
    name: str
    validator: BarValidator
    bar_seconds: float  # the bar length; 0 = no cadence (a file), so never stale
    last_bar_at: float  # time.monotonic() of the last bar delivered (0 before the first)

    async def history(self, count: int) -> list[Bar]:
        """Up to ``count`` recent bars per symbol, to warm the strategies up before live bars."""

    async def run(self, on_bar: Callable[[Bar], None]) -> None:
        """Deliver bars until the source ends or ``stop`` is called; reconnect by itself."""

    def stop(self) -> None: ...


class BarValidator:
    """Rejects NaN or non-positive prices, prices outside MIN_PRICE..MAX_PRICE, high < low,
    open/close outside the bar's range, negative volume, and out-of-order or duplicate
    timestamps (per symbol)."""

    def __init__(self, feed: str) -> None:
        self.feed = feed
        self.accepted = 0
        self.rejected = 0
        self.reasons: Counter[str] = Counter()
        self._last: dict[str, int] = {}

    def accept(self, bar: Bar) -> bool:
        lo = bar.low
        hi = bar.high
        last = self._last.get(bar.symbol)
        # NaN fails every comparison, so these two chains also catch NaN.
        if (MIN_PRICE <= lo <= hi <= MAX_PRICE and lo <= bar.open <= hi and lo <= bar.close <= hi
                and 0.0 <= bar.volume < _INF and (last is None or bar.ts > last)):
            self._last[bar.symbol] = bar.ts
            self.accepted += 1
            return True
        self.reject(self.reason(bar, last), repr(bar))
        return False

    @property
    def last_ts(self) -> dict[str, int]:
        """The last accepted bar time per symbol."""
        return self._last

    def reject(self, reason: str, what: str) -> None:
        self.rejected += 1
        self.reasons[reason] += 1
        if self.rejected <= _LOG_FIRST:
            logger.warning("feed {}: rejected bar ({}): {}", self.feed, reason, what)
        elif self.rejected % 1000 == 0:
            logger.warning("feed {}: {} bars rejected so far: {}", self.feed, self.rejected,
                           dict(self.reasons))

    @staticmethod
    def reason(bar: Bar, last: int | None) -> str:
        prices = (bar.open, bar.high, bar.low, bar.close)
        if any(math.isnan(p) for p in prices) or math.isnan(bar.volume):
            return "NaN value"
        if any(not math.isfinite(p) for p in prices) or not math.isfinite(bar.volume):
            return "infinite value"
        if any(p <= 0 for p in prices):
            return "non-positive price"
        if bar.low < MIN_PRICE or bar.high > MAX_PRICE:
            return "price out of range"
        if bar.high < bar.low:
            return "high < low"
        if not (bar.low <= bar.open <= bar.high and bar.low <= bar.close <= bar.high):
            return "open/close outside high-low"
        if bar.volume < 0:
            return "negative volume"
        if last is not None and bar.ts == last:
            return "duplicate timestamp"
        return "out-of-order timestamp"
