"""Reconciliation of the broker executor with its venue (a mixin of BrokerExecutor).

Every order the journal has open is settled by a lookup; orders the venue has that the
journal does not know are flagged; positions are compared. An intent journaled but never
answered is sent again after a restart only if the control plane allows it now (a halted
restart sends nothing), and only while it is young. A lookup that fails leaves the order
unresolved for the next round; it is never booked as "not at the venue". The venue's lists
(open orders, positions) are read with retries and back-off; when they still fail the
round ends with :class:`ReconcileIncomplete`, which the caller counts and retries later.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from loguru import logger

from quantshift.aio import within
from quantshift.domain import OrderIntent, OrderState
from quantshift.execution.tracked import Lookup, Tracked
from quantshift.execution.venues.base import (
    OrderNotFound,
    RateLimited,
    Venue,
    VenueError,
    VenueOrder,
    VenueUnavailable,
)

T = TypeVar("T")
_READ_ATTEMPTS = 4
_MAX_WAIT = 10.0


class ReconcileIncomplete(VenueUnavailable):
    """The venue's lists could not be read (after retries): nothing was concluded."""


@dataclass(slots=True)
class ReconcileReport:
    looked_up: int = 0
    fills_applied: int = 0
    resubmitted: int = 0
    cancelled: list[str] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # unsent, and the control plane says no
    unresolved: list[str] = field(default_factory=list)  # no lookup could tell
    adopted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    mismatches: dict[str, tuple[float, float]] = field(default_factory=dict)  # journal, venue

    @property
    def clean(self) -> bool:
        return not self.mismatches


