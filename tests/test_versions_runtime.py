"""Strategy versions in a running daemon: version books on every bar, canary routing in
the real book, shadow isolation, promotion and rollback through the control API (live,
persisted, journaled), and the guard's demotion to log-only."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from quantshift.execution.log_only import LogOnlyExecutor
from quantshift.execution.paper import PaperExecutor
from quantshift.shadow.books import book_path
from quantshift.shadow.cli import read_history
from quantshift.shadow.routing import routes_to_canary
from tests.test_http_api import AUTH, call, make_settings, running, wait_until

SYMBOLS = [f"S{i:02d}" for i in range(12)]
FAST = {"ma": "sma", "fast": 2, "slow": 5, "mode": "long_short"}
QUIET = {"ma": "sma", "fast": 50, "slow": 200, "mode": "long_only"}  # silent for 200 bars


def versioned(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "ma_cross", "params": FAST, "canary_percent": 50, "versions": [
        {"version": "v1", "status": "active"},
        {"version": "v2", "status": "shadow", "params": {"fast": 3, "slow": 8}},
        {"version": "v3", "status": "canary", "params": {"fast": 2, "slow": 6}},
    ], **extra}]


def decisions_by_version(path: Path) -> dict[str, set[str]]:
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT version, symbol FROM decisions").fetchall()
    finally:
        db.close()
    out: dict[str, set[str]] = {}
    for version, symbol in rows:
        out.setdefault(version, set()).add(symbol)
    return out


async def test_every_version_sees_every_bar_and_the_canary_trades_its_share(
        clean: Path) -> None:
    settings = make_settings(clean, symbols=SYMBOLS, strategies=versioned())
    async with running(settings) as (d, client):
        vc = d.version_control
        assert vc is not None and vc.books is not None
        assert sorted(v for _, v in vc.books.books) == ["v1", "v2", "v3"]
        await wait_until(lambda: d.engine.counts["signals"] >= 30)  # type: ignore[union-attr]
        bars = d.engine.bars  # type: ignore[union-attr]
        for book in vc.books.books.values():
            assert book.engine.bars == bars  # on_bar is synchronous: the same bars, all
            assert isinstance(book.engine.executor, PaperExecutor)
        code, st = await call(client, "GET", "/status")
        assert code == 200 and st["strategies"][0]["canary"] == "v3"
        assert st["strategies"][0]["versions"] == {"v1": "active", "v2": "shadow",
                                                   "v3": "canary"}
        metrics = await (await client.get("/metrics")).text()
        assert 'quantshift_canary_percent{strategy="ma_cross"} 50.0' in metrics
    real = decisions_by_version(settings.ledger_path())
    canary = {s for s in SYMBOLS if routes_to_canary("ma_cross", s, 50)}
    assert real.keys() <= {"v1", "v3"}  # a shadow never decides in the real book
    assert real["v3"] <= canary and real["v1"] <= set(SYMBOLS) - canary
    assert real["v3"] and real["v1"]
    shadow = decisions_by_version(book_path(settings, "ma_cross", "v2"))
    assert set(shadow) == {"v2"}
    db = sqlite3.connect(settings.ledger_path())
    indicators, confidence = db.execute("SELECT indicators, confidence FROM decisions "
                                        "WHERE outcome = 'approved' LIMIT 1").fetchone()
    db.close()
    assert {"fast", "slow"} <= set(orjson.loads(indicators)) and confidence is not None


async def test_a_shadow_version_never_reaches_the_broker_even_live(clean: Path) -> None:
    """Live executor against the local Alpaca emulator: the active version is silent, the
    shadow trades busily in its book; the venue sees no order at all."""
    from quantshift.emulators.alpaca import AlpacaEmulator

    emu = AlpacaEmulator(["AAA", "BBB"], interval=0.05)
    await emu.start()
    try:
        settings = make_settings(
            clean, symbols=["AAA", "BBB"], feed="alpaca", shadow_mode="live",
            live_confirm="equity", apca_api_key_id="emulator-key",
            apca_api_secret_key="emulator-secret", apca_api_base_url=emu.base_url,
            apca_api_data_url=emu.base_url, apca_api_stream_url=emu.data_stream_url,
            market_hours_only=False, bar_seconds=1, warmup_bars=0,
            strategies=[{"name": "ma_cross", "params": QUIET, "versions": [
                {"version": "v1", "status": "active"},
                {"version": "v2", "status": "shadow", "params": FAST}]}])
        async with running(settings) as (d, _):
            book = d.version_control.books.get("ma_cross", "v2")  # type: ignore[union-attr]
            assert book is not None
            await wait_until(lambda: book.engine.counts["fills"] >= 4, timeout=30)
            assert d.engine.counts["orders"] == 0  # type: ignore[union-attr]
        assert emu.engine.orders == {}  # the venue never saw an order
    finally:
        await emu.stop()


async def test_promotion_needs_approval_or_force_and_rollback_restores(clean: Path) -> None:
    settings = make_settings(clean, symbols=SYMBOLS, strategies=versioned(canary_percent=0))
    async with running(settings) as (d, client):
        engine = d.engine
        assert engine is not None
        await wait_until(lambda: engine.bars >= 60)
        code, body = await call(client, "POST", "/promote", headers=AUTH,
                                json={"strategy": "ma_cross", "version": "v2"})
        assert code == 409 and "not approved (PENDING)" in body["error"]
        assert {i.version for i in engine._instances.values()} == {"v1"}

        code, body = await call(client, "POST", "/promote", headers=AUTH,
                                json={"strategy": "ma_cross", "version": "v2", "force": True,
                                      "reason": "rehearsal"})
        assert code == 200 and body["change"]["active"] == "v2" and body["forced"] is True
        assert body["verdict"]["decision"] == "PENDING"
        assert {i.version for i in engine._instances.values()} == {"v2"}
        # The new instances are warm: the book's copies, with the real positions.
        for (strategy, symbol), inst in engine._instances.items():
            assert inst.position == engine.portfolio.position_qty(strategy, symbol)
        before = engine.bars
        await wait_until(lambda: engine.bars > before + len(SYMBOLS))
        code, body = await call(client, "POST", "/rollback", headers=AUTH,
                                json={"strategy": "ma_cross"})
        assert code == 200 and body["change"]["active"] == "v1"
        assert {i.version for i in engine._instances.values()} == {"v1"}
        code, body = await call(client, "POST", "/promote", headers=AUTH,
                                json={"strategy": "ma_cross", "version": "v9", "force": True})
        assert code == 409 and "no version 'v9'" in body["error"]
        code, body = await call(client, "POST", "/promote", headers=AUTH,
                                json={"strategy": "ma_cross", "version": "v2", "force": True})
        assert code == 200
    # The running configuration survives a restart.
    async with running(settings) as (d, client):
        code, st = await call(client, "GET", "/status")
        assert st["strategies"][0]["version"] == "v2"
        assert st["strategies"][0]["previous_active"] == "v1"
        await wait_until(lambda: d.engine.bars >= len(SYMBOLS))  # type: ignore[union-attr]
        assert {i.version for i in d.engine._instances.values()} == {"v2"}  # type: ignore[union-attr]
    history = read_history(settings.ledger_path())
    assert [(h["action"], h["result"].get("status")) for h in history] == [
        ("promote", 409), ("promote", 200), ("rollback", 200), ("promote", 409),
        ("promote", 200)]
    assert history[1]["params"]["reason"] == "rehearsal" and "api" in history[1]["actor"]


async def test_a_trigger_demotes_to_log_only_persists_and_resume_lifts_it(
        clean: Path) -> None:
    # A 0.01 % drawdown trigger fires on the first losing mark.
    settings = make_settings(clean, trigger_drawdown=0.0001, trigger_interval=0.1)
    async with running(settings) as (d, client):
        await wait_until(lambda: d.demoted, timeout=20)
        assert isinstance(d.engine.executor, LogOnlyExecutor)  # type: ignore[union-attr]
        assert "drawdown" in d.demoted_reason
        code, body = await call(client, "GET", "/readyz")
        assert code == 503 and any("demoted" in r for r in body["reasons"])
        orders = d.engine.counts["orders"]  # type: ignore[union-attr]
        fills = d.engine.counts["fills"]  # type: ignore[union-attr]
        await wait_until(lambda: d.engine.counts["orders"] > orders + 2)  # type: ignore[union-attr]
        assert d.engine.counts["fills"] == fills  # type: ignore[union-attr]  # logged only
    async with running(settings.model_copy(update={"trigger_interval": 0})) as (d, client):
        assert d.demoted and "drawdown" in d.demoted_reason  # a restart stays demoted
        assert isinstance(d.engine.executor, LogOnlyExecutor)  # type: ignore[union-attr]
        code, body = await call(client, "POST", "/resume", headers=AUTH)
        assert code == 200 and body["demotion_lifted"] is True
        assert isinstance(d.engine.executor, PaperExecutor)  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
    async with running(settings.model_copy(update={"trigger_interval": 0})) as (d, _):
        assert not d.demoted


async def test_a_crashed_component_demotes_before_the_exit(clean: Path) -> None:
    settings = make_settings(clean)
    async with running(settings) as (d, _):
        await wait_until(lambda: d.engine.bars >= 4)  # type: ignore[union-attr]
        d._demote_on_crash("feed")
        assert d.demoted and d.demoted_reason == "component feed crashed"
    db = sqlite3.connect(settings.ledger_path())
    row = db.execute("SELECT value FROM kv WHERE key = 'demotion'").fetchone()
    db.close()
    assert row is not None and orjson.loads(row[0])["reason"] == "component feed crashed"


async def test_the_adaptive_canary_moves_once_a_day_and_journals_the_posterior(
        clean: Path) -> None:
    from datetime import date

    strategies = [{"name": "ma_cross", "params": FAST, "canary_percent": 20,
                   "canary_adaptive": True, "canary_min_percent": 20,
                   "canary_max_percent": 40, "versions": [
                       {"version": "v1", "status": "active"},
                       {"version": "v2", "status": "canary", "params": {"fast": 3}}]}]
    settings = make_settings(clean, symbols=SYMBOLS, strategies=strategies)
    async with running(settings) as (d, _):
        vc = d.version_control
        assert vc is not None and vc.books is not None
        await wait_until(lambda: all(b.engine.counts["trades"] >= 3
                                     for b in vc.books.books.values()))
        await d._flush_books()
        vc.registry.set_canary_percent("ma_cross", 10)  # below the bounds: any proposal moves
        changes = vc.adapt(date(2026, 11, 21))
        assert len(changes) == 1
        new = changes[0]["new_percent"]
        assert 20 <= new <= 40 and changes[0]["old_percent"] == 10
        assert changes[0]["active_alpha"] >= 1 and changes[0]["canary_beta"] >= 1
        assert vc.registry.canary_percent("ma_cross") == new
        assert vc.adapt(date(2026, 11, 21)) == []  # at most once a day
        for (strategy, symbol), inst in d.engine._instances.items():  # type: ignore[union-attr]
            want = "v2" if routes_to_canary(strategy, symbol, new) else "v1"
            assert inst.version == want
    rows = [h for h in read_history(settings.ledger_path()) if h["action"] == "canary"]
    assert len(rows) == 1 and rows[0]["result"]["new_percent"] == new
    assert "p_canary_better" in rows[0]["result"]


@pytest.mark.parametrize("executor", ["log_only", "paper"])
async def test_shadow_versions_stay_in_their_books_under_every_executor(
        clean: Path, executor: str) -> None:
    """The active version is silent; the shadow trades in its own book only. (The live
    executor against the broker emulator is the test above.)"""
    settings = make_settings(clean, shadow_mode=executor, strategies=[
        {"name": "ma_cross", "params": QUIET, "versions": [
            {"version": "v1", "status": "active"},
            {"version": "v2", "status": "shadow", "params": FAST}]}])
    async with running(settings) as (d, _):
        book = d.version_control.books.get("ma_cross", "v2")  # type: ignore[union-attr]
        assert book is not None and book.engine.executor is not d.engine.executor  # type: ignore[union-attr]
        await wait_until(lambda: book.engine.counts["fills"] >= 4)
        assert d.engine.counts["orders"] == 0  # type: ignore[union-attr]
        assert d.engine.executor.kind.value == executor  # type: ignore[union-attr]
    assert "v2" not in decisions_by_version(settings.ledger_path())


async def test_the_win_rate_trigger_reads_each_active_version_apart(clean: Path) -> None:
    settings = make_settings(clean, symbols=SYMBOLS, strategies=versioned(),
                             trigger_interval=0)
    async with running(settings) as (d, _):
        guard = d.guard
        assert guard is not None
        await wait_until(lambda: d.engine.counts["trades"] >= 3)  # type: ignore[union-attr]
        await d._flush_books()
        trades = guard.version_trades(100)
        assert set(trades) == {"ma_cross@v1"}  # the active version's own book
        book = d.version_control.books.get("ma_cross", "v1")  # type: ignore[union-attr]
        assert trades["ma_cross@v1"] == book.journal.recent_trade_pnls(100)
        # 20 recent trades with 5 wins against a baseline of 20 with 15 wins.
        recent = [1.0] * 5 + [-1.0] * 15
        baseline = [1.0] * 15 + [-1.0] * 5
        h = guard.health({"ma_cross@v1": recent + baseline, "other@v1": [1.0] * 40})
        assert (h.win_rate, h.baseline_win_rate, h.win_rate_of) == (0.25, 0.75, "ma_cross@v1")
        assert guard.check({"ma_cross@v1": recent + baseline})
        assert d.demoted and "win rate of ma_cross@v1 25.0%" in d.demoted_reason


def test_a_books_figures_are_worked_out_from_its_trades(tmp_path: Path) -> None:
    from quantshift.domain import Direction, Fill, Side, Trade
    from quantshift.shadow.compare import read_book
    from quantshift.state.journal import Journal

    path = tmp_path / "book.sqlite"
    journal = Journal(path, bot="equity", executor="paper", durable=False)
    for i, pnl in enumerate([10.0, -30.0, 5.0, -5.0, 40.0]):  # entry notional 1,000 each
        journal.fill(Fill(i + 1, f"c{i}", "ma", "AAA", Side.SELL, 10, 100.0, 0.0, i + 1),
                     Trade("ma", "AAA", Direction.LONG, 10, i, 100.0, i + 1, 100.0, pnl))
    journal.flush()
    journal.close()
    fig = read_book(path, "ma", "v2", "shadow")
    assert fig.trades == 5 and fig.pnl == 20.0 and fig.win_rate == 0.6
    assert fig.max_drawdown == 30.0  # the running P&L goes from +10 down to -20
    returns = [0.01, -0.03, 0.005, -0.005, 0.04]
    mean = sum(returns) / 5
    std = (sum((r - mean) ** 2 for r in returns) / 4) ** 0.5
    assert fig.sharpe == round(mean / std, 4)
    empty = Journal(tmp_path / "none.sqlite", bot="equity", executor="paper", durable=False)
    empty.close()
    bare = read_book(tmp_path / "none.sqlite", "ma", "v3", "shadow")
    assert bare.trades == 0 and bare.sharpe is None and bare.max_drawdown == 0.0


def test_a_report_that_cannot_be_written_ends_in_one_line(
        clean: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from quantshift import cli

    blocker = clean / "not-a-dir"
    blocker.write_text("a file where the report's directory should be")
    code = cli.main(["report", "--date", "2026-11-20", "--out", str(blocker / "reports")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("quantshift: report: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


async def test_a_file_edited_since_the_last_run_is_reported_and_the_journal_wins(
        clean: Path) -> None:
    """The file and the journal never disagree silently: each difference is one line in
    the log and in /status, the journal's running state wins by default (a promotion, a
    share set at run time), the file's with QUANTSHIFT_VERSIONS_FROM=config; either way a
    version added to the file keeps the promotion history."""
    first = make_settings(clean, symbols=SYMBOLS, strategies=versioned(canary_percent=40))
    async with running(first) as (d, client):
        await wait_until(lambda: d.engine.bars >= len(SYMBOLS))  # type: ignore[union-attr]
        code, _ = await call(client, "POST", "/promote", headers=AUTH, json={
            "strategy": "ma_cross", "version": "v2", "force": True})
        assert code == 200
    strategies = versioned(canary_percent=10)
    strategies[0]["versions"][2]["status"] = "retired"  # v3
    strategies[0]["versions"].append({"version": "v4", "status": "shadow",
                                      "params": {"fast": 4, "slow": 9}})
    edited = first.model_copy(update={"strategies": make_settings(
        clean, strategies=strategies).strategies})
    async with running(edited) as (d, client):
        code, st = await call(client, "GET", "/status")
        [row] = st["strategies"]
        assert (row["version"], row["previous_active"], row["canary_percent"]) == ("v2", "v1",
                                                                                   40)
        assert row["versions"] == {"v1": "shadow", "v2": "active", "v3": "canary",
                                   "v4": "shadow"}
        lines = {x["line"] for x in st["version_differences"]}
        assert "strategy 'ma_cross': canary_percent is 10 in the configuration and 40 in " \
               "the journal; 40 applies" in lines
        assert "strategy 'ma_cross' version 'v3': status is 'retired' in the configuration " \
               "and 'canary' in the journal; the journal's applies" in lines
        assert any("version 'v4'" in x and "added as shadow" in x for x in lines)
        assert st["versions_from"] == "journal"
    async with running(edited.model_copy(update={"versions_from": "config"})) as (d, client):
        code, st = await call(client, "GET", "/status")
        [row] = st["strategies"]
        assert (row["version"], row["previous_active"], row["canary"]) == ("v1", "v1", None)
        assert d.version_control.registry.canary_percent("ma_cross") == 10  # type: ignore[union-attr]
        assert row["versions"] == {"v1": "active", "v2": "shadow", "v3": "retired",
                                   "v4": "shadow"}
        assert st["version_differences"]  # still said, though the file won


async def test_a_version_added_beside_a_lone_active_one_sees_every_bar_from_then_on(
        clean: Path) -> None:
    settings = make_settings(clean, symbols=SYMBOLS, warmup_bars=5,
                             strategies=[{"name": "ma_cross", "params": FAST}])
    async with running(settings) as (d, client):
        engine, vc = d.engine, d.version_control
        assert engine is not None and vc is not None and vc.books is None
        await wait_until(lambda: engine.bars >= 2 * len(SYMBOLS))
        asked = engine.bars
        code, body = await call(client, "POST", "/versions", headers=AUTH, json={
            "strategy": "ma_cross", "version": "v2", "params": {"fast": 3}})
        # the last 5 bars of each symbol, and every bar that came while it warmed up
        assert code == 200, body
        assert 5 * len(SYMBOLS) <= body["warmed_on"] <= 5 * len(SYMBOLS) + engine.bars - asked
        assert vc.books is not None and engine.books is vc.books
        book = vc.books.get("ma_cross", "v2")
        assert book is not None
        seen, bars = book.engine.bars, engine.bars
        await wait_until(lambda: engine.bars >= bars + 2 * len(SYMBOLS))
        assert book.engine.bars - seen == engine.bars - bars  # the same live bars, all
        code, body = await call(client, "POST", "/versions", headers=AUTH, json={
            "strategy": "ma_cross", "version": "v3", "params": {"fast": "quick"}})
        assert code == 400 and "ma_cross parameter fast" in body["error"], body
        assert [v.version for v in vc.registry.versions("ma_cross")] == ["v1", "v2"]
    with sqlite3.connect(book_path(settings, "ma_cross", "v2")) as db:
        assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] > 0
