"""Breakout momentum with volume confirmation.

Parameters:

* ``lookback``: N, the entry channel (1..10,000, default 20): the highest high and the
  lowest low of the N bars before the current one.
* ``exit_lookback``: M, the exit channel (1..``lookback``; default: unset = N): the
  lowest low (for a long) or highest high (for a short) of the M bars before the
  current one. It may not exceed ``lookback``: the exit channel is the tighter one.
* ``volume_period``: bars in the volume average, taken over the bars before the current
  one (1..10,000, default 20).
* ``vol_mult``: volume confirmation, the current bar's volume must be at least
  ``vol_mult`` x the volume average (0..100, default 1.5; 0 turns the check off).
* ``mode``: ``long_only`` (default) or ``long_short`` (the mirror image for shorts).

Rules, on each bar's close, by the side held (``self.position``, see ``positional``);
"confirmed" means the volume condition holds:

* flat: close > N-bar high and confirmed -> LONG; in ``long_short``, close < N-bar low
  and confirmed -> SHORT;
* long: in ``long_short``, close < N-bar low and confirmed -> SHORT (a reversal);
  otherwise close < M-bar low -> FLAT;
* short: close > N-bar high and confirmed -> LONG (a reversal); otherwise
  close > M-bar high -> FLAT.

No signal until N, M and ``volume_period`` earlier bars exist. An entry is never
repeated while its side is held. Indicators: ``close``, ``high`` and ``low`` (the N-bar
channel), ``exit_high`` and ``exit_low`` (the M-bar one), ``volume``, ``volume_avg``;
confidence of an entry: volume / (vol_mult x average) / 2, capped at 1 (0.5 when just
confirmed); of an exit: 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from quantshift.domain import Bar, Signal
from quantshift.strategies.base import Params, register
from quantshift.strategies.indicators import Donchian, VolumeSMA
from quantshift.strategies.positional import FLAT, LONG, SHORT, PositionAware


class BreakoutParams(Params):
    lookback: int = Field(20, ge=1, le=10_000)
    exit_lookback: int | None = Field(None, ge=1, le=10_000)
    volume_period: int = Field(20, ge=1, le=10_000)
    vol_mult: float = Field(1.5, ge=0, le=100, allow_inf_nan=False)
    mode: Literal["long_only", "long_short"] = "long_only"

    @model_validator(mode="after")
    def _channels(self) -> BreakoutParams:
        if self.exit_lookback is not None and self.exit_lookback > self.lookback:
            raise ValueError(f"exit_lookback ({self.exit_lookback}) must not exceed lookback "
                             f"({self.lookback}): the exit channel is the tighter one")
        return self


@register
class BreakoutMomentum(PositionAware):
    name = "breakout_momentum"
    Params = BreakoutParams

    def __init__(self, id: str, symbol: str, params: BreakoutParams) -> None:  # type: ignore[override]
        super().__init__(id, symbol, params)
        n = params.lookback
        m = params.exit_lookback or n
        self._entry = Donchian(n)
        self._exit = Donchian(m) if m != n else None  # M = N: one channel serves both
        self._volume = VolumeSMA(params.volume_period)
        self._mult = params.vol_mult
        self._short = params.mode == "long_short"

    def on_bar(self, bar: Bar) -> Signal | None:
        high = bar.high
        low = bar.low
        entry = self._entry.update(high, low)
        exit_ = self._exit.update(high, low) if self._exit is not None else entry
        volume = bar.volume
        avg = self._volume.update(volume)
        if entry is None or exit_ is None or avg is None:
            return None
        close = bar.close
        held = self.held()
        needed = self._mult * avg
        if held is FLAT:
            if close > entry.upper and volume >= needed:
                target, reason = LONG, "close above the N-bar high on volume"
            elif self._short and close < entry.lower and volume >= needed:
                target, reason = SHORT, "close below the N-bar low on volume"
            else:
                return None
        elif held is LONG:
            if self._short and close < entry.lower and volume >= needed:
                target, reason = SHORT, "close below the N-bar low on volume"
            elif close < exit_.lower:
                target, reason = FLAT, "close below the exit low"
            else:
                return None
        elif close > entry.upper and volume >= needed:
            target, reason = LONG, "close above the N-bar high on volume"
        elif close > exit_.upper:
            target, reason = FLAT, "close above the exit high"
        else:
            return None
        if target is FLAT:
            confidence = 1.0
        elif needed > 0:
            confidence = min(1.0, volume / needed * 0.5)
        else:
            confidence = 1.0 if volume > 0 else 0.5
        return self.signal(bar, target, reason, confidence,
                           {"close": close, "high": entry.upper, "low": entry.lower,
                            "exit_high": exit_.upper, "exit_low": exit_.lower,
                            "volume": volume, "volume_avg": avg})
