"""The executor protocol: whether, and where, an approved intent becomes an order.

Executors report back through an ``ExecutionSink`` (the engine), so no executor
touches the portfolio or the journal directly and none knows which strategy spoke.
"""

from __future__ import annotations

from typing import Protocol

from quantshift.domain import Bar, ExecutorKind, OrderIntent, OrderState


class ExecutionSink(Protocol):
    def on_order_state(self, intent: OrderIntent, state: OrderState, detail: str = "") -> None: ...

    def on_fill(self, intent: OrderIntent, qty: float, price: float, commission: float,
                ts: int) -> None: ...


class Executor(Protocol):
    kind: ExecutorKind
    description: str  # the start-up line's plain words: where orders go
    wants_bars: bool  # whether on_bar must be called (resting orders that fill on bars)

    def submit(self, intent: OrderIntent) -> None:
        """Hand the intent on; it is already journaled. Never blocks the loop."""

    def on_bar(self, bar: Bar) -> None:
        """Called with each bar before the strategies see it (fills for resting orders)."""

    def open_orders(self) -> list[OrderIntent]: ...

    def restore_open(self, orders: list[tuple[OrderIntent, float, float]],
                     sent: bool = True) -> None:
        """Take back orders open at the last stop (``sent``), or journaled intents with
        no answer yet (``sent=False``: they may or may not have reached the venue); each
        with the quantity already filled and its average price."""

    def cancel_all(self, reason: str, keep_exits: bool = False) -> int:
        """Cancel the orders in flight (``keep_exits``: not the reduce-only ones, which a
        flatten that follows counts on); return how many."""
        ...

    async def start(self) -> None:
        """Connect (brokers); called before reconciliation and the first bar."""

    async def drain(self, timeout: float) -> None:
        """Wait, at most ``timeout``, for order work under way (cancels at shutdown)."""

    async def settle(self, timeout: float) -> int:
        """Wait, at most ``timeout``, until no submission is under way at a venue; return
        how many still are (an operator's halt answers after this)."""
        ...

    async def close(self) -> None: ...
