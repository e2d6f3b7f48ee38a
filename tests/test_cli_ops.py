"""The operator's commands: status (from the daemon, or from the state file when it is
down), halt/resume/flatten through the API with their one-line errors, and
safe-to-restart, in-process and with the daemon as a process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from quantshift import cli
from quantshift.config import load_settings
from quantshift.daemon import Daemon
from quantshift.domain import Direction, OrderIntent, OrderState, Side, Signal
from quantshift.ops.status import in_quiet_window, restart_blockers
from quantshift.state.journal import Journal
from tests.conftest import quantshift_bin

TOKEN = "cli-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """One environment for the in-process daemon and the CLI, as under one env file."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("QUANTSHIFT_", "SHADOW_MODE", "APCA_", "CCXT_", "NOTIFY_")):
            monkeypatch.delenv(key)
    values = {"QUANTSHIFT_STATE_DIR": str(tmp_path / "var"),
              "QUANTSHIFT_ENV_FILE": str(tmp_path / "absent.env"),
              "QUANTSHIFT_HTTP_PORT": str(free_port()), "QUANTSHIFT_API_TOKEN": TOKEN,
              "QUANTSHIFT_SYMBOLS": "AAA,BBB", "QUANTSHIFT_WARMUP_BARS": "0",
              # One round of bars at start, then quiet: an order resting for the next
              # open stays open for as long as the test needs.
              "QUANTSHIFT_SIM_INTERVAL": "3600", "QUANTSHIFT_PAPER_FILL": "next_open"}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


async def start_daemon() -> Daemon:
    d = Daemon(load_settings())
    d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
    await d.startup()
    return d


async def stop_daemon(d: Daemon) -> None:
    d.handle_exit(signal.SIGTERM)
    await d.shutdown()


async def run_cli(*argv: str) -> int:
    # The CLI blocks on its HTTP call: off the loop that serves it.
    return await asyncio.to_thread(cli.main, list(argv))


def intent(coid: str = "qs-test-1") -> OrderIntent:
    return OrderIntent(coid, "ma_cross", "AAA", Side.BUY, 10, time.time_ns(), 100.0, False, "t")


# -- restart_blockers --------------------------------------------------------------------
def _status(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"source": "daemon", "orders": {"open": 0, "in_flight": 0},
                            "market_hours": False, "risk": {"market_open": None}}
    return {**base, **kw}


NOON = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)


def test_open_orders_and_intents_in_flight_block_a_restart() -> None:
    assert restart_blockers(_status(), None, NOON) == []
    assert restart_blockers(_status(orders={"open": 2, "in_flight": 0}), None, NOON) == [
        "2 open order(s)"]
    blockers = restart_blockers(_status(orders={"open": 0, "in_flight": 1}), None, NOON)
    assert len(blockers) == 1 and "in flight" in blockers[0]


def test_equities_need_the_market_closed_or_the_quiet_window() -> None:
    open_ = _status(market_hours=True, risk={"market_open": True})
    assert "the market is open" in restart_blockers(open_, None, NOON)[0]
    assert "outside the quiet window" in restart_blockers(open_, "21:00-23:00", NOON)[0]
    assert restart_blockers(open_, "11:30-12:30", NOON) == []
    unknown = _status(market_hours=True, risk={"market_open": None})
    assert "may be open" in restart_blockers(unknown, None, NOON)[0]
    assert restart_blockers(_status(market_hours=True, risk={"market_open": False}), None,
                            NOON) == []
    # A stopped daemon has no session to cut: only its journal's orders count.
    assert restart_blockers({**open_, "source": "state file"}, None, NOON) == []


def test_the_quiet_window_may_wrap_past_midnight() -> None:
    at = [datetime(2024, 3, 5, h, m, tzinfo=UTC) for h, m in ((22, 0), (0, 30), (2, 0), (1, 59))]
    assert [in_quiet_window("21:30-02:00", t) for t in at] == [True, True, False, True]
    assert not in_quiet_window(None, at[0])


