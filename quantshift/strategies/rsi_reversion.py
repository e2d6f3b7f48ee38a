"""RSI mean reversion.

Goes long when RSI falls below ``lower`` (oversold) and back to flat when it recovers
to ``exit``; in ``long_short`` mode also goes short above ``upper`` and covers at ``exit``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quantshift.domain import Bar, Direction, Signal
from quantshift.strategies.base import Params, StrategyBase, register
from quantshift.strategies.indicators import RSI


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


@register
class RsiReversion(StrategyBase):
    name = "rsi_reversion"
    Params = RsiParams

    def __init__(self, id: str, symbol: str, params: RsiParams) -> None:  # type: ignore[override]
        super().__init__(id, symbol, params)
        self._rsi = RSI(params.period)
        self._state = Direction.FLAT
        self._short = params.mode == "long_short"
        self._p = params

    def on_bar(self, bar: Bar) -> Signal | None:
        rsi = self._rsi.update(bar.close)
        if rsi is None:
            return None
        p = self._p
        state = self._state
        target = state
        if state is Direction.FLAT:
            if rsi < p.lower:
                target = Direction.LONG
            elif self._short and rsi > p.upper:
                target = Direction.SHORT
        elif (state is Direction.LONG and rsi >= p.exit) or (
                state is Direction.SHORT and rsi <= p.exit):
            target = Direction.FLAT
        if target is state:
            return None
        self._state = target
        reason = {Direction.LONG: "oversold", Direction.SHORT: "overbought",
                  Direction.FLAT: "reverted to exit level"}[target]
        confidence = min(1.0, abs(rsi - 50.0) / 50.0)
        return Signal(self.id, bar.symbol, bar.ts, target, reason, confidence, {"rsi": rsi})
