"""RSI mean reversion.

Parameters:

* ``period``: Wilder's RSI period in bars (2..1,000, default 14).
* ``lower``: oversold level (default 30): flat and RSI < lower goes long.
* ``upper``: overbought level (default 70): in ``long_short``, flat and RSI > upper goes
  short.
* ``exit``: the level a position is closed at (default 50): a long goes flat when RSI
  >= exit, a short when RSI <= exit. Levels must satisfy lower < exit < upper.
* ``mode``: ``long_only`` (default) or ``long_short``.

Decisions follow the side held (``self.position``, see ``positional``): no entry is
repeated while that side is held, and a position held (after a restart too) is closed
at the exit level. Indicators: ``rsi``; confidence: |RSI - 50| / 50.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quantshift.domain import Bar, Signal
from quantshift.strategies.base import Params, register
from quantshift.strategies.indicators import RSI
from quantshift.strategies.positional import FLAT, LONG, SHORT, PositionAware


class RsiParams(Params):
    period: int = Field(14, ge=2, le=1000)
    lower: float = Field(30.0, gt=0, lt=100)
    upper: float = Field(70.0, gt=0, lt=100)
    exit: float = Field(50.0, gt=0, lt=100)
    mode: Literal["long_only", "long_short"] = "long_only"

    @model_validator(mode="after")
    def _levels(self) -> RsiParams:
        if not self.lower < self.exit < self.upper:
            raise ValueError("levels must satisfy lower < exit < upper")
        return self


_REASONS = {LONG: "oversold", SHORT: "overbought", FLAT: "reverted to exit level"}


@register
class RsiReversion(PositionAware):
    name = "rsi_reversion"
    Params = RsiParams

    def __init__(self, id: str, symbol: str, params: RsiParams) -> None:  # type: ignore[override]
        super().__init__(id, symbol, params)
        self._rsi = RSI(params.period)
        self._short = params.mode == "long_short"
        self._lower = params.lower
        self._upper = params.upper
        self._exit = params.exit

    def on_bar(self, bar: Bar) -> Signal | None:
        rsi = self._rsi.update(bar.close)
        if rsi is None:
            return None
        held = self.held()
        if held is FLAT:
            if rsi < self._lower:
                target = LONG
            elif self._short and rsi > self._upper:
                target = SHORT
            else:
                return None
        elif (rsi >= self._exit) if held is LONG else (rsi <= self._exit):
            target = FLAT
        else:
            return None
        return self.signal(bar, target, _REASONS[target], min(1.0, abs(rsi - 50.0) / 50.0),
                           {"rsi": rsi})