def test_bad_operator_settings_exit_78_naming_them(env: dict[str, str], capsys,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTSHIFT_API_TOKEN", "short-secret")
    assert cli.main(["config"]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "QUANTSHIFT_API_TOKEN" in err
    assert "short-secret" not in err
    monkeypatch.setenv("QUANTSHIFT_API_TOKEN", TOKEN)
    monkeypatch.setenv("QUANTSHIFT_QUIET_WINDOW", "25:00-26:00")
    assert cli.main(["config"]) == 78
    assert "QUANTSHIFT_QUIET_WINDOW" in capsys.readouterr().err
    monkeypatch.setenv("QUANTSHIFT_QUIET_WINDOW", "")
    monkeypatch.setenv("QUANTSHIFT_HTTP_PORT", "70000")
    assert cli.main(["config"]) == 78
    assert "QUANTSHIFT_HTTP_PORT" in capsys.readouterr().err


# -- in-process: the CLI against a running daemon --------------------------------------
async def test_safe_to_restart_with_an_open_order_and_without(env: dict[str, str],
                                                              capsys) -> None:
    d = await start_daemon()
    try:
        engine = d.engine
        assert engine is not None
        deadline = time.monotonic() + 10
        while engine.bars < 2:  # the start's round of bars is in: none comes for an hour
            assert time.monotonic() < deadline, "no bars from the sim feed"
            await asyncio.sleep(0.01)
        sent = engine.decide(Signal("ma_cross", "AAA", time.time_ns(), Direction.LONG, "t"),
                             100.0)
        assert len(sent) == 1 and len(engine.open_orders()) == 1  # rests for the next open
        assert await run_cli("safe-to-restart") == 1
        out = capsys.readouterr().out
        assert "not safe to restart" in out and "1 open order" in out
        assert "running daemon" in out
        assert engine.executor is not None and engine.executor.cancel_all("test") == 1
        assert await run_cli("safe-to-restart") == 0
        assert "safe to restart" in capsys.readouterr().out
    finally:
        await stop_daemon(d)


async def test_control_commands_and_their_errors(env: dict[str, str], capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    d = await start_daemon()
    try:
        gate = d.engine.gate  # type: ignore[union-attr]
        assert await run_cli("halt", "--reason", "from the cli") == 0
        assert "equity: trading halted (from the cli), was active" in capsys.readouterr().out
        assert (gate.state, gate.halt_reason) == ("halted", "from the cli")
        assert await run_cli("resume") == 0
        assert gate.state == "active"
        assert await run_cli("flatten") == 0
        assert "flattening orders sent" in capsys.readouterr().out

        monkeypatch.setenv("QUANTSHIFT_API_TOKEN", "not-the-daemons-token-0123")
        assert await run_cli("halt") == 77
        err = capsys.readouterr().err
        assert "refused the token (401)" in err and err.count("\n") == 1
        monkeypatch.delenv("QUANTSHIFT_API_TOKEN")
        assert await run_cli("halt") == 78
        assert "QUANTSHIFT_API_TOKEN" in capsys.readouterr().err
        assert gate.state == "active"

        monkeypatch.setenv("QUANTSHIFT_BOT", "crypto")  # same port, wrong bot
        monkeypatch.setenv("QUANTSHIFT_API_TOKEN", TOKEN)
        assert await run_cli("halt") == 1
        assert "runs bot 'equity', not 'crypto'" in capsys.readouterr().err
        assert gate.state == "active"
    finally:
        await stop_daemon(d)
    assert await run_cli("resume") == 69  # nothing listens any more
    assert "not running" in capsys.readouterr().err


async def test_equities_are_safe_to_restart_only_in_the_quiet_window_while_open(
        env: dict[str, str], capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from quantshift.emulators.alpaca import AlpacaEmulator

    emu = AlpacaEmulator(["AAA", "BBB"], interval=0.25)  # its market is open
    await emu.start()
    for key, value in {"QUANTSHIFT_FEED": "alpaca", "SHADOW_MODE": "sandbox",
                       "APCA_API_KEY_ID": "emulator-key", "APCA_API_SECRET_KEY": "emulator-secret",
                       "APCA_API_BASE_URL": emu.base_url, "APCA_API_DATA_URL": emu.base_url,
                       "APCA_API_STREAM_URL": emu.data_stream_url, "QUANTSHIFT_BAR_SECONDS": "1",
                       "QUANTSHIFT_WARMUP_BARS": "10", "QUANTSHIFT_RECONCILE_INTERVAL": "0",
                       "QUANTSHIFT_PAPER_FILL": "close"}.items():
        monkeypatch.setenv(key, value)
    d = await start_daemon()
    try:
        engine = d.engine
        assert engine is not None and d.needs_reconcile and d.reconciled
        deadline = time.monotonic() + 15
        while engine.gate.market_open is not True or engine.bars < 2:
            assert time.monotonic() < deadline, "the venue's clock never said open"
            await asyncio.sleep(0.05)
        assert await run_cli("safe-to-restart") == 1
        out = capsys.readouterr().out
        assert "the market is open" in out and "QUANTSHIFT_QUIET_WINDOW" in out
        now = datetime.now(UTC)
        window = f"{(now.hour - 1) % 24:02d}:00-{(now.hour + 2) % 24:02d}:00"
        monkeypatch.setenv("QUANTSHIFT_QUIET_WINDOW", window)
        assert await run_cli("safe-to-restart") == 0
        assert "safe to restart" in capsys.readouterr().out
        assert await run_cli("status", "--json") == 0
        st = orjson.loads(capsys.readouterr().out)
        assert st["executor"]["kind"] == "sandbox" and st["ready"] is True
        d.reconciled = False  # as during the start-up reconciliation
        assert await run_cli("status", "--json") == 0
        st = orjson.loads(capsys.readouterr().out)
        assert st["not_ready"] == ["reconciliation with the broker not done yet"]
    finally:
        await stop_daemon(d)
        await emu.stop()


# -- the daemon down: the state file -----------------------------------------------------
def _journal(env: dict[str, str]) -> Journal:
    return Journal(Path(env["QUANTSHIFT_STATE_DIR"]) / "equity-paper.sqlite", bot="equity",
                   executor="paper")


def test_safe_to_restart_reads_the_journal_when_the_daemon_is_down(env: dict[str, str],
                                                                   capsys) -> None:
    assert cli.main(["safe-to-restart"]) == 0  # never ran: nothing to interrupt
    assert "no state file" in capsys.readouterr().out
    j = _journal(env)
    resting, unsent = intent("qs-rest"), intent("qs-unsent")
    j.intent(resting)
    j.order_state(resting.client_order_id, OrderState.SUBMITTED)
    j.intent(unsent)
    j.flush()
    assert cli.main(["safe-to-restart"]) == 1
    out = capsys.readouterr().out
    assert "state file" in out and "1 open order" in out and "1 intent(s) in flight" in out
    j.order_state(resting.client_order_id, OrderState.FILLED)
    j.order_state(unsent.client_order_id, OrderState.CANCELLED)
    j.flush()
    j.close()
    assert cli.main(["safe-to-restart"]) == 0
    out = capsys.readouterr().out
    assert "safe to restart" in out and "state file" in out


def test_safe_to_restart_on_an_unreadable_state_file_cannot_tell(env: dict[str, str],
                                                                capsys) -> None:
    path = Path(env["QUANTSHIFT_STATE_DIR"]) / "equity-paper.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a ledger at all " * 64)
    assert cli.main(["safe-to-restart"]) == 1
    out = capsys.readouterr().out
    assert "not safe to restart: cannot tell" in out and str(path) in out
    assert "Traceback" not in out


def test_safe_to_restart_reads_a_ledger_an_older_release_wrote(env: dict[str, str],
                                                              capsys) -> None:
    # A ledger from before the bracket columns, never opened by this release: the status
    # read-only counts its orders all the same (it cannot add the columns).
    j = _journal(env)
    j.intent(intent("qs-old"))
    j.flush()
    path = j.path
    j.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP VIEW orders")
        for column in ("take_profit", "stop_loss", "parent", "leg"):
            db.execute(f"ALTER TABLE intents DROP COLUMN {column}")
    assert cli.main(["safe-to-restart"]) == 1
    out = capsys.readouterr().out
    assert "state file" in out and "1 intent(s) in flight" in out


def test_status_from_the_state_file_says_so(env: dict[str, str], capsys) -> None:
    assert cli.main(["status"]) == 1  # neither a daemon nor a state file
    assert "not running" in capsys.readouterr().err
    j = _journal(env)
    j.set("trading_state", {"state": "halted", "reason": "operator halt"})
    j.snapshot({"portfolio": {"cash": 90.0, "equity": 100.0, "fill_seq": 0,
                              "day_start_equity": 95.0, "peak_equity": 125.0,
                              "marks": {"AAA": 12.0},
                              "positions": [["ma_cross", "AAA", 5, 10.0, 0, 0, 0, 5]]},
                "trading_state": "active", "halt_reason": "", "counts": {"bars": 7}})
    j.flush()
    j.close()
    assert cli.main(["status", "--json"]) == 3
    st = orjson.loads(capsys.readouterr().out)
    assert st["source"] == "state file" and "not running" in st["note"]
    assert st["trading"] == {"state": "halted", "reason": "operator halt"}
    assert st["portfolio"]["day_pnl"] == 5.0 and st["portfolio"]["drawdown"] == 0.2
    assert st["positions"] == [{"strategy": "ma_cross", "symbol": "AAA", "qty": 5,
                                "avg_price": 10.0, "mark": 12.0, "unrealized": 10.0}]
    assert cli.main(["status"]) == 3
    out = capsys.readouterr().out
    assert "from the state file" in out and "HALTED (operator halt)" in out


# -- the daemon as a process -----------------------------------------------------------

def _cli(d: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([quantshift_bin(), *argv, "--bot", "equity"], env=d.env,
                          cwd=d.tmp_path, capture_output=True, text=True, timeout=30)


@pytest.mark.process
def test_status_and_halt_through_the_cli_then_the_state_file(daemon, tmp_path: Path) -> None:
    port = free_port()
    d = daemon(QUANTSHIFT_HTTP_PORT=str(port), QUANTSHIFT_API_TOKEN=TOKEN,
               COLUMNS="160").start()
    d.wait_for(r"\| ready$")
    d.wait_for(r"\| fill (buy|sell) ")
    live = _cli(d, "status")
    assert live.returncode == 0, live.stderr
    assert "from the running daemon" in live.stdout and "active" in live.stdout
    halted = _cli(d, "halt", "--reason", "process test")
    assert halted.returncode == 0, halted.stderr
    assert "trading halted (process test)" in halted.stdout
    d.wait_for(r"trading halted: process test")
    d.wait_for(r"control: halt by .* from 127\.0\.0\.1")
    status = orjson.loads(_cli(d, "status", "--json").stdout)
    assert status["source"] == "daemon" and status["trading"]["state"] == "halted"
    code, _ = d.stop()
    assert code == 0
    assert "shutdown: HTTP server closed" in d.log()
    after = _cli(d, "status")
    assert after.returncode == 3
    assert "from the state file" in after.stdout and "not running" in after.stdout
    assert "HALTED (process test)" in after.stdout
    for text in (live.stdout, halted.stdout, after.stdout, d.log()):
        assert TOKEN not in text


@pytest.mark.process
def test_a_port_in_use_exits_78_with_one_line(daemon) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = daemon(QUANTSHIFT_HTTP_PORT=str(port)).start()
        code = d.proc.wait(20)  # type: ignore[union-attr]
        _, err = d.communicate()
    assert code == 78
    lines = [line for line in err.splitlines() if line.startswith("quantshift:")]
    assert lines == [f"quantshift: invalid setting QUANTSHIFT_HTTP_PORT: 127.0.0.1:{port} is "
                     "already in use (another daemon? give each bot its own port, or 0 to "
                     "turn HTTP off)"]
    assert "Traceback" not in err
