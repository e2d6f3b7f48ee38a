"""Domain types shared by every stage of the pipeline.

They are plain slotted classes rather than frozen dataclasses: a replay pushes
hundreds of thousands of bars a second through them, and a frozen dataclass pays
for ``object.__setattr__`` on every field of every bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from functools import lru_cache
from hashlib import blake2b
from typing import Any

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND


class Phase(StrEnum):
    OBSERVATION = "observation"
    DRY_RUN = "dry_run"
    MICRO_CAPITAL = "micro_capital"
    PRODUCTION = "production"


class ExecutorKind(StrEnum):
    LOG_ONLY = "log_only"
    PAPER = "paper"
    SANDBOX = "sandbox"
    LIVE = "live"


PHASE_EXECUTOR = {
    Phase.OBSERVATION: ExecutorKind.LOG_ONLY,
    Phase.DRY_RUN: ExecutorKind.PAPER,
    Phase.MICRO_CAPITAL: ExecutorKind.LIVE,
    Phase.PRODUCTION: ExecutorKind.LIVE,
}


class TradingState(StrEnum):
    """Whether orders may go out (the control plane owns it; quantshift/control.py).

    ``active``: every rule of the risk gate applies. ``reducing``: only orders that reduce
    exposure pass. ``halted``: nothing new goes out. ``demoted``: the guard took the daemon
    out of trading on its own evidence; decisions go on, but orders only to the log."""

    ACTIVE = "active"
    REDUCING = "reducing"
    HALTED = "halted"
    DEMOTED = "demoted"


class Direction(IntEnum):
    """The position a strategy wants: short, flat or long."""

    SHORT = -1
    FLAT = 0
    LONG = 1


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderState(StrEnum):
    NEW = "new"  # journaled, not yet handed to a venue
    SUBMITTED = "submitted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"
    NOT_SENT = "not_sent"  # LogOnly: the order went nowhere on purpose
    HANDED_OVER = "handed_over"  # at the venue still; another instance of the bot follows it

    @property
    def final(self) -> bool:
        return self in _FINAL_STATES


_FINAL_STATES = frozenset(
    {OrderState.FILLED, OrderState.CANCELLED, OrderState.REJECTED, OrderState.EXPIRED,
     OrderState.NOT_SENT, OrderState.HANDED_OVER}
)


class Bar:
    """One OHLCV bar; ``ts`` is the bar's time in integer nanoseconds since the epoch (UTC)."""

    __slots__ = ("close", "high", "low", "open", "symbol", "ts", "volume")

    def __init__(
        self, symbol: str, ts: int, open: float, high: float, low: float, close: float,
        volume: float,
    ) -> None:
        self.symbol = symbol
        self.ts = ts
        self.open = open
        self.high = high
        self.low = low
        self.close = close
        self.volume = volume

    def __repr__(self) -> str:
        return (f"Bar({self.symbol} ts={self.ts} o={self.open} h={self.high} l={self.low} "
                f"c={self.close} v={self.volume})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bar):
            return NotImplemented
        return (self.symbol, self.ts, self.open, self.high, self.low, self.close,
                self.volume) == (other.symbol, other.ts, other.open, other.high, other.low,
                                 other.close, other.volume)

    __hash__ = None  # type: ignore[assignment]  # mutable value object


@dataclass(slots=True)
class Signal:
    """What a strategy wants for one symbol after one bar."""

    strategy: str
    symbol: str
    ts: int
    target: Direction
    reason: str
    confidence: float = 1.0
    indicators: dict[str, float] = field(default_factory=dict)
    version: str = ""  # the strategy version that spoke; the engine sets it


@dataclass(slots=True)
class OrderIntent:
    """A sized, risk-approved order that an executor may send."""

    client_order_id: str
    strategy: str
    symbol: str
    side: Side
    qty: float
    ts: int  # the decision bar's time
    ref_price: float  # the decision bar's close
    reduce_only: bool = False
    reason: str = ""
    # An entry sent with broker-side exits (a bracket): the venue holds these levels.
    take_profit: float | None = None
    stop_loss: float | None = None
    # A bracket's leg, made by the venue: its entry's client order id and its role
    # ("take_profit" or "stop_loss"); the leg's fills book to the entry's strategy.
    parent: str = ""
    leg: str = ""

    @property
    def signed_qty(self) -> float:
        return self.qty if self.side is Side.BUY else -self.qty


@dataclass(slots=True)
class Order:
    """An intent as a venue (or the simulated book) sees it."""

    intent: OrderIntent
    state: OrderState = OrderState.NEW
    filled_qty: float = 0.0
    avg_price: float = 0.0
    detail: str = ""


@dataclass(slots=True)
class Fill:
    seq: int
    client_order_id: str
    strategy: str
    symbol: str
    side: Side
    qty: float
    price: float
    commission: float
    ts: int

    @property
    def signed_qty(self) -> float:
        return self.qty if self.side is Side.BUY else -self.qty

    def to_row(self) -> tuple[Any, ...]:
        return (self.seq, self.client_order_id, self.strategy, self.symbol, self.side.value,
                self.qty, self.price, self.commission, self.ts)


@dataclass(slots=True)
class Position:
    """One strategy's holding in one symbol (a symbol's venue position is their sum)."""

    strategy: str
    symbol: str
    qty: float = 0.0
    avg_price: float = 0.0
    realized_pnl: float = 0.0
    # The round trip in progress: for win rate and the trade list.
    entry_ts: int = 0
    trade_pnl: float = 0.0
    trade_max_qty: float = 0.0


@dataclass(slots=True, frozen=True)
class Instrument:
    """A venue's increments and minimums for one symbol."""

    symbol: str
    qty_step: float = 1.0
    min_qty: float = 0.0
    min_notional: float = 0.0
    price_step: float = 0.0

    def floor_qty(self, qty: float) -> float:
        step = self.qty_step
        if step == 1.0:  # whole units (most equities): no rounding of the product needed
            return float(math.floor(qty + 1e-6))
        if step <= 0:
            return qty
        # Tolerate binary noise of up to a millionth of a step (2.0 / 1e-9 is 1999999999.9…).
        units = math.floor(qty / step + 1e-6)
        return round(units * step, 12)

    def below_minimum(self, qty: float, price: float) -> str | None:
        if qty <= 0 or qty + 1e-12 < self.min_qty:
            return f"quantity {qty:g} below the venue minimum {self.min_qty:g}"
        if self.min_notional and qty * price + 1e-9 < self.min_notional:
            return (f"notional {qty * price:.2f} below the venue minimum "
                    f"{self.min_notional:g}")
        return None


@dataclass(slots=True)
class Trade:
    """A closed round trip: from flat to flat (or to the reversal)."""

    strategy: str
    symbol: str
    direction: Direction
    qty: float
    entry_ts: int
    entry_price: float
    exit_ts: int
    exit_price: float
    pnl: float


def trade_return(qty: float, entry_price: float, pnl: float) -> float | None:
    """A round trip's return: its P&L over its entry notional (None when it had none).
    The one definition for Kelly sizing, the promotion statistics and the reports."""
    notional = abs(qty * entry_price)
    return pnl / notional if notional > 0 else None


@lru_cache(maxsize=8192)
def _id_hasher(bot: str, strategy: str, symbol: str) -> Any:
    """The id's hash primed with the parts that repeat on every bar of one strategy and
    symbol: each id then hashes only its time, side and leg (a copy of this one)."""
    return blake2b(f"{bot}|{strategy}|{symbol}|".encode(), digest_size=14)


_ID_TAIL = {(Side.BUY, False): b"|buy|e", (Side.BUY, True): b"|buy|x",
            (Side.SELL, False): b"|sell|e", (Side.SELL, True): b"|sell|x"}


def client_order_id(bot: str, strategy: str, symbol: str, ts: int, side: Side,
                    reduce_only: bool = False) -> str:
    """The deterministic id of the order one strategy sends for one bar.

    The same decision after a restart gets the same id, so a venue (or the journal)
    recognises it instead of taking a second order. The exit leg of a reversal has the
    same side as its entry leg, so whether an order only reduces is part of the key.
    The key is ``bot|strategy|symbol|ts|side|leg`` (leg ``e`` entry, ``x`` reduce-only),
    hashed to 31 characters, which fit every venue's limit (Binance allows 36, Alpaca 48).
    """
    h = _id_hasher(bot, strategy, symbol).copy()
    h.update(b"%d%s" % (ts, _ID_TAIL[side, bool(reduce_only)]))
    return "qs-" + h.hexdigest()
