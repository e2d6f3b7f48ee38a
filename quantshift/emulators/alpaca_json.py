"""Alpaca's JSON shapes for orders (with their legs), fills, positions, assets and the
clock (a mixin of AlpacaEmulator)."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

from quantshift.emulators.base import iso, num
from quantshift.emulators.matching import Fill, Order

if TYPE_CHECKING:
    from quantshift.emulators.matching import MatchingEngine

NS = uuid.UUID("6f1c1c4e-6a55-4a8e-9d51-0c0ffee00001")


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(NS, symbol))


class AlpacaShapes:
    engine: MatchingEngine
    fractionable: bool

    def order_json(self, o: Order, nested: bool = True) -> dict[str, Any]:
        """An order as Alpaca shows it; ``nested``: its legs inside (else ``legs`` is null
        and the legs are orders of their own in a listing)."""
        legs = [self.order_json(leg, False) for leg in self.engine.legs_of(o)] \
            if nested and o.legs else None
        return {
            "id": o.id, "client_order_id": o.client_order_id,
            "created_at": iso(o.created_at), "updated_at": iso(o.updated_at),
            "submitted_at": iso(o.created_at), "filled_at": iso(o.filled_at),
            "expired_at": iso(o.expired_at), "canceled_at": iso(o.canceled_at),
            "failed_at": iso(o.failed_at), "replaced_at": None, "replaced_by": None,
            "replaces": None, "asset_id": asset_id(o.symbol), "symbol": o.symbol,
            "asset_class": "us_equity", "notional": num(o.notional),
            "qty": None if o.notional is not None else num(o.qty),
            "filled_qty": num(o.filled_qty), "filled_avg_price": num(o.filled_avg_price),
            "order_class": o.order_class, "order_type": o.type, "type": o.type,
            "side": o.side, "position_intent": None, "time_in_force": o.time_in_force,
            "limit_price": num(o.limit_price), "stop_price": num(o.stop_price),
            "status": o.status, "extended_hours": False, "legs": legs, "trail_percent": None,
            "trail_price": None, "hwm": None, "subtag": None, "source": None,
            "expires_at": None,
        }

    def fill_activity(self, f: Fill) -> dict[str, Any]:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(f.time)) + f"{int(f.time % 1 * 1000):03d}"
        return {
            "id": f"{stamp}::{uuid.uuid5(NS, 'fill:' + f.id)}", "activity_type": "FILL",
            "transaction_time": iso(f.time),
            "type": "fill" if f.leaves_qty <= 0 else "partial_fill",
            "price": num(f.price), "qty": num(f.qty), "side": f.side, "symbol": f.symbol,
            "leaves_qty": num(f.leaves_qty), "order_id": f.order_id, "cum_qty": num(f.cum_qty),
            "order_status": f.order_status,
        }

    def position_json(self, symbol: str) -> dict[str, Any]:
        pos = self.engine.account.positions[symbol]
        last = self.engine.last[symbol]
        hist = self.engine.history[symbol]
        lastday = hist[0].open if hist else pos.avg_price
        value, cost = pos.qty * last, pos.qty * pos.avg_price
        upl = value - cost
        reserved = self.engine.reserved(symbol, "sell" if pos.qty > 0 else "buy")
        return {
            "asset_id": asset_id(symbol), "symbol": symbol, "exchange": "NASDAQ",
            "asset_class": "us_equity", "asset_marginable": True, "qty": num(pos.qty),
            "qty_available": num(pos.qty - reserved if pos.qty > 0 else pos.qty + reserved),
            "avg_entry_price": num(pos.avg_price), "side": "long" if pos.qty > 0 else "short",
            "market_value": num(value, 4), "cost_basis": num(cost, 4),
            "unrealized_pl": num(upl, 4), "unrealized_plpc": num(upl / abs(cost) if cost else 0),
            "unrealized_intraday_pl": num(upl, 4),
            "unrealized_intraday_plpc": num(upl / abs(cost) if cost else 0),
            "current_price": num(last), "lastday_price": num(lastday),
            "change_today": num(last / lastday - 1 if lastday else 0),
        }

    def asset_json(self, symbol: str) -> dict[str, Any]:
        inst = self.engine.instruments[symbol]
        return {
            "id": asset_id(symbol), "class": "us_equity", "exchange": "NASDAQ",
            "symbol": symbol, "name": f"{symbol} (emulated)", "status": "active",
            "tradable": True, "marginable": True, "shortable": True, "easy_to_borrow": True,
            "fractionable": self.fractionable, "maintenance_margin_requirement": 30,
            "min_order_size": num(inst.min_qty), "min_trade_increment": num(inst.qty_step),
            "price_increment": num(inst.price_step), "attributes": [],
        }

    def clock_json(self) -> dict[str, Any]:
        now = time.time()
        opens = now + (86400 - 6.5 * 3600 if self.engine.is_open else 3600)
        closes = now + (6.5 * 3600 if self.engine.is_open else 3600 + 6.5 * 3600)
        return {"timestamp": iso(now), "is_open": self.engine.is_open,
                "next_open": iso(opens, micro=False), "next_close": iso(closes, micro=False)}
