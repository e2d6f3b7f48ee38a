"""The RiskGate: every limit of the current phase lives here and nowhere else.

A signal names the position a strategy wants (long, flat, short). The gate sizes that
position, works out the orders that get there from the strategy's current holding and
checks them against the phase's limits. A reversal (long to short, or back) is two
orders: a reduce-only exit to flat, then the entry, because venues treat a sell that
crosses zero as a new short and some refuse it outright. Orders that only reduce
exposure are never blocked by entry limits; only a halt stops them. When the entry of a
reversal is blocked, the exit still goes through, so a strategy is never left holding
the side it just turned against.

The trading state is the control plane's (quantshift/control.py): the gate reads it on
every decision and never keeps a copy. ``active`` (and ``demoted``: decisions go on, only
to the log) applies every rule; ``reducing`` lets only exposure-reducing orders pass (exits
and trims; the operator's reduce, or the drawdown limit, which trips it through the control
plane); ``halted`` lets nothing new pass, except a flatten's exits. The feed's staleness and
the venue's clock are read from the control plane too.

What the owner of the gate sets or calls (the engine and the daemon):

* ``on_bar(bar)`` for every live bar, before the strategies see it: per-symbol ATR,
  average volume, the higher timeframe, the regime of the reference symbol;
* ``on_trade(trade)`` for every closed round trip: Kelly statistics, loss cooldowns;
* ``instruments`` from the venue;
* ``counters()`` into every snapshot and ``restore_counters()`` after a restart.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from quantshift.control import ControlPlane
from quantshift.domain import (
    NS_PER_DAY,
    Bar,
    Direction,
    Instrument,
    OrderIntent,
    Side,
    Signal,
    Trade,
    TradingState,
    client_order_id,
    trade_return,
)
from quantshift.portfolio import Portfolio
from quantshift.risk.market import SymbolState
from quantshift.risk.pending import Pending
from quantshift.risk.profiles import RiskLimits
from quantshift.risk.regime import UNKNOWN, RegimeDetector
from quantshift.risk.rules import EPS, HOUR_NS, EntryRules, regime_scale
from quantshift.risk.sizing import KellyStats, Sizing

ACTIVE, REDUCING, HALTED = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED
__all__ = ["ACTIVE", "HALTED", "NO_CHANGE", "REDUCING", "Decision", "RiskGate"]


@dataclass(slots=True)
class Decision:
    """The gate's answer: the orders to send (an exit, an entry, or both), any veto, and
    the market regime an entry was sized in (None when no entry was sized)."""

    intents: tuple[OrderIntent, ...] = ()
    veto: str | None = None
    regime: str | None = None


NO_CHANGE = Decision()
_NONE = Pending()  # read, never written: no orders pending


class RiskGate(EntryRules):
    def __init__(self, bot: str, limits: RiskLimits, sizing: Sizing, fractional: bool, *,
                 regime_symbol: str | None = None, control: ControlPlane | None = None
                 ) -> None:
        self.bot = bot
        # The trading state's owner; a gate on its own (a test, a backtest) gets its own.
        self.control = control if control is not None else ControlPlane()
        self.control.on_change(self._state_changed)
        self.limits = limits
        self.sizing_rule = sizing
        self._atr_sizing = bool(sizing.needs_atr)  # read on every bar: no property call
        self.fractional = fractional
        self.day = -1
        self.trades_today = 0
        self.loss_halt_day = -1  # the day the daily-loss limit stopped entries
        self.day_equity: float | None = None  # the day's P&L baseline
        self.instruments: dict[str, Instrument] = {}  # the venue's increments and minimums
        self.hour_ts: deque[int] = deque()  # times of the orders of the last hour
        self.loss_exits: dict[str, int] = {}  # symbol -> time of its last losing exit
        self.kelly: dict[str, KellyStats] = {}  # strategy -> its closed trades' statistics
        self.symbols: dict[str, SymbolState] = {}
        self.detector = RegimeDetector(regime_symbol)
        self.phase_start_day = -1  # the capital ramp's day 1
        self.last_regime = UNKNOWN
        self.hwm: float | None = None  # the drawdown limit's high-water mark
        self._peak_seen = 0.0
        self._dd_rebase = False

    @property
    def sizing(self) -> Sizing:
        return self.sizing_rule

    @sizing.setter
    def sizing(self, sizing: Sizing) -> None:
        self.sizing_rule = sizing
        self._atr_sizing = bool(sizing.needs_atr)
        self.symbols.clear()  # the ATR length may differ: rebuilt from the next bars

    @property
    def regime(self) -> str:
        """The market regime now: bull, bear, choppy, crisis or unknown (not warm yet)."""
        return self.detector.regime

    # -- what the gate watches -----------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        """Every live bar, before the strategies see it (per-symbol market state)."""
        symbol = bar.symbol
        lim = self.limits
        # Per-symbol state only when a rule reads it: this runs for every bar of every symbol.
        if lim.htf_factor or lim.min_avg_volume or self._atr_sizing:
            st = self.symbols.get(symbol)
            if st is None or st.htf_factor != lim.htf_factor or (
                    lim.min_avg_volume and st.volume is None):
                st = self.symbols[symbol] = SymbolState(self.sizing_rule.needs_atr,
                                                        lim.htf_factor, lim.htf_sma,
                                                        bool(lim.min_avg_volume))
            st.update(bar)
        detector = self.detector
        if detector.symbol is None:
            detector.symbol = symbol
        if symbol == detector.symbol:
            detector.update(bar)

    def on_trade(self, trade: Trade) -> None:
        """Every closed round trip (per-strategy and per-symbol trade history)."""
        ret = trade_return(trade.qty, trade.entry_price, trade.pnl)
        if ret is not None:
            stats = self.kelly.get(trade.strategy)
            if stats is None:
                stats = self.kelly[trade.strategy] = KellyStats()
            stats.add(ret)
        if trade.pnl < 0:
            last = self.loss_exits.get(trade.symbol, -1)
            if trade.exit_ts > last:
                self.loss_exits[trade.symbol] = trade.exit_ts

    # -- state (the control plane's; read here) -------------------------------------------
    @property
    def state(self) -> TradingState:
        return self.control.state

    @property
    def halt_reason(self) -> str:
        return self.control.reason

    @property
    def stale_reason(self) -> str | None:
        return self.control.stale

    @property
    def market_open(self) -> bool | None:
        """The venue's clock; None = unknown: entries allowed."""
        return self.control.market_open

    def _state_changed(self, old: TradingState, new: TradingState) -> None:
        if new is ACTIVE and old is not ACTIVE:
            # Resumed: the drawdown limit measures from the equity at the next decision on,
            # not from the old peak (or it would stop entries again at once).
            self.hwm, self._dd_rebase = None, True

    def set_instruments(self, instruments: dict[str, Instrument]) -> None:
        """The venue's increments and minimums (the broker executors, at start-up)."""
        self.instruments = dict(instruments)

    def start_phase(self, day: int) -> None:
        """Set the capital ramp's day 1 (a UTC day number); otherwise the first decision
        made with a ramp sets it."""
        self.phase_start_day = day

    def status(self) -> dict[str, Any]:
        """For /status and the periodic log line."""
        day = self.day
        share = self.ramp_share(day) if day >= 0 and self.phase_start_day >= 0 else 1.0
        control = self.control
        return {"state": control.state.value, "reason": control.reason, "regime": self.regime,
                "regime_scale": regime_scale(self.limits, self.regime),
                "volatility_ratio": round(self.detector.ratio, 4),
                "trades_today": self.trades_today, "trades_last_hour": len(self.hour_ts),
                "loss_halted_today": self.loss_halt_day == day >= 0,
                "market_open": control.market_open, "stale": control.stale,
                "capital_share": share}

    # -- persistence ---------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """What a restart must not forget. The three first keys always; the rest only
        while it holds something (snapshots stay small, and so do old ones)."""
        out: dict[str, Any] = {"day": self.day, "trades_today": self.trades_today,
                               "loss_halt_day": self.loss_halt_day}
        lim = self.limits
        if lim.max_daily_loss and self.day_equity is not None:
            out["day_equity"] = self.day_equity
        hour = self.hour_ts
        if hour and lim.max_trades_per_hour:
            last = hour[-1]
            out["hour"] = [t for t in hour if t > last - HOUR_NS]
        if self.loss_exits:
            out["loss_exits"] = dict(self.loss_exits)
        if self.hwm is not None or self._dd_rebase:
            out["drawdown"] = {"hwm": self.hwm, "peak_seen": self._peak_seen,
                               "rebase": self._dd_rebase}
        if self.phase_start_day >= 0:
            out["phase_start_day"] = self.phase_start_day
        if self.kelly:
            out["kelly"] = {k: v.to_list() for k, v in self.kelly.items()}
        return out

    def restore_counters(self, data: dict[str, Any]) -> None:
        self.day = int(data.get("day", -1))
        self.trades_today = int(data.get("trades_today", 0))
        self.loss_halt_day = int(data.get("loss_halt_day", -1))
        # (an older ledger's "state" here is read by the control plane's restore)
        base = data.get("day_equity")
        self.day_equity = float(base) if base is not None else None
        self.hour_ts = deque(sorted(int(t) for t in data.get("hour", ())))
        self.loss_exits = {str(s): int(t) for s, t in data.get("loss_exits", {}).items()}
        dd = data.get("drawdown")
        if dd:
            hwm = dd.get("hwm")
            self.hwm = float(hwm) if hwm is not None else None
            self._peak_seen = float(dd.get("peak_seen", 0.0))
            self._dd_rebase = bool(dd.get("rebase", False))
        self.phase_start_day = int(data.get("phase_start_day", -1))
        self.kelly = {str(k): KellyStats.from_list(v) for k, v in data.get("kelly", {}).items()}

    # -- the decision ------------------------------------------------------------------
    def evaluate(self, signal: Signal, price: float, portfolio: Portfolio,
                 pending: Pending = _NONE, flatten: bool = False) -> Decision:
        """Decide on one signal. ``pending`` holds the signed, not yet filled quantity of
        orders already sent, per (strategy, symbol): limits count them as if filled.
        ``flatten``: an exit the control plane's flatten sends, which no state holds back
        (flattening is what a halt wants)."""
        day = signal.ts // NS_PER_DAY
        if day != self.day:
            self._new_day(day, portfolio)

        key = (signal.strategy, signal.symbol)
        pos = portfolio.positions.get(key)  # Portfolio.position_qty, inline: the hot path
        current = pos.qty if pos is not None else 0.0
        if pending:
            current += pending.get(key, 0.0)
        want = signal.target
        flat = -EPS < current < EPS
        state = self.control.state
        if state is TradingState.DEMOTED or flatten:
            state = ACTIVE  # demoted: decided as usual, the control plane sends it nowhere
        if want is Direction.FLAT:
            if flat:
                return NO_CHANGE
            if state is not ACTIVE:
                blocked = self._held_exit(signal.symbol, -current, portfolio, pending)
                if blocked is not None:
                    return Decision(veto=blocked)
            return Decision((self._intent(signal, -current, price, True),))
        if not flat and (current > 0) == (want is Direction.LONG):
            return NO_CHANGE  # already on that side: a repeated signal adds nothing
        if state is not ACTIVE:
            blocked = self._held_exit(signal.symbol, -current, portfolio, pending) \
                if not flat else None
            if blocked is not None or state is HALTED:
                return Decision(veto=blocked or self._halted().veto)
        exit_leg = () if flat else (self._intent(signal, -current, price, True),)
        regime = self.last_regime = self.detector.regime
        qty = self._entry(signal, price, portfolio, pending, day, 0.0 if flat else -current)
        if isinstance(qty, str):
            return Decision(exit_leg, qty, regime)
        return Decision((*exit_leg, self._intent(signal, qty * int(want), price, False)), None,
                        regime)

    def _new_day(self, day: int, portfolio: Portfolio) -> None:
        self.day, self.trades_today = day, 0
        self.day_equity = portfolio.day_start_equity if portfolio.day == day \
            else portfolio.equity
        if self.phase_start_day < 0 and self.limits.ramp_start > 0:
            self.phase_start_day = day  # the phase's first decision: day 1 of the ramp

    def count_order(self, ts: int, portfolio: Portfolio) -> None:
        """An order decided at bar time ``ts`` that the restored counters do not hold (the
        daemon stopped before its next snapshot): counted as a decision counts it."""
        day = ts // NS_PER_DAY
        if day < self.day:
            return  # an earlier day's order: that day's count is over
        if day > self.day:
            self._new_day(day, portfolio)
        self.trades_today += 1
        hour = self.hour_ts
        if hour and hour[-1] > ts:  # orders of several symbols: bar times need not rise
            hour = self.hour_ts = deque(sorted((*hour, ts)))
        else:
            hour.append(ts)
        while hour[0] <= hour[-1] - HOUR_NS:  # as a decision trims it
            hour.popleft()

    def _held_exit(self, symbol: str, delta: float, pf: Portfolio,
                   pending: Pending) -> str | None:
        """Why an exit may not go in the current state: never while halted; while
        reducing, only when it would raise the symbol's net position (another strategy
        holds the other side), as that adds exposure."""
        if self.control.state is HALTED:
            return self._halted().veto
        net = pf.net.get(symbol, 0.0)
        net += pending.by_symbol.get(symbol, 0.0)
        if abs(net + delta) > abs(net) + EPS:
            return (f"reducing: {self.halt_reason}; this exit would raise the net position "
                    f"in {symbol} from {net:g} to {net + delta:g}")
        return None

    def _halted(self) -> Decision:
        return Decision(veto=f"halted: {self.halt_reason or 'trading is halted'}")

    def _intent(self, signal: Signal, delta: float, price: float,
                reduce_only: bool) -> OrderIntent:
        side = Side.BUY if delta > 0 else Side.SELL
        self.trades_today += 1
        hour = self.hour_ts
        ts = signal.ts
        while hour and hour[0] <= ts - HOUR_NS:
            hour.popleft()
        hour.append(ts)
        return OrderIntent(
            client_order_id(self.bot, signal.strategy, signal.symbol, signal.ts, side,
                            reduce_only),
            signal.strategy, signal.symbol, side, abs(delta), signal.ts, price, reduce_only,
            signal.reason,
        )
