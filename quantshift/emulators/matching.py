"""A small venue-agnostic matching engine shared by the broker emulators.

One account (cash and signed positions with an average entry price), orders (market
orders fill at the last bar's close, limit orders when a new bar crosses the limit; stop
orders and orders with legs in ``brackets``), fills, bar history for REST backfill, and
listeners told about every new bar and every order update. The venue servers translate
it to each broker's wire shapes.

Not thread-safe: drive it from the event loop that runs the emulator.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from quantshift.emulators.barfeed import BarFeed
from quantshift.emulators.bars import (
    Bar,
    RandomWalk,
    decimals,
    floor_step,
    on_step,
    read_csv,
)
from quantshift.emulators.brackets import Legs
from quantshift.emulators.faults import Fault, Faults
from quantshift.emulators.orders import (
    OPEN_STATES,
    ORDER_CLASSES,
    STATES,
    TIME_IN_FORCE,
    Account,
    Fill,
    Instrument,
    Listener,
    Order,
    OrderError,
    OrderEvent,
    Position,
    symbols_or_default,
)

__all__ = ["OPEN_STATES", "ORDER_CLASSES", "STATES", "Bar", "Fault", "Faults", "Fill",
           "Instrument", "MatchingEngine", "Order", "OrderError", "OrderEvent", "Position",
           "symbols_or_default"]

log = logging.getLogger("quantshift.emulators")


class MatchingEngine(Legs, BarFeed):
    """One venue's book. Bars: ``prime()``, ``run()`` (the timed loop), ``step()``,
    ``push(symbol, close, ...)``, ``bars(symbol, start, end, timeframe)``; ``history``,
    ``last``. Orders: ``submit(...)`` (raises OrderError), ``get``, ``by_client_order_id``,
    ``open_orders``, ``cancel``, ``cancel_all``, ``fill`` (by hand, partly), ``fill_rest``;
    ``orders``, ``by_client``, ``by_seq``, ``fills``. Account: ``account`` (cash,
    positions, realized_pnl), ``set_position``, ``position_qty``, ``equity``. Market:
    ``is_open``/``set_open``. ``faults``, ``add_listener``/``remove_listener``, ``state()``.
    """

    def __init__(self, instruments: Iterable[Instrument], *, interval: float = 1.0,
                 data: str | Path | None = None, seed: int = 1, cash: float = 100_000.0,
                 allow_short: bool = True, warmup: int = 100, history: int = 20_000,
                 volatility: float = 0.002) -> None:
        if not interval > 0:
            raise ValueError("interval must be > 0")
        self.instruments: dict[str, Instrument] = {i.symbol: i for i in instruments}
        if not self.instruments:
            raise ValueError("at least one instrument is needed")
        self.interval = float(interval)
        self.allow_short = allow_short
        self.account = Account(float(cash))
        self.faults = Faults()
        self.is_open = True
        self.orders: dict[str, Order] = {}
        self.by_client: dict[str, Order] = {}
        self.by_seq: dict[int, Order] = {}
        self.fills: list[Fill] = []
        self.history: dict[str, deque[Bar]] = {s: deque(maxlen=history) for s in self.instruments}
        self.last: dict[str, float] = {}
        self.last_bar_time: float | None = None
        self.bars_emitted = 0
        self.listeners: list[Listener] = []
        self.errors: deque[dict[str, Any]] = deque(maxlen=50)
        self.error_count = 0
        self._logged: set[tuple[str, str]] = set()
        self._warmup = warmup
        self._primed = False
        self._rng = random.Random(f"ids:{seed}")
        self._seq = 0
        self._fill_seq = 0
        symbols = list(self.instruments)
        self._rounds: deque[list[Bar]] | None = None
        self.walk: RandomWalk | None = None
        self.bar_seconds = self.interval  # what one bar spans (a CSV's own spacing)
        if data is not None:
            self._rounds = deque(read_csv(data, symbols))
            if not self._rounds:
                raise ValueError(f"{data}: no usable bars for {', '.join(symbols)}")
            times = [r[0].time for r in self._rounds]
            gaps = [b - a for a, b in itertools.pairwise(times) if b > a]
            self.bar_seconds = min(gaps) if gaps else self.interval
            for rnd in self._rounds:
                for bar in rnd:
                    self.last.setdefault(bar.symbol, bar.open)
        else:
            self.walk = RandomWalk(
                symbols, seed, volatility,
                {s: i.price_step for s, i in self.instruments.items()},
                {s: i.start_price for s, i in self.instruments.items() if i.start_price})
            self.last.update(self.walk.last)

    def _on_bar(self, bar: Bar) -> None:
        if bar.symbol not in self.instruments:
            return
        self.history[bar.symbol].append(bar)
        self.last[bar.symbol] = bar.close
        self.last_bar_time = bar.time
        self.bars_emitted += 1
        self._notify(bar)
        # Only what works now: a leg that a fill below sets to work waits for the next bar.
        for order in self.match_order([o for o in self.orders.values()
                                       if o.symbol == bar.symbol]):
            if order.working:  # a sibling's fill may have cancelled it
                self._match(order, bar)

    # -- orders -------------------------------------------------------------------------

    def submit(self, symbol: str, side: str, qty: float | None = None, *,
               type: str = "market", limit_price: float | None = None,
               time_in_force: str = "day", client_order_id: str | None = None,
               notional: float | None = None, partial: float | None = None,
               reject: bool = False, order_class: str = "simple",
               take_profit: float | None = None, stop_loss: float | None = None,
               stop_limit: float | None = None) -> Order:
        """Validate, create and (if it can) match an order. Raises OrderError.

        ``order_class`` bracket or oto: an entry with legs at ``take_profit`` (a limit)
        and/or ``stop_loss`` (a stop; a stop-limit with ``stop_limit``); oco: a limit at
        ``take_profit`` with a stop leg, closing a position (see ``brackets``)."""
        inst = self.instruments.get(symbol)
        if inst is None:
            raise OrderError("unknown_symbol", f"unknown symbol {symbol!r}")
        if side not in ("buy", "sell"):
            raise OrderError("invalid", f"invalid side {side!r}")
        if type not in ("market", "limit"):
            raise OrderError("invalid", f"unsupported order type {type!r}")
        if time_in_force not in TIME_IN_FORCE:
            raise OrderError("invalid", f"invalid time_in_force {time_in_force!r}")
        if client_order_id is not None and client_order_id in self.by_client:
            raise OrderError("duplicate", f"client order id {client_order_id!r} already used")
        last = self.last[symbol]
        if order_class == "oco" and take_profit is not None:
            limit_price = take_profit  # the oco order is its take-profit
        if notional is not None:
            if qty is not None:
                raise OrderError("invalid", "give qty or notional, not both")
            if not notional > 0:
                raise OrderError("invalid_qty", "notional must be > 0")
            qty = floor_step(notional / last, inst.qty_step)
        if qty is None or not math.isfinite(qty) or qty <= 0:
            raise OrderError("invalid_qty", "qty must be > 0")
        if not on_step(qty, inst.qty_step):
            raise OrderError("invalid_qty", f"qty {qty:g} is not a multiple of {inst.qty_step:g}")
        if qty < inst.min_qty - 1e-12:
            raise OrderError("invalid_qty", f"qty {qty:g} is below the minimum {inst.min_qty:g}")
        if type == "limit":
            if limit_price is None or not math.isfinite(limit_price) or limit_price <= 0:
                raise OrderError("invalid_price", "limit_price is required and must be > 0")
            if not on_step(limit_price, inst.price_step):
                raise OrderError("invalid_price", f"price {limit_price:g} is not a multiple "
                                                  f"of {inst.price_step:g}")
        elif limit_price is not None:
            raise OrderError("invalid_price", "a market order takes no limit_price")
        ref = limit_price if type == "limit" else last
        if qty * ref < inst.min_notional - 1e-9:  # type: ignore[operator]
            raise OrderError("min_notional", f"order value {qty * ref:.2f} is below the "  # type: ignore[operator]
                                             f"minimum {inst.min_notional:g}")
        if order_class != "simple":
            # The base price: an entry's limit, else (a market entry, an oco) the last.
            base = limit_price if type == "limit" and order_class != "oco" else last
            self.check_legs(order_class, side, type, qty, time_in_force, base,  # type: ignore[arg-type]
                            take_profit, stop_loss, stop_limit)
        if order_class != "oco":  # an oco closes a position: it holds shares, not cash
            self._check_funds(symbol, side, qty, ref)  # type: ignore[arg-type]
        order = self._new_order(symbol, side, type, qty, time_in_force, limit_price, notional,
                                client_order_id, order_class=order_class)
        legs = self._add_legs(order, take_profit, stop_loss, stop_limit) \
            if order_class != "simple" else []
        if not self.is_open:
            order.status = "accepted"
        self._event("new", order)  # it carries its (held) legs
        for leg in legs:
            if leg.status == "new":
                self._event("new", leg)
        if reject:
            order.status, order.failed_at, order.reason = "rejected", time.time(), \
                "rejected by fault"
            self._event("rejected", order)
            self._after_finish(order, "rejected")
            return order
        if not self.is_open:
            return order
        if type == "market":
            part = qty
            if partial is not None:
                part = floor_step(qty * partial, inst.qty_step)
                part = min(max(part, inst.qty_step), qty)
            self._fill(order, part, last)
        elif (side == "buy" and limit_price >= last) or (  # type: ignore[operator]
                side == "sell" and limit_price <= last):  # type: ignore[operator]
            self._fill(order, qty, last)
        elif time_in_force in ("ioc", "fok"):
            self._finish(order, "expired")
        return order

    def _check_funds(self, symbol: str, side: str, qty: float, price: float) -> None:
        open_orders = [o for o in self.orders.values() if o.is_open]
        if side == "buy":
            reserved = sum(o.remaining * (o.limit_price or self.last[o.symbol])
                           for o in open_orders if o.side == "buy" and not o.protective)
            if qty * price + reserved > self.account.cash + 1e-6:
                raise OrderError("insufficient_funds", "insufficient buying power")
        elif not self.allow_short:
            pos = self.account.positions.get(symbol)
            held = pos.qty if pos else 0.0
            reserved = sum(o.remaining for o in open_orders
                           if o.side == "sell" and o.symbol == symbol)
            if qty + reserved > held + 1e-12:
                raise OrderError("insufficient_funds", "insufficient balance")

    def get(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise OrderError("not_found", f"order {order_id} not found")
        return order

    def by_client_order_id(self, client_order_id: str) -> Order:
        order = self.by_client.get(client_order_id)
        if order is None:
            raise OrderError("not_found", f"order with client id {client_order_id} not found")
        return order

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        return [o for o in self.orders.values()
                if o.is_open and (symbol is None or o.symbol == symbol)]

    def cancel(self, order_id: str) -> Order:
        order = self.get(order_id)
        if not order.is_open:
            raise OrderError("not_cancelable", f"order is already in {order.status!r} state")
        self._finish(order, "canceled")
        return order

    def cancel_all(self) -> list[Order]:
        before = self.open_orders()
        for order in before:
            if order.is_open:  # cancelling one of a group may have cancelled it already
                self._finish(order, "canceled")
        return [o for o in before if o.status == "canceled"]

    def fill(self, order_id: str, qty: float | None = None, price: float | None = None) -> Fill:
        """Fill (part of) an open order by hand, at ``price`` or the last close."""
        order = self.get(order_id)
        if not order.working:
            raise OrderError("not_cancelable", f"order is in {order.status!r} state")
        qty = order.remaining if qty is None else min(qty, order.remaining)
        if not qty > 0:
            raise OrderError("invalid_qty", "qty must be > 0")
        return self._fill(order, qty, self.last[order.symbol] if price is None else price)

    def fill_rest(self) -> list[Fill]:
        """Fill what remains of every open market order at the last close."""
        return [self._fill(o, o.remaining, self.last[o.symbol])
                for o in self.open_orders() if o.type == "market" and o.remaining > 0]

    def set_open(self, is_open: bool) -> None:
        """Open or close the market; closing expires the open day orders."""
        self.is_open = bool(is_open)
        if not self.is_open:
            for order in self.open_orders():
                if order.is_open and order.time_in_force == "day":
                    self._finish(order, "expired")

    def set_position(self, symbol: str, qty: float, avg_price: float) -> Position | None:
        """Change a position by hand (cash untouched); qty 0 removes it."""
        if symbol not in self.instruments:
            raise OrderError("unknown_symbol", f"unknown symbol {symbol!r}")
        if not (math.isfinite(qty) and math.isfinite(avg_price)) or avg_price < 0:
            raise OrderError("invalid", "qty and avg_price must be finite, avg_price >= 0")
        if abs(qty) < 1e-12:
            self.account.positions.pop(symbol, None)
            return None
        pos = Position(symbol, float(qty), float(avg_price))
        self.account.positions[symbol] = pos
        return pos

    def position_qty(self, symbol: str) -> float:
        pos = self.account.positions.get(symbol)
        return pos.qty if pos else 0.0

    def _fill(self, order: Order, qty: float, price: float) -> Fill:
        inst = self.instruments[order.symbol]
        price = round(price, decimals(inst.price_step) + 4)
        signed = qty if order.side == "buy" else -qty
        acct = self.account
        pos = acct.positions.get(order.symbol) or Position(order.symbol, 0.0, 0.0)
        if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
            new_qty = pos.qty + signed
            pos.avg_price = (pos.avg_price * abs(pos.qty) + price * qty) / abs(new_qty)
        else:
            closed = min(abs(signed), abs(pos.qty))
            acct.realized_pnl += closed * (price - pos.avg_price) * (1 if pos.qty > 0 else -1)
            new_qty = pos.qty + signed
            if abs(new_qty) > 1e-12 and (new_qty > 0) != (pos.qty > 0):
                pos.avg_price = price
        pos.qty = round(new_qty, 12)
        if abs(pos.qty) < 1e-12:
            acct.positions.pop(order.symbol, None)
        else:
            acct.positions[order.symbol] = pos
        acct.cash = round(acct.cash - signed * price, 8)
        prev = order.filled_qty
        order.filled_qty = round(prev + qty, 12)
        order.filled_avg_price = ((order.filled_avg_price or 0.0) * prev + price * qty) \
            / order.filled_qty
        now = time.time()
        order.updated_at = now
        order.status = "filled" if order.remaining <= 1e-12 else "partially_filled"
        if order.status == "filled":
            order.filled_at = now
        self._fill_seq += 1
        fill = Fill(f"{self._fill_seq}", self._fill_seq, order.id, order.seq,
                    order.client_order_id, order.symbol, order.side, qty, price, now,
                    order.filled_qty, order.remaining, order.status, pos.qty
                    if order.symbol in acct.positions else 0.0)
        self.fills.append(fill)
        self._event("fill" if order.status == "filled" else "partial_fill", order, fill)
        self._after_fill(order)  # legs go to work, or a filled leg cancels its sibling
        return fill

    def _finish(self, order: Order, status: str) -> None:
        now = time.time()
        order.status, order.updated_at = status, now
        if status == "canceled":
            order.canceled_at = now
        elif status == "expired":
            order.expired_at = now
        self._event(status, order)
        self._after_finish(order, status)

    # -- listeners and state --------------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        self.listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        if fn in self.listeners:
            self.listeners.remove(fn)

    def _event(self, name: str, order: Order, fill: Fill | None = None) -> None:
        self._notify(OrderEvent(name, order, time.time(), fill, self.position_qty(order.symbol)))

    def _notify(self, item: Bar | OrderEvent) -> None:
        for fn in list(self.listeners):
            try:
                fn(item)
            except Exception as exc:
                self.report("emulator listener", exc)

    def report(self, where: str, exc: BaseException) -> None:
        """Record an internal error. Its traceback is logged once per kind, so a stderr
        that nobody reads (a pipe) cannot fill up and stall the emulator."""
        self.error_count += 1
        self.errors.append({"where": where, "error": repr(exc), "time": time.time()})
        key = (where, type(exc).__name__)
        if key not in self._logged:
            self._logged.add(key)
            log.error("%s failed (more of this kind are only counted in /_emulator/state)",
                      where, exc_info=exc)

    def equity(self) -> float:
        return self.account.cash + sum(p.qty * self.last.get(s, p.avg_price)
                                       for s, p in self.account.positions.items())

    def state(self) -> dict[str, Any]:
        acct = self.account
        return {
            "time": time.time(),
            "is_open": self.is_open,
            "interval": self.interval,
            "cash": acct.cash,
            "equity": self.equity(),
            "realized_pnl": acct.realized_pnl,
            "positions": {s: p.as_dict() for s, p in acct.positions.items()},
            "last_prices": dict(self.last),
            "last_bar_time": self.last_bar_time,
            "bars_emitted": self.bars_emitted,
            "data_left": None if self._rounds is None else len(self._rounds),
            "orders": [o.as_dict() for o in self.orders.values()],
            "fills": [f.as_dict() for f in self.fills],
            "faults": [f.as_dict() for f in self.faults.pending()],
            "faults_fired": list(self.faults.fired),
            "error_count": self.error_count,
            "errors": list(self.errors),
        }
