"""The venue protocol: what the broker executor needs from any broker.

Adapters translate their SDK's answers and errors into these types, so the executor's
retry, lookup and reconciliation logic is written once for every venue. A venue that can
hold a position's exits itself (bracket orders) says so with ``supports_brackets``; one
that cannot leaves every exit to the daemon.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from quantshift.domain import Instrument, OrderIntent, OrderState, Side

__all__ = ["Instrument"]


@dataclass(slots=True)
class VenueOrder:
    """An order as the venue reports it."""

    client_order_id: str
    venue_id: str
    symbol: str
    side: Side
    qty: float
    filled_qty: float
    avg_price: float
    state: OrderState
    reason: str = ""
    status: str = ""  # the venue's own word for the state (e.g. Alpaca's "held")
    # An entry's legs (the venue's exit orders, made with it); a leg says which it is
    # ("take_profit" or "stop_loss") and its limit or stop price.
    legs: list[VenueOrder] = field(default_factory=list)
    leg: str = ""
    price: float = 0.0


@dataclass(slots=True, frozen=True)
class VenueFill:
    client_order_id: str
    fill_id: str
    symbol: str
    side: Side
    qty: float
    price: float
    commission: float
    ts: int


class VenueError(Exception):
    """A broker call failed; the subclass says whether the order may exist."""


class RateLimited(VenueError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class VenueUnavailable(VenueError):
    """5xx, timeout or a dropped connection: the order may or may not have landed."""


class DuplicateOrder(VenueError):
    """The venue already has an order with this client order id."""


class OrderRejected(VenueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OrderNotFound(VenueError):
    pass


class Venue(Protocol):
    name: str
    endpoint: str  # where orders go, for the start-up line

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def instruments(self, symbols: list[str]) -> dict[str, Instrument]: ...

    async def submit(self, intent: OrderIntent) -> VenueOrder: ...

    async def order(self, client_order_id: str, symbol: str) -> VenueOrder:
        """Look an order up by its client order id; OrderNotFound if the venue has none."""

    async def cancel(self, client_order_id: str, symbol: str) -> None: ...

    async def open_orders(self) -> list[VenueOrder]: ...

    async def positions(self) -> dict[str, float]: ...

    def updates(self, tracked: Callable[[], list[tuple[str, str]]]) -> AsyncIterator[VenueOrder]:
        """Order updates as they happen: a stream, or, where there is none, polling the
        (client order id, symbol) pairs ``tracked`` returns."""


class BracketVenue(Venue, Protocol):
    """A venue that takes an entry with its take-profit and stop-loss attached and then
    runs them itself (the legs); a venue without ``supports_brackets`` is not one."""

    supports_brackets: bool

    def bracket_tick(self, symbol: str, qty: float, price: float) -> float | None:
        """The tick a leg's price at ``price`` is quantised to, or None when an order of
        ``qty`` cannot carry legs at this venue."""

    async def submit(self, intent: OrderIntent, simple: bool = False) -> VenueOrder:
        """Send the intent, with its legs unless ``simple``."""
