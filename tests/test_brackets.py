"""Broker-side exits, daemon against the Alpaca emulator (the real alpaca-py client): the
stop-loss and take-profit go out as a bracket's legs, their fills book to the strategy,
every exit of the daemon's own cancels them first, a halt keeps them, a restart and
reconciliation know them. The trailing stop stays with the daemon; Paper and ccxt keep
daemon-managed exits. (The emulator's brackets: test_brackets_emulator.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quantshift.app import build_engine, make_venue, open_journal
from quantshift.control import Halt
from quantshift.domain import (
    NS_PER_SECOND,
    Bar,
    Direction,
    ExecutorKind,
    OrderIntent,
    Side,
    Signal,
)
from quantshift.emulators.alpaca import AlpacaEmulator
from quantshift.engine import Engine
from quantshift.execution.broker import BrokerExecutor
from quantshift.exits import ExitManager, ExitRule
from quantshift.portfolio import Portfolio
from quantshift.settings import Settings, StrategySpec
from quantshift.state.journal import Journal
from tests.test_broker_executor import start_engine


async def wait_for(pred: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


# -- the daemon against the emulator ----------------------------------------------------------


@dataclass
class Rig:
    emu: AlpacaEmulator
    settings: Settings
    engine: Engine
    journal: Journal
    closed: bool = False

    @property
    def executor(self) -> BrokerExecutor:
        assert isinstance(self.engine.executor, BrokerExecutor)
        return self.engine.executor

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        self.journal.flush()
        return self.journal._db.execute(sql).fetchall()


EXITS = {"stop_loss": "2%", "take_profit": "3%"}


def _settings(emu: AlpacaEmulator, state: Path, exits: dict[str, Any]) -> Settings:
    spec = StrategySpec(name="ma_cross", id="t", params={"fast": 50, "slow": 100}, exits=exits)
    return Settings(feed="alpaca", apca_api_key_id="emulator-key",
                    apca_api_secret_key="emulator-secret", apca_api_base_url=emu.base_url,
                    symbols=["AAA"], sizing="fixed:10", strategies=[spec],
                    state_dir=state, shadow_mode="sandbox", broker_timeout=2.0,
                    risk_max_trades_per_day=0, risk_max_exposure=0,
                    risk_max_position_notional=0)


async def start_rig(emu: AlpacaEmulator, state: Path, exits: dict[str, Any]) -> Rig:
    settings = _settings(emu, state, exits)
    engine, journal = await start_engine(settings)
    return Rig(emu, settings, engine, journal)


async def stop_rig(rig: Rig) -> None:
    rig.closed = True
    rig.engine.snapshot()
    rig.journal.flush()
    await rig.executor.close()
    rig.journal.close()



@pytest.fixture
async def make_rig(clean: Path) -> AsyncIterator[Callable[..., Any]]:
    emu = AlpacaEmulator(["AAA"], interval=60, warmup=50)
    await emu.start(run_bars=False)
    rigs: list[Rig] = []

    async def make(exits: dict[str, Any] | None = None) -> Rig:
        rig = await start_rig(emu, clean / "var", EXITS if exits is None else exits)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        if not rig.closed:
            await stop_rig(rig)
    await emu.stop()


def signal(rig: Rig, direction: Direction, price: float | None = None) -> list[Any]:
    price = rig.emu.engine.last["AAA"] if price is None else price
    return rig.engine.decide(Signal("t", "AAA", time.time_ns(), direction, "test"), price)


async def settle(rig: Rig, until: Callable[[], bool] = lambda: True) -> None:
    await wait_for(lambda: not rig.executor.open_orders() and not rig.executor._tasks
                   and until())
    rig.journal.flush()


def position(rig: Rig) -> float:
    return rig.engine.portfolio.position_qty("t", "AAA")


def bar(rig: Rig, close: float, high: float | None = None, low: float | None = None) -> Bar:
    """A live bar for the daemon (and not for the venue)."""
    ts = max(rig.engine.last_ts.get("AAA", 0), time.time_ns()) + 60 * NS_PER_SECOND
    return Bar("AAA", ts, close, close if high is None else high,
               close if low is None else low, close, 1000.0)


def venue_legs(rig: Rig, parent_coid: str) -> dict[str, Any]:
    parent = rig.emu.engine.by_client[parent_coid]
    return {leg.type: leg for leg in rig.emu.engine.legs_of(parent)}


async def enter(rig: Rig) -> tuple[Any, float]:
    price = rig.emu.engine.last["AAA"]
    (entry,) = signal(rig, Direction.LONG, price)
    await settle(rig, lambda: len(rig.executor.open_legs()) == 2)
    assert position(rig) == 10
    return entry, price


def assert_books_match_the_venue(rig: Rig) -> None:
    venue = rig.emu.engine
    assert rig.engine.portfolio.net.get("AAA", 0.0) == pytest.approx(venue.position_qty("AAA"))
    journal: dict[str, float] = {}
    for coid, qty in rig.rows("SELECT client_order_id, qty FROM fills"):
        journal[coid] = journal.get(coid, 0.0) + qty
    at_venue: dict[str, float] = {}
    for f in venue.fills:
        at_venue[f.client_order_id] = at_venue.get(f.client_order_id, 0.0) + f.qty
    assert journal == pytest.approx(at_venue)
    intents = {r[0] for r in rig.rows("SELECT client_order_id FROM intents")}
    assert {o.client_order_id for o in venue.orders.values()} <= intents


async def test_entry_goes_out_as_a_bracket_priced_from_the_decision_close(make_rig) -> None:
    rig = await make_rig()
    entry, price = await enter(rig)
    assert entry.take_profit == round(price * 1.03, 2)
    assert entry.stop_loss == round(price * 0.98, 2)
    parent = rig.emu.engine.by_client[entry.client_order_id]
    assert parent.order_class == "bracket" and parent.time_in_force == "gtc"
    legs = venue_legs(rig, entry.client_order_id)
    assert legs["limit"].limit_price == entry.take_profit
    assert legs["stop"].stop_price == entry.stop_loss
    rows = rig.rows("SELECT client_order_id, strategy, side, qty, ref_price, reduce_only, "
                    "parent, leg FROM intents WHERE parent IS NOT NULL ORDER BY leg")
    assert rows == [
        (legs["stop"].client_order_id, "t", "sell", 10, entry.stop_loss, 1,
         entry.client_order_id, "stop_loss"),
        (legs["limit"].client_order_id, "t", "sell", 10, entry.take_profit, 1,
         entry.client_order_id, "take_profit")]
    assert rig.rows(f"SELECT take_profit, stop_loss FROM intents WHERE client_order_id = "
                    f"'{entry.client_order_id}'") == [(entry.take_profit, entry.stop_loss)]
    assert rig.executor.open_orders() == [] and len(rig.executor.open_legs()) == 2
    assert rig.engine.exits.at_venue("t", "AAA") == {"stop_loss", "take_profit"}
    # The daemon's bar goes through both levels: the venue holds them, nothing is sent.
    rig.engine.on_bar(bar(rig, price, high=price * 1.05, low=price * 0.95))
    assert rig.executor.open_orders() == [] and position(rig) == 10
    assert rig.rows("SELECT count(*) FROM intents WHERE parent IS NULL") == [(1,)]
    assert_books_match_the_venue(rig)


async def test_a_leg_fill_books_to_the_strategy_and_flattens_it(make_rig) -> None:
    rig = await make_rig()
    entry, price = await enter(rig)
    legs = venue_legs(rig, entry.client_order_id)
    rig.emu.engine.push("AAA", close=price * 1.01, high=entry.take_profit + 0.1)
    await settle(rig, lambda: position(rig) == 0 and not rig.executor.open_legs())
    assert rig.rows("SELECT client_order_id, strategy, side, qty, price FROM fills "
                    "ORDER BY seq") == [
        (entry.client_order_id, "t", "buy", 10, price),
        (legs["limit"].client_order_id, "t", "sell", 10, entry.take_profit)]
    states = dict(rig.rows("SELECT client_order_id, state FROM orders WHERE parent IS NOT NULL"))
    assert states == {legs["limit"].client_order_id: "filled",
                      legs["stop"].client_order_id: "cancelled"}
    # every leg transition is in the journal: held, new, then filled or cancelled
    details = [d for (d,) in rig.rows(
        f"SELECT state || ' ' || detail FROM order_events WHERE client_order_id = "
        f"'{legs['stop'].client_order_id}' ORDER BY id")]
    assert details[0].startswith("submitted alpaca id ")  # as first seen: held or new
    assert any(d.endswith("new") for d in details) and details[-1].startswith("cancelled")
    [(pnl,)] = rig.rows("SELECT pnl FROM trades")
    assert pnl == pytest.approx(10 * (entry.take_profit - price))
    assert rig.engine.exits.at_venue("t", "AAA") == set()
    assert_books_match_the_venue(rig)


async def test_a_strategy_exit_cancels_the_legs_first(make_rig) -> None:
    rig = await make_rig()
    entry, _ = await enter(rig)
    legs = venue_legs(rig, entry.client_order_id)
    (exit_order,) = signal(rig, Direction.FLAT)
    await settle(rig, lambda: position(rig) == 0)
    venue_exit = rig.emu.engine.by_client[exit_order.client_order_id]
    assert venue_exit.status == "filled"
    for leg in legs.values():
        assert leg.status == "canceled" and leg.canceled_at <= venue_exit.created_at
    [(cancelled,)] = rig.rows("SELECT max(id) FROM order_events WHERE state = 'cancelled'")
    [(sent,)] = rig.rows(f"SELECT min(id) FROM order_events WHERE client_order_id = "
                         f"'{exit_order.client_order_id}'")
    assert rig.rows("SELECT count(*) FROM order_events WHERE state = 'cancelled'") == [(2,)]
    assert cancelled < sent  # the legs were done before the exit went
    assert rig.emu.engine.position_qty("AAA") == 0 == rig.engine.portfolio.net.get("AAA", 0)
    assert_books_match_the_venue(rig)


async def test_a_failed_leg_cancel_is_retried_before_the_exit_goes(make_rig) -> None:
    rig = await make_rig()
    entry, _ = await enter(rig)
    legs = venue_legs(rig, entry.client_order_id)
    rig.emu.faults.server_error("status", count=2)  # the first cancel attempts fail
    (exit_order,) = signal(rig, Direction.FLAT)
    await settle(rig, lambda: position(rig) == 0)
    assert {leg.status for leg in legs.values()} == {"canceled"}
    assert rig.emu.engine.by_client[exit_order.client_order_id].status == "filled"
    assert rig.emu.faults.pending() == []
    assert_books_match_the_venue(rig)


async def test_restart_tracks_the_legs_and_reconcile_knows_them(make_rig) -> None:
    rig = await make_rig()
    entry, price = await enter(rig)
    legs = venue_legs(rig, entry.client_order_id)
    await stop_rig(rig)
    again = await make_rig()
    assert {i.client_order_id for i in again.executor.open_legs()} == \
        {leg.client_order_id for leg in legs.values()}
    report = await again.executor.reconcile(lambda: dict(again.engine.portfolio.net),
                                            again.engine.known_ids())
    assert report.clean and report.unknown == [] and report.adopted == []
    assert again.engine.exits.at_venue("t", "AAA") == {"stop_loss", "take_profit"}
    again.emu.engine.push("AAA", close=price * 0.99, low=entry.stop_loss - 0.05)
    await settle(again, lambda: position(again) == 0 and not again.executor.open_legs())
    [(coid, strategy)] = again.rows("SELECT client_order_id, strategy FROM fills WHERE "
                                    "side = 'sell'")
    assert (coid, strategy) == (legs["stop"].client_order_id, "t")
    assert_books_match_the_venue(again)


async def test_trailing_stop_stays_with_the_daemon_and_cancels_the_legs_first(make_rig) -> None:
    rig = await make_rig({"stop_loss": "5%", "take_profit": "10%", "trail": "1%",
                          "trail_activate": "1%"})
    entry, price = await enter(rig)
    legs = venue_legs(rig, entry.client_order_id)
    high = round(price * 1.04, 2)
    rig.emu.engine.push("AAA", close=high)
    rig.engine.on_bar(bar(rig, high))  # armed: the stop trails at high - 1%
    assert position(rig) == 10 and not rig.executor.open_orders()
    drop = round(high * 0.985, 2)
    rig.emu.engine.push("AAA", close=drop)
    rig.engine.on_bar(bar(rig, drop))  # through the trailing stop
    await settle(rig, lambda: position(rig) == 0)
    [(reason,)] = rig.rows("SELECT reason FROM decisions WHERE reason LIKE 'trailing%'")
    assert reason.startswith("trailing stop at")
    assert {leg.status for leg in legs.values()} == {"canceled"}
    [(exit_coid, exit_price)] = rig.rows("SELECT client_order_id, price FROM fills "
                                         "WHERE side = 'sell'")
    assert exit_coid not in {leg.client_order_id for leg in legs.values()}
    assert exit_price == pytest.approx(drop)
    assert_books_match_the_venue(rig)


async def test_halt_keeps_the_protective_legs_kill_switch_flatten_cancels_them(
        make_rig) -> None:
    rig = await make_rig()
    entry, _ = await enter(rig)
    legs = venue_legs(rig, entry.client_order_id)
    rig.engine.control.apply(Halt(reason="operator"))
    await rig.executor.drain(5)
    await settle(rig)
    assert {leg.status for leg in legs.values()} == {"new"}  # still protecting
    assert len(rig.executor.open_legs()) == 2
    assert rig.rows("SELECT count(*) FROM order_events WHERE state = 'cancelled'") == [(0,)]
    out = rig.engine.control.apply(Halt(reason="kill switch: operator", flatten=True))
    assert out["flatten_orders"] == 1
    await settle(rig, lambda: position(rig) == 0)
    assert {leg.status for leg in legs.values()} == {"canceled"}
    assert rig.emu.engine.position_qty("AAA") == 0 and rig.engine.gate.state == "halted"
    assert_books_match_the_venue(rig)


async def test_legs_come_back_to_the_daemon_when_the_venue_drops_them(make_rig) -> None:
    rig = await make_rig()
    entry, price = await enter(rig)
    stop = venue_legs(rig, entry.client_order_id)["stop"]
    rig.emu.engine.cancel(stop.id)  # by hand at the venue: its sibling goes too
    await wait_for(lambda: not rig.executor.open_legs())
    assert rig.engine.exits.at_venue("t", "AAA") == set()
    rig.engine.on_bar(bar(rig, price * 0.99, low=entry.stop_loss - 0.05))  # the daemon's turn
    await settle(rig, lambda: position(rig) == 0)
    [(reason,)] = rig.rows("SELECT reason FROM decisions WHERE reason LIKE 'stop-loss%'")
    assert reason.startswith("stop-loss 2%")
    assert_books_match_the_venue(rig)


async def test_legs_the_venue_refuses_leave_the_exits_to_the_daemon(make_rig) -> None:
    rig = await make_rig()
    last = rig.emu.engine.last["AAA"]
    (entry,) = signal(rig, Direction.LONG, round(last * 0.9, 2))  # a stale decision price
    assert entry.take_profit is not None and entry.take_profit < last  # not above the base
    await settle(rig, lambda: position(rig) == 10)
    assert rig.emu.engine.by_client[entry.client_order_id].order_class == "simple"
    assert rig.executor.open_legs() == [] and rig.engine.exits.at_venue("t", "AAA") == set()
    [(detail,)] = rig.rows(f"SELECT detail FROM order_events WHERE client_order_id = "
                           f"'{entry.client_order_id}' AND state = 'new'")
    assert "legs refused by alpaca" in detail and "take_profit.limit_price" in detail
    assert_books_match_the_venue(rig)


async def test_a_lost_answer_still_finds_the_legs_by_lookup(make_rig) -> None:
    rig = await make_rig()
    rig.emu.faults.lost_ack()  # the bracket is made, the answer never comes
    entry, _ = await enter(rig)
    legs = venue_legs(rig, entry.client_order_id)
    assert {i.client_order_id for i in rig.executor.open_legs()} == \
        {leg.client_order_id for leg in legs.values()}
    assert len([o for o in rig.emu.engine.orders.values() if o.parent_id is None]) == 1
    assert_books_match_the_venue(rig)


async def test_a_reversal_cancels_the_old_legs_then_enters_with_new_ones(make_rig) -> None:
    rig = await make_rig()
    entry, _ = await enter(rig)
    old = venue_legs(rig, entry.client_order_id)
    exit_order, short = signal(rig, Direction.SHORT)
    assert exit_order.reduce_only and short.take_profit < short.ref_price < short.stop_loss
    await settle(rig, lambda: position(rig) == -10 and len(rig.executor.open_legs()) == 2)
    assert {leg.status for leg in old.values()} == {"canceled"}
    new = venue_legs(rig, short.client_order_id)
    assert {leg.side for leg in new.values()} == {"buy"}
    assert {leg.status for leg in new.values()} == {"new"}
    venue = rig.emu.engine.by_client
    assert venue[exit_order.client_order_id].created_at < venue[short.client_order_id].created_at
    assert_books_match_the_venue(rig)


# -- where brackets do not apply -------------------------------------------------------------


def test_paper_entries_carry_no_legs_and_exits_stay_with_the_daemon(clean: Path) -> None:
    spec = StrategySpec(name="ma_cross", id="t", params={"fast": 50, "slow": 100}, exits=EXITS)
    settings = Settings(state_dir=clean / "var", strategies=[spec], sizing="fixed:10",
                        paper_slippage_bps=0, risk_max_trades_per_day=0)
    journal = open_journal(settings)
    try:
        engine = build_engine(settings, journal, log_decisions=False)
        ts = 1_700_000_000 * NS_PER_SECOND
        engine.on_bar(Bar("X", ts, 100.0, 100.0, 100.0, 100.0, 1.0))
        (entry,) = engine.decide(Signal("t", "X", ts, Direction.LONG, "entry"), 100.0)
        assert entry.take_profit is None and entry.stop_loss is None
        engine.on_bar(Bar("X", ts + 60 * NS_PER_SECOND, 98.5, 99.0, 97.9, 98.5, 1.0))
        assert engine.portfolio.position_qty("t", "X") == 0  # the daemon's stop-loss
    finally:
        journal.close()


def test_attach_prices_levels_on_the_tick_from_the_decision_close() -> None:
    def alpaca_tick(intent: OrderIntent, price: float) -> float | None:
        return None if intent.qty % 1 else (0.01 if price >= 1 else 0.0001)

    def entry(side: Side, price: float, qty: float = 10) -> OrderIntent:
        return OrderIntent("e", "s", "X", side, qty, 0, price)

    atr = ExitManager({"s": ExitRule(stop_loss="1atr", take_profit="2atr", atr_period=3)})
    early = entry(Side.BUY, 100.0)
    assert not atr.attach(early, alpaca_tick)  # no ATR yet: the daemon keeps both
    assert early.take_profit is None and early.stop_loss is None
    for i in range(3):  # true range 2 each bar: ATR 2
        atr.on_bar(Bar("X", i, 100.0, 101.0, 99.0, 100.0, 1.0), Portfolio(1000.0))
    long = entry(Side.BUY, 100.004)
    assert atr.attach(long, alpaca_tick)
    assert (long.take_profit, long.stop_loss) == (104.0, 98.0)
    short = entry(Side.SELL, 100.0)
    assert atr.attach(short, alpaca_tick)
    assert (short.take_profit, short.stop_loss) == (96.0, 102.0)
    assert not atr.attach(entry(Side.BUY, 100.0, qty=2.5), alpaca_tick)  # fractional

    pct = ExitManager({"s": ExitRule(stop_loss="0.001%", take_profit="3%"),
                       "trail_only": ExitRule(trail="1%")})
    cheap = entry(Side.BUY, 0.5)
    assert pct.attach(cheap, alpaca_tick)
    assert cheap.take_profit == 0.515 and cheap.stop_loss == 0.4999  # a tick away, at least
    only_trail = OrderIntent("e", "trail_only", "X", Side.BUY, 10, 0, 100.0)
    assert not pct.attach(only_trail, alpaca_tick)  # the trailing stop is never the venue's


def test_the_exchange_venue_has_no_brackets(clean: Path) -> None:
    settings = Settings(feed="ccxt", ccxt_exchange="binance", ccxt_api_key="k",
                        ccxt_secret="s", ccxt_api_url="http://127.0.0.1:9",
                        symbols=["BTC/USDT"], state_dir=clean / "var", shadow_mode="sandbox")
    venue = make_venue(settings, ExecutorKind.SANDBOX)

    async def commit() -> None:
        return None

    executor = BrokerExecutor(ExecutorKind.SANDBOX, venue, None, durable=commit,  # type: ignore[arg-type]
                              permit=lambda intent: None)
    assert not executor.supports_brackets
    entry = OrderIntent("x", "t", "BTC/USDT", Side.BUY, 1.0, 0, 100.0)
    assert executor.bracket_tick(entry, 103.0) is None


async def test_status_shows_the_legs_protecting_positions(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_http_api import call, make_settings, running, wait_until

    monkeypatch.chdir(tmp_path)
    emu = AlpacaEmulator(["AAA", "BBB"], interval=0.1)
    await emu.start()
    try:
        settings = make_settings(
            tmp_path, feed="alpaca", shadow_mode="sandbox", apca_api_key_id="emulator-key",
            apca_api_secret_key="emulator-secret", apca_api_base_url=emu.base_url,
            apca_api_data_url=emu.base_url, apca_api_stream_url=emu.data_stream_url,
            market_hours_only=False, bar_seconds=1, sizing="fixed:10",
            strategies=[{"name": "ma_cross", "params": {"fast": 2, "slow": 5},
                         "exits": {"stop_loss": "5%", "take_profit": "5%"}}])
        async with running(settings) as (d, client):
            await wait_until(lambda: d.engine.counts["fills"] >= 1, timeout=30)  # type: ignore[union-attr]
            await wait_until(lambda: len(d.engine.executor.open_legs()) >= 2)  # type: ignore[union-attr]
            code, st = await call(client, "GET", "/status")
            assert code == 200 and st["orders"]["protective_legs"] >= 2
    finally:
        await emu.stop()
