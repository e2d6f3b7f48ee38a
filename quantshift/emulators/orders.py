"""The matching engine's records: instruments, orders, fills, positions, events (and the
symbol list an emulator is made with)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from quantshift.emulators.bars import Bar

STATES = ("new", "accepted", "held", "partially_filled", "filled", "canceled", "rejected",
          "expired")
# ``held``: a leg waiting for its entry to fill; open (listed, cancelable) but not working.
OPEN_STATES = frozenset({"new", "accepted", "held", "partially_filled"})
TIME_IN_FORCE = ("day", "gtc", "ioc", "fok")
ORDER_CLASSES = ("simple", "bracket", "oto", "oco")


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
    order_class: str = "simple"
    stop_price: float | None = None  # stop and stop_limit orders
    triggered: bool = False  # a stop_limit whose stop was touched works as a limit order
    parent_id: str | None = None  # a leg's entry (or, in an oco, its take-profit order)
    legs: list[str] = field(default_factory=list)  # the ids of an order's legs

    @property
    def remaining(self) -> float:
        return max(round(self.qty - self.filled_qty, 12), 0.0)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATES

    @property
    def working(self) -> bool:
        """Open and able to match (a held leg is open but waits for its entry)."""
        return self.status in OPEN_STATES and self.status != "held"

    @property
    def protective(self) -> bool:
        """A leg or an oco: it closes a position, so it holds shares, not cash."""
        return self.parent_id is not None or self.order_class == "oco"

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
    not_cancelable, insufficient_funds, insufficient_qty, min_notional, invalid_qty,
    invalid_price, invalid_legs."""

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


def symbols_or_default(symbols: Sequence[str] | str | None, default: Sequence[str]) -> list[str]:
    if isinstance(symbols, str):
        symbols = [s for s in symbols.split(",")]
    out = [s.strip() for s in (symbols or default) if s and s.strip()]
    if not out:
        raise ValueError("no symbols")
    return list(dict.fromkeys(out))
