"""A bracket's legs resting at the venue go from one primary to the next (the Alpaca
emulator, the real alpaca-py client, two engines on one account as two instances of one
bot): the last primary's state names them, the new primary follows them (their fills book
to its book, where they belong), the old one lets go of them (cancels none, books none),
and the new primary's reconciliation agrees with the venue."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from pathlib import Path

import orjson
import pytest

from quantshift.control import TradingState
from quantshift.domain import Direction, OrderState, Signal
from quantshift.execution import handoff
from quantshift.ops import leadership, periodic
from quantshift.state.caps import Caps
from quantshift.state.lease import Lease, Role
from quantshift.state.shared import AccountStore
from tests.redis_server import RedisServer
from tests.test_brackets import (  # noqa: F401  (make_rig: the fixture)
    EXITS,
    assert_books_match_the_venue,
    enter,
    make_rig,
    position,
    settle,
    signal,
    start_rig,
    stop_rig,
    venue_legs,
)


async def test_the_next_primary_follows_the_legs_the_last_one_left_at_the_venue(
        make_rig, clean: Path) -> None:  # noqa: F811  (the fixture imported above)
    a = await make_rig()
    entry, price = await enter(a)
    assert a.engine.in_flight() == 0  # resting legs are not in flight: a handover may go
    legs = venue_legs(a, entry.client_order_id)
    # What a primary leaves in the lease: through JSON, as Redis keeps it.
    state = orjson.loads(orjson.dumps({**a.engine.state(),
                                       "orders": a.engine.open_orders_state()}))
    assert {d["coid"] for d in state["orders"]} == {leg.client_order_id
                                                    for leg in legs.values()}
    assert a.executor.hand_off("handed over to b") == 2
    assert a.executor.open_legs() == [] and a.engine.in_flight() == 0
    assert {r[0] for r in a.rows("SELECT state FROM order_events WHERE client_order_id IN "
                                 f"{tuple(d['coid'] for d in state['orders'])}")} >= {
        OrderState.HANDED_OVER.value}

    b = await start_rig(a.emu, clean / "b", EXITS)  # another instance, its own journal
    try:
        await follow(a, b, state, entry, price, legs)
    finally:
        await stop_rig(b)


async def follow(a, b, state, entry, price, legs) -> None:  # type: ignore[no-untyped-def]
    b.engine.take_over(state)
    adopted = b.engine.adopt_orders(state["orders"], "a")
    assert sorted(adopted) == sorted(d["coid"] for d in state["orders"])
    assert b.engine.adopt_orders(state["orders"], "a") == []  # taken once
    await b.executor.look_up(adopted)
    assert position(b) == 10 and len(b.executor.open_legs()) == 2
    # The take-profit fills at the venue: the new primary books it, the old one does not.
    a.emu.engine.push("AAA", close=price * 1.01, high=entry.take_profit + 0.1)
    await settle(b, lambda: position(b) == 0 and not b.executor.open_legs())
    assert position(a) == 10  # a standby's book: not the venue's any more
    assert a.rows("SELECT count(*) FROM fills") == [(1,)]
    report = await b.executor.reconcile(lambda: dict(b.engine.portfolio.net),
                                        b.engine.known_ids())
    assert not report.mismatches and not report.unknown, report
    assert b.engine.portfolio.net.get("AAA", 0.0) == pytest.approx(
        a.emu.engine.position_qty("AAA"))
    assert b.rows("SELECT client_order_id, side, qty FROM fills ORDER BY seq") == [
        (legs["limit"].client_order_id, "sell", 10)]
    # and the next entry of the new primary is its own, with its own legs
    signal(b, Direction.LONG)
    await settle(b, lambda: len(b.executor.open_legs()) == 2)
    assert position(b) == 10


def test_a_document_that_is_not_an_order_is_skipped() -> None:
    assert handoff.from_doc({"coid": "x"}) is None
    assert handoff.from_doc({"coid": "x", "strategy": "t", "symbol": "AAA", "side": "up",
                             "qty": 1, "ts": 1, "ref_price": 1}) is None
    parsed = handoff.from_doc({"coid": "x", "strategy": "t", "symbol": "AAA", "side": "buy",
                               "qty": 1, "ts": 1, "ref_price": 1})
    assert parsed is not None and parsed[0].client_order_id == "x" and parsed[3] is True


async def test_orders_the_last_primary_sent_after_its_state_are_found_and_followed(
        make_rig, clean: Path, redis_server: RedisServer) -> None:  # noqa: F811
    """The primary is killed a moment after an entry: the state it left in the lease
    predates it. The standby made the same decision in shadow (log-only, the same id):
    taking over, it finds the order at the venue by that id, books its fill to the
    strategy, follows its legs, and its reconciliation knows every order there."""
    a = await make_rig()
    b = await start_rig(a.emu, clean / "b", EXITS)
    stores = [AccountStore(redis_server.url, "acct", name, Caps(), sends=True, live=False,
                           grace=5.0, journal=rig.journal, timeout=0.5)
              for name, rig in (("a", a), ("b", b))]
    la, lb = (Lease(store, "equity", Role.AUTO, 1.0) for store in stores)
    try:
        for store, lease in zip(stores, (la, lb), strict=True):
            store.lease = lease
            await store.open(lambda _cmd: None)
        b.engine.control.attach_lease(lb)  # a standby: its orders go to log-only
        await la.turn()
        await lb.turn()
        assert la.primary and not lb.primary
        assert await la.save(leadership.last_state(a.engine))  # before the entry
        price = a.emu.engine.last["AAA"]
        decision = Signal("t", "AAA", time.time_ns(), Direction.LONG, "test")
        (entry,) = a.engine.decide(decision, price)
        await settle(a, lambda: len(a.executor.open_legs()) == 2)
        (shadow,) = b.engine.decide(decision, price)
        assert shadow.client_order_id == entry.client_order_id
        # b alone decides another entry (a bar later), which a never sent
        (unsent,) = b.engine.decide(Signal("t", "AAA", decision.ts + 60 * 10**9,
                                           Direction.LONG, "test"), price)
        b.journal.flush()
        assert b.rows("SELECT state FROM orders WHERE client_order_id = "
                      f"'{entry.client_order_id}'") == [(OrderState.NOT_SENT.value,)]
        await stop_rig(a)  # killed: the lease is never given up
        deadline = time.monotonic() + 3.0
        while not lb.primary and time.monotonic() < deadline:  # a's lease runs out
            await asyncio.sleep(0.1)
            await lb.turn()
        assert lb.primary and lb.epoch == 2

        async def commit() -> None:
            b.journal.flush()

        reconcile = partial(periodic.reconcile, b.engine.control, b.engine, None, commit,
                            at_start=True)
        assert await leadership.take_over(lb, b.engine.control, b.engine, reconcile,
                                          retry=False)
        assert b.engine.control.state is TradingState.ACTIVE and b.engine.control.leading()
        assert position(b) == 10 and len(b.executor.open_legs()) == 2
        assert b.rows("SELECT client_order_id, side, qty FROM fills ORDER BY seq") == [
            (entry.client_order_id, "buy", 10)]  # the strategy's fill, not a lump
        assert b.rows(f"SELECT state, detail FROM orders WHERE client_order_id = "
                      f"'{unsent.client_order_id}'")[0][0] == OrderState.NOT_SENT.value
        report = b.engine.journal.get("reconcile_last")
        assert report["unknown"] == [] and report["mismatches"] == {}, report
        # The take-profit fills at the venue: the new primary books it.
        legs = venue_legs(a, entry.client_order_id)
        a.emu.engine.push("AAA", close=price * 1.01, high=entry.take_profit + 0.1)
        await settle(b, lambda: position(b) == 0 and not b.executor.open_legs())
        assert b.rows("SELECT client_order_id, side FROM fills ORDER BY seq")[-1] == (
            legs["limit"].client_order_id, "sell")
        assert_books_match_the_venue(b)
    finally:
        for store in stores:
            await store.close()
        b.closed = True
        b.journal.flush()
        await b.engine.control.real_executor.close()  # type: ignore[union-attr]
        b.journal.close()
