"""The market regime, read from one reference symbol's bars, and what it does to sizes.

Two rule-based readings of the reference symbol, both incremental:

* trend: the close against its simple moving average over ``trend_bars`` bars;
* volatility: ATR% (ATR over ``atr_period`` bars / close) against its own average over
  ``vol_bars`` bars (the ratio is 1.0 in an ordinary market).

and four regimes, the first that matches:

=========  ================================================================  ==========
regime     when                                                               size x
=========  ================================================================  ==========
crisis     volatility ratio >= ``crisis_vol`` (2.0), or the trend is down and  0.25
           the ratio >= ``high_vol`` (1.5)
choppy     the ratio >= ``high_vol`` (an up trend in a storm), or the close   0.5
           is within ``band_atr`` (0.5) ATRs of its average (no trend)
bull       the close above its average                                        1.0
bear       the close below its average                                        0.75
=========  ================================================================  ==========

Until the readings are warm (``max(trend_bars, atr_period + vol_bars)`` bars) the regime is
``unknown`` and sizes are not scaled. The multipliers come from the phase's profile
(``regime_bull`` ... ``regime_crisis``); 0 stops entries in that regime.
"""

from __future__ import annotations

from quantshift.domain import Bar
from quantshift.risk.market import RollingMean, WilderATR

BULL, BEAR, CHOPPY, CRISIS, UNKNOWN = "bull", "bear", "choppy", "crisis", "unknown"
REGIMES = (BULL, BEAR, CHOPPY, CRISIS)


class RegimeDetector:
    __slots__ = ("_atr", "_trend", "_vol", "band_atr", "crisis_vol", "high_vol", "ratio",
                 "regime", "symbol")

    def __init__(self, symbol: str | None = None, *, trend_bars: int = 100,
                 atr_period: int = 14, vol_bars: int = 100, high_vol: float = 1.5,
                 crisis_vol: float = 2.0, band_atr: float = 0.5) -> None:
        self.symbol = symbol  # None: the first symbol a bar arrives for
        self._trend = RollingMean(trend_bars)
        self._atr = WilderATR(atr_period)
        self._vol = RollingMean(vol_bars)
        self.high_vol = high_vol
        self.crisis_vol = crisis_vol
        self.band_atr = band_atr
        self.regime = UNKNOWN
        self.ratio = 0.0  # the last volatility ratio (for status)

    def update(self, bar: Bar) -> str:
        close = bar.close
        trend = self._trend
        trend.update(close)
        atr = self._atr.update(bar.high, bar.low, close)
        if atr is None or close <= 0:
            return self.regime
        vol = self._vol
        pct = atr / close
        vol.update(pct)
        if not (trend.full and vol.full):
            return self.regime
        sma = trend._sum / trend.count
        mean_pct = vol._sum / vol.count
        ratio = self.ratio = pct / mean_pct if mean_pct > 0 else 1.0
        up = close > sma
        if ratio >= self.crisis_vol or (not up and ratio >= self.high_vol):
            regime = CRISIS
        elif ratio >= self.high_vol or abs(close - sma) < self.band_atr * atr:
            regime = CHOPPY
        else:
            regime = BULL if up else BEAR
        self.regime = regime
        return regime
