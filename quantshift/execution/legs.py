"""The broker executor's bracket legs: exits the venue holds for a position.

An entry that carries a take-profit and/or a stop-loss goes to a venue that supports
brackets with them attached; the venue makes the legs and names them. The executor
learns each leg from the entry's order (the submit answer, a lookup or a stream update),
reports it to the sink (the engine journals it as an intent of the entry's strategy, so
its fills book there and a restart tracks it), and then follows it like any order.

While a position's legs are open the venue holds its quantity for them: any other order
for that position (an exit signal, the trailing stop, a flatten) first cancels the legs,
waits until the venue confirms, and only then goes out. Orders for one position are sent
in the order they were submitted. A halt or a shutdown keeps the legs (``cancel_all``
leaves them): with the daemon stopped or halted they are the position's only protection.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol, cast

from loguru import logger

from quantshift.domain import OrderIntent, OrderState
from quantshift.execution.base import ExecutionSink
from quantshift.execution.tracked import Tracked

if TYPE_CHECKING:
    from quantshift.execution.venues.base import BracketVenue, Venue, VenueOrder

_EPS = 1e-9
# A venue's refusal that concerns the legs only: the entry may go without them.
LEGS_REFUSED = re.compile(r"take_profit|stop_loss|bracket|\boto\b|simple order|sub-penny",
                          re.IGNORECASE)


class LegSink(ExecutionSink, Protocol):
    def on_leg(self, parent: OrderIntent, leg: OrderIntent) -> bool:
        """A leg the venue made for ``parent``: journal it before any of its updates.
        False: the journal knows it already, finished (its updates are not news)."""


class Legs:
    """Mixed into the BrokerExecutor (which provides these attributes and methods)."""

    venue: Venue
    _sink: LegSink
    _orders: dict[str, Tracked]
    _timeout: float

    def _spawn(self, coro: Awaitable[bool | None]) -> asyncio.Task[bool | None]: ...  # type: ignore[empty-body]

    async def _send(self, intent: OrderIntent) -> bool: ...  # type: ignore[empty-body]

    async def _cancel(self, intent: OrderIntent, reason: str, after_send: bool = False
                      ) -> None: ...

    def _finish(self, coid: str, state: OrderState, detail: str) -> None: ...

    def _apply(self, vo: VenueOrder, nested: bool = False) -> None: ...

    def _init_legs(self) -> None:
        self._seen_legs: set[str] = set()
        # The last task sending orders for a position, which the next one waits for.
        self._chains: dict[tuple[str, str], asyncio.Task[bool | None]] = {}

    # -- capability --------------------------------------------------------------------------
    @property
    def supports_brackets(self) -> bool:
        return bool(getattr(self.venue, "supports_brackets", False))

    def bracket_tick(self, intent: OrderIntent, price: float) -> float | None:
        """The venue's tick for a leg at ``price`` of this entry; None: no legs for it."""
        if not self.supports_brackets:
            return None
        return cast("BracketVenue", self.venue).bracket_tick(intent.symbol, intent.qty, price)

    def open_legs(self) -> list[OrderIntent]:
        return [t.intent for t in self._orders.values() if t.intent.parent]

    def _legs_of(self, strategy: str, symbol: str) -> list[Tracked]:
        return [t for t in self._orders.values() if t.intent.parent
                and t.intent.strategy == strategy and t.intent.symbol == symbol]

    # -- learning the legs ---------------------------------------------------------------------
    def _adopt_legs(self, parent: OrderIntent, legs: list[VenueOrder]) -> None:

        for vo in legs:
            coid = vo.client_order_id
            if coid and coid not in self._seen_legs and coid not in self._orders:
                self._seen_legs.add(coid)
                leg = OrderIntent(coid, parent.strategy, parent.symbol, vo.side,
                                  vo.qty or parent.qty, parent.ts, vo.price, True,
                                  f"{vo.leg.replace('_', '-')} leg of {parent.client_order_id}",
                                  parent=parent.client_order_id, leg=vo.leg)
                self._orders[coid] = Tracked(leg)
                if not self._sink.on_leg(parent, leg):
                    del self._orders[coid]  # booked before a restart: never twice
                    continue
            # Nested data may be older than the leg's own updates: fills and final states
            # only (they never go back), no status transitions.
            self._apply(vo, nested=True)

    def _leg_status(self, tracked: Tracked, vo: VenueOrder, nested: bool) -> None:
        """Journal a leg's venue status changes (held -> new when its entry fills)."""
        if nested or not vo.status or vo.status == tracked.status:
            return
        tracked.status = vo.status  # (after a restart, the first one seen is journaled)
        if vo.state is OrderState.SUBMITTED:
            self._sink.on_order_state(tracked.intent, OrderState.SUBMITTED,
                                      f"{self.venue.name}: {vo.status}")

    # -- orders for a position whose legs are open -----------------------------------------------
    def _route(self, intent: OrderIntent) -> None:
        """Send ``intent``, after the position's open legs are cancelled and after any
        order submitted before it for the same position."""
        key = (intent.strategy, intent.symbol)
        before = self._chains.get(key)
        legs = self._legs_of(*key)
        if not legs and (before is None or before.done()):
            self._spawn(self._send(intent))
            return
        # What the legs had filled when the order was decided: more later changes it.
        filled = max((t.filled for t in legs), default=0.0)
        self._chains[key] = self._spawn(self._after_legs(intent, legs, filled, before))

    async def _after_legs(self, intent: OrderIntent, legs: list[Tracked], decided: float,
                          before: asyncio.Task[bool | None] | None) -> bool:
        coid = intent.client_order_id
        if before is not None:
            await asyncio.wait([before])
            if before.cancelled() or before.exception() is not None or not before.result():
                self._finish(coid, OrderState.CANCELLED, "not sent: the order before it for "
                                                         "this position did not go out")
                return False
        if legs:
            if not await self._cancel_legs(legs, f"before {coid}"):
                self._finish(coid, OrderState.REJECTED, f"not sent: {self.venue.name} did "
                             f"not confirm the cancel of its position's legs (they stay)")
                return False
            filled = max((t.filled for t in legs), default=0.0) - decided
            if filled > _EPS and intent.reduce_only:
                # A leg filled while it was being cancelled: the position changed under
                # this exit, and sending it as it is would open the other side.
                closed = filled >= intent.qty - _EPS
                self._finish(coid, OrderState.CANCELLED,
                             "not sent: its position was closed by a leg meanwhile" if closed
                             else f"not sent: a leg filled {filled:g} of the position meanwhile")
                return closed
        if coid not in self._orders:  # cancelled while it waited
            return False
        return await self._send(intent)

    async def _cancel_legs(self, legs: list[Tracked], reason: str) -> bool:
        """Cancel the legs and wait (bounded) until the venue says each one is done."""
        for tracked in legs:
            if tracked.intent.client_order_id in self._orders:
                await self._cancel(tracked.intent, reason)
        delay, waited = 0.2, 0.0
        while True:
            left = [t for t in legs if t.intent.client_order_id in self._orders]
            if not left:
                return True
            if waited > self._timeout * 2:
                logger.warning("legs {} still open at {} after cancelling",
                               ",".join(t.intent.client_order_id for t in left), self.venue.name)
                return False
            await asyncio.sleep(delay)
            waited += delay
            delay = min(delay * 2, 2.0)
            for tracked in left:  # a cancel that failed, one pending, an update not here yet
                if tracked.intent.client_order_id in self._orders:
                    await self._cancel(tracked.intent, reason)

    def _legs_refused(self, intent: OrderIntent, reason: str) -> None:
        """The venue refused the legs, not the entry: the entry goes without them (the
        caller resends it simple), and the daemon's own checks cover its exits."""
        logger.warning("order {}: {} refused its legs ({}); sending it without them, the "
                       "daemon watches its stop-loss and take-profit", intent.client_order_id,
                       self.venue.name, reason)
        self._sink.on_order_state(intent, OrderState.NEW, f"legs refused by {self.venue.name} "
                                                          f"({reason}): sent without them")
