"""The bot's lease on a real redis-server: one primary, standbys that take over within
``ttl + 1 s`` when it stops renewing, a fencing check in Redis that refuses a primary that
lost the lease even before it notices, handovers to a named instance, and a control plane
that sends nothing to the broker unless this instance holds the lease and has taken over."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from quantshift.domain import OrderIntent, Side
from quantshift.state.journal import Journal
from quantshift.state.lease import Lease, Role
from quantshift.state.shared import NS_PER_DAY, Caps
from tests.redis_server import RedisServer
from tests.test_shared_store import Instance

DAY = 20_000
TTL = 1.0


class Clock:
    """A clock a test holds still: a process frozen (SIGSTOP) between its check of the
    lease and its order."""

    def __init__(self) -> None:
        self.frozen: float | None = None

    def __call__(self) -> float:
        return self.frozen if self.frozen is not None else time.monotonic()


class Node(Instance):
    """An instance of the shared-store tests, with the bot's lease (its loop is ``task``)."""

    def __init__(self, root: Path, url: str, name: str, role: Role = Role.AUTO) -> None:
        super().__init__(root, url, name, caps=Caps(trades_per_day=100))
        self.clock = Clock()
        self.lease = Lease(self.store, "equity", role, TTL, clock=self.clock)
        self.store.lease = self.lease
        self.control.attach_lease(self.lease)
        self.lease.on_acquire = lambda _e: self.control.lead(True)
        self.lease.on_lose = lambda _w: self.control.lead(False)

    async def start(self, loop: bool = True) -> Node:  # type: ignore[override]
        await self.store.open(self.control.adopt)
        await self.lease.turn()
        if loop:
            self.task = asyncio.create_task(self.lease.run())
        return self


def entry(coid: str, reduce_only: bool = False) -> OrderIntent:
    return OrderIntent(coid, "s", "AAA", Side.BUY, 1.0, DAY * NS_PER_DAY + 3_600_000_000_000,
                       100.0, reduce_only)


