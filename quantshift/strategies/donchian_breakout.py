"""Donchian channel breakout (the turtles' rule).

Parameters:

* ``entry``: N, the entry channel (1..10,000, default 20): the highest high and lowest
  low of the N bars before the current one (the current bar is left out, so its close
  can break out).
* ``exit``: M, the exit channel (1..``entry``, default 10), over the M bars before the
  current one. It may not exceed ``entry``: the exit channel is the tighter one.
* ``atr_period``: Wilder ATR period (1..10,000, default 20), only for the confidence.
* ``mode``: ``long_only`` (default): long on a breakout above the entry channel, flat
  below the exit channel; ``long_short`` also goes short below the entry channel and
  covers above the exit channel.

Rules, on each bar's close, by the side held (``self.position``, see ``positional``):

* flat: close > N-bar high -> LONG; in ``long_short``, close < N-bar low -> SHORT;
* long: in ``long_short``, close < N-bar low -> SHORT (a reversal); otherwise
  close < M-bar low -> FLAT;
* short: close > N-bar high -> LONG (a reversal); otherwise close > M-bar high -> FLAT.

No signal until N and M earlier bars exist. An entry is never repeated while its side
is held. Indicators: ``close``, ``upper`` and ``lower`` (entry channel), ``exit_upper``
and ``exit_lower``, and ``atr`` once it is warm; confidence of an entry: the breakout's
distance beyond the channel in ATRs, capped at 1 (0.5 before the ATR is warm); of an
exit: 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quantshift.domain import Bar, Signal
from quantshift.strategies.base import Params, register
from quantshift.strategies.indicators import ATR, Donchian
from quantshift.strategies.positional import FLAT, LONG, SHORT, PositionAware


class DonchianParams(Params):
    entry: int = Field(20, ge=1, le=10_000)
    exit: int = Field(10, ge=1, le=10_000)
    atr_period: int = Field(20, ge=1, le=10_000)
    mode: Literal["long_only", "long_short"] = "long_only"

    @model_validator(mode="after")
    def _channels(self) -> DonchianParams:
        if self.exit > self.entry:
            raise ValueError(f"exit ({self.exit}) must not exceed entry ({self.entry}): "
                             "the exit channel is the tighter one")
        return self


@register
class DonchianBreakout(PositionAware):
    name = "donchian_breakout"
    Params = DonchianParams

    def __init__(self, id: str, symbol: str, params: DonchianParams) -> None:  # type: ignore[override]
        super().__init__(id, symbol, params)
        self._entry = Donchian(params.entry)
        self._exit = Donchian(params.exit) if params.exit != params.entry else None
        self._atr = ATR(params.atr_period)
        self._short = params.mode == "long_short"

    def on_bar(self, bar: Bar) -> Signal | None:
        high = bar.high
        low = bar.low
        close = bar.close
        atr = self._atr.update(high, low, close)
        entry = self._entry.update(high, low)
        exit_ = self._exit.update(high, low) if self._exit is not None else entry
        if entry is None or exit_ is None:
            return None
        held = self.held()
        if held is FLAT:
            if close > entry.upper:
                target, reason, beyond = LONG, "close above the entry channel", \
                    close - entry.upper
            elif self._short and close < entry.lower:
                target, reason, beyond = SHORT, "close below the entry channel", \
                    entry.lower - close
            else:
                return None
        elif held is LONG:
            if self._short and close < entry.lower:
                target, reason, beyond = SHORT, "close below the entry channel", \
                    entry.lower - close
            elif close < exit_.lower:
                target, reason, beyond = FLAT, "close below the exit channel", 0.0
            else:
                return None
        elif close > entry.upper:
            target, reason, beyond = LONG, "close above the entry channel", close - entry.upper
        elif close > exit_.upper:
            target, reason, beyond = FLAT, "close above the exit channel", 0.0
        else:
            return None
        if target is FLAT:
            confidence = 1.0
        elif atr is not None and atr > 0:
            confidence = min(1.0, beyond / atr)
        else:
            confidence = 0.5
        indicators = {"close": close, "upper": entry.upper, "lower": entry.lower,
                      "exit_upper": exit_.upper, "exit_lower": exit_.lower}
        if atr is not None:
            indicators["atr"] = atr
        return self.signal(bar, target, reason, confidence, indicators)
