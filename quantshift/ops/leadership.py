"""The daemon's side of the bot's lease (state/lease.py): taking it at start, taking over
from the last primary, and giving it up at a handover or a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from loguru import logger
from redis.exceptions import RedisError

from quantshift.control import ControlPlane, ControlRefused
from quantshift.engine import Engine
from quantshift.execution.broker import BrokerExecutor
from quantshift.execution.venues.base import VenueError
from quantshift.ops import periodic
from quantshift.settings import Settings
from quantshift.state.lease import Lease, Role
from quantshift.state.shared import AccountStore

_ALERT = logger.bind(alert="error")


def attach(settings: Settings, account: AccountStore, engine: Engine) -> Lease:
    """The bot's lease on the account; orders go to log-only until it is this
    instance's and the takeover is done."""
    control = engine.control
    lease = Lease(account, settings.bot, Role(settings.role), settings.lease_ttl,
                  floor=engine.journal.max_fence_epoch())
    account.lease = lease
    control.attach_lease(lease)
    lease.on_lose = partial(_step_down, lease, engine)
    control.attach_handover(partial(handover, lease, engine,
                                    settings.shutdown_timeout / 2))
    return lease


def _step_down(lease: Lease, engine: Engine, why: str) -> None:
    """Not the primary any more: nothing goes out, and the orders at the venue are the
    next primary's to follow (this one neither cancels nor books them from here)."""
    engine.control.lead(False)
    executor = engine.control.real_executor
    if isinstance(executor, BrokerExecutor):
        n = executor.hand_off(f"handed over at lease epoch {lease.epoch}: {why}")
        if n:
            logger.warning("lease: {} open orders left to the next primary", n)


def last_state(engine: Engine) -> dict[str, Any]:
    """What a primary leaves for the next: its book and the orders it follows."""
    return {**engine.state(), "orders": engine.open_orders_state()}


async def first_turn(lease: Lease) -> None:
    """Try for the lease once at start (a free lease is taken at once, not a third of the
    TTL later); Redis away is the renewal loop's to retry."""
    try:
        await lease.turn()
    except (RedisError, OSError, TimeoutError) as exc:
        logger.warning("lease: Redis did not answer at start ({}); a standby until it does",
                       type(exc).__name__)
    if not lease.primary:
        logger.warning("lease: standby: {}; orders go nowhere until this instance holds the "
                       "lease", f"instance {lease.holder} is the primary (epoch "
                                f"{lease.epoch})" if lease.holder else "the lease is not held")