async def until(cond, timeout: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_one_primary_and_a_standby_that_takes_over_when_it_stops_renewing(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Node(tmp_path, redis_server.url, "a").start(loop=False)  # frozen: no renewals
    b = await Node(tmp_path, redis_server.url, "b").start()
    try:
        assert a.lease.primary and a.lease.epoch == 1 and a.control.lease_refusal() is None
        assert not b.lease.primary and b.lease.holder == "a"
        assert b.control.refusal(entry("x")) == "standby: the primary is instance a " \
                                                "(lease epoch 1)"
        assert b.control.refusal(entry("exit", reduce_only=True)) is not None  # exits too
        took = await until(lambda: b.lease.primary, TTL + 1.0)
        assert took <= TTL + 1.0
        assert b.lease.epoch == 2 and b.control.lease_refusal() is None
        # The frozen one stopped believing itself primary before b could acquire.
        assert not a.lease.primary and a.control.refusal(entry("y")) is not None
        # Woken up: its renewal finds the lease gone; a standby from then on.
        await a.lease.turn()
        assert a.lease.value is None and a.lease.holder == "b" and a.lease.epoch == 2
    finally:
        await a.stop()
        await b.stop()


async def test_redis_refuses_the_order_of_a_primary_that_lost_the_lease_unaware(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Node(tmp_path, redis_server.url, "a").start(loop=False)
    a.clock.frozen = time.monotonic()  # a still believes it is the primary
    b = await Node(tmp_path, redis_server.url, "b").start()
    try:
        assert await a.control.clearance(entry("before")) is None
        await until(lambda: b.lease.primary, TTL + 1.0)
        assert a.lease.primary  # by its own clock
        why = await a.control.clearance(entry("after"))
        assert why is not None and "lease is no longer this instance's" in why
        why = await a.control.clearance(entry("exit", reduce_only=True))
        assert why is not None and "lease" in why  # an exit is not a way round it
        counts = await b.store.counts(DAY)
        assert counts["coids"] == ["before"]  # the refused orders counted nowhere
        assert await b.control.clearance(entry("b-1")) is None
    finally:
        await a.stop()
        await b.stop()
    # Every order cleared is journaled with the epoch it went out under.
    j = Journal(tmp_path / "a.sqlite", bot="equity", executor="sandbox")
    rows = j._db.execute("SELECT client_order_id, epoch, instance FROM order_fences"
                           ).fetchall()
    j.close()
    assert rows == [("before", 1, "a")]


async def test_a_handover_to_a_named_instance_and_a_standby_that_never_takes_it(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Node(tmp_path, redis_server.url, "a").start()
    b = await Node(tmp_path, redis_server.url, "b").start()
    c = await Node(tmp_path, redis_server.url, "c", Role.STANDBY).start()
    try:
        assert a.lease.primary
        await a.lease.save({"portfolio": {"cash": 1.0}})
        assert not await b.lease.save({"portfolio": {"cash": 2.0}})  # not the holder's
        assert await a.lease.release(to="b")
        assert a.control.lease_refusal() is not None
        took = await until(lambda: b.lease.primary, TTL)
        assert took < TTL and b.lease.epoch == 2
        last = await b.lease.last_state()
        assert last is not None and last["instance"] == "a" and last["epoch"] == 1
        assert last["state"] == {"portfolio": {"cash": 1.0}}
        assert await b.lease.release()  # to anyone: but a standby never takes it
        # after their quiet time, a or b: never the standby
        await until(lambda: a.lease.primary or b.lease.primary, 3 * TTL + 1.0)
        holder = "a" if a.lease.primary else "b"
        await until(lambda: c.lease.holder == holder, TTL)  # as c reads it, on its next turn
        assert not c.lease.primary and c.lease.epoch == 3
    finally:
        for n in (a, b, c):
            await n.stop()


async def test_a_primary_that_cannot_reach_redis_stops_at_ttl_minus_margin(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Node(tmp_path, redis_server.url, "a").start()
    try:
        assert a.lease.primary
        redis_server.stop()
        stopped = time.monotonic()
        await until(lambda: not a.lease.primary, TTL + 0.5)
        assert time.monotonic() - stopped <= TTL - a.lease.margin + 0.35  # one renewal late
        assert a.control.refusal(entry("x")) is not None
    finally:
        await a.stop()


async def test_a_redis_that_lost_its_data_never_hands_an_epoch_out_twice(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Node(tmp_path, redis_server.url, "a").start()
    b = await Node(tmp_path, redis_server.url, "b").start()
    try:
        assert a.lease.primary and a.lease.epoch == 1
        await until(lambda: b.lease.holder == "a", TTL)
        redis_server.kill()
        redis_server.wipe()  # the counter of acquisitions is gone with the rest
        redis_server.start()
        # The lease is gone with it: a finds so at its next renewal, and one of them takes
        # the lease again, under epoch 2, not 1 again (each knew epoch 1).
        await until(lambda: any(n.lease.primary and n.lease.epoch == 2 for n in (a, b)),
                    4 * TTL)
        assert not any(n.lease.primary and n.lease.epoch == 1 for n in (a, b))
    finally:
        for n in (a, b):
            await n.stop()
    # An instance that starts after such a loss knows its ledger's highest epoch.
    c = await Instance(tmp_path, redis_server.url, "c").start()
    try:
        fresh = Lease(c.store, "other", Role.AUTO, TTL, floor=7)
        await fresh.turn()
        assert fresh.primary and fresh.epoch == 8
    finally:
        await c.stop()


async def test_a_clearance_that_outlives_the_lease_while_redis_is_silent_is_refused(
        tmp_path: Path, redis_server: RedisServer) -> None:
    # The caps' call goes out while the lease holds, Redis stays silent (a partition), and
    # by the time the call gives up the lease has lapsed: no offline pass for that order.
    from tests.tcp_proxy import TcpProxy

    proxy = TcpProxy(redis_server.port)
    a = await Node(tmp_path, proxy.url(), "a").start(loop=False)
    try:
        assert a.lease.primary
        proxy.pause()
        task = asyncio.create_task(a.control.clearance(entry("exit", reduce_only=True)))
        await asyncio.sleep(0.1)
        a.clock.frozen = time.monotonic() + 10 * TTL  # the call is still waiting
        why = await task
        assert why is not None and "lease lapsed" in why, why
        a.journal.flush()
        assert a.journal._db.execute("SELECT count(*) FROM order_fences").fetchone() == (0,)
    finally:
        proxy.resume()
        await a.stop()
        proxy.close()
