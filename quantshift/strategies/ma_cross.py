"""Moving-average crossover.

Parameters:

* ``ma``: ``sma`` (simple) or ``ema`` (exponential, seeded with the first SMA) averages;
  default ``sma``.
* ``fast``: the fast average's period in bars (1..10,000, default 10); must be below
  ``slow``.
* ``slow``: the slow average's period in bars (2..10,000, default 30).
* ``mode``: ``long_only`` (default) goes long when the fast average crosses above the
  slow one and flat when it crosses below; ``long_short`` reverses from long to short
  and back on each cross, so it is always in the market once the first cross happened.

An entry needs a cross: the first comparison after the warm-up only says which side the
fast average is on. From the first cross on (or at once while the strategy holds a
position, e.g. after a restart) the strategy wants the side the averages show, and
signals whenever that differs from the side it holds (``self.position``, see
``positional``): a LONG is never repeated while long; the FLAT (or SHORT) on a cross
down goes out only when it changes something. The fast average is above the slow one
when it exceeds it by more than 1e-9 of its value (rounding noise is a tie: not above).

Indicators: ``fast``, ``slow``. Confidence: the gap between the averages, 1 % of the
slow one = 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quantshift.domain import Bar, Signal
from quantshift.strategies.base import Params, register
from quantshift.strategies.indicators import EMA, SMA
from quantshift.strategies.positional import FLAT, LONG, SHORT, TIE, PositionAware


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
class MaCross(PositionAware):
    name = "ma_cross"
    Params = MaCrossParams

    def __init__(self, id: str, symbol: str, params: MaCrossParams) -> None:  # type: ignore[override]
        super().__init__(id, symbol, params)
        kind = EMA if params.ma == "ema" else SMA
        self._fast = kind(params.fast)
        self._slow = kind(params.slow)
        self._above: bool | None = None
        self._crossed = False
        self._down = SHORT if params.mode == "long_short" else FLAT

    def on_bar(self, bar: Bar) -> Signal | None:
        close = bar.close
        fast = self._fast.update(close)
        slow = self._slow.update(close)
        if fast is None or slow is None:
            return None
        above = fast - slow > TIE * abs(slow)  # a tie (to rounding) is not above
        was = self._above
        self._above = above
        held = self._side  # held(), without a call per bar
        if was is not None and above != was:
            self._crossed = True
        elif not self._crossed and held is FLAT:
            return None  # no cross yet, nothing held: nothing to do
        target = LONG if above else self._down
        if target is held:
            return None
        gap = abs(fast - slow) / slow if slow else 0.0
        return self.signal(
            bar, target, "fast crossed above slow" if above else "fast crossed below slow",
            min(1.0, gap * 100.0), {"fast": fast, "slow": slow},
        )
