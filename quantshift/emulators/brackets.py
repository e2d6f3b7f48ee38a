"""Stop orders and orders with legs for the matching engine, as Alpaca runs them.

* ``bracket``: an entry (market or limit) with a take-profit (limit) and a stop-loss (stop,
  or stop-limit with a limit price) on the other side; ``oto``: an entry with one of them.
  The legs wait (``held``) until the entry is filled, then work (``new``). An entry
  cancelled unfilled takes its legs with it; one cancelled part-filled leaves them working
  for the quantity filled.
* ``oco``: a take-profit (the order itself, a limit) and a stop-loss (its leg) on a
  position already held; both work at once.
* The orders of one group cancel each other: a leg that fills cancels the other, and
  cancelling one cancels the other.

Prices are checked as Alpaca checks them: the take-profit must be better than the base
price (the entry's limit, or the last price for a market entry) by at least a cent and
the stop worse by at least a cent, on the tick (0.01 at or above $1, 0.0001 below).
"""

from __future__ import annotations

import math
import time
import uuid
from random import Random
from typing import Any

from quantshift.emulators.bars import Bar
from quantshift.emulators.orders import ORDER_CLASSES, Fill, Order, OrderError

_STOPS = ("stop", "stop_limit")


def on_tick(price: float) -> bool:
    tick = 0.01 if price >= 1.0 else 0.0001
    return abs(price / tick - round(price / tick)) < 1e-6


