"""The RiskGate turns a Signal into a sized OrderIntent, or a veto with its reason.

A signal names the position a strategy wants (long, flat, short). The gate sizes that
position, works out the order that gets there from the strategy's current holding and
checks it against the phase's limits. Orders that only reduce exposure are never
blocked by entry limits; only a halt stops them. When a reversal (long to short, or
back) is blocked, the exit half still goes through, so a strategy is never left
holding the side it just turned against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quantshift.domain import (
    NS_PER_DAY,
    Direction,
    OrderIntent,
    Side,
    Signal,
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
    """The gate's answer: an intent, a veto, or both (a blocked reversal exits)."""

    intent: OrderIntent | None = None
    veto: str | None = None


NO_CHANGE = Decision()


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
    def evaluate(self, signal: Signal, price: float, portfolio: Portfolio) -> Decision:
        day = signal.ts // NS_PER_DAY
        if day != self.day:
            self.day, self.trades_today = day, 0

        current = portfolio.position_qty(signal.strategy, signal.symbol)
        want = signal.target
        if want is Direction.FLAT:
            target = 0.0
        elif (current > _EPS and want is Direction.LONG) or (
                current < -_EPS and want is Direction.SHORT):
            return NO_CHANGE  # already on that side: a repeated signal adds nothing
        else:
            qty = position_size(self.sizing, price, portfolio.equity, self.fractional)
            if qty <= 0:
                return Decision(veto=f"size rounds to zero ({self.sizing} at {price:g})")
            target = qty * int(want)
        if abs(target - current) < _EPS:
            return NO_CHANGE

        if self.state == HALTED:
            return Decision(veto=f"halted: {self.halt_reason or 'trading is halted'}")

        reduces = abs(target) < abs(current) and (target == 0 or (target > 0) == (current > 0))
        if reduces:
            return Decision(intent=self._intent(signal, target - current, price, True))

        reason = self._entry_veto(signal.symbol, current, target, price, portfolio, day)
        if reason is None:
            return Decision(intent=self._intent(signal, target - current, price, False))
        if abs(current) > _EPS:  # a blocked reversal: take the exit half alone
            return Decision(intent=self._intent(signal, -current, price, True,
                                                f"exit only: {reason}"), veto=reason)
        return Decision(veto=reason)

    def _entry_veto(self, symbol: str, current: float, target: float, price: float,
                    portfolio: Portfolio, day: int) -> str | None:
        lim = self.limits
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
        net = portfolio.net.get(symbol, 0.0)
        new_net = net - current + target
        if lim.max_exposure:
            exposure = portfolio.exposure() - abs(net) * portfolio.marks.get(symbol, price) \
                + abs(new_net) * price
            if exposure > lim.max_exposure + _EPS:
                return f"max exposure: {exposure:.2f} > {lim.max_exposure:g}"
        if lim.max_open_positions and abs(net) < _EPS and abs(new_net) > _EPS:
            opened = portfolio.open_symbols() + 1
            if opened > lim.max_open_positions:
                return f"max open positions: {opened} > {lim.max_open_positions}"
        return None

    def _intent(self, signal: Signal, delta: float, price: float, reduce_only: bool,
                reason: str | None = None) -> OrderIntent:
        side = Side.BUY if delta > 0 else Side.SELL
        self.trades_today += 1
        return OrderIntent(
            client_order_id(self.bot, signal.strategy, signal.symbol, signal.ts, side),
            signal.strategy, signal.symbol, side, abs(delta), signal.ts, price, reduce_only,
            reason or signal.reason,
        )
