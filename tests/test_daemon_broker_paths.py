"""The daemon's own loops around a broker: periodic reconciliation halts on a difference
(and feeds keep flowing), and a silent feed goes stale (entries stop, exits pass) until
bars come back."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import sqlite3
import time
from pathlib import Path

from quantshift.control import MarkStale
from quantshift.daemon import Daemon
from quantshift.domain import Bar, Direction, Signal
from quantshift.emulators.alpaca import AlpacaEmulator
from quantshift.ops import periodic
from quantshift.settings import Settings


async def wait_until(cond, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_periodic_reconciliation_halts_on_a_hand_made_position(clean: Path) -> None:
    emu = AlpacaEmulator(["AAA", "BBB"], interval=0.25)
    await emu.start()
    settings = Settings(
        state_dir=clean / "var", feed="alpaca", shadow_mode="sandbox",
        apca_api_key_id="emulator-key", apca_api_secret_key="emulator-secret",
        apca_api_base_url=emu.base_url, apca_api_data_url=emu.base_url,
        apca_api_stream_url=emu.data_stream_url, symbols=["AAA", "BBB"], bar_seconds=1,
        reconcile_interval=0.5, warmup_bars=10)
    d = Daemon(settings)
    d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
    try:
        await d.startup()
        try:
            engine = d.engine
            assert engine is not None and engine.gate.state == "active"
            emu.engine.set_position("BBB", 5, 100.0)  # someone trades by hand at the venue
            await wait_until(lambda: engine.gate.state == "halted")
            assert "positions differ" in engine.gate.halt_reason
            assert "BBB: journal 0, venue 5" in engine.gate.halt_reason
            bars = engine.bars
            await wait_until(lambda: engine.bars > bars + 2)  # the feed keeps flowing
            assert d.journal is not None
            d.journal.flush()
            assert d.journal.get("trading_state")["state"] == "halted"  # persisted
            assert d.journal.get("reconcile_last")["mismatches"] == {"BBB": [0.0, 5.0]}
        finally:  # a failed assertion must not leave the daemon's tasks running
            d.handle_exit(signal.SIGTERM)
            await d.shutdown()
        assert d.exit_code == 0
    finally:
        await emu.stop()


async def test_a_silent_feed_goes_stale_and_recovers(clean: Path) -> None:
    settings = Settings(state_dir=clean / "var", symbols=["AAA"], sim_interval=0.1,
                        stale_bars=3, warmup_bars=0)
    d = Daemon(settings)
    d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
    await d.startup()
    try:
        engine, feed = d.engine, d.feed
        assert engine is not None and feed is not None
        await wait_until(lambda: engine.bars > 3)
        feed.stop()  # the source goes quiet
        await wait_until(lambda: engine.gate.stale_reason is not None, timeout=5)
        assert "STALE" in periodic.status_text(engine)
        ts = time.time_ns()
        entry = engine.decide(Signal("s", "AAA", ts, Direction.LONG, "t"), 100.0)
        assert entry == []
        engine.control.mark_fresh()  # let one entry in to have something to exit
        assert engine.decide(Signal("s", "AAA", ts + 1, Direction.LONG, "t"), 100.0)
        engine.control.apply(MarkStale(reason="still quiet", by="test"))
        exit_leg = engine.decide(Signal("s", "AAA", ts + 2, Direction.FLAT, "t"), 100.0)
        assert len(exit_leg) == 1 and exit_leg[0].reduce_only  # exits are still allowed
        engine.on_bar(Bar("AAA", ts + 3, 100, 101, 99, 100, 10))  # a fresh bar
        assert engine.gate.stale_reason is None
    finally:  # a failed assertion must not leave the daemon's tasks running
        d.handle_exit(signal.SIGTERM)
        await d.shutdown()
    with sqlite3.connect(clean / "var" / "equity-paper.sqlite") as db:
        # this test's own strategy only: on a slow machine the sim strategy may decide too
        reasons = [r[0] for r in db.execute("SELECT reason FROM vetoes WHERE strategy = 's'")]
    assert len(reasons) == 1 and reasons[0].startswith("feed stale: no bar from sim")


async def test_no_entry_goes_out_on_a_late_bar_exits_do(clean: Path) -> None:
    """A bar that began more than ``late_bars`` bar lengths (+ 2 s) ago — a backlog after
    a freeze, a backfill after a takeover — decides no entry; an exit on it goes out, and
    an entry whose attempts run past the limit is refused at its next one."""
    settings = Settings(state_dir=clean / "var", symbols=["AAA"], sim_interval=0.5,
                        late_bars=2, warmup_bars=0)  # late: older than 0.5 * 2 + 2 = 3 s
    d = Daemon(settings)
    d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
    await d.startup()
    try:
        engine = d.engine
        assert engine is not None
        now = time.time_ns()
        assert engine.decide(Signal("s", "AAA", now - 8 * 10**9, Direction.LONG, "t"),
                             100.0) == []
        (entry,) = engine.decide(Signal("s", "AAA", now - 2 * 10**9, Direction.LONG, "t"),
                                 100.0)  # within the limit
        assert engine.control.refusal(entry) is None
        later = dataclasses.replace(entry, ts=now - 4 * 10**9)  # its attempts ran past it
        assert "late bar" in (engine.control.refusal(later) or "")
        (exit_leg,) = engine.decide(Signal("s", "AAA", now - 60 * 10**9, Direction.FLAT,
                                           "t"), 100.0)
        assert exit_leg.reduce_only and engine.control.refusal(exit_leg) is None
    finally:
        d.handle_exit(signal.SIGTERM)
        await d.shutdown()
    with sqlite3.connect(clean / "var" / "equity-paper.sqlite") as db:
        reasons = [r[0] for r in db.execute("SELECT reason FROM vetoes WHERE strategy = 's'")]
    assert len(reasons) == 1 and reasons[0].startswith("late bar: decided on a bar that "
                                                       "began 8."), reasons