def on_acquire(lease: Lease, control: ControlPlane, engine: Engine,
               reconcile: periodic.Action) -> None:
    """Take over whenever the lease is acquired after the start (in a task of its own:
    the renewals go on meanwhile)."""
    tasks: set[asyncio.Task[bool]] = set()

    def done(task: asyncio.Task[bool]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _ALERT.opt(exception=task.exception()).error("lease: the takeover failed; this "
                                                         "instance stays a standby")

    def start(_epoch: int) -> None:
        task = asyncio.create_task(take_over(lease, control, engine, reconcile),
                                   name="takeover")
        tasks.add(task)
        task.add_done_callback(done)

    lease.on_acquire = start


async def take_over(lease: Lease, control: ControlPlane, engine: Engine,
                    reconcile: periodic.Action, retry: bool = True) -> bool:
    """Become the trading instance: the last primary's book (when another instance left
    it), then the venue's word on it (``reconcile``: a difference halts), then orders go
    to the broker. A halt or a demotion of the account holds as before. False when the
    lease was lost meanwhile. ``retry=False`` (at start) lets a venue error through."""
    instance = lease.instance
    while lease.primary:
        try:
            last = await lease.last_state()
            if last is not None and last.get("instance") != instance:
                engine.take_over(last["state"])
                adopted = engine.adopt_orders(last["state"].get("orders", []),
                                              str(last.get("instance")))
                executor = control.real_executor
                if adopted and isinstance(executor, BrokerExecutor):
                    await executor.look_up(adopted)  # their fills since, before the book
                logger.warning("lease: took over from instance {} (epoch {}): {} open "
                               "positions, {} open orders adopted", last.get("instance"),
                               last.get("epoch"), engine.portfolio.open_symbols(),
                               len(adopted))
            # Another primary since this instance's own last epoch may have filled orders
            # its saved state lacks (it may have saved none); with none in between (the
            # account's first primary, or this one started again) a book that differs from
            # the venue is the reconciliation's, and halts.
            mine_before = last is not None and last.get("instance") == instance \
                and int(last.get("epoch", 0)) == lease.epoch - 1
            if lease.epoch > 1 and not mine_before:
                await _adopt_venue_orders(lease, control, engine, last)
                await _adopt_venue_positions(lease, control, engine)
            await reconcile()
        except (RedisError, OSError, TimeoutError, VenueError) as exc:
            if not retry and isinstance(exc, VenueError):
                raise
            logger.warning("lease: takeover not done yet ({}: {}); trying again",
                           type(exc).__name__, exc)
            await asyncio.sleep(min(lease.ttl / 3, 1.0))
            continue
        if not lease.primary:
            break
        control.lead(True)
        logger.warning("lease: primary (epoch {}): orders go to the {} executor", lease.epoch,
                       control.real_executor.kind.value if control.real_executor else "real")
        return True
    return False


async def _adopt_venue_orders(lease: Lease, control: ControlPlane, engine: Engine,
                              last: dict[str, Any] | None) -> None:
    """Orders the last primary sent after the state it left carry ids this instance
    derived too (it made the same decisions, as a standby): found at the venue, they are
    followed from here, their fills booked to their strategies (before the positions are
    compared). Decisions from a little before that state on are looked up (clocks of two
    machines differ); without a state, those of the last minute."""
    executor = control.real_executor
    if not isinstance(executor, BrokerExecutor):
        return
    at_ms = int(last.get("at_ms", 0)) if last is not None else 0
    since = at_ms * 1_000_000 - int(3 * lease.ttl * 1e9) if at_ms \
        else time.time_ns() - 60_000_000_000
    source = f"sent by instance {last.get('instance')}" if last is not None \
        else "sent by the last primary"
    adopted = await executor.find_own(engine.shadow_intent,
                                      engine.journal.shadow_intents_since(since),
                                      lambda intent: engine.adopt_found(intent, source))
    if adopted:
        logger.warning("lease: {} orders of this bot at the venue that the last primary's "
                       "state lacks are followed from here: {}", len(adopted),
                       ", ".join(adopted))


async def _adopt_venue_positions(lease: Lease, control: ControlPlane, engine: Engine) -> None:
    """The venue's positions are the truth: what the last primary filled after the state it
    left (it was killed, or frozen) is booked to the one strategy that trades the symbol.
    A symbol traded by several is left to the reconciliation (which halts on it)."""
    executor = control.real_executor
    if not isinstance(executor, BrokerExecutor):
        return
    venue = await executor.venue.positions()
    net = engine.portfolio.net
    for symbol in sorted(set(venue) | set(net)):
        diff = venue.get(symbol, 0.0) - net.get(symbol, 0.0)
        owners = engine.owners(symbol)
        if abs(diff) <= 1e-9 or len(owners) != 1:
            continue
        [owner] = owners
        price = engine.portfolio.marks.get(symbol, 0.0)
        engine.adopt(owner, symbol, diff, price, f"takeover-{lease.epoch}-{symbol}")
        logger.warning("lease: the venue holds {:g} {} more than the last primary's state; "
                       "booked to {} at {:g}", diff, symbol, owner, price)


async def save(lease: Lease, engine: Engine, fresh: Callable[[], bool]) -> None:
    """The primary's state, for the next one (every second, and at a handover); a standby
    whose feed is fresh says it can take over."""
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        if engine.control.lease_refusal() is None:  # holding it, the takeover done
            await lease.save(last_state(engine))
        elif lease.role is not Role.STANDBY and fresh():
            await lease.mark_ready()


async def hand_off(lease: Lease, engine: Engine, to: str = "", keep: bool = False) -> bool:
    """Give the lease up with this primary's last state: nothing may be in flight (the
    caller drained the executor). ``keep``: stay the primary when the state cannot be
    saved (at a stop the lease goes anyway: it would expire)."""
    if not lease.primary:
        return False
    engine.control.lead(False)  # from here on nothing of this instance's goes out
    try:
        saved = await lease.save(last_state(engine))
    except (RedisError, OSError, TimeoutError) as exc:
        saved = False
        logger.warning("lease: the last state could not be saved ({})", type(exc).__name__)
    if not saved and keep:  # an operator's handover: not without the state; still primary
        if lease.primary:
            engine.control.lead(True)
        return False
    try:
        return await lease.release(to)
    except (RedisError, OSError, TimeoutError) as exc:
        _ALERT.error("lease: could not hand over ({}); the lease expires by itself in {}s",
                     type(exc).__name__, lease.ttl)
        return False


async def handover(lease: Lease, engine: Engine, timeout: float, to: str) -> dict[str, Any]:
    """An operator's handover: nothing new goes out from the moment it is asked (the bar
    in hand is done: a bar is handled without an await), the attempts under way return and
    every order sent is acknowledged (bounded by ``timeout``), then the lease goes with
    this primary's last state, to ``to`` or to any standby. Refused, still the primary,
    when something stays in flight."""
    control = engine.control
    if control.lease_refusal() is not None:
        who = f"instance {lease.holder} is (epoch {lease.epoch})" if lease.holder \
            and lease.holder != lease.instance else "no instance has taken over yet"
        raise ControlRefused(f"this instance ({lease.instance}) is not the primary: {who}")
    if to == lease.instance:
        raise ControlRefused(f"instance {to} is this one: hand over to a standby", 400)
    try:
        ready = await lease.ready(to)
    except (RedisError, OSError, TimeoutError) as exc:
        raise ControlRefused(f"not handed over: Redis did not answer ({type(exc).__name__}); "
                             "still the primary", 503) from None
    if not ready:  # it would miss the bars until its feed is back: keep trading here
        who = f"instance {to} is not" if to else "no standby is"
        raise ControlRefused(f"not handed over: {who} ready to take over (running, its feed "
                             "fresh, not QUANTSHIFT_ROLE=standby); still the primary")
    loop = asyncio.get_running_loop()
    started, stopped_ns = loop.time(), time.time_ns()
    control.lead(False)  # every attempt from here on is refused
    left = await control.settle(timeout)
    while (left or engine.in_flight()) and loop.time() - started < timeout:
        await asyncio.sleep(0.01)
        left = await control.settle(0.0)
    busy = left + engine.in_flight()
    if busy:
        if lease.primary:
            control.lead(True)
        raise ControlRefused(f"{busy} orders still in flight after {timeout:g}s; not handed "
                             "over, still the primary")
    epoch, orders = lease.epoch, len(engine.open_orders_state())
    if not await hand_off(lease, engine, to, keep=True):
        state = "still the primary" if lease.primary else \
            f"the lease expires by itself within {lease.ttl:g}s"
        raise ControlRefused(f"not handed over: Redis did not answer; {state}", 503)
    return {"handed_over": True, "instance": lease.instance, "lease_epoch": epoch,
            "to": to or None, "open_orders": orders, "stopped_ns": stopped_ns,
            "positions": {s: q for s, q in engine.portfolio.net.items() if abs(q) > 1e-9},
            "wait_ms": round((loop.time() - started) * 1000, 1)}
