"""A restart does not repeat orders: the real engine and Paper executor on a tmp journal."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import pytest

from quantshift.app import build_engine, open_journal
from quantshift.domain import NS_PER_SECOND, Bar, Direction, OrderIntent, Side, Signal
from quantshift.domain import client_order_id as coid_of
from quantshift.engine import Engine
from quantshift.settings import Settings

T0 = 1_704_067_200 * NS_PER_SECOND + 14 * 3600 * NS_PER_SECOND  # 2024-01-01 14:00Z
MIN = 60 * NS_PER_SECOND


@pytest.fixture
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("QUANTSHIFT_", "APCA_", "CCXT_")) or key == "SHADOW_MODE":
            monkeypatch.delenv(key)

    def make(**kw) -> Settings:
        base = {"state_dir": tmp_path / "state", "paper_slippage_bps": 5,
                "paper_commission_bps": 10, "sizing": "fixed:10",
                "risk_max_trades_per_day": 0,
                "strategies": [{"name": "ma_cross",
                                "params": {"fast": 3, "slow": 8, "mode": "long_short"}}],
                "symbols": ["AAA", "BBB"]}
        base.update(kw)
        return Settings(**base)

    return make


def bars(n: int = 200, step: int = MIN) -> list[Bar]:
    """Two symbols, interleaved, each a sine wave: many crosses of a 3/8 average."""
    out = []
    for k in range(n):
        for sym, period, base in (("AAA", 23.0, 100.0), ("BBB", 31.0, 40.0)):
            c = base * (1 + 0.05 * math.sin(2 * math.pi * k / period))
            o = base * (1 + 0.05 * math.sin(2 * math.pi * (k - 0.5) / period))
            out.append(Bar(sym, T0 + k * step, o, max(o, c) * 1.001, min(o, c) * 0.999, c, 1e3))
    return out


def engine_on(settings: Settings) -> Engine:
    return build_engine(settings, open_journal(settings, durable=False), log_decisions=False)


def table_counts(engine: Engine) -> dict[str, int]:
    return {t: engine.journal.count(t) for t in ("intents", "fills", "trades", "order_events")}


def run_first(settings: Settings, feed: list[Bar], snapshot_after: int | None = None) -> Engine:
    e1 = engine_on(settings)
    for n, b in enumerate(feed):
        e1.on_bar(b)
        if n + 1 == snapshot_after:
            e1.snapshot()
    if snapshot_after is None:
        e1.snapshot()
    e1.journal.flush()
    e1.journal.close()
    return e1


@pytest.mark.parametrize("fill", ["close", "next_open"])
def test_same_bars_after_a_restart_make_no_second_order(make_settings, fill: str) -> None:
    settings = make_settings(paper_fill=fill)
    feed = bars()
    e1 = run_first(settings, feed)
    assert e1.counts["orders"] >= 10  # the wave really trades
    assert e1.counts["trades"] >= 4
    # no order left resting across the restart here (that case is tested below)
    assert e1.open_orders() == []
    pf1 = e1.portfolio

    e2 = engine_on(settings)
    try:
        before = table_counts(e2)
        assert before["intents"] == e1.counts["orders"]
        assert e2.restore()["snapshot"] is True
        for b in feed:
            e2.on_bar(b)
        e2.journal.flush()
        assert e2.counts["orders"] == 0
        assert e2.counts["signals"] == 0
        assert e2.counts["fills"] == 0
        assert e2.counts["warmup_signals"] == e1.counts["signals"]
        after = table_counts(e2)
        assert after["intents"] == before["intents"]
        assert after["fills"] == before["fills"]
        assert after["trades"] == before["trades"]
        pf2 = e2.portfolio
        assert pf2.cash == pf1.cash
        assert pf2.positions == pf1.positions
        assert pf2.realized_pnl == pf1.realized_pnl
        assert pf2.equity == pytest.approx(pf1.equity, abs=1e-6)
    finally:
        e2.journal.close()


def test_restart_from_an_older_snapshot_repeats_nothing(make_settings) -> None:
    """Fills after the snapshot come back from the journal, and bars up to the last
    decision on disk are not decided again."""
    settings = make_settings()
    feed = bars()
    e1 = run_first(settings, feed, snapshot_after=len(feed) // 2)
    pf1 = e1.portfolio
    e2 = engine_on(settings)
    try:
        before = table_counts(e2)
        report = e2.restore()
        assert report["fills_replayed"] > 0
        for b in feed:
            e2.on_bar(b)
        e2.journal.flush()
        assert e2.counts["orders"] == 0
        # every bar up to the last decision on disk only warms up, snapshot or not
        assert e2.counts["signals"] == 0
        assert e2.counts["warmup_signals"] > 0
        assert table_counts(e2)["intents"] == before["intents"]
        assert table_counts(e2)["fills"] == before["fills"]
        assert e2.portfolio.cash == pf1.cash
        assert e2.portfolio.positions == pf1.positions
    finally:
        e2.journal.close()


def test_new_bars_after_the_restart_trade_again(make_settings) -> None:
    settings = make_settings()
    feed = bars(300)
    e1 = run_first(settings, feed[:400])  # 200 bars of each symbol
    e2 = engine_on(settings)
    try:
        e2.restore()
        for b in feed:
            e2.on_bar(b)
        assert e2.counts["orders"] > 0  # the last 100 bars per symbol are new
        assert e2.counts["duplicates"] == 0
        e2.journal.flush()
        assert e2.journal.count("intents") == e1.counts["orders"] + e2.counts["orders"]
    finally:
        e2.journal.close()


def test_known_client_order_id_is_never_submitted_again(make_settings) -> None:
    settings = make_settings()
    e1 = engine_on(settings)
    ts = T0
    lost = OrderIntent(coid_of(settings.bot, "ma_cross", "AAA", ts, Side.BUY), "ma_cross",
                       "AAA", Side.BUY, 10, ts, 100.0)
    e1.journal.intent(lost)  # journaled, then the daemon died before submitting it
    e1.journal.flush()
    e1.journal.close()

    e2 = engine_on(settings)
    try:
        e2.restore()
        sent = e2.decide(Signal("ma_cross", "AAA", ts, Direction.LONG, "again"), 100.0)
        assert sent == []
        assert e2.counts["duplicates"] == 1
        assert e2.counts["orders"] == 0
        assert e2.counts["fills"] == 0
        assert e2.portfolio.position_qty("ma_cross", "AAA") == 0
        e2.journal.flush()
        assert e2.journal.count("intents") == 1
        assert e2.journal.count("fills") == 0
        # a later bar is a new decision with a new id
        sent = e2.decide(Signal("ma_cross", "AAA", ts + MIN, Direction.LONG, "new"), 100.0)
        assert len(sent) == 1
        assert e2.counts["fills"] == 1
    finally:
        e2.journal.close()


def test_duplicate_within_one_session(make_settings) -> None:
    settings = make_settings()
    e = engine_on(settings)
    try:
        e.on_bar(Bar("AAA", T0, 100, 101, 99, 100, 1e3))
        assert len(e.decide(Signal("ma_cross", "AAA", T0, Direction.LONG, "a"), 100.0)) == 1
        assert len(e.decide(Signal("ma_cross", "AAA", T0, Direction.FLAT, "b"), 100.0)) == 1
        # long again on the same bar: the same id as the first buy
        assert e.decide(Signal("ma_cross", "AAA", T0, Direction.LONG, "c"), 100.0) == []
        assert e.counts["duplicates"] == 1
        assert e.counts["orders"] == 2
        assert e.portfolio.position_qty("ma_cross", "AAA") == 0
    finally:
        e.journal.close()


def test_resting_order_does_not_fill_on_a_replayed_bar(make_settings) -> None:
    settings = make_settings(paper_fill="next_open")
    feed = bars()
    # run until a bar leaves an order resting
    e1 = engine_on(settings)
    stop = None
    for n, b in enumerate(feed):
        e1.on_bar(b)
        if e1.open_orders():
            stop = n
            break
    assert stop is not None
    resting = e1.open_orders()
    e1.snapshot()
    e1.journal.flush()
    e1.journal.close()

    e2 = engine_on(settings)
    try:
        assert e2.restore()["open_orders"] == len(resting)
        for b in feed[: stop + 1]:  # the same bars again: all of them already seen
            e2.on_bar(b)
        assert e2.counts["fills"] == 0
        assert len(e2.open_orders()) == len(resting)
        for b in feed[stop + 1: stop + 3]:  # the next bar of the symbol fills it
            e2.on_bar(b)
        e2.journal.flush()
        fills = e2.journal.fills_after(e1.portfolio.fill_seq)
        assert fills
        decided = {i.client_order_id: i.ts for i in resting}
        assert all(f.ts > decided[f.client_order_id] for f in fills)
    finally:
        e2.journal.close()


def test_warm_up_bars_do_not_touch_the_books(make_settings) -> None:
    settings = make_settings()
    feed = bars(200, step=3600 * NS_PER_SECOND)  # hourly: the bars span eight UTC days
    e1 = run_first(settings, feed)
    pf1 = e1.portfolio
    assert pf1.net and any(pf1.net.values())  # a position is open at the restart
    e2 = engine_on(settings)
    try:
        e2.restore()
        for b in feed:
            e2.on_bar(b)
        pf2 = e2.portfolio
        assert pf2.cash == pf1.cash
        assert pf2.equity == pytest.approx(pf1.equity, abs=1e-6)
        assert pf2.day == pf1.day
        assert pf2.day_start_equity == pytest.approx(pf1.day_start_equity, abs=1e-6)
        assert pf2.day_pnl == pytest.approx(pf1.day_pnl, abs=1e-6)
        assert pf2.peak_equity == pytest.approx(pf1.peak_equity, abs=1e-6)
        assert pf2.max_drawdown == pytest.approx(pf1.max_drawdown, abs=1e-12)
        assert pf2.drawdown == pytest.approx(pf1.drawdown, abs=1e-12)
    finally:
        e2.journal.close()


def test_strategies_know_their_own_position(make_settings) -> None:
    settings = make_settings()
    feed = bars()
    e = engine_on(settings)
    try:
        for b in feed:
            e.on_bar(b)
        for (strategy, symbol), instance in e._instances.items():
            assert instance.position == e.portfolio.position_qty(strategy, symbol)
        assert any(i.position != 0 for i in e._instances.values())
        e.snapshot()
        e.journal.flush()
    finally:
        e.journal.close()
    again = engine_on(settings)
    try:
        again.restore()
        again.on_bar(feed[-1])  # a replayed bar: strategies warm up on their old decisions
        last = feed[-1]
        again.on_bar(Bar(last.symbol, last.ts + 1, last.close, last.close, last.close,
                         last.close, 1.0))  # the first live bar: now they know
        for (strategy, symbol), instance in again._instances.items():
            if symbol == last.symbol:
                assert instance.position == again.portfolio.position_qty(strategy, symbol)
    finally:
        again.journal.close()


def test_a_crash_after_the_last_snapshot_resets_no_risk_counter(make_settings) -> None:
    """The daemon dies (no snapshot at shutdown) after orders and round trips the last
    snapshot does not hold: the restored gate counts them all the same."""
    settings = make_settings()
    rng, px, feed = random.Random(5), {"AAA": 100.0, "BBB": 40.0}, []
    for k in range(200):  # a random walk: round trips won and lost
        for sym in px:
            o = px[sym]
            c = px[sym] = o * math.exp(rng.gauss(0, 0.01))
            feed.append(Bar(sym, T0 + k * MIN, o, max(o, c) * 1.001, min(o, c) * 0.999, c, 1e3))
    e1 = run_first(settings, feed, snapshot_after=len(feed) // 3)
    g1 = e1.gate
    assert g1.trades_today >= 20 and g1.kelly["ma_cross"].n >= 10
    assert len(g1.loss_exits) == 2 and 0 < g1.kelly["ma_cross"].wins < g1.kelly["ma_cross"].n
    e2 = engine_on(settings)
    try:
        e2.restore()
        g2 = e2.gate
        assert (g2.day, g2.trades_today) == (g1.day, g1.trades_today)
        assert list(g2.hour_ts) == list(g1.hour_ts)
        assert g2.loss_exits == g1.loss_exits
        assert g2.kelly["ma_cross"].to_list() == pytest.approx(g1.kelly["ma_cross"].to_list())
        assert g2.kelly["ma_cross"].f == pytest.approx(g1.kelly["ma_cross"].f)
    finally:
        e2.journal.close()


def test_a_fill_on_disk_without_its_order_event_closes_the_order_once(make_settings) -> None:
    """The fill reached the disk in one group commit and the order's 'filled' event was
    due in the next when the daemon died: the order is filled, not cancelled and not
    filled again."""
    settings = make_settings()
    e1 = engine_on(settings)
    e1.on_bar(Bar("AAA", T0, 100, 101, 99, 100, 1e3))
    (intent,) = e1.decide(Signal("ma_cross", "AAA", T0, Direction.LONG, "a"), 100.0)
    e1.journal.flush()
    coid = intent.client_order_id
    e1.journal._db.execute("DELETE FROM order_events WHERE client_order_id = ?", (coid,))
    e1.journal.close()
    e2 = engine_on(settings)
    try:
        # reached the venue (it has a fill), though no order event says so
        assert [(i.client_order_id, q, sent) for i, q, _, sent in e2.journal.unsettled()] == [
            (coid, 10, True)]
        e2.restore()
        assert e2.executor.open_orders() == []
        assert e2._pending == {} and e2._pending.by_symbol == {}
        e2.journal.flush()
        assert e2.journal.unsettled() == []
        (state,) = e2.journal._db.execute("SELECT state FROM orders WHERE client_order_id = ?",
                                          (coid,)).fetchone()
        assert state == "filled"
        assert e2.journal.count("fills") == 1
        assert e2.portfolio.position_qty("ma_cross", "AAA") == 10
    finally:
        e2.journal.close()


@pytest.mark.parametrize("breaker", ["daily_loss", "drawdown"])
def test_a_tripped_breaker_survives_a_crash_right_after(make_settings, breaker: str) -> None:
    """The daemon dies a moment after a breaker tripped, before its next periodic
    snapshot; the price then recovers. The breaker still holds after the restart."""
    limit = {"risk_max_daily_loss": 50} if breaker == "daily_loss" else \
        {"risk_max_drawdown": 50}
    settings = make_settings(paper_slippage_bps=0, paper_commission_bps=0, **limit)
    e1 = engine_on(settings)
    e1.on_bar(Bar("AAA", T0, 100, 100, 100, 100, 1e3))
    assert e1.decide(Signal("ma_cross", "AAA", T0, Direction.LONG, "in"), 100.0)
    e1.on_bar(Bar("AAA", T0 + MIN, 90, 90, 90, 90, 1e3))  # -100: past the limit
    assert e1.decide(Signal("ma_cross", "BBB", T0 + MIN, Direction.LONG, "in"), 40.0) == []
    tripped = e1.gate.state, e1.gate.loss_halt_day
    e1.journal.flush()  # the next group commit; then the daemon dies
    e1.journal.close()
    e2 = engine_on(settings)
    try:
        e2.restore()
        assert (e2.gate.state, e2.gate.loss_halt_day) == tripped
        e2.on_bar(Bar("AAA", T0 + 2 * MIN, 99, 99, 99, 99, 1e3))  # nearly all of it back
        assert e2.decide(Signal("ma_cross", "BBB", T0 + 2 * MIN, Direction.LONG, "in"),
                         40.0) == []
        e2.journal.flush()
        (reason,) = e2.journal._db.execute(
            "SELECT reason FROM vetoes ORDER BY id DESC LIMIT 1").fetchone()
        assert reason.startswith("daily loss limit" if breaker == "daily_loss" else "reducing")
    finally:
        e2.journal.close()


def test_an_exit_decided_as_a_breaker_trips_is_counted_once_after_a_crash(
        make_settings) -> None:
    settings = make_settings(paper_slippage_bps=0, paper_commission_bps=0,
                             risk_max_daily_loss=50, risk_max_trades_per_hour=10)
    e1 = engine_on(settings)
    e1.on_bar(Bar("AAA", T0, 100, 100, 100, 100, 1e3))
    assert e1.decide(Signal("ma_cross", "AAA", T0, Direction.LONG, "in"), 100.0)
    e1.on_bar(Bar("AAA", T0 + MIN, 90, 90, 90, 90, 1e3))
    # A reversal: its exit passes, its entry trips the daily-loss limit.
    (exit_leg,) = e1.decide(Signal("ma_cross", "AAA", T0 + MIN, Direction.SHORT, "rev"), 90.0)
    assert exit_leg.reduce_only and e1.gate.trades_today == 2
    e1.journal.flush()
    e1.journal.close()
    e2 = engine_on(settings)
    try:
        e2.restore()
        assert e2.gate.trades_today == 2  # the snapshot holds the exit; not counted again
        assert list(e2.gate.hour_ts) == list(e1.gate.hour_ts)
    finally:
        e2.journal.close()


def test_a_takeover_tells_the_strategies_what_the_book_now_holds(make_settings) -> None:
    # A standby's strategies never saw a fill; the book it takes over is long AAA and
    # short BBB: from then on they decide as holders (an exit, never the entry again).
    leader = engine_on(make_settings(state_dir=Path("leader")))
    for bar in bars(60):
        leader.on_bar(bar)
    held = {s: q for s, q in leader.portfolio.net.items() if abs(q) > 1e-9}
    assert held, "the leader holds nothing: the test proves nothing"
    standby = engine_on(make_settings(state_dir=Path("standby"), shadow_mode="log_only"))
    for bar in bars(60):
        standby.on_bar(bar)
    assert all(i.position == 0 for i in standby._instances.values())  # log-only: no fill
    standby.take_over(leader.state())
    for (strategy, symbol), instance in standby._instances.items():
        assert instance.position == leader.portfolio.position_qty(strategy, symbol)
