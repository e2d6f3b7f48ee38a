"""The matching engine's records: instruments, orders, fills, positions, events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from quantshift.emulators.bars import Bar

STATES = ("new", "accepted", "partially_filled", "filled", "canceled", "rejected", "expired")
OPEN_STATES = frozenset({"new", "accepted", "partially_filled"})
TIME_IN_FORCE = ("day", "gtc", "ioc", "fok")


@dataclass(slots=True)
class Instrument:
    symbol: str
    qty_step: float = 1.0
    min_qty: float = 1.0
    min_notional: float = 0.0
    price_step: float = 0.01
    start_price: float | None = None


@dataclass(slots=True)
class Order:
    id: str
    seq: int
    client_order_id: str
    symbol: str
    side: str
    type: str
    qty: float
    time_in_force: str = "day"
    limit_price: float | None = None
    notional: float | None = None
    status: str = "new"
    filled_qty: float = 0.0
    filled_avg_price: float | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    filled_at: float | None = None
    canceled_at: float | None = None
    expired_at: float | None = None
    failed_at: float | None = None
    reason: str | None = None

    @property
    def remaining(self) -> float:
        return max(round(self.qty - self.filled_qty, 12), 0.0)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATES

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Fill:
    id: str
    seq: int
    order_id: str
    order_seq: int
    client_order_id: str
    symbol: str
    side: str
    qty: float
    price: float
    time: float
    cum_qty: float
    leaves_qty: float
    order_status: str
    position_qty: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Position:
    symbol: str
    qty: float
    avg_price: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class OrderEvent:
    """``event``: new, fill, partial_fill, canceled, rejected or expired. ``order`` is the
    live (mutable) order: a listener that keeps it for later should copy what it needs."""

    event: str
    order: Order
    time: float
    fill: Fill | None = None
    position_qty: float = 0.0


class OrderError(Exception):
    """A refused request. ``kind``: unknown_symbol, invalid, duplicate, not_found,
    not_cancelable, insufficient_funds, min_notional, invalid_qty, invalid_price."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


Listener = Callable[[Bar | OrderEvent], None]


@dataclass
class Account:
    cash: float
    positions: dict[str, Position] = field(default_factory=dict)
    realized_pnl: float = 0.0
