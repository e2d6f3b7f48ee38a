"""The RiskGate turns a Signal into a sized OrderIntent, or a veto with its reason.

A signal names the position a strategy wants (long, flat, short). The gate sizes that
position, works out the orders that get there from the strategy's current holding and
checks them against the phase's limits. A reversal (long to short, or back) is two
orders: a reduce-only exit to flat, then the entry, because venues treat a sell that
crosses zero as a new short and some refuse it outright. Orders that only reduce
exposure are never blocked by entry limits; only a halt stops them. When the entry of a
reversal is blocked, the exit still goes through, so a strategy is never left holding
the side it just turned against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from quantshift.domain import (
    NS_PER_DAY,
    Bar,
    Direction,
    Instrument,
    OrderIntent,
    Side,
    Signal,
    Trade,
    client_order_id,
)
from quantshift.portfolio import Portfolio
from quantshift.risk.profiles import RiskLimits
from quantshift.risk.sizing import Sizing, position_size

ACTIVE = "active"
HALTED = "halted"
_EPS = 1e-9


@dataclass(slots=True)
class Decision:
    """The gate's answer: the orders to send (an exit, an entry, or both) and any veto."""

    intents: tuple[OrderIntent, ...] = ()
    veto: str | None = None


NO_CHANGE = Decision()
_NONE: Mapping[tuple[str, str], float] = MappingProxyType({})


def _nets(portfolio: Portfolio, pending: Mapping[tuple[str, str], float]) -> dict[str, float]:
    """Net quantity per symbol, counting orders sent but not yet filled."""
    nets = dict(portfolio.net)
    for (_, symbol), qty in pending.items():
        nets[symbol] = nets.get(symbol, 0.0) + qty
    return nets