class Legs:
    """Mixed into the MatchingEngine (which provides these attributes and methods)."""

    orders: dict[str, Order]
    by_client: dict[str, Order]
    by_seq: dict[int, Order]
    last: dict[str, float]
    _rng: Random
    _seq: int

    def _fill(self, order: Order, qty: float, price: float) -> Fill: ...  # type: ignore[empty-body]

    def _finish(self, order: Order, status: str) -> None: ...

    def _event(self, name: str, order: Order, fill: Fill | None = None) -> None: ...

    # -- checks ---------------------------------------------------------------------------

    def check_legs(self, order_class: str, side: str, type: str, qty: float,
                   time_in_force: str, base: float, take_profit: float | None,
                   stop_loss: float | None, stop_limit: float | None) -> None:
        """Refuse (OrderError) an order with legs that Alpaca would refuse."""
        if order_class not in ORDER_CLASSES:
            raise OrderError("invalid", f"invalid order_class {order_class!r}")
        if order_class == "oco":
            if type != "limit":
                raise OrderError("invalid_legs", "oco orders must be limit orders")
        elif type not in ("market", "limit"):
            raise OrderError("invalid_legs", f"{order_class} orders must be market or limit "
                                             f"orders")
        if time_in_force not in ("day", "gtc"):
            raise OrderError("invalid_legs", f"{order_class} orders must be day or gtc orders")
        if qty % 1:
            raise OrderError("invalid_legs", "fractional orders must be simple orders")
        need = ("take_profit", "stop_loss") if order_class != "oto" else ()
        given = {"take_profit": take_profit, "stop_loss": stop_loss}
        for name in need:
            if given[name] is None:
                raise OrderError("invalid_legs", f"{order_class} orders require {name}")
        if take_profit is None and stop_loss is None:
            raise OrderError("invalid_legs", "oto orders require take_profit or stop_loss")
        for price in (take_profit, stop_loss, stop_limit):
            if price is not None and (not math.isfinite(price) or price <= 0):
                raise OrderError("invalid_legs", "leg prices must be > 0")
            if price is not None and not on_tick(price):
                raise OrderError("invalid_legs", "sub-penny increment does not fulfill "
                                                 "minimum pricing criteria")
        # +1: the legs close a long (they sell); -1: they close a short.
        s = (1 if side == "buy" else -1) * (-1 if order_class == "oco" else 1)
        above, below = ">= base_price + 0.01", "<= base_price - 0.01"
        if take_profit is not None and (take_profit - base) * s < 0.01 - 1e-9:
            raise OrderError("invalid_legs", "take_profit.limit_price must be "
                                             f"{above if s > 0 else below}")
        if stop_loss is not None and (base - stop_loss) * s < 0.01 - 1e-9:
            raise OrderError("invalid_legs", "stop_loss.stop_price must be "
                                             f"{below if s > 0 else above}")
        if stop_limit is not None:
            if stop_loss is None:
                raise OrderError("invalid_legs", "stop_loss.limit_price needs a stop_price")
            if (stop_loss - stop_limit) * s < 0:
                raise OrderError("invalid_legs", "stop_loss.limit_price must be "
                                                 f"{'<=' if s > 0 else '>='} "
                                                 "stop_loss.stop_price")

    # -- legs -----------------------------------------------------------------------------

    def _new_order(self, symbol: str, side: str, type: str, qty: float, time_in_force: str,
                   limit_price: float | None, notional: float | None,
                   client_order_id: str | None, **extra: Any) -> Order:
        now = time.time()
        self._seq += 1
        oid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        order = Order(oid, self._seq, client_order_id or self._client_id(), symbol, side,
                      type, qty, time_in_force, limit_price, notional, "new",
                      created_at=now, updated_at=now, **extra)
        self.orders[oid] = order
        self.by_client[order.client_order_id] = order
        self.by_seq[order.seq] = order
        return order

    def _client_id(self) -> str:
        return "emu-" + "".join(self._rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                                for _ in range(20))

    def _add_legs(self, parent: Order, take_profit: float | None, stop_loss: float | None,
                  stop_limit: float | None) -> list[Order]:
        """Create the legs of ``parent``: held for an entry, working for an oco. Leg client
        order ids are the venue's own (Alpaca assigns them)."""
        cls = parent.order_class
        side = parent.side if cls == "oco" else ("sell" if parent.side == "buy" else "buy")
        status = "new" if cls == "oco" else "held"
        made = []
        if take_profit is not None and cls != "oco":
            made.append(("limit", take_profit, None))
        if stop_loss is not None:
            made.append(("stop_limit" if stop_limit is not None else "stop", stop_limit,
                         stop_loss))
        legs = []
        for type, limit, stop in made:
            leg = self._new_order(parent.symbol, side, type, parent.qty, parent.time_in_force,
                                  limit, None, str(uuid.UUID(int=self._rng.getrandbits(128),
                                                             version=4)),
                                  order_class=cls, stop_price=stop, parent_id=parent.id)
            leg.status = status
            parent.legs.append(leg.id)
            legs.append(leg)
        return legs

    def legs_of(self, order: Order) -> list[Order]:
        return [self.orders[i] for i in order.legs]

    def _group(self, order: Order) -> list[Order]:
        """The orders that cancel each other with ``order`` (itself included)."""
        root = self.orders.get(order.parent_id) if order.parent_id else order
        if root is None:
            return [order]
        legs = self.legs_of(root)
        return [root, *legs] if root.order_class == "oco" else legs

    def reserved(self, symbol: str, side: str) -> float:
        """The quantity that working orders on ``side`` already hold; the orders of one
        group hold it once (only one of them can fill)."""
        held: dict[str, float] = {}
        for o in self.orders.values():
            if o.symbol == symbol and o.side == side and o.working:
                key = o.parent_id or o.id  # a group's root
                held[key] = max(held.get(key, 0.0), o.remaining)
        return sum(held.values())

    def _after_fill(self, order: Order) -> None:
        if order.status != "filled":
            return
        if order.legs and order.order_class != "oco":  # the entry is in: its legs work
            for leg in self.legs_of(order):
                if leg.status == "held":
                    leg.status, leg.updated_at = "new", time.time()
                    self._event("new", leg)
            return
        for other in self._group(order):
            if other is not order and other.is_open:
                self._finish(other, "canceled")

    def _after_finish(self, order: Order, status: str) -> None:
        if order.legs and order.order_class != "oco":
            legs = [leg for leg in self.legs_of(order) if leg.status == "held"]
            if order.filled_qty > 0:  # part filled, the rest gone: the legs cover the part
                for leg in legs:
                    leg.qty = order.filled_qty
                    leg.status, leg.updated_at = "new", time.time()
                    self._event("new", leg)
            else:
                for leg in legs:
                    if leg.is_open:  # the first one's cancel may have taken the other
                        self._finish(leg, "canceled")
            return
        if order.parent_id is not None or order.order_class == "oco":
            for other in self._group(order):
                if other is not order and other.is_open:
                    self._finish(other, "canceled")

    # -- matching ---------------------------------------------------------------------------

    def _match(self, order: Order, bar: Bar) -> None:
        """Match one working order against a new bar (stops before limits, so a bar that
        touches both legs of a group fills the stop: the pessimistic reading)."""
        sell = order.side == "sell"
        if order.type == "market":
            self._fill(order, order.remaining, bar.open)
            return
        if order.type in _STOPS and not order.triggered:
            stop = order.stop_price
            assert stop is not None
            if not (bar.low <= stop if sell else bar.high >= stop):
                return
            at = min(stop, bar.open) if sell else max(stop, bar.open)  # a gap fills worse
            order.triggered = True
            limit = order.limit_price
            if order.type == "stop" or (limit is not None and (at >= limit if sell
                                                                else at <= limit)):
                self._fill(order, order.remaining, at)
            return  # a stop-limit past its limit rests as a limit from the next bar on
        limit = order.limit_price
        assert limit is not None
        if not sell and bar.low <= limit:
            self._fill(order, order.remaining, min(limit, bar.open))
        elif sell and bar.high >= limit:
            self._fill(order, order.remaining, max(limit, bar.open))

    @staticmethod
    def match_order(orders: list[Order]) -> list[Order]:
        """Working orders in the order a bar matches them: untriggered stops first."""
        return sorted((o for o in orders if o.working),
                      key=lambda o: not (o.type in _STOPS and not o.triggered))
