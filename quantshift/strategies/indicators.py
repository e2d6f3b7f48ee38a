"""Incremental indicators: O(1) work and memory per update, whatever the history length."""

from __future__ import annotations

import math
from collections import deque


class SMA:
    """Simple moving average over ``period`` values (a running sum over a ring)."""

    __slots__ = ("_sum", "_window", "period", "value")

    def __init__(self, period: int) -> None:
        self.period = period
        self._window: deque[float] = deque()
        self._sum = 0.0
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        w = self._window
        w.append(x)
        self._sum += x
        if len(w) > self.period:
            self._sum -= w.popleft()
        if len(w) == self.period:
            self.value = self._sum / self.period
        return self.value


class EMA:
    """Exponential moving average, alpha = 2 / (period + 1), seeded with the first SMA."""

    __slots__ = ("_alpha", "_count", "_seed", "period", "value")

    def __init__(self, period: int) -> None:
        self.period = period
        self._alpha = 2.0 / (period + 1)
        self._count = 0
        self._seed = 0.0
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        v = self.value
        if v is not None:
            v += self._alpha * (x - v)
            self.value = v
            return v
        self._count += 1
        self._seed += x
        if self._count == self.period:
            self.value = self._seed / self.period
        return self.value


class RSI:
    """Wilder's relative strength index over ``period`` changes."""

    __slots__ = ("_avg_gain", "_avg_loss", "_count", "_prev", "period", "value")

    def __init__(self, period: int) -> None:
        self.period = period
        self._prev: float | None = None
        self._avg_gain = 0.0
        self._avg_loss = 0.0
        self._count = 0
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        prev = self._prev
        self._prev = x
        if prev is None:
            return None
        change = x - prev
        gain = change if change > 0 else 0.0
        loss = -change if change < 0 else 0.0
        n = self.period
        if self._count < n:  # the first average is a plain mean of n changes
            self._count += 1
            self._avg_gain += gain / n
            self._avg_loss += loss / n
            if self._count < n:
                return None
        else:
            self._avg_gain = (self._avg_gain * (n - 1) + gain) / n
            self._avg_loss = (self._avg_loss * (n - 1) + loss) / n
        if self._avg_loss == 0.0:
            self.value = 100.0 if self._avg_gain > 0 else 50.0
        else:
            rs = self._avg_gain / self._avg_loss
            self.value = 100.0 - 100.0 / (1.0 + rs)
        return self.value


def is_finite(x: float) -> bool:
    return math.isfinite(x)
