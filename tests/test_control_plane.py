# ruff: noqa: F811  (the imported ``rig`` fixture is every test's argument)
"""The control plane against the emulators, through the real SDKs: a halt holds an order
between retries and a restart's unsent intents, an attempt in flight lands before the halt
answers, a venue's hiccup during reconciliation is retried, and a lookup that fails never
books "not at the venue"."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from quantshift.control import ControlPlane, ControlRefused, Demote, Halt, Reduce, Resume
from quantshift.domain import Direction, OrderIntent, Side, TradingState, client_order_id
from quantshift.execution.broker import BrokerExecutor
from quantshift.ops import periodic
from tests.test_broker_executor import (
    Rig,
    assert_consistent,
    journal_rows,
    last_state,
    rig,  # noqa: F401  (the fixture)
    settle,
    signal,
    start_rig,
    stop_rig,
)


def venue_orders(rig: Rig, coid: str) -> list:
    return [o for o in rig.emu.engine.orders.values() if o.client_order_id == coid]


async def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _kind(rig: Rig) -> str:
    return "alpaca" if rig.kind == "alpaca" else "ccxt"  # type: ignore[attr-defined]


async def test_a_halt_stops_an_order_that_is_between_retries(rig: Rig) -> None:
    faults = rig.emu.engine.faults
    faults.server_error("submit", count=2)
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await wait_until(lambda: len(faults.pending("server_error")) == 0
                     or faults.pending("server_error")[0].count < 2)  # the first attempt failed
    out = await rig.engine.control.command(Halt(reason="operator", by="test"))
    assert out["state"] == "halted"
    acked = time.time()
    await asyncio.sleep(2.5)  # past every retry the order had left
    await settle(rig)
    assert venue_orders(rig, intent.client_order_id) == []  # the retry never went
    assert not [o for o in rig.emu.engine.orders.values() if o.created_at > acked]
    assert last_state(rig, intent.client_order_id) == "cancelled"
    detail = journal_rows(rig, "SELECT detail FROM orders WHERE client_order_id = "
                               f"'{intent.client_order_id}'")[0][0]
    assert detail.startswith("not sent: halted: operator")
    assert_consistent(rig)


async def test_an_attempt_in_flight_lands_before_the_halt_answers(rig: Rig) -> None:
    rig.emu.engine.faults.slow("submit", delay=0.6)  # the venue takes it, answers late
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await wait_until(lambda: rig.executor._attempts == 1)
    out = await rig.engine.control.command(Halt(reason="operator", by="test"))
    answered = time.time()
    assert out["attempts_in_flight"] == 0
    (order,) = venue_orders(rig, intent.client_order_id)
    assert order.created_at <= answered  # at the venue before the halt's answer
    await settle(rig)
    # Whatever the venue did with it is in the journal: a market order filled at once.
    assert last_state(rig, intent.client_order_id) in ("filled", "cancelled")
    assert_consistent(rig)


async def test_a_halted_restart_sends_none_of_the_intents_it_had_not_sent(
        rig: Rig, tmp_path: Path) -> None:
    sym = rig.symbols[0]
    now = time.time_ns()
    qty = 3.0 if rig.kind == "alpaca" else 0.01  # type: ignore[attr-defined]
    unsent = OrderIntent(client_order_id("equity", "t", sym, now, Side.BUY), "t", sym,
                         Side.BUY, qty, now, rig.emu.engine.last[sym])
    rig.journal.intent(unsent)  # journaled, then the daemon died before sending it
    rig.engine.control.apply(Halt(reason="maintenance", by="test"))
    await stop_rig(rig)
    again = await start_rig(_kind(rig), rig.emu, tmp_path / "var")
    rig.engine, rig.journal = again.engine, again.journal
    assert again.engine.control.state is TradingState.HALTED

    async def commit() -> None:
        again.journal.flush()

    await periodic.reconcile(again.engine.control, again.engine, None, commit, at_start=True)
    await settle(again)
    assert venue_orders(again, unsent.client_order_id) == []
    assert last_state(again, unsent.client_order_id) == "cancelled"
    summary = again.journal.get("reconcile_last")
    assert summary["resubmitted"] == 0 and summary["held"] == [unsent.client_order_id]
    assert_consistent(again)


@pytest.mark.parametrize("fault", ["rate_limit", "server_error"])
async def test_a_venue_error_during_reconciliation_is_retried_never_a_crash(
        rig: Rig, fault: str) -> None:
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await settle(rig)
    faults = rig.emu.engine.faults

    async def commit() -> None:
        rig.journal.flush()

    control = rig.engine.control
    faults.add(fault, "status", 1, **({"retry_after": 0.2} if fault == "rate_limit" else {}))
    await periodic.reconcile(control, rig.engine, None, commit)  # one hiccup: retried
    assert rig.journal.get("reconcile_last")["mismatches"] == {}
    assert not faults.pending(fault)
    faults.add(fault, "status", 50, **({"retry_after": 0.2} if fault == "rate_limit" else {}))
    await periodic.reconcile(control, rig.engine, None, commit)  # a long one: given up, later
    faults.clear()
    assert rig.executor.reconcile_errors == 1
    assert control.state is TradingState.ACTIVE and not control.demoted
    await periodic.reconcile(control, rig.engine, None, commit)  # the next round works
    assert last_state(rig, intent.client_order_id) == "filled"
    assert_consistent(rig)


async def test_lookup_errors_leave_an_order_unresolved_never_cancelled(
        rig: Rig, tmp_path: Path) -> None:
    faults = rig.emu.engine.faults
    faults.partial_fill(0.5)
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await asyncio.sleep(1.0)  # half filled, the rest resting at the venue
    rig.journal.flush()
    await stop_rig(rig)
    again = await start_rig(_kind(rig), rig.emu, tmp_path / "var")
    rig.engine, rig.journal = again.engine, again.journal
    assert again.executor._tracker is not None
    again.executor._tracker.cancel()  # its polls must not take the faults meant for these
    faults.server_error("status", count=3)  # every try of the first lookup fails
    report = await again.executor.reconcile(lambda: dict(again.engine.portfolio.net),
                                            again.engine.known_ids())
    assert report.unresolved == [intent.client_order_id] and not report.cancelled
    assert intent.client_order_id in {i.client_order_id for i in again.executor.open_orders()}
    rig.emu.engine.fill_rest()  # the venue fills the rest meanwhile
    report = await again.executor.reconcile(lambda: dict(again.engine.portfolio.net),
                                            again.engine.known_ids())
    assert report.fills_applied == 1 and report.clean
    await settle(again)
    assert last_state(again, intent.client_order_id) == "filled"
    assert_consistent(again)


async def test_the_executor_asks_the_control_plane_at_every_attempt(rig: Rig) -> None:
    asked: list[str] = []
    executor = rig.executor
    permit = executor._permit

    def counting(intent: OrderIntent) -> str | None:
        asked.append(intent.client_order_id)
        return permit(intent)

    executor._permit = counting
    rig.emu.engine.faults.server_error("submit", count=2)
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await settle(rig)
    # before the write-ahead, then before each of the three attempts (the third filled it
    # at once, so there is nothing left to cancel on its ack)
    assert asked.count(intent.client_order_id) == 4
    assert last_state(rig, intent.client_order_id) == "filled"


def test_commands_change_the_state_and_persist_it(tmp_path: Path) -> None:
    from quantshift.state.journal import Journal

    journal = Journal(tmp_path / "l.sqlite", bot="equity", executor="paper")
    control = ControlPlane(journal)
    exit_ = OrderIntent("x", "s", "X", Side.SELL, 1, 0, 1.0, reduce_only=True)
    entry = OrderIntent("e", "s", "X", Side.BUY, 1, 0, 1.0)
    control.apply(Reduce(reason="volatile"))
    assert control.refusal(exit_) is None and control.refusal(entry).startswith("reducing")
    control.apply(Halt(reason="stop"))
    assert control.refusal(exit_) == "halted: stop"
    control.apply(Demote(reason="drawdown"))  # a halt is stricter: it stays
    assert control.state is TradingState.HALTED and control.demoted
    with pytest.raises(ControlRefused):
        control.apply(Reduce(reason="while demoted"))
    journal.flush()
    again = ControlPlane(journal)
    again.restore()
    assert (again.state, again.reason, again.demoted) == (TradingState.HALTED, "stop", True)
    again.apply(Resume())
    assert again.state is TradingState.ACTIVE and not again.demoted
    journal.flush()
    actions = [r[0] for r in journal._db.execute("SELECT action FROM control ORDER BY id")]
    assert actions == ["reduce", "halt", "demote", "reduce", "resume"]
    journal.close()


async def test_a_broker_executor_needs_the_control_plane(rig: Rig) -> None:
    from quantshift.execution import make_executor

    with pytest.raises(ValueError, match="permit"):
        make_executor(rig.executor.kind, rig.engine, venue=rig.executor.venue,
                      durable=lambda: asyncio.sleep(0))
    assert isinstance(rig.engine.control.real_executor, BrokerExecutor)


async def test_a_halt_that_cannot_be_made_durable_is_not_claimed(clean: Path) -> None:
    from tests.test_http_api import AUTH, call, make_settings, running
    from tests.test_http_api import wait_until as http_wait

    settings = make_settings(clean)
    async with running(settings) as (d, client):
        await http_wait(lambda: d.engine.bars >= 2)  # type: ignore[union-attr]
        assert d.journal is not None
        d.journal.flush()
        db = d.journal._db
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
        await http_wait(lambda: not d.journal.health.healthy, timeout=10)  # type: ignore[union-attr]
        code, body = await call(client, "POST", "/halt", headers=AUTH,
                                json={"reason": "disk full drill"})
        assert code == 503 and body["durable"] is False and "cannot be written" in body["error"]
        code, status = await call(client, "GET", "/status")
        assert status["trading"]["state"] == "halted"  # in force in memory all the same
        assert status["journal"]["healthy"] is False and status["journal"]["queued"] > 0
        code, ready = await call(client, "GET", "/readyz")
        assert code == 503 and any("journal cannot be written" in r for r in ready["reasons"])
        db.execute("PRAGMA max_page_count = 1073741823")  # space again
        await http_wait(lambda: d.journal.pending == 0, timeout=10)  # type: ignore[union-attr]
    async with running(settings) as (d, _):
        # Once the journal could be written, the halt was on disk: the restart is halted.
        assert d.control is not None and d.control.state is TradingState.HALTED
