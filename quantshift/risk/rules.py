"""The entry rules and the sizing of an entry: everything that may stop a new position.

Exits never come here: only the trading state (``halted``) stops them. The rules run
cheapest first and the first that objects names the veto. The texts start with a fixed
phrase (``max exposure``, ``cooldown``, ...) that tests and operators can grep for.
"""

from __future__ import annotations

from collections import deque
from itertools import repeat
from math import floor
from operator import mul
from typing import TYPE_CHECKING

from loguru import logger

from quantshift.domain import NS_PER_SECOND, Direction, Instrument, Signal, TradingState
from quantshift.portfolio import Portfolio
from quantshift.risk.market import SymbolState
from quantshift.risk.pending import Pending
from quantshift.risk.profiles import RiskLimits
from quantshift.risk.regime import BEAR, BULL, CHOPPY, CRISIS, UNKNOWN, RegimeDetector
from quantshift.risk.sizing import FRACTION_STEP, KellyStats, Sizing

if TYPE_CHECKING:
    from quantshift.control import ControlPlane

HOUR_NS = 3600 * NS_PER_SECOND
EPS = 1e-9
# Within this share of the exposure cap the gross notional is summed exactly.
_NEAR_CAP = 0.999
# A tripped breaker is also an alert (ops/notify.py copies it to Telegram).
_ALERT_BREAKER = logger.bind(alert="breaker")


def regime_scale(limits: RiskLimits, regime: str) -> float:
    if regime == BULL:
        return limits.regime_bull
    if regime == BEAR:
        return limits.regime_bear
    if regime == CHOPPY:
        return limits.regime_choppy
    if regime == CRISIS:
        return limits.regime_crisis
    return 1.0  # unknown: not warm yet


