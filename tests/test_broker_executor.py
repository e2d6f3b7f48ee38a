"""The broker executor through the real SDKs against the local emulators: orders, every
fault, reconciliation. Afterwards, always: one venue order per intent, every venue fill in
the journal, journal positions equal to venue positions."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from quantshift.app import build_engine, open_journal
from quantshift.control import Halt
from quantshift.domain import Direction, OrderState, Signal
from quantshift.emulators.alpaca import AlpacaEmulator
from quantshift.emulators.exchange import ExchangeEmulator
from quantshift.engine import Engine
from quantshift.execution.broker import BrokerExecutor
from quantshift.settings import Settings
from quantshift.state.journal import Journal


@dataclass
class Rig:
    emu: Any
    settings: Settings
    engine: Engine
    journal: Journal
    symbols: list[str]

    @property
    def executor(self) -> BrokerExecutor:
        assert isinstance(self.engine.executor, BrokerExecutor)
        return self.engine.executor


def _settings(kind: str, emu: Any, state: Path) -> Settings:
    common = {"state_dir": state, "shadow_mode": "sandbox", "broker_timeout": 1.0,
              "risk_max_trades_per_day": 0, "risk_max_exposure": 0,
              "risk_max_position_notional": 0}
    if kind == "alpaca":
        return Settings(feed="alpaca", apca_api_key_id="emulator-key",
                        apca_api_secret_key="emulator-secret", apca_api_base_url=emu.base_url,
                        symbols=["AAA", "BBB"], sizing="fixed:3", **common)
    return Settings(feed="ccxt", ccxt_exchange="binance", ccxt_api_key="emulator-key",
                    ccxt_secret="emulator-secret", ccxt_api_url=emu.base_url,
                    symbols=["BTC/USDT", "ETH/USDT"], sizing="fraction:0.01", fractional=True,
                    **common)


async def start_engine(settings: Settings) -> tuple[Engine, Journal]:
    """An engine with its broker executor started, restored from its journal, and the
    venue's instruments loaded: the daemon's start-up without the feed."""
    journal = open_journal(settings)

    async def commit() -> None:
        journal.flush()

    engine = build_engine(settings, journal, durable=commit, log_decisions=False)
    engine.restore()
    executor = engine.executor
    assert isinstance(executor, BrokerExecutor)
    await executor.start()
    engine.gate.set_instruments(await executor.venue.instruments(settings.symbols))
    return engine, journal


async def start_rig(kind: str, emu: Any, state: Path) -> Rig:
    settings = _settings(kind, emu, state)
    engine, journal = await start_engine(settings)
    return Rig(emu, settings, engine, journal, list(settings.symbols))


async def stop_rig(rig: Rig) -> None:
    rig.engine.snapshot()
    rig.journal.flush()
    await rig.executor.close()
    rig.journal.close()


@pytest.fixture(params=["alpaca", "exchange"])
async def rig(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("QUANTSHIFT_", "SHADOW_MODE", "APCA_", "CCXT_")):
            monkeypatch.delenv(key)
    if request.param == "alpaca":
        emu = AlpacaEmulator(["AAA", "BBB"], interval=120)
    else:
        emu = ExchangeEmulator(["BTC/USDT", "ETH/USDT"], interval=120)
    await emu.start(run_bars=False)  # no bar may fill a resting remainder mid-test
    r = await start_rig("alpaca" if request.param == "alpaca" else "ccxt", emu, tmp_path / "var")
    r.kind = request.param  # type: ignore[attr-defined]
    try:
        yield r
    finally:
        await stop_rig(r)
        await emu.stop()


def signal(rig: Rig, symbol: str, direction: Direction, strategy: str = "t") -> list:
    price = rig.emu.engine.last[symbol]
    return rig.engine.decide(Signal(strategy, symbol, time.time_ns(), direction, "test"), price)


async def settle(rig: Rig, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while rig.executor.open_orders() or rig.executor._tasks:
        if time.monotonic() > deadline:
            raise AssertionError(f"orders still open: {rig.executor.open_orders()}")
        await asyncio.sleep(0.05)
    rig.journal.flush()


def journal_rows(rig: Rig, sql: str) -> list[tuple]:
    return rig.journal._db.execute(sql).fetchall()


def assert_consistent(rig: Rig) -> None:
    venue = rig.emu.engine
    intents = {r[0] for r in journal_rows(rig, "SELECT client_order_id FROM intents")}
    orders = list(venue.orders.values())
    # no venue order under an id the journal does not have, and one venue order per intent
    assert {o.client_order_id for o in orders} <= intents
    assert max(Counter(o.client_order_id for o in orders).values(), default=1) == 1
    venue_fills: Counter[str] = Counter()
    for f in venue.fills:
        venue_fills[f.client_order_id] += f.qty
    journal_fills: Counter[str] = Counter()
    for coid, qty in journal_rows(rig, "SELECT client_order_id, qty FROM fills"):
        journal_fills[coid] += qty
    for coid in set(venue_fills) | set(journal_fills):
        assert journal_fills[coid] == pytest.approx(venue_fills[coid], abs=1e-9), coid
    for symbol in rig.symbols:
        assert rig.engine.portfolio.net.get(symbol, 0.0) == pytest.approx(
            venue.position_qty(symbol), abs=1e-9), symbol


def last_state(rig: Rig, coid: str) -> str:
    return journal_rows(rig, f"SELECT state FROM orders WHERE client_order_id = '{coid}'")[0][0]


async def test_orders_fill_and_reverse(rig: Rig) -> None:
    sym = rig.symbols[0]
    (buy,) = signal(rig, sym, Direction.LONG)
    await settle(rig)
    assert last_state(rig, buy.client_order_id) == "filled"
    assert rig.engine.portfolio.net[sym] > 0
    if rig.kind == "alpaca":  # spot crypto cannot go short; the exit alone
        exit_leg, entry = signal(rig, sym, Direction.SHORT)
        assert exit_leg.reduce_only and not entry.reduce_only
    else:
        (exit_leg,) = signal(rig, sym, Direction.FLAT)
    await settle(rig)
    assert_consistent(rig)


SUBMIT_FAULTS = ["rate_limit", "server_error", "slow", "duplicate_id", "lost_ack"]


@pytest.mark.parametrize("fault", SUBMIT_FAULTS)
async def test_submit_faults_end_as_exactly_one_filled_order(rig: Rig, fault: str) -> None:
    faults = rig.emu.engine.faults
    if fault == "slow":
        faults.slow("submit", delay=2.0)  # past the 1 s client timeout
    elif fault == "rate_limit":
        faults.rate_limit("submit", retry_after=1)
    else:
        getattr(faults, fault)("submit") if fault == "server_error" else getattr(faults, fault)()
    started = time.monotonic()
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await settle(rig)
    if fault == "rate_limit":
        assert time.monotonic() - started >= 1.0  # Retry-After honoured
    assert last_state(rig, intent.client_order_id) == "filled"
    assert len([o for o in rig.emu.engine.orders.values()
                if o.client_order_id == intent.client_order_id]) == 1
    assert_consistent(rig)


@pytest.mark.parametrize("fault", ["server_error", "rate_limit", "slow"])
async def test_lookup_faults_after_a_lost_ack(rig: Rig, fault: str) -> None:
    faults = rig.emu.engine.faults
    faults.lost_ack()
    if fault == "slow":
        faults.slow("status", delay=2.0)
    else:
        getattr(faults, fault)("status")
    (intent,) = signal(rig, rig.symbols[1], Direction.LONG)
    await settle(rig, timeout=20)
    assert last_state(rig, intent.client_order_id) == "filled"
    assert_consistent(rig)


async def test_partial_fill_then_rest_arrives_even_when_the_stream_drops(rig: Rig) -> None:
    rig.emu.engine.faults.partial_fill(0.5)
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    deadline = time.monotonic() + 10
    while journal_rows(rig, "SELECT count(*) FROM fills")[0][0] == 0:
        rig.journal.flush()
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert rig.engine.portfolio.net[rig.symbols[0]] == pytest.approx(intent.qty / 2, rel=0.01)
    assert intent.client_order_id in {i.client_order_id for i in rig.executor.open_orders()}
    if rig.kind == "alpaca":
        # The trade stream drops and its next two reconnects fail (500, then 429): the
        # rest of the fill must arrive all the same (by polling until it is back).
        rig.emu.engine.faults.server_error("stream")
        rig.emu.engine.faults.rate_limit("stream")
        await rig.emu.close_streams()
    rig.emu.engine.fill_rest()
    await settle(rig)
    assert last_state(rig, intent.client_order_id) == "filled"
    assert_consistent(rig)


async def test_venue_rejection_is_journaled_with_its_reason(rig: Rig) -> None:
    rig.emu.engine.faults.reject()
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await settle(rig)
    rows = journal_rows(rig, "SELECT state, detail FROM orders WHERE client_order_id = "
                             f"'{intent.client_order_id}'")
    assert rows[0][0] in ("rejected", "cancelled")
    assert rows[0][1]
    assert rig.engine.portfolio.net.get(rig.symbols[0], 0.0) == 0
    assert_consistent(rig)


async def test_below_venue_minimum_is_vetoed_and_never_sent(rig: Rig) -> None:
    from quantshift.risk.sizing import Sizing

    rig.engine.gate.sizing = Sizing.parse("fixed:0.0000001") if rig.kind != "alpaca" \
        else Sizing.parse("fixed:0.5")
    assert signal(rig, rig.symbols[0], Direction.LONG) == []
    reason = journal_rows(rig, "SELECT reason FROM vetoes")
    rig.journal.flush()
    reason = journal_rows(rig, "SELECT reason FROM vetoes")[0][0]
    assert "size rounds to zero" in reason or "below venue minimum" in reason
    assert not rig.emu.engine.orders


async def test_reconcile_applies_fills_made_while_down(rig: Rig, tmp_path: Path) -> None:
    rig.emu.engine.faults.partial_fill(0.5)
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await asyncio.sleep(1.0)
    rig.journal.flush()
    await stop_rig(rig)  # the daemon goes down with the order half filled
    rig.emu.engine.fill_rest()
    kind = "alpaca" if rig.kind == "alpaca" else "ccxt"
    again = await start_rig(kind, rig.emu, tmp_path / "var")
    rig.engine, rig.journal = again.engine, again.journal
    report = await again.executor.reconcile(lambda: dict(again.engine.portfolio.net),
                                            again.engine.known_ids())
    assert report.looked_up == 1 and report.fills_applied == 1 and report.clean
    await settle(again)
    assert last_state(again, intent.client_order_id) == "filled"
    assert_consistent(again)


async def test_a_crash_between_a_fill_and_its_order_event_books_the_fill_once(
        rig: Rig, tmp_path: Path) -> None:
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await settle(rig)
    coid = intent.client_order_id
    # The fill's group commit reached the disk, the one with the order's 'filled' event
    # did not: the daemon died in between (no snapshot at shutdown either).
    rig.journal._db.execute("DELETE FROM order_events WHERE client_order_id = ?", (coid,))
    await rig.executor.close()
    rig.journal.close()
    kind = "alpaca" if rig.kind == "alpaca" else "ccxt"
    again = await start_rig(kind, rig.emu, tmp_path / "var")
    rig.engine, rig.journal = again.engine, again.journal
    report = await again.executor.reconcile(lambda: dict(again.engine.portfolio.net),
                                            again.engine.known_ids())
    assert report.clean and report.fills_applied == 0
    await settle(again)
    assert last_state(again, coid) == "filled"
    assert journal_rows(again, f"SELECT count(*) FROM fills WHERE client_order_id = '{coid}'"
                        ) == [(1,)]
    assert_consistent(again)


async def test_reconcile_flags_unknown_orders_and_halts_on_a_hand_made_position(
        rig: Rig) -> None:
    venue = rig.emu.engine
    sym = rig.symbols[1]
    price = venue.last[sym]
    venue.submit(sym, "buy", 1 if rig.kind == "alpaca" else 0.01, type="limit",
                 limit_price=round(price * 0.5, 2), client_order_id="by-hand-1")
    report = await rig.executor.reconcile(lambda: dict(rig.engine.portfolio.net),
                                          rig.engine.known_ids())
    assert report.unknown == ["by-hand-1"] and report.clean
    venue.set_position(sym, 7 if rig.kind == "alpaca" else 0.07, price)
    report = await rig.executor.reconcile(lambda: dict(rig.engine.portfolio.net),
                                          rig.engine.known_ids())
    assert sym in report.mismatches
    assert report.mismatches[sym][1] == pytest.approx(7 if rig.kind == "alpaca" else 0.07)


async def test_cancel_all_cancels_at_the_venue(rig: Rig) -> None:
    rig.emu.engine.faults.partial_fill(0.5)
    (intent,) = signal(rig, rig.symbols[0], Direction.LONG)
    await asyncio.sleep(0.5)
    assert rig.executor.cancel_all("shutdown") == 1
    await rig.executor.drain(5)
    await settle(rig)
    assert last_state(rig, intent.client_order_id) == OrderState.CANCELLED.value
    venue_order = rig.emu.engine.by_client[intent.client_order_id]
    assert venue_order.status in ("canceled", "cancelled")
    assert_consistent(rig)


async def test_halt_with_flatten_leaves_exits_in_flight_and_flattens_the_rest(rig: Rig) -> None:
    a, b = rig.symbols
    signal(rig, a, Direction.LONG)
    signal(rig, b, Direction.LONG)
    await settle(rig)
    rig.emu.engine.faults.partial_fill(0.5)
    (exit_a,) = signal(rig, a, Direction.FLAT)  # half filled, the rest in flight
    await asyncio.sleep(0.5)
    assert [i.client_order_id for i in rig.executor.open_orders()] == [exit_a.client_order_id]
    sent = rig.engine.control.apply(Halt(reason="operator", flatten=True))["flatten_orders"]
    assert sent == 1  # b's exit; a's exit is already on its way and is not cancelled
    assert rig.executor.open_orders()[0] == exit_a
    await asyncio.sleep(0.5)
    rig.emu.engine.fill_rest()
    await settle(rig)
    assert last_state(rig, exit_a.client_order_id) == OrderState.FILLED.value
    assert rig.engine.portfolio.net.get(a, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert rig.engine.portfolio.net.get(b, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert_consistent(rig)
