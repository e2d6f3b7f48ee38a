"""A bracket's legs resting at the venue go from one primary to the next (the Alpaca
emulator, the real alpaca-py client, two engines on one account as two instances of one
bot): the last primary's state names them, the new primary follows them (their fills book
to its book, where they belong), the old one lets go of them (cancels none, books none),
and the new primary's reconciliation agrees with the venue."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from quantshift.domain import Direction, OrderState
from quantshift.execution import handoff
from tests.test_brackets import (  # noqa: F401  (make_rig: the fixture)
    EXITS,
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
