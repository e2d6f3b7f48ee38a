"""The journal (group commit, ownership, reads) and Engine.restore from it."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

import quantshift.state.journal as journal_module
from quantshift.app import build_engine, open_journal
from quantshift.control import Halt
from quantshift.domain import (
    NS_PER_SECOND,
    Bar,
    Direction,
    Fill,
    OrderIntent,
    OrderState,
    Side,
    Signal,
    Trade,
    client_order_id,
)
from quantshift.engine import Engine
from quantshift.settings import Settings
from quantshift.state.journal import Journal, JournalOwnerError

T0 = 1_704_067_200 * NS_PER_SECOND
MIN = 60 * NS_PER_SECOND


def intent(symbol: str = "X", side: Side = Side.BUY, qty: float = 10, ts: int = T0,
           reduce_only: bool = False) -> OrderIntent:
    coid = client_order_id("equity", "s1", symbol, ts, side, reduce_only)
    return OrderIntent(coid, "s1", symbol, side, qty, ts, 100.0, reduce_only, "why")


def fill(seq: int, i: OrderIntent, qty: float | None = None, price: float = 100.0) -> Fill:
    return Fill(seq, i.client_order_id, i.strategy, i.symbol, i.side,
                i.qty if qty is None else qty, price, 0.1, i.ts + seq)


def count(path: Path, table: str) -> int:
    """Count rows through a connection of its own, as another process would."""
    with sqlite3.connect(path) as con:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "j.sqlite", bot="equity", executor="paper", durable=False)
    yield j
    j.close()


def queue_one_of_each(j: Journal) -> None:
    i = intent()
    j.decision(T0, "s1", "X", 1, "approved", "why", 0.5, {"fast": 1.0}, i.client_order_id)
    j.veto(T0, "s1", "Y", 1, "max exposure")
    j.intent(i)
    j.order_state(i.client_order_id, OrderState.FILLED)
    j.fill(fill(1, i), Trade("s1", "X", Direction.LONG, 10, T0, 100.0, T0 + MIN, 101.0, 9.8))
    j.set("trading_state", {"state": "active"})
    j.snapshot({"portfolio": {"fill_seq": 1}, "n": 1})


TABLES = ("decisions", "vetoes", "intents", "order_events", "fills", "trades", "snapshots",
          "kv")


# -- the file --------------------------------------------------------------------------
def test_wal_mode(journal: Journal) -> None:
    with sqlite3.connect(journal.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_owner_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "equity-paper.sqlite"
    Journal(path, bot="equity", executor="paper").close()
    with pytest.raises(JournalOwnerError, match=r"'equity'.*'paper'"):
        Journal(path, bot="equity", executor="live")
    with pytest.raises(JournalOwnerError):
        Journal(path, bot="crypto", executor="paper")
    Journal(path, bot="equity", executor="paper").close()  # the owner still opens it


# -- group commit ----------------------------------------------------------------------
def test_rows_are_invisible_until_flush_then_all_visible(journal: Journal) -> None:
    queue_one_of_each(journal)
    assert journal.pending == 7  # queue items: the fill and its round trip are one
    for table in TABLES:
        assert count(journal.path, table) == 0, table

    statements: list[str] = []
    journal._db.set_trace_callback(statements.append)
    try:
        assert journal.flush() == 8
    finally:
        journal._db.set_trace_callback(None)
    assert journal.pending == 0
    assert journal.rows_written == 8
    for table in TABLES:
        assert count(journal.path, table) == 1, table
    # one transaction: a single BEGIN ... COMMIT around every insert
    assert [s for s in statements if s in ("BEGIN", "COMMIT", "ROLLBACK")] == [
        "BEGIN", "COMMIT"]
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"
    assert journal.flush() == 0  # nothing left


def test_failed_flush_reraises_and_keeps_the_rows(journal: Journal,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    queue_one_of_each(journal)
    with monkeypatch.context() as m:
        m.setitem(journal_module._INSERT, "fill", "INSERT INTO no_such_table VALUES (?)")
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            journal.flush()
    assert journal.pending == 7
    assert journal.last_error is not None and "no_such_table" in journal.last_error
    for table in TABLES:  # rolled back: the rows before the failing one are gone too
        assert count(journal.path, table) == 0, table
    assert not journal._db.in_transaction

    assert journal.flush() == 8  # the next flush writes them, once
    assert journal.last_error is None
    for table in TABLES:
        assert count(journal.path, table) == 1, table


def test_failed_flush_when_a_table_is_dropped_elsewhere(journal: Journal) -> None:
    i = intent()
    journal.intent(i)
    journal.fill(fill(1, i))
    with sqlite3.connect(journal.path) as con:
        con.execute("DROP TABLE fills")
    with pytest.raises(sqlite3.OperationalError):
        journal.flush()
    assert journal.pending == 2
    assert count(journal.path, "intents") == 0
    with sqlite3.connect(journal.path) as con:
        con.executescript(journal_module._SCHEMA)  # put the table back
    assert journal.flush() == 2
    assert journal.fills_after(0) == [fill(1, i)]
    assert journal.client_order_ids() == {i.client_order_id}


def test_a_fill_and_the_trade_it_closed_commit_together(journal: Journal) -> None:
    # The flush runs in another thread than the one queueing: a fill and its round trip
    # are one item of the queue, so no flush can take one and leave the other.
    i = intent()
    t = Trade("s1", "X", Direction.LONG, 10, T0 - MIN, 99.0, T0, 100.0, 10.0)
    journal.fill(fill(1, i), t)
    assert journal.pending == 1
    journal.flush()
    assert journal.fills_after(0) == [fill(1, i)]
    assert journal.trades() == [("s1", "X", 1, 10.0, T0 - MIN, 99.0, T0, 100.0, 10.0)]
    journal.fill(fill(2, i))  # no round trip closed: the fill alone
    journal.flush()
    assert count(journal.path, "fills") == 2 and count(journal.path, "trades") == 1


def test_queue_order_survives_a_failed_flush(journal: Journal,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(3):
        journal.veto(T0 + n, "s1", "X", 1, f"v{n}")
    with monkeypatch.context() as m:
        m.setitem(journal_module._INSERT, "veto", "INSERT INTO nope VALUES (?)")
        with pytest.raises(sqlite3.OperationalError):
            journal.flush()
    journal.veto(T0 + 3, "s1", "X", 1, "v3")  # queued after the failure
    assert journal.flush() == 4
    with sqlite3.connect(journal.path) as con:
        reasons = [r[0] for r in con.execute("SELECT reason FROM vetoes ORDER BY id")]
    assert reasons == ["v0", "v1", "v2", "v3"]


# -- reads -----------------------------------------------------------------------------
def test_latest_snapshot_and_fills_after(journal: Journal) -> None:
    assert journal.latest_snapshot() is None
    assert journal.fills_after(0) == []
    assert journal.max_fill_seq() == 0
    a, b = intent("X"), intent("Y", Side.SELL, 5)
    fills = [fill(1, a), fill(2, b, 2), fill(3, b, 3, price=99.5)]
    for f in fills:
        journal.fill(f)
    journal.snapshot({"portfolio": {"fill_seq": 1}, "tag": "first"})
    journal.snapshot({"portfolio": {"fill_seq": 3}, "tag": "second"})
    journal.flush()
    assert journal.latest_snapshot() == {"portfolio": {"fill_seq": 3}, "tag": "second"}
    assert journal.fills_after(0) == fills
    assert journal.fills_after(1) == fills[1:]
    assert journal.fills_after(3) == []
    assert journal.max_fill_seq() == 3
    journal.fill(fills[0])  # the same seq again is ignored
    journal.flush()
    assert journal.count("fills") == 3


def test_old_snapshots_are_pruned(journal: Journal) -> None:
    for n in range(60):
        journal.snapshot({"portfolio": {"fill_seq": n}})
    journal.flush()
    assert journal.count("snapshots") == 50  # ids 11..60 kept
    assert journal.latest_snapshot() == {"portfolio": {"fill_seq": 59}}


def test_kv_get_and_set(journal: Journal) -> None:
    assert journal.get("trading_state", "dflt") == "dflt"
    journal.set("trading_state", {"state": "halted", "reason": "x"})
    journal.set("trading_state", {"state": "active"})
    journal.flush()
    assert journal.get("trading_state") == {"state": "active"}


def test_intent_states(journal: Journal) -> None:
    resting = intent("A")
    partial = intent("B", qty=10)
    done = intent("C")
    cancelled = intent("D")
    never_sent = intent("E", Side.SELL, reduce_only=True)
    for i in (resting, partial, done, cancelled, never_sent):
        journal.intent(i)
    journal.order_state(resting.client_order_id, OrderState.SUBMITTED)
    journal.order_state(partial.client_order_id, OrderState.SUBMITTED)
    journal.fill(fill(1, partial, qty=4))
    journal.order_state(partial.client_order_id, OrderState.PARTIALLY_FILLED)
    journal.order_state(done.client_order_id, OrderState.SUBMITTED)
    journal.fill(fill(2, done))
    journal.order_state(done.client_order_id, OrderState.FILLED)
    journal.order_state(cancelled.client_order_id, OrderState.SUBMITTED)
    journal.order_state(cancelled.client_order_id, OrderState.CANCELLED, "bye")
    journal.intent(resting)  # journaled twice: still one intent
    journal.flush()

    assert journal.count("intents") == 5
    assert journal.client_order_ids() == {i.client_order_id for i in (
        resting, partial, done, cancelled, never_sent)}
    unsettled = journal.unsettled()
    open_ = {i.client_order_id: (i, filled) for i, filled, _, sent in unsettled if sent}
    assert set(open_) == {resting.client_order_id, partial.client_order_id}
    assert open_[resting.client_order_id] == (resting, 0.0)
    assert open_[partial.client_order_id] == (partial, 4.0)
    assert [i for i, _, _, sent in unsettled if not sent] == [never_sent]


def test_count_refuses_unknown_tables(journal: Journal) -> None:
    with pytest.raises(ValueError):
        journal.count("meta; DROP TABLE fills")


# -- Engine.restore --------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("QUANTSHIFT_", "APCA_", "CCXT_")) or key == "SHADOW_MODE":
            monkeypatch.delenv(key)
    return Settings(state_dir=tmp_path / "state", paper_slippage_bps=5, paper_commission_bps=10,
                    sizing="fixed:10", risk_max_trades_per_day=0,
                    strategies=[{"name": "ma_cross", "params": {"fast": 10, "slow": 30}}])


def engine_on(settings: Settings) -> Engine:
    return build_engine(settings, open_journal(settings, durable=False), log_decisions=False)


def bar(symbol: str, ts: int, close: float) -> Bar:
    return Bar(symbol, ts, close, close + 1, close - 1, close, 1_000.0)


def sig(symbol: str, ts: int, target: Direction) -> Signal:
    return Signal("ma_cross", symbol, ts, target, "test")


def test_restore_from_snapshot_plus_later_fills(settings: Settings) -> None:
    e1 = engine_on(settings)
    e1.on_bar(bar("X", T0, 100.0))
    e1.decide(sig("X", T0, Direction.LONG), 100.0)  # fill 1
    e1.snapshot()
    e1.on_bar(bar("X", T0 + MIN, 110.0))
    e1.on_bar(bar("Y", T0 + MIN, 50.0))
    e1.decide(sig("Y", T0 + MIN, Direction.LONG), 50.0)  # fill 2, after the snapshot
    e1.decide(sig("X", T0 + MIN, Direction.FLAT), 110.0)  # fill 3
    e1.journal.flush()
    e1.journal.close()
    pf1 = e1.portfolio
    # by hand: X 10 @ 100.05 (comm 1.0005), Y 10 @ 50.025 (comm 0.50025),
    # X out 10 @ 109.945 (comm 1.09945):
    # cash = 100000 - 1000.5 - 1.0005 - 500.25 - 0.50025 + 1099.45 - 1.09945 = 99596.09980
    assert pf1.cash == pytest.approx(99_596.0998, abs=1e-6)

    e2 = engine_on(settings)
    try:
        report = e2.restore()
        assert report == {"snapshot": True, "fills_replayed": 2, "open_orders": 0, "unsent": 0,
                          "halted": False}
        pf2 = e2.portfolio
        assert pf2 is not pf1
        assert pf2.cash == pf1.cash
        assert pf2.positions == pf1.positions
        assert pf2.net == pf1.net
        assert pf2.realized_pnl == pf1.realized_pnl
        assert pf2.commission == pf1.commission
        assert pf2.fill_seq == 3
        # the snapshot had X at T0; the decisions on disk after it move both symbols on
        assert e2.last_ts == {"X": T0 + MIN, "Y": T0 + MIN}
        # marked at the same prices, the equity is the same too
        e2.on_bar(bar("X", T0 + 2 * MIN, 110.0))
        e2.on_bar(bar("Y", T0 + 2 * MIN, 50.0))
        assert pf2.equity == pytest.approx(pf1.equity, abs=1e-9)
        # fills go on numbering after the journal's last one: none is lost to INSERT OR IGNORE
        e2.decide(sig("Z", T0 + 2 * MIN, Direction.LONG), 20.0)
        e2.journal.flush()
        assert [f.seq for f in e2.journal.fills_after(3)] == [4]
        assert e2.journal.count("fills") == 4
    finally:
        e2.journal.close()


def test_restore_without_a_snapshot_replays_every_fill(settings: Settings) -> None:
    e1 = engine_on(settings)
    e1.on_bar(bar("X", T0, 100.0))
    e1.decide(sig("X", T0, Direction.SHORT), 100.0)
    e1.journal.flush()
    e1.journal.close()
    e2 = engine_on(settings)
    try:
        assert e2.restore()["fills_replayed"] == 1
        assert e2.portfolio.cash == e1.portfolio.cash
        assert e2.portfolio.positions == e1.portfolio.positions
    finally:
        e2.journal.close()


def test_persisted_halt_survives_restore(settings: Settings) -> None:
    e1 = engine_on(settings)
    e1.on_bar(bar("X", T0, 100.0))
    e1.decide(sig("X", T0, Direction.LONG), 100.0)
    e1.snapshot()
    e1.journal.set("trading_state", {"state": "halted", "reason": "x"})
    e1.journal.flush()
    e1.journal.close()

    e2 = engine_on(settings)
    try:
        assert e2.restore()["halted"] is True
        assert e2.gate.state == "halted"
        assert e2.gate.halt_reason == "x"
        e2.on_bar(bar("Y", T0 + MIN, 10.0))
        assert e2.decide(sig("Y", T0 + MIN, Direction.LONG), 10.0) == []
        assert e2.counts["vetoed"] == 1
        assert e2.counts["orders"] == 0
        d = e2.gate.evaluate(sig("Y", T0 + MIN, Direction.LONG), 10.0, e2.portfolio)
        assert d.intents == ()
        assert d.veto.startswith("halted")
        e2.journal.flush()
        assert e2.journal.count("intents") == 1
        assert e2.journal.count("vetoes") == 1
    finally:
        e2.journal.close()


def test_engine_halt_is_persisted(settings: Settings) -> None:
    e1 = engine_on(settings)
    e1.control.apply(Halt(reason="kill switch"))
    e1.journal.flush()
    e1.journal.close()
    e2 = engine_on(settings)
    try:
        assert e2.restore()["halted"] is True
        assert e2.gate.halt_reason == "kill switch"
    finally:
        e2.journal.close()


def test_restore_cancels_intents_that_were_never_submitted(settings: Settings) -> None:
    e1 = engine_on(settings)
    lost = OrderIntent(client_order_id("equity", "ma_cross", "X", T0, Side.BUY), "ma_cross",
                       "X", Side.BUY, 10, T0, 100.0)
    e1.journal.intent(lost)  # the daemon stopped before the order went anywhere
    e1.journal.flush()
    e1.journal.close()
    e2 = engine_on(settings)
    try:
        assert e2.restore()["open_orders"] == 0
        e2.journal.flush()
        assert e2.journal.unsettled() == []
        with sqlite3.connect(e2.journal.path) as con:
            (state,) = con.execute("SELECT state FROM orders WHERE client_order_id = ?",
                                   (lost.client_order_id,)).fetchone()
        assert state == "cancelled"
    finally:
        e2.journal.close()
