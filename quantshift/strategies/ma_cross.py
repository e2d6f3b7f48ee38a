"""Moving-average crossover.

Parameters: ``ma`` (``sma`` or ``ema``), ``fast`` and ``slow`` periods, and ``mode``:
``long_only`` goes long when the fast average crosses above the slow one and flat when
it crosses below; ``long_short`` is always in the market once the first cross happened,
reversing from long to short and back on each cross.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quantshift.domain import Bar, Direction, Signal
from quantshift.strategies.base import Params, StrategyBase, register
from quantshift.strategies.indicators import EMA, SMA


class MaCrossParams(Params):
    ma: Literal["sma", "ema"] = "sma"
    fast: int = Field(10, ge=1, le=10_000)
    slow: int = Field(30, ge=2, le=10_000)
    mode: Literal["long_only", "long_short"] = "long_only"

    @model_validator(mode="after")
    def _order(self) -> MaCrossParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        return self


@register
class MaCross(StrategyBase):
    name = "ma_cross"
    Params = MaCrossParams

    def __init__(self, id: str, symbol: str, params: MaCrossParams) -> None:  # type: ignore[override]
        super().__init__(id, symbol, params)
        kind = EMA if params.ma == "ema" else SMA
        self._fast = kind(params.fast)
        self._slow = kind(params.slow)
        self._above: bool | None = None
        self._down = Direction.SHORT if params.mode == "long_short" else Direction.FLAT

    def on_bar(self, bar: Bar) -> Signal | None:
        close = bar.close
        fast = self._fast.update(close)
        slow = self._slow.update(close)
        if fast is None or slow is None:
            return None
        above = fast > slow
        was = self._above
        self._above = above
        if was is None or above == was:
            return None
        gap = abs(fast - slow) / slow if slow else 0.0
        return Signal(
            self.id, bar.symbol, bar.ts, Direction.LONG if above else self._down,
            "fast crossed above slow" if above else "fast crossed below slow",
            min(1.0, gap * 100.0), {"fast": fast, "slow": slow},
        )