class Reconciliation:
    """Mixed into the BrokerExecutor (which provides these attributes and methods)."""

    venue: Venue
    _orders: dict[str, Tracked]
    _timeout: float
    _resubmit_window_ns: int
    reconcile_errors: int
    errors: int
    calls: int

    def _spawn(self, coro: Awaitable[bool | None]) -> asyncio.Task[bool | None]: ...  # type: ignore[empty-body]

    async def _send(self, intent: OrderIntent) -> bool: ...  # type: ignore[empty-body]

    async def _lookup(self, intent: OrderIntent) -> Lookup: ...  # type: ignore[empty-body]

    def _refusal(self, tracked: Tracked) -> str | None: ...

    def _finish(self, coid: str, state: OrderState, detail: str) -> None: ...

    async def drain(self, timeout: float) -> None: ...

    def _apply(self, vo: VenueOrder, nested: bool = False) -> None: ...

    async def _call(self, coro: Awaitable[VenueOrder]) -> VenueOrder: ...  # type: ignore[empty-body]

    async def find_own(self, mine: Callable[[str], OrderIntent | None],
                       recent: list[OrderIntent],
                       adopt: Callable[[OrderIntent], None]) -> list[str]:
        """Orders of this bot at the venue that nothing here follows: a new primary's look
        for what the last one sent after the state it left. Every open order whose id
        ``mine`` knows, and each of ``recent`` (decisions made here lately, as a standby:
        every instance derives the same id for one decision) that a lookup finds. Each is
        adopted (``adopt``: journaled, followed), then takes the venue's word: its fills,
        its legs, its state. A venue error is raised: nothing is concluded from it."""
        found: dict[str, tuple[OrderIntent, VenueOrder]] = {}
        for vo in await self._read(self.venue.open_orders, "open orders"):
            coid = vo.client_order_id
            if coid and coid not in self._orders and (intent := mine(coid)) is not None:
                found[coid] = intent, vo
        for intent in recent:
            coid = intent.client_order_id
            if coid in found or coid in self._orders:
                continue
            try:
                found[coid] = intent, await self._call(self.venue.order(coid, intent.symbol))
            except OrderNotFound:
                continue  # decided here, never sent by the last primary
        adopted: list[str] = []
        for coid, (intent, vo) in found.items():
            if vo.symbol != intent.symbol or vo.side is not intent.side:
                logger.warning("order {} at {} is {} {} and the journal's {} {}: not adopted",
                               coid, self.venue.name, vo.side.value, vo.symbol,
                               intent.side.value, intent.symbol)
                continue
            adopt(replace(intent, qty=vo.qty or intent.qty))
            self._apply(vo)
            adopted.append(coid)
        return adopted

    async def reconcile(self, expected: Callable[[], dict[str, float]], known_ids: set[str],
                        now_ns: int | None = None) -> ReconcileReport:
        """Compare the venue with the journal: settle every order the journal has open,
        adopt or flag orders it does not know, and compare positions.

        ``expected`` gives the journal's net position per symbol once the settled fills
        are booked (it is called after the orders are settled)."""
        report = ReconcileReport()
        now_ns = now_ns or time.time_ns()
        for tracked in list(self._orders.values()):
            if tracked.sending:
                continue  # its submission loop settles it
            intent = tracked.intent
            coid = intent.client_order_id
            report.looked_up += 1
            before = tracked.filled
            found = await self._lookup(intent)
            if found is Lookup.FOUND:
                if tracked.filled > before:
                    report.fills_applied += 1
                continue
            if found is Lookup.UNKNOWN or coid not in self._orders:
                if coid in self._orders:
                    tracked.unresolved = True
                    report.unresolved.append(coid)
                continue
            if tracked.state is OrderState.NEW and not intent.parent \
                    and now_ns - intent.ts <= self._resubmit_window_ns:
                # Journaled, then the daemon stopped before the venue took it: send it now,
                # under the same id, so the intent ends as exactly one venue order; but only
                # if it may go out now (a halt or a demotion holds it, as any new order).
                why = self._refusal(tracked)
                if why is not None:
                    self._finish(coid, OrderState.CANCELLED, f"not sent after the restart: "
                                                             f"{why}")
                    report.held.append(coid)
                else:
                    report.resubmitted += 1
                    self._spawn(self._send(intent))
            else:
                why = ("the venue has no such order" if tracked.state is not OrderState.NEW
                       or intent.parent  # a leg is the venue's to make, never ours to send
                       else "never reached the venue; too old to send after the restart")
                self._finish(coid, OrderState.CANCELLED, why)
                report.cancelled.append(coid)
        if report.resubmitted:
            await self.drain(self._timeout * 2)
        for vo in await self._read(self.venue.open_orders, "open orders"):
            if vo.client_order_id in self._orders:
                continue
            if vo.client_order_id in known_ids:
                report.adopted.append(vo.client_order_id)
                logger.warning("reconcile: order {} is open at {} but closed in the journal",
                               vo.client_order_id, self.venue.name)
            else:
                report.unknown.append(vo.client_order_id or vo.venue_id)
                logger.warning("reconcile: {} has an order the journal does not know: {} {} "
                               "{:g} {} (id {})", self.venue.name, vo.side.value, vo.symbol,
                               vo.qty, vo.client_order_id or "-", vo.venue_id)
        venue_positions = await self._read(self.venue.positions, "positions")
        journal_positions = expected()
        for symbol in sorted(set(venue_positions) | set(journal_positions)):
            mine, theirs = journal_positions.get(symbol, 0.0), venue_positions.get(symbol, 0.0)
            if abs(mine - theirs) > 1e-6:
                report.mismatches[symbol] = (mine, theirs)
        return report

    async def _read(self, fetch: Callable[[], Awaitable[T]], what: str) -> T:
        """One of the venue's lists, with retries: a 429 waits as the venue asks, a 5xx or
        a timeout backs off; after the last try the round is incomplete."""
        delay = 0.5
        last: Exception | None = None
        for attempt in range(1, _READ_ATTEMPTS + 1):
            self.calls += 1
            try:
                return await within(fetch(), self._timeout)
            except (VenueError, TimeoutError) as exc:
                self.errors += 1
                last = exc
                wait: Any = exc.retry_after if isinstance(exc, RateLimited) else None
                wait = min(float(wait if wait is not None else delay), _MAX_WAIT)
                if attempt < _READ_ATTEMPTS:
                    logger.info("reconcile: reading {} from {} failed ({}); again in {:g}s",
                                what, self.venue.name, exc or type(exc).__name__, wait)
                    await asyncio.sleep(wait)
                delay = min(delay * 2, _MAX_WAIT)
        self.reconcile_errors += 1
        raise ReconcileIncomplete(f"{self.venue.name} did not give its {what} after "
                                  f"{_READ_ATTEMPTS} tries ({last or 'timeout'})")