class EntryRules:
    """The entry half of the RiskGate (a mixin: the state lives on the gate)."""

    limits: RiskLimits
    sizing_rule: Sizing
    fractional: bool
    control: ControlPlane
    day: int
    trades_today: int
    loss_halt_day: int
    day_equity: float | None
    hour_ts: deque[int]
    loss_exits: dict[str, int]
    kelly: dict[str, KellyStats]
    symbols: dict[str, SymbolState]
    instruments: dict[str, Instrument]
    detector: RegimeDetector
    phase_start_day: int
    last_regime: str
    hwm: float | None
    _peak_seen: float
    _dd_rebase: bool

    # -- capital ramp ------------------------------------------------------------------
    def ramp_share(self, day: int) -> float:
        """The share of capital allowed on ``day`` (UTC day number) of the phase."""
        lim = self.limits
        start = lim.ramp_start
        if start <= 0 or start >= 1:
            return 1.0
        if self.phase_start_day < 0:
            self.phase_start_day = day  # the first decision of the phase starts it
        n = day - self.phase_start_day + 1
        steps = (n >= lim.ramp_day_2) + (n >= lim.ramp_day_3) + (n >= lim.ramp_day_4)
        return start + (1.0 - start) * steps / 3.0

    # -- the rules ---------------------------------------------------------------------
    def _entry(self, signal: Signal, price: float, pf: Portfolio,
               pending: Pending, day: int,
               exiting: float) -> float | str:
        """The unsigned entry quantity, or why there is none. ``exiting`` is the signed
        quantity the reversal's exit leg takes off the symbol (0 from flat)."""
        lim = self.limits
        equity = pf.equity
        control = self.control
        if control.state is TradingState.REDUCING:
            return f"reducing: {control.reason}; only exposure-reducing orders pass"
        if control.stale is not None:
            return f"feed stale: {control.stale}; entries stop until fresh bars arrive"
        if control.market_open is False:
            return "market closed: entries wait for the venue's market hours"
        late = control.late(signal.ts)
        if late is not None:
            return late
        if lim.max_daily_loss:
            base = self.day_equity
            day_pnl = equity - (base if base is not None else pf.day_start_equity)
            if self.loss_halt_day == day or day_pnl <= -lim.max_daily_loss:
                reason = (f"daily loss limit: day P&L {day_pnl:.2f} <= "
                          f"-{lim.max_daily_loss:g}; entries halted for the day")
                if self.loss_halt_day != day:
                    _ALERT_BREAKER.warning("breaker: {}", reason)
                self.loss_halt_day = day
                return reason
        if lim.max_drawdown:
            dd = self._drawdown(pf, equity)
            if dd >= lim.max_drawdown:
                reason = (f"max drawdown: equity {equity:.2f} is {dd:.2f} below its peak "
                          f"{self.hwm:.2f} (limit {lim.max_drawdown:g}); entries halted "
                          "until resumed")
                control.trip_breaker(reason)
                _ALERT_BREAKER.warning("breaker: {}; only exposure-reducing orders pass", reason)
                return reason
        if lim.max_trades_per_day and self.trades_today >= lim.max_trades_per_day:
            return f"max trades per day: {self.trades_today} >= {lim.max_trades_per_day}"
        ts = signal.ts
        if lim.max_trades_per_hour:
            hour = self.hour_ts
            while hour and hour[0] <= ts - HOUR_NS:
                hour.popleft()
            if len(hour) >= lim.max_trades_per_hour:
                return f"max trades per hour: {len(hour)} >= {lim.max_trades_per_hour}"
        symbol = signal.symbol
        if lim.loss_cooldown_seconds and self.loss_exits:
            lost = self.loss_exits.get(symbol)
            if lost is not None:
                left = lost + lim.loss_cooldown_seconds * NS_PER_SECOND - ts
                if left > 0:
                    return (f"cooldown after a losing exit in {symbol}: "
                            f"{left / NS_PER_SECOND:.0f}s of {lim.loss_cooldown_seconds:g}s "
                            "left")
        if lim.min_price and price < lim.min_price:
            return f"min price: {price:g} < {lim.min_price:g}"
        st = self.symbols.get(symbol)
        if lim.min_avg_volume:
            vol = st.volume if st is not None else None
            if vol is None or not vol.count:
                return f"min average volume: no bars of {symbol} seen yet"
            avg = vol._sum / vol.count
            if avg < lim.min_avg_volume:
                return (f"min average volume: {avg:.0f} < {lim.min_avg_volume:g} "
                        f"over the last {vol.count} bars")
        if lim.htf_factor:
            want = signal.target
            sma = st.htf_sma if st is not None else None
            if sma is None or sma.count < sma.n:
                have = st.htf_sma.count if st is not None and st.htf_sma is not None else 0
                return (f"higher timeframe not ready: {have}/{lim.htf_sma} bars of "
                        f"{lim.htf_factor}x to confirm the entry")
            if st.htf_dir != want:
                mean = sma._sum / sma.count
                side = "LONG" if want > 0 else "SHORT"
                trend = st.htf_dir
                where = "above" if trend > 0 else "below" if trend < 0 else "at"
                return (f"higher timeframe disagrees: {side} but the {lim.htf_factor}x close "
                        f"{st.htf_last:g} is {where} its {lim.htf_sma}-bar SMA {mean:g}")
        share = self.ramp_share(day)
        qty = self._size(signal, price, pf, pending, exiting, st, equity * share)
        if isinstance(qty, str):
            return qty
        return self._book_limits(symbol, qty * int(signal.target), price, pf, pending,
                                 exiting, share) or qty

    def _drawdown(self, pf: Portfolio, eq: float) -> float:
        """Equity ``eq`` below its high-water mark (since the last resume)."""
        peak = pf.peak_equity
        hwm = self.hwm
        if hwm is None:
            hwm = eq if self._dd_rebase else max(peak, eq)
            self._dd_rebase = False
            self._peak_seen = peak
        else:
            if peak > self._peak_seen:  # a new high since: the book saw it between decisions
                self._peak_seen = peak
                if peak > hwm:
                    hwm = peak
            if eq > hwm:
                hwm = eq
        self.hwm = hwm
        return hwm - eq

    def _size(self, signal: Signal, price: float, pf: Portfolio,
              pending: Pending, exiting: float,
              st: SymbolState | None, equity: float) -> float | str:
        """The entry's unsigned quantity after the sizing rule, the regime, the caps and the
        rounding; or the veto. ``equity`` is the capital allowed now (the ramp's share)."""
        if price <= 0:
            return f"size rounds to zero ({self.sizing_rule} at {price:g})"
        sizing = self.sizing_rule
        kind = sizing.kind
        raw = 0.0
        capped = False
        if kind == "kelly":
            stats = self.kelly.get(signal.strategy)
            if stats is not None and stats.n >= sizing.min_trades:
                f = stats.f
                if f <= 0:
                    return (f"kelly: no edge for {signal.strategy} (f* {f:.3f} over "
                            f"{stats.n} trades)")
                frac = sizing.value * f
                raw = equity * (frac if frac < sizing.cap else sizing.cap) / price
                capped = True
            else:
                sizing = sizing.base  # type: ignore[assignment]
                kind = sizing.kind
        if kind == "fixed":
            raw = sizing.value
        elif kind == "fraction":
            raw = equity * sizing.value / price if equity > 0 else 0.0
        elif kind == "atr":
            atr_ind = st.atr if st is not None else None
            atr = atr_ind.value if atr_ind is not None else None
            if atr is None:
                seen = atr_ind._count if atr_ind is not None else 0
                return (f"no ATR yet for {signal.symbol}: {seen}/{sizing.period} bars "
                        "to size the entry")
            if atr <= 0:
                return f"no ATR yet for {signal.symbol}: the ATR is 0, nothing to size by"
            raw = equity * sizing.value / (atr * sizing.multiplier) if equity > 0 else 0.0
            capped = True
        regime = self.last_regime
        if regime != UNKNOWN:
            scale = regime_scale(self.limits, regime)
            if scale <= 0:
                return f"regime {regime}: size x0, no entries in this regime"
            raw *= scale
        if capped:
            most = self.limits.max_position_fraction
            if most and raw * price > most * equity:
                raw = most * equity / price
            if signal.target is Direction.LONG:
                power = pf.cash  # the buying power: cash, less a short's buy-back (the exit
                if exiting > 0:  # leg) and the buys still pending
                    power -= exiting * price
                if pending:
                    mark = pf.marks.get
                    for (_, sym), q in pending.items():
                        if q > 0:
                            power -= q * mark(sym, price)
                if power <= 0:
                    return f"no buying power: cash available {power:.2f}"
                if raw * price > power:
                    raw = power / price
        if self.fractional:  # round_qty, inline: this is the hot path
            qty = floor(raw / FRACTION_STEP + 1e-9) * FRACTION_STEP if raw > 0 else 0.0
        else:
            qty = float(floor(raw + 1e-9)) if raw > 0 else 0.0
        instrument = self.instruments.get(signal.symbol)
        if instrument is not None:
            qty = instrument.floor_qty(qty)
        if qty <= 0:
            return f"size rounds to zero ({self.sizing_rule} at {price:g})"
        if instrument is not None:
            small = instrument.below_minimum(qty, price)
            if small is not None:
                return f"below venue minimum: {small}"
        return qty

    def _book_limits(self, symbol: str, target: float, price: float,
                     pf: Portfolio, pending: Pending, exiting: float,
                     share: float) -> str | None:
        """Position notional, exposure (ramped) and open positions after the entry."""
        lim = self.limits
        notional = abs(target) * price
        if lim.max_position_notional and notional > lim.max_position_notional:
            return (f"max position notional: {notional:.2f} > "
                    f"{lim.max_position_notional:g}")
        net = pf.net
        by_symbol = pending.by_symbol
        before = net.get(symbol, 0.0) + by_symbol.get(symbol, 0.0)
        after_exit = before + exiting
        new_net = after_exit + target
        cap = lim.max_exposure
        if share < 1.0:
            cap = cap * share if cap else pf.equity * share
        opens = lim.max_open_positions and -EPS < after_exit < EPS and abs(new_net) > EPS
        if not (cap or opens):
            return None
        # Every symbol with a net position, then corrected for this symbol and for pending
        # orders (counted as filled). The book keeps the gross notional as it goes; near
        # the cap it is summed exactly, so rounding can never let a breach through.
        mark = pf.marks.get
        held = pf.open_net
        others = len(held)
        gross = pf.gross
        if cap and gross + abs(new_net) * price > cap * _NEAR_CAP:
            gross = sum(map(mul, map(abs, held.values()), map(mark, held, repeat(price))))
        own = net.get(symbol, 0.0)
        if own > EPS or own < -EPS:
            others -= 1
            gross -= (own if own > 0 else -own) * mark(symbol, price)
        for s, q in by_symbol.items():
            if s != symbol:
                q0 = net.get(s, 0.0)
                q1 = q0 + q
                was, now = q0 > EPS or q0 < -EPS, q1 > EPS or q1 < -EPS
                others += now - was
                gross += (abs(q1) * now - abs(q0) * was) * mark(s, price)
        if cap:
            exposure = gross + abs(new_net) * price
            if exposure > cap * (1 + 1e-12) + EPS:
                ramp = (f" (capital ramp: {share:.0%} on day "
                        f"{self.day - self.phase_start_day + 1})") if share < 1.0 else ""
                return f"max exposure: {exposure:.2f} > {cap:g}{ramp}"
        if opens and others + 1 > lim.max_open_positions:
            return f"max open positions: {others + 1} > {lim.max_open_positions}"
        return None
