"""The broker executor: Sandbox and Live, one code path, another endpoint.

Every intent is on disk before a byte goes to the venue (write-ahead). A submit that
fails with an unknown outcome (5xx, timeout, dropped connection) is looked up by its
client order id before anything is retried, and a retry always reuses the same id, so
an intent can never become two orders. A 429 waits as long as the venue asks.

Where the venue supports brackets, an entry may carry its exits as legs the venue holds
(see ``legs``): ``open_orders`` are the orders in flight, ``open_legs`` the legs resting
at the venue, and ``cancel_all`` (halt, shutdown) leaves the legs in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from loguru import logger

from quantshift.domain import Bar, ExecutorKind, OrderIntent, OrderState
from quantshift.execution.legs import LEGS_REFUSED, Legs, LegSink
from quantshift.execution.venues.base import (
    BracketVenue,
    DuplicateOrder,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    Venue,
    VenueError,
    VenueOrder,
    VenueUnavailable,
)

_EPS = 1e-9
_MAX_DELAY = 30.0


@dataclass(slots=True)
class Tracked:
    intent: OrderIntent
    state: OrderState = OrderState.NEW
    filled: float = 0.0
    avg_price: float = 0.0
    venue_id: str = ""
    status: str = ""  # the venue's last word on it (legs: held, new, ...)


@dataclass(slots=True)
class ReconcileReport:
    looked_up: int = 0
    fills_applied: int = 0
    resubmitted: int = 0
    cancelled: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    mismatches: dict[str, tuple[float, float]] = field(default_factory=dict)  # journal, venue

    @property
    def clean(self) -> bool:
        return not self.mismatches


class BrokerExecutor(Legs):
    wants_bars = False

    def __init__(self, kind: ExecutorKind, venue: Venue, sink: LegSink, *,
                 durable: Callable[[], Awaitable[object]], timeout: float = 10.0,
                 max_attempts: int = 6, resubmit_window_ns: int = 120_000_000_000) -> None:
        self.kind = kind
        self.venue = venue
        where = "paper/testnet" if kind is ExecutorKind.SANDBOX else "LIVE, real money"
        self.description = f"orders go to {venue.name} ({where}) at {venue.endpoint}"
        self._sink = sink
        self._durable = durable
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._resubmit_window_ns = resubmit_window_ns
        self._orders: dict[str, Tracked] = {}
        self._tasks: set[asyncio.Task[bool | None]] = set()
        self._tracker: asyncio.Task[None] | None = None
        self.calls = 0
        self.errors = 0
        self._init_legs()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.venue.connect()
        self._tracker = asyncio.create_task(self._track(), name="order-updates")

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for submissions and cancellations under way."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tracker is not None:
            self._tracker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tracker
        await self.venue.close()

    # -- the executor protocol -------------------------------------------------------------
    def submit(self, intent: OrderIntent) -> None:
        self._orders[intent.client_order_id] = Tracked(intent)
        self._route(intent)  # after its position's legs are cancelled, if it has any

    def on_bar(self, bar: Bar) -> None:
        return None

    def open_orders(self) -> list[OrderIntent]:
        """Orders in flight (a bracket's resting legs are ``open_legs``)."""
        return [t.intent for t in self._orders.values() if not t.intent.parent]

    def restore_open(self, orders: list[tuple[OrderIntent, float, float]],
                     sent: bool = True) -> None:
        """Orders open at the last stop (``sent``), or journaled with no answer from the
        venue yet: reconcile looks each one up before anything new is sent."""
        state = OrderState.SUBMITTED if sent else OrderState.NEW
        for intent, filled, avg in orders:
            self._orders.setdefault(intent.client_order_id,
                                    Tracked(intent, state, filled, avg))
            if intent.parent:
                self._seen_legs.add(intent.client_order_id)

    def cancel_all(self, reason: str, keep_exits: bool = False) -> int:
        """Cancel the orders in flight (``keep_exits``: not the reduce-only ones). Legs
        protecting a position stay: a halted or stopped daemon watches nothing, the venue's
        stops still do (a flatten cancels them, position by position, before its exits)."""
        working = [t for t in self._orders.values() if not t.intent.parent
                   and not (keep_exits and t.intent.reduce_only)]
        for tracked in working:
            self._spawn(self._cancel(tracked.intent, reason))
        return len(working)

    # -- submission ------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[bool | None]) -> asyncio.Task[bool | None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, coro: Awaitable[VenueOrder]) -> VenueOrder:
        self.calls += 1
        try:
            return await asyncio.wait_for(coro, self._timeout)
        except TimeoutError:
            self.errors += 1
            raise VenueUnavailable(f"no answer within {self._timeout:g}s") from None
        except VenueError:
            self.errors += 1
            raise

    async def _send(self, intent: OrderIntent) -> bool:
        """Whether the venue took the order (its answer is applied)."""
        coid = intent.client_order_id
        if coid not in self._orders:
            return False  # cancelled before it could go
        await self._durable()  # write-ahead: the intent is on disk before it is sent
        delay = 0.5
        simple = False
        with_legs = intent.take_profit is not None or intent.stop_loss is not None
        for attempt in range(1, self._max_attempts + 1):
            try:
                sent = cast(BracketVenue, self.venue).submit(intent, simple=True) if simple \
                    else self.venue.submit(intent)
                self._apply(await self._call(sent))
                return True
            except OrderRejected as exc:
                if with_legs and not simple and LEGS_REFUSED.search(exc.reason):
                    self._legs_refused(intent, exc.reason)
                    simple = True
                    continue
                self._finish(coid, OrderState.REJECTED, f"rejected by {self.venue.name}: "
                                                        f"{exc.reason}")
                return False
            except RateLimited as exc:
                wait = exc.retry_after if exc.retry_after is not None else delay
                logger.warning("order {}: rate limited by {}; retrying in {:g}s", coid,
                               self.venue.name, wait)
                await asyncio.sleep(wait)
            except DuplicateOrder:
                logger.info("order {}: {} already has it; looking it up", coid, self.venue.name)
                if await self._lookup(intent):
                    return True
                await asyncio.sleep(delay)
            except VenueError as exc:  # 5xx, timeout, dropped connection: unknown outcome
                logger.warning("order {}: outcome unknown ({}); looking it up before any "
                               "retry", coid, exc)
                if await self._lookup(intent):
                    return True
                await asyncio.sleep(delay)

            delay = min(delay * 2, _MAX_DELAY)
            logger.info("order {}: attempt {} of {}", coid, attempt + 1, self._max_attempts)
        self._finish(coid, OrderState.REJECTED,
                     f"{self.venue.name} unreachable after {self._max_attempts} attempts")
        return False

    async def _lookup(self, intent: OrderIntent) -> bool:
        """Whether the venue has the order (and if so, take its state)."""
        delay = 0.5
        for _ in range(3):
            try:
                self._apply(await self._call(self.venue.order(intent.client_order_id,
                                                              intent.symbol)))
                return True
            except OrderNotFound:
                return False
            except RateLimited as exc:
                await asyncio.sleep(exc.retry_after if exc.retry_after is not None else delay)
            except VenueError:
                await asyncio.sleep(delay)
            delay *= 2
        return False

    async def _cancel(self, intent: OrderIntent, reason: str) -> None:
        coid = intent.client_order_id
        try:
            await asyncio.wait_for(self.venue.cancel(coid, intent.symbol), self._timeout)
        except OrderNotFound:
            if not await self._lookup(intent):
                self._finish(coid, OrderState.CANCELLED, f"{reason} (not at the venue)")
            return
        except OrderRejected as exc:  # not cancelable: done already (e.g. with its sibling)
            logger.info("order {}: cancel refused ({}); looking it up", coid, exc.reason)
            await self._lookup(intent)
            return
        except (VenueError, TimeoutError) as exc:
            logger.warning("order {}: cancel failed ({}); it stays open", coid, exc)
            return
        await self._lookup(intent)  # the venue's answer is the confirmation

    # -- what the venue says ---------------------------------------------------------------
    def _apply(self, vo: VenueOrder, nested: bool = False) -> None:
        tracked = self._orders.get(vo.client_order_id)
        if tracked is None:
            return
        if vo.legs and not tracked.intent.parent:
            self._adopt_legs(tracked.intent, vo.legs)  # journaled before the entry's fill
        if tracked.intent.parent:
            self._leg_status(tracked, vo, nested)
        tracked.venue_id = vo.venue_id or tracked.venue_id
        if vo.filled_qty > tracked.filled + _EPS:
            qty = vo.filled_qty - tracked.filled
            price = vo.avg_price
            if tracked.filled > 0 and vo.avg_price > 0:
                price = (vo.avg_price * vo.filled_qty - tracked.avg_price * tracked.filled) / qty
            tracked.filled, tracked.avg_price = vo.filled_qty, vo.avg_price
            self._sink.on_fill(tracked.intent, qty, price, 0.0, time.time_ns())
        if vo.state in (OrderState.CANCELLED, OrderState.REJECTED, OrderState.EXPIRED):
            self._finish(vo.client_order_id, vo.state,
                         vo.reason or f"{vo.state.value} by {self.venue.name}")
        elif tracked.filled >= tracked.intent.qty - _EPS:
            self._orders.pop(vo.client_order_id, None)  # the engine saw the last fill
        elif vo.state is OrderState.FILLED:  # done for less (a leg cut to a part-filled entry)
            self._finish(vo.client_order_id, OrderState.FILLED,
                         f"filled {tracked.filled:g} of {tracked.intent.qty:g} at "
                         f"{self.venue.name}")
        elif tracked.state is OrderState.NEW:
            tracked.state = OrderState.SUBMITTED
            status = ""
            if tracked.intent.parent and vo.status:  # a leg: held until its entry fills
                tracked.status, status = vo.status, f", {vo.status}"
            self._sink.on_order_state(tracked.intent, OrderState.SUBMITTED,
                                      f"{self.venue.name} id {vo.venue_id}{status}")

    def _finish(self, coid: str, state: OrderState, detail: str) -> None:
        tracked = self._orders.pop(coid, None)
        if tracked is not None:
            self._sink.on_order_state(tracked.intent, state, detail)

    async def _track(self) -> None:
        """Follow the venue's order updates; after any interruption, look every open order
        up so no update missed meanwhile is lost."""
        delay = 0.5
        while True:
            try:
                async for vo in self.venue.updates(self._tracked_pairs):
                    self._apply(vo)
                    delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stream's own errors are many; all mean reconnect
                logger.warning("order updates from {} interrupted ({}); reconnecting in {:g}s",
                               self.venue.name, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)
            for tracked in list(self._orders.values()):
                await self._lookup(tracked.intent)

    def _tracked_pairs(self) -> list[tuple[str, str]]:
        # Orders in flight only: legs rest for days, and polling each of them every few
        # seconds would spend the venue's rate limit; reconciliation looks them up.
        return [(c, t.intent.symbol) for c, t in self._orders.items() if not t.intent.parent]

    # -- reconciliation --------------------------------------------------------------------
    async def reconcile(self, expected: Callable[[], dict[str, float]], known_ids: set[str],
                        now_ns: int | None = None) -> ReconcileReport:
        """Compare the venue with the journal: settle every order the journal has open,
        adopt or flag orders it does not know, and compare positions.

        ``expected`` gives the journal's net position per symbol once the settled fills
        are booked (it is called after the orders are settled)."""
        report = ReconcileReport()
        now_ns = now_ns or time.time_ns()
        for tracked in list(self._orders.values()):
            intent = tracked.intent
            report.looked_up += 1
            before = tracked.filled
            if await self._lookup(intent):
                if tracked.filled > before:
                    report.fills_applied += 1
                continue
            if tracked.state is OrderState.NEW and not intent.parent \
                    and now_ns - intent.ts <= self._resubmit_window_ns:
                # Journaled, then the daemon stopped before the venue took it: send it now,
                # under the same id, so the intent ends as exactly one venue order.
                report.resubmitted += 1
                self._spawn(self._send(intent))
            else:
                why = ("the venue has no such order" if tracked.state is not OrderState.NEW
                       or intent.parent  # a leg is the venue's to make, never ours to send
                       else "never reached the venue; too old to send after the restart")
                self._finish(intent.client_order_id, OrderState.CANCELLED, why)
                report.cancelled.append(intent.client_order_id)
        if report.resubmitted:
            await self.drain(self._timeout * 2)
        for vo in await self.venue.open_orders():
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
        venue_positions = await self.venue.positions()
        journal_positions = expected()
        for symbol in sorted(set(venue_positions) | set(journal_positions)):
            mine, theirs = journal_positions.get(symbol, 0.0), venue_positions.get(symbol, 0.0)
            if abs(mine - theirs) > 1e-6:
                report.mismatches[symbol] = (mine, theirs)
        return report
