"""Bollinger-band mean reversion.

Parameters:

* ``period``: bars in the bands' window (2..10,000, default 20). The mid band is their
  mean close; the width is their population standard deviation (``ddof=0``).
* ``k``: band width in standard deviations (> 0, at most 10, default 2.0): upper band =
  mid + k·sd, lower band = mid - k·sd.
* ``mode``: ``long_only`` (default) or ``long_short``.

Rules, on each bar's close, by the side held (``self.position``, see ``positional``):

* flat: close < lower band -> LONG; in ``long_short``, close > upper band -> SHORT;
* long: in ``long_short``, close > upper band -> SHORT (a reversal); otherwise
  close >= mid band -> FLAT (the exit at the mid band);
* short: close < lower band -> LONG (a reversal); otherwise close <= mid band -> FLAT.

Closer than 1e-9 of the mid band counts as equal (on the band is not beyond it; at
the mid is at it), so rounding decides nothing. An entry is never repeated while its
side is held.

Indicators: ``close``, ``mid``, ``upper``, ``lower``. Confidence of an entry: how far
beyond the mid the close is, in band half-widths, halved and capped at 1 (0.5 at the
band, 1 at twice its distance); of an exit: 1.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from quantshift.domain import Bar, Signal
from quantshift.strategies.base import Params, register
from quantshift.strategies.indicators import Bollinger
from quantshift.strategies.positional import FLAT, LONG, SHORT, TIE, PositionAware


class BollingerParams(Params):
    period: int = Field(20, ge=2, le=10_000)
    k: float = Field(2.0, gt=0, le=10, allow_inf_nan=False)
    mode: Literal["long_only", "long_short"] = "long_only"


@register
class BollingerReversion(PositionAware):
    name = "bollinger_reversion"
    Params = BollingerParams

    def __init__(self, id: str, symbol: str, params: BollingerParams) -> None:  # type: ignore[override]
        super().__init__(id, symbol, params)
        self._bands = Bollinger(params.period, params.k)
        self._short = params.mode == "long_short"

    def on_bar(self, bar: Bar) -> Signal | None:
        close = bar.close
        bands = self._bands.update(close)
        if bands is None:
            return None
        held = self.held()
        mid = bands.mid
        tie = TIE * mid  # closer than this is equal: rounding decides nothing
        below = close < bands.lower - tie
        above = close > bands.upper + tie
        if held is FLAT:
            if below:
                target, reason = LONG, "close below the lower band"
            elif self._short and above:
                target, reason = SHORT, "close above the upper band"
            else:
                return None
        elif held is LONG:
            if self._short and above:
                target, reason = SHORT, "close above the upper band"
            elif close >= mid - tie:
                target, reason = FLAT, "back to the mid band"
            else:
                return None
        elif below:
            target, reason = LONG, "close below the lower band"
        elif close <= mid + tie:
            target, reason = FLAT, "back to the mid band"
        else:
            return None
        half = bands.upper - bands.mid
        if target is FLAT:
            confidence = 1.0
        elif half > 0:
            confidence = min(1.0, abs(close - bands.mid) / half * 0.5)
        else:
            confidence = 0.5
        return self.signal(bar, target, reason, confidence,
                           {"close": close, "mid": bands.mid, "upper": bands.upper,
                            "lower": bands.lower})
