"""The broker executor: Sandbox and Live, one code path, another endpoint.

Every intent is on disk before a byte goes to the venue (write-ahead). Before **every**
submission attempt (the first, each retry, a start-up resubmission) the executor asks the
control plane (``permit``) whether the order may still go out; a halt that answered means
no attempt starts after it, and an attempt already under way when it came is cancelled the
moment the venue acknowledges it.

A submit that fails with an unknown outcome (5xx, timeout, dropped connection) is looked up
by its client order id before anything is retried, and a retry always reuses the same id,
so an intent can never become two orders. A 429 waits as long as the venue asks. A lookup
that fails too leaves the order *unresolved*, never "not at the venue": it stays tracked,
the order updates and the next reconciliation look again.

Where the venue supports brackets, an entry may carry its exits as legs the venue holds
(see ``legs``): ``open_orders`` are the orders in flight, ``open_legs`` the legs resting
at the venue, and ``cancel_all`` (halt, shutdown) leaves the legs in place. Reconciliation
with the venue is in ``reconcile``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import cast

from loguru import logger

from quantshift.aio import within
from quantshift.domain import Bar, ExecutorKind, OrderIntent, OrderState
from quantshift.execution.legs import LEGS_REFUSED, Legs, LegSink
from quantshift.execution.reconcile import ReconcileReport, Reconciliation
from quantshift.execution.tracked import Lookup, Tracked
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

__all__ = ["BrokerExecutor", "Lookup", "ReconcileReport", "Tracked"]

_EPS = 1e-9
_MAX_DELAY = 30.0
Permit = Callable[[OrderIntent], "str | None"]
Clear = Callable[[OrderIntent], Awaitable["str | None"]]


class BrokerExecutor(Reconciliation, Legs):
    wants_bars = False

    def __init__(self, kind: ExecutorKind, venue: Venue, sink: LegSink, *,
                 durable: Callable[[], Awaitable[object]], permit: Permit,
                 clear: Clear | None = None, timeout: float = 10.0, max_attempts: int = 6,
                 resubmit_window_ns: int = 120_000_000_000) -> None:
        self.kind = kind
        self.venue = venue
        where = "paper/testnet" if kind is ExecutorKind.SANDBOX else "LIVE, real money"
        self.description = (f"orders go to {venue.name} "  # the endpoint's class (make_venue)
                            f"({getattr(venue, 'endpoint_label', '') or where}) at "
                            f"{venue.endpoint}")
        self._sink = sink
        self._durable = durable
        self._permit = permit
        self._clear = clear
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._resubmit_window_ns = resubmit_window_ns
        self._orders: dict[str, Tracked] = {}
        self._tasks: set[asyncio.Task[bool | None]] = set()
        self._tracker: asyncio.Task[None] | None = None
        self._attempts = 0  # submission requests under way at the venue
        self._idle = asyncio.Event()
        self._idle.set()
        self.calls = 0
        self.errors = 0
        self.reconcile_errors = 0  # reconciliations a transient venue error cut short
        self._init_legs()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.venue.connect()
        self._tracker = asyncio.create_task(self._track(), name="order-updates")

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for submissions and cancellations under way."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def settle(self, timeout: float) -> int:
        """Wait (bounded) until no submission request is under way at the venue; return
        how many still are. A halt answers after this: every order an attempt in flight
        made is at the venue by then, and is cancelled as its answer comes."""
        if self._attempts:
            with contextlib.suppress(TimeoutError):
                await within(self._idle.wait(), timeout)
        return self._attempts

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
        stops still do (a flatten cancels them, position by position, before its exits).
        An order still being submitted is stopped by its own submission loop: before its
        next attempt, or, if the venue already took it, by a cancel right after."""
        working = [t for t in self._orders.values() if not t.intent.parent
                   and not (keep_exits and t.intent.reduce_only)]
        for tracked in working:
            if tracked.sending:
                tracked.stop = reason
            else:
                self._spawn(self._cancel(tracked.intent, reason))
        return len(working)

    def hand_off(self, why: str) -> int:
        """Stop following the orders at the venue: another instance of the bot follows
        them now (it took the lease), so none is cancelled or looked up from here. One
        whose attempt is under way ends by its own loop (every next attempt is refused)."""
        done = [c for c, t in self._orders.items() if not t.sending]
        for coid in done:
            self._finish(coid, OrderState.HANDED_OVER, why)
        return len(done)

    async def look_up(self, coids: list[str]) -> None:
        """Take the venue's word on these tracked orders now (their fills since)."""
        for coid in coids:
            tracked = self._orders.get(coid)
            if tracked is not None and not tracked.sending:
                await self._lookup(tracked.intent)

    # -- submission ------------------------------------------------------------------------
    def _spawn(self, coro: Awaitable[bool | None]) -> asyncio.Task[bool | None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(self, coro: Awaitable[VenueOrder]) -> VenueOrder:
        self.calls += 1
        try:
            return await within(coro, self._timeout)
        except TimeoutError:
            self.errors += 1
            raise VenueUnavailable(f"no answer within {self._timeout:g}s") from None
        except VenueError:
            self.errors += 1
            raise

    def _refusal(self, tracked: Tracked) -> str | None:
        """Why this order must not be sent now: a stop asked of it, or the control plane's
        answer (asked at every attempt)."""
        return tracked.stop or self._permit(tracked.intent)

    async def _send(self, intent: OrderIntent) -> bool:
        """Whether the venue took the order (its answer is applied)."""
        tracked = self._orders.get(intent.client_order_id)
        if tracked is None or tracked.sending:
            return False  # cancelled before it could go, or already on its way
        tracked.sending = True
        try:
            return await self._attempt_all(tracked)
        finally:
            tracked.sending = False

    async def _attempt_all(self, tracked: Tracked) -> bool:
        intent = tracked.intent
        coid = intent.client_order_id
        why = self._refusal(tracked)
        if why is None and self._clear is not None:  # the account's caps, once per order
            why = await self._clear(intent)
        if why is not None:  # before the write-ahead: nothing of it has left the process
            return self._not_sent(tracked, why)
        try:
            await self._durable()  # write-ahead: the intent is on disk before it is sent
        except Exception as exc:  # the journal cannot be written: it must not go out
            self._finish(coid, OrderState.REJECTED, f"not sent: the journal cannot be "
                                                    f"written ({exc})")
            return False
        delay = 0.5
        simple = False
        with_legs = intent.take_profit is not None or intent.stop_loss is not None
        for attempt in range(1, self._max_attempts + 1):
            why = self._refusal(tracked)
            if why is not None:
                return await self._stopped(tracked, why)
            try:
                self._attempts += 1
                self._idle.clear()
                try:
                    sent = cast(BracketVenue, self.venue).submit(intent, simple=True) \
                        if simple else self.venue.submit(intent)
                    answer = await self._call(sent)
                finally:
                    self._attempts -= 1
                    if not self._attempts:
                        self._idle.set()
                tracked.unresolved = False
                self._apply(answer)
                return self._landed(tracked)
            except OrderRejected as exc:
                if with_legs and not simple and LEGS_REFUSED.search(exc.reason):
                    self._legs_refused(intent, exc.reason)
                    simple = True
                    continue
                self._finish(coid, OrderState.REJECTED, f"rejected by {self.venue.name}: "
                                                        f"{exc.reason}")
                return False
            except RateLimited as exc:  # refused, not taken: the retry is a first try
                wait = exc.retry_after if exc.retry_after is not None else delay
                logger.warning("order {}: rate limited by {}; retrying in {:g}s", coid,
                               self.venue.name, wait)
                await asyncio.sleep(wait)
            except DuplicateOrder:
                logger.info("order {}: {} already has it; looking it up", coid, self.venue.name)
                if await self._resolve(tracked) is Lookup.FOUND:
                    return self._landed(tracked)
                await asyncio.sleep(delay)
            except VenueError as exc:  # 5xx, timeout, dropped connection: unknown outcome
                logger.warning("order {}: outcome unknown ({}); looking it up before any "
                               "retry", coid, exc)
                if await self._resolve(tracked) is Lookup.FOUND:
                    return self._landed(tracked)
                await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)
            logger.info("order {}: attempt {} of {}", coid, attempt + 1, self._max_attempts)
        if tracked.unresolved:
            logger.warning("order {}: {} could not tell whether it has it after {} attempts; "
                           "kept open until a lookup can", coid, self.venue.name,
                           self._max_attempts)
            return False
        self._finish(coid, OrderState.REJECTED,
                     f"{self.venue.name} unreachable after {self._max_attempts} attempts")
        return False

    async def _resolve(self, tracked: Tracked) -> Lookup:
        """Look an order of unknown outcome up; remember when nobody could tell."""
        found = await self._lookup(tracked.intent)
        tracked.unresolved = found is Lookup.UNKNOWN
        return found

    def _not_sent(self, tracked: Tracked, why: str) -> bool:
        self._finish(tracked.intent.client_order_id, OrderState.CANCELLED, f"not sent: {why}")
        return False

    async def _stopped(self, tracked: Tracked, why: str) -> bool:
        """The order may not go out any more (halted, stopping). Whether an earlier attempt
        made it to the venue decides what that means."""
        if not tracked.unresolved:
            return self._not_sent(tracked, why)  # no attempt left a trace at the venue
        found = await self._resolve(tracked)
        if found is Lookup.FOUND:
            self._landed(tracked)
            return True
        if found is Lookup.ABSENT:
            return self._not_sent(tracked, why)
        logger.warning("order {}: not sent again ({}); whether {} has it is unknown, so it "
                       "stays open until a lookup can tell", tracked.intent.client_order_id,
                       why, self.venue.name)
        return False

    def _landed(self, tracked: Tracked) -> bool:
        """The venue has the order. If it may no longer go out (a halt came while it was on
        its way), it is cancelled now."""
        coid = tracked.intent.client_order_id
        if coid in self._orders:
            why = self._refusal(tracked)
            if why is not None:
                logger.warning("order {}: {} took it while it was being sent, but {}; "
                               "cancelling it", coid, self.venue.name, why)
                self._spawn(self._cancel(tracked.intent, why, after_send=True))
        return True

    async def _lookup(self, intent: OrderIntent) -> Lookup:
        """Whether the venue has the order (and if so, take its state). Errors are not an
        answer: three of them give UNKNOWN, never ABSENT."""
        delay = 0.5
        for _ in range(3):
            try:
                self._apply(await self._call(self.venue.order(intent.client_order_id,
                                                              intent.symbol)))
                return Lookup.FOUND
            except OrderNotFound:
                return Lookup.ABSENT
            except RateLimited as exc:
                await asyncio.sleep(exc.retry_after if exc.retry_after is not None else delay)
            except VenueError:
                await asyncio.sleep(delay)
            delay *= 2
        return Lookup.UNKNOWN

    async def _cancel(self, intent: OrderIntent, reason: str, after_send: bool = False) -> None:
        coid = intent.client_order_id
        tracked = self._orders.get(coid)
        if tracked is None:
            return
        if tracked.sending and not after_send:
            tracked.stop = reason  # its submission loop stops it
            return
        try:
            await within(self.venue.cancel(coid, intent.symbol), self._timeout)
        except OrderNotFound:
            found = await self._lookup(intent)
            tracked = self._orders.get(coid)
            if found is Lookup.ABSENT and tracked is not None:
                if tracked.sending:  # a submission began meanwhile: it stops itself
                    tracked.stop = reason
                else:
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
        tracked.unresolved = False
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
                if not tracked.sending:
                    await self._lookup(tracked.intent)

    def _tracked_pairs(self) -> list[tuple[str, str]]:
        # Orders in flight only: legs rest for days, and polling each of them every few
        # seconds would spend the venue's rate limit; reconciliation looks them up.
        return [(c, t.intent.symbol) for c, t in self._orders.items() if not t.intent.parent]