class RiskGate:
    def __init__(self, bot: str, limits: RiskLimits, sizing: Sizing, fractional: bool) -> None:
        self.bot = bot
        self.limits = limits
        self.sizing = sizing
        self.fractional = fractional
        self.state = ACTIVE
        self.halt_reason = ""
        self.day = -1
        self.trades_today = 0
        self.loss_halt_day = -1  # the day the daily-loss limit stopped entries
        self.instruments: dict[str, Instrument] = {}  # the venue's increments and minimums
        self.stale_reason: str | None = None  # set while the feed is stale: entries stop

    # -- what the gate watches -----------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        """Every live bar, before the strategies see it (per-symbol market state)."""

    def on_trade(self, trade: Trade) -> None:
        """Every closed round trip (per-strategy and per-symbol trade history)."""

    # -- state -------------------------------------------------------------------------
    def halt(self, reason: str) -> None:
        self.state, self.halt_reason = HALTED, reason

    def resume(self) -> None:
        self.state, self.halt_reason = ACTIVE, ""

    def counters(self) -> dict[str, Any]:
        return {"day": self.day, "trades_today": self.trades_today,
                "loss_halt_day": self.loss_halt_day}

    def restore_counters(self, data: dict[str, Any]) -> None:
        self.day = int(data.get("day", -1))
        self.trades_today = int(data.get("trades_today", 0))
        self.loss_halt_day = int(data.get("loss_halt_day", -1))

    # -- the decision ------------------------------------------------------------------
    def evaluate(self, signal: Signal, price: float, portfolio: Portfolio,
                 pending: Mapping[tuple[str, str], float] = _NONE) -> Decision:
        """Decide on one signal. ``pending`` holds the signed, not yet filled quantity of
        orders already sent, per (strategy, symbol): limits count them as if filled."""
        day = signal.ts // NS_PER_DAY
        if day != self.day:
            self.day, self.trades_today = day, 0

        current = portfolio.position_qty(signal.strategy, signal.symbol)
        if pending:
            current += pending.get((signal.strategy, signal.symbol), 0.0)
        want = signal.target
        if want is Direction.FLAT:
            target = 0.0
        elif (current > _EPS and want is Direction.LONG) or (
                current < -_EPS and want is Direction.SHORT):
            return NO_CHANGE  # already on that side: a repeated signal adds nothing
        else:
            qty = position_size(self.sizing, price, portfolio.equity, self.fractional)
            instrument = self.instruments.get(signal.symbol)
            if instrument is not None:
                qty = instrument.floor_qty(qty)
            if qty <= 0:
                return Decision(veto=f"size rounds to zero ({self.sizing} at {price:g})")
            if instrument is not None:
                small = instrument.below_minimum(qty, price)
                if small is not None:
                    return Decision(veto=f"below venue minimum: {small}")
            target = qty * int(want)
        if abs(target - current) < _EPS:
            return NO_CHANGE

        if self.state == HALTED:
            return Decision(veto=f"halted: {self.halt_reason or 'trading is halted'}")

        crosses = abs(current) > _EPS and (target == 0 or (target > 0) != (current > 0))
        if abs(target) < abs(current) and not crosses:  # trims the position: an exit
            return Decision((self._intent(signal, target - current, price, True),))
        exit_leg = (self._intent(signal, -current, price, True),) if crosses else ()
        if target == 0:
            return Decision(exit_leg)
        reason = self._entry_veto(signal.symbol, 0.0 if crosses else current, target, price,
                                  portfolio, pending, day, -current if crosses else 0.0)
        if reason is not None:
            return Decision(exit_leg, reason)
        delta = target if crosses else target - current
        return Decision((*exit_leg, self._intent(signal, delta, price, False)))

    def _entry_veto(self, symbol: str, current: float, target: float, price: float,
                    portfolio: Portfolio, pending: Mapping[tuple[str, str], float], day: int,
                    exiting: float) -> str | None:
        """Why the entry to ``target`` may not go, if it may not. ``exiting`` is the
        quantity an exit leg sent just before takes off the symbol's net position."""
        lim = self.limits
        if self.stale_reason is not None:
            return f"feed stale: {self.stale_reason}; entries stop until fresh bars arrive"
        if lim.max_daily_loss and (self.loss_halt_day == day
                                   or portfolio.day_pnl <= -lim.max_daily_loss):
            self.loss_halt_day = day
            return (f"daily loss limit: day P&L {portfolio.day_pnl:.2f} <= "
                    f"-{lim.max_daily_loss:g}; entries halted for the day")
        if lim.max_trades_per_day and self.trades_today >= lim.max_trades_per_day:
            return f"max trades per day: {self.trades_today} >= {lim.max_trades_per_day}"
        notional = abs(target) * price
        if lim.max_position_notional and notional > lim.max_position_notional:
            return (f"max position notional: {notional:.2f} > "
                    f"{lim.max_position_notional:g}")
        nets = _nets(portfolio, pending)
        before = nets.get(symbol, 0.0)
        net = before + exiting
        new_net = net - current + target
        marks = portfolio.marks
        if lim.max_exposure:
            exposure = sum(abs(q) * marks.get(s, price) for s, q in nets.items() if s != symbol)
            exposure += abs(new_net) * price
            if exposure > lim.max_exposure + _EPS:
                return f"max exposure: {exposure:.2f} > {lim.max_exposure:g}"
        if lim.max_open_positions and abs(net) < _EPS and abs(new_net) > _EPS:
            opened = 1 + sum(1 for s, q in nets.items() if s != symbol and abs(q) > _EPS)
            if opened > lim.max_open_positions:
                return f"max open positions: {opened} > {lim.max_open_positions}"
        return None

    def _intent(self, signal: Signal, delta: float, price: float,
                reduce_only: bool) -> OrderIntent:
        side = Side.BUY if delta > 0 else Side.SELL
        self.trades_today += 1
        return OrderIntent(
            client_order_id(self.bot, signal.strategy, signal.symbol, signal.ts, side,
                            reduce_only),
            signal.strategy, signal.symbol, side, abs(delta), signal.ts, price, reduce_only,
            signal.reason,
        )
