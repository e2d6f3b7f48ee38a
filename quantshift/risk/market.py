"""What the gate knows about each symbol's market, kept incrementally from live bars.

Every structure here costs O(1) time and memory per bar, whatever the history length:
the gate sees every live bar of every symbol on the hot path. None of it is persisted;
it is rebuilt from bars after a restart (the rules that need it wait until it is).
"""

from __future__ import annotations

from quantshift.domain import Bar
from quantshift.strategies.indicators import ATR as WilderATR

__all__ = ["RollingMean", "SymbolState", "WilderATR"]

VOLUME_BARS = 20  # the window of the average-volume filter


class RollingMean:
    """Mean of the last ``n`` values (a ring buffer and a running sum)."""

    __slots__ = ("_buf", "_i", "_sum", "count", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self._buf = [0.0] * n
        self._i = 0
        self._sum = 0.0
        self.count = 0

    def update(self, x: float) -> None:
        i = self._i
        self._sum += x - self._buf[i]
        self._buf[i] = x
        i += 1
        if i == self.n:
            i = 0
            self._sum = sum(self._buf)  # once per lap: no drift from the running sum
        self._i = i
        if self.count < self.n:
            self.count += 1

    @property
    def full(self) -> bool:
        return self.count >= self.n

    @property
    def value(self) -> float | None:
        return self._sum / self.count if self.count else None


class SymbolState:
    """ATR for sizing, average volume, and the higher timeframe's trend of one symbol."""

    __slots__ = ("atr", "htf_bars", "htf_dir", "htf_factor", "htf_last", "htf_sma",
                 "volume")

    def __init__(self, atr_period: int, htf_factor: int, htf_sma: int,
                 track_volume: bool = True) -> None:
        self.atr = WilderATR(atr_period) if atr_period else None
        # Only kept when the average-volume filter is on: this runs for every bar.
        self.volume = RollingMean(VOLUME_BARS) if track_volume else None
        self.htf_factor = htf_factor
        self.htf_bars = 0  # base bars folded into the higher timeframe so far
        self.htf_sma = RollingMean(htf_sma) if htf_factor else None
        self.htf_last = 0.0  # the last completed higher-timeframe close
        self.htf_dir = 0  # +1 close above its SMA, -1 below, 0 level or not ready

    def update(self, bar: Bar) -> None:
        atr = self.atr
        if atr is not None:
            atr.update(bar.high, bar.low, bar.close)
        volume = self.volume
        if volume is not None:
            volume.update(bar.volume)
        sma = self.htf_sma
        if sma is not None:
            n = self.htf_bars + 1
            if n >= self.htf_factor:  # the bar that completes a higher-timeframe bar
                n = 0
                close = self.htf_last = bar.close
                sma.update(close)
                if sma.full:
                    mean = sma._sum / sma.count
                    self.htf_dir = 1 if close > mean else -1 if close < mean else 0
            self.htf_bars = n

    def htf_ready(self) -> bool:
        return self.htf_sma is not None and self.htf_sma.full
