"""Orders at the venue as one primary leaves them to the next (ops/leadership.py): each
open order of the bot, written into the lease's last state and taken up again by the new
primary, so its fills book where they belong and nobody cancels it by mistake."""

from __future__ import annotations

from typing import Any

from quantshift.domain import Order, OrderIntent, OrderState, Side

_OPEN = (OrderState.NEW, OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED)


def order_doc(order: Order) -> dict[str, Any]:
    i = order.intent
    return {"coid": i.client_order_id, "strategy": i.strategy, "symbol": i.symbol,
            "side": i.side.value, "qty": i.qty, "ts": i.ts, "ref_price": i.ref_price,
            "reduce_only": i.reduce_only, "reason": i.reason, "take_profit": i.take_profit,
            "stop_loss": i.stop_loss, "parent": i.parent, "leg": i.leg,
            "filled": order.filled_qty, "avg": order.avg_price,
            "sent": order.state is not OrderState.NEW}


def open_docs(orders: dict[str, Order]) -> list[dict[str, Any]]:
    return [order_doc(o) for o in orders.values() if o.state in _OPEN]


def from_doc(doc: dict[str, Any]) -> tuple[OrderIntent, float, float, bool] | None:
    """The order a document describes, or None when it is not one (a state written by a
    release that wrote other fields is skipped, never a crash)."""
    try:
        opt = doc.get
        intent = OrderIntent(
            str(doc["coid"]), str(doc["strategy"]), str(doc["symbol"]), Side(doc["side"]),
            float(doc["qty"]), int(doc["ts"]), float(doc["ref_price"]),
            bool(opt("reduce_only", False)), str(opt("reason") or ""),
            None if opt("take_profit") is None else float(doc["take_profit"]),
            None if opt("stop_loss") is None else float(doc["stop_loss"]),
            str(opt("parent") or ""), str(opt("leg") or ""))
        return intent, float(opt("filled", 0.0)), float(opt("avg", 0.0)), bool(opt("sent", True))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
