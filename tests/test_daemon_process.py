"""The daemon as a process: start, trade on the sim feed, SIGTERM, restart, SIGKILL."""

from __future__ import annotations

import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest

from quantshift.domain import Fill, Side
from quantshift.portfolio import Portfolio
from quantshift.state.journal import Journal
from tests.conftest import latest_snapshot, read_db

pytestmark = pytest.mark.process

SHUTDOWN_SEQUENCE = [
    "shutdown: begin (SIGTERM)",
    "shutdown: stopping feeds",
    "shutdown: feeds stopped",
    "shutdown: cancelled 0 open orders",
    "shutdown: journal flushed",
    "shutdown: broker sessions closed",
    "shutdown complete",
]


def _positions(snap: dict) -> dict[tuple[str, str], tuple[float, float]]:
    return {(p[0], p[1]): (p[2], p[3]) for p in snap["portfolio"]["positions"] if p[2]}


def test_sigterm_stops_cleanly_and_restart_restores_everything(daemon, tmp_path: Path) -> None:
    first = daemon().start()
    first.wait_for(r"\| fill (buy|sell) ", count=4)
    code, took = first.stop()
    assert code == 0
    assert took < 10.0  # inside the default shutdown bound
    log = first.log()
    positions = [log.index(step) for step in SHUTDOWN_SEQUENCE]
    assert positions == sorted(positions), "shutdown steps out of order"
    assert "exit status 0" in log

    ledger = tmp_path / "var" / "equity-paper.sqlite"
    snap = latest_snapshot(ledger)
    n_fills = read_db(ledger, "SELECT count(*) FROM fills")[0][0]
    assert n_fills >= 4
    assert snap["portfolio"]["fill_seq"] == n_fills  # the snapshot covers every fill
    cash, realized = snap["portfolio"]["cash"], snap["portfolio"]["realized_pnl"]
    assert cash != 100_000.0
    held = _positions(snap)
    assert held, "the long/short strategy is always in the market after its first cross"

    # Restart with a slow feed: the first round of bars cannot produce a signal (warm-up),
    # so cash, positions and realized P&L must come back exactly as they were.
    second = daemon(QUANTSHIFT_SIM_INTERVAL="30").start()
    text = second.wait_for(r"\| ready$")
    assert "restored from snapshot" in text
    assert f"cash {cash:.2f}" in text
    assert f"realized P&L {realized:.2f}" in text
    code, _ = second.stop()
    assert code == 0
    after = latest_snapshot(ledger)
    assert after["portfolio"]["cash"] == pytest.approx(cash, abs=1e-9)
    assert after["portfolio"]["realized_pnl"] == pytest.approx(realized, abs=1e-9)
    assert _positions(after) == held
    assert read_db(ledger, "SELECT count(*) FROM fills")[0][0] == n_fills


def test_sigkill_mid_run_loses_no_committed_fill(daemon, tmp_path: Path) -> None:
    ledger = tmp_path / "var" / "equity-paper.sqlite"
    first = daemon(QUANTSHIFT_SNAPSHOT_INTERVAL="60").start()
    first.wait_for(r"\| fill (buy|sell) ", count=6)
    time.sleep(0.3)  # let a few group commits land after the first snapshot window
    first.signal(signal.SIGKILL)
    first.proc.wait(10)

    rows = read_db(ledger, "SELECT * FROM fills ORDER BY seq")
    assert len(rows) >= 6
    expected = Portfolio(100_000.0)
    for r in rows:
        expected.apply_fill(Fill(r[0], r[1], r[2], r[3], Side(r[4]), r[5], r[6], r[7], r[8]))

    second = daemon(QUANTSHIFT_SIM_INTERVAL="30").start()
    text = second.wait_for(r"\| ready$")
    assert f"cash {expected.cash:.2f}" in text
    code, _ = second.stop()
    assert code == 0
    after = latest_snapshot(ledger)
    assert after["portfolio"]["cash"] == pytest.approx(expected.cash, abs=1e-6)
    assert after["portfolio"]["realized_pnl"] == pytest.approx(expected.realized_pnl, abs=1e-6)
    assert after["portfolio"]["fill_seq"] == len(rows)
    assert {k: v[0] for k, v in _positions(after).items()} == {
        k: p.qty for k, p in expected.positions.items() if p.qty}


def test_observation_phase_logs_would_execute_and_touches_no_book(daemon, tmp_path: Path) -> None:
    d = daemon(QUANTSHIFT_PHASE="observation").start()
    text = d.wait_for(r"would execute", count=2)
    assert "executor=log_only: orders go nowhere" in text
    code, _ = d.stop()
    assert code == 0
    shadow = (tmp_path / "logs" / "quantshift-equity-shadow.log").read_text()
    assert shadow.count("would execute") >= 2
    ledger = tmp_path / "var" / "equity-log_only.sqlite"
    assert read_db(ledger, "SELECT count(*) FROM fills")[0][0] == 0
    states = {r[0] for r in read_db(ledger, "SELECT DISTINCT state FROM order_events")}
    assert states == {"not_sent"}
    assert not (tmp_path / "var" / "equity-paper.sqlite").exists()  # ledgers never shared


def test_shadow_mode_true_overrides_dry_run(daemon) -> None:
    d = daemon(QUANTSHIFT_PHASE="dry_run", SHADOW_MODE="true").start()
    text = d.wait_for(r"\| ready$")
    assert "executor=log_only" in text
    assert d.stop()[0] == 0


def test_persisted_halt_stays_halted_after_restart(daemon, tmp_path: Path) -> None:
    ledger = tmp_path / "var" / "equity-paper.sqlite"
    journal = Journal(ledger, bot="equity", executor="paper")
    journal.set("trading_state", {"state": "halted", "reason": "operator halt"})
    journal.flush()
    journal.close()

    d = daemon().start()
    text = d.wait_for(r"veto .*halted: operator halt", count=3)
    assert "trading stays HALTED (operator halt)" in text
    assert d.stop()[0] == 0
    assert read_db(ledger, "SELECT count(*) FROM intents")[0][0] == 0
    assert read_db(ledger, "SELECT count(*) FROM vetoes WHERE reason LIKE 'halted%'")[0][0] >= 3
    assert latest_snapshot(ledger)["trading_state"] == "halted"


def test_crashed_component_stops_the_daemon_with_nonzero_status(daemon, tmp_path: Path) -> None:
    # A fault put into the feed at interpreter start (bad input no longer crashes one: a
    # replay file that is not bars is refused at start with 78).
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "from quantshift.feeds import sim\n\n"
        "async def run(self, on_bar):\n"
        "    raise RuntimeError('injected feed fault')\n\n"
        "sim.SimFeed.run = run\n")
    d = daemon(PYTHONPATH=str(inject)).start()
    code = d.proc.wait(20)
    log = d.log()
    assert code == 70
    assert "component feed crashed" in log
    assert "Traceback" in log and "injected feed fault" in log  # the traceback is logged
    assert "shutdown complete" in log


def test_replay_feed_in_run_mode_finishes_and_exits_zero(daemon, tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    lines = ["timestamp,open,high,low,close,volume"]
    price = 100.0
    for i in range(60):
        price += (1 if (i // 6) % 2 == 0 else -1)
        lines.append(f"{1_700_000_000 + 60 * i},{price},{price + 0.5},{price - 0.5},{price},100")
    data.write_text("\n".join(lines) + "\n")
    d = daemon(QUANTSHIFT_FEED="replay", QUANTSHIFT_REPLAY_FILE=str(data)).start()
    assert d.proc.wait(20) == 0
    log = d.log()
    assert "feed replay finished" in log
    assert read_db(tmp_path / "var" / "equity-paper.sqlite",
                   "SELECT count(*) FROM fills")[0][0] > 0


def test_systemd_notify_ready_watchdog_stopping(daemon, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(10)
    try:
        d = daemon(NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="200000").start()
        messages: list[str] = []

        def until(word: str) -> None:
            while not any(word in m for m in messages):
                messages.append(sock.recv(4096).decode())

        until("READY=1")
        until("WATCHDOG=1")
        assert any("STATUS=" in m for m in messages)
        d.signal(signal.SIGTERM)
        until("STOPPING=1")
        assert d.proc.wait(10) == 0
        ready = next(m for m in messages if "READY=1" in m)
        assert f"MAINPID={d.proc.pid}" in ready
    finally:
        sock.close()


def test_secrets_never_reach_the_log(daemon, tmp_path: Path) -> None:
    secret = "sk-test-not-a-real-key-5a1f"
    d = daemon(APCA_API_SECRET_KEY=secret, CCXT_SECRET=secret + "x").start()
    d.wait_for(r"\| ready$")
    assert d.stop()[0] == 0
    out, err = d.communicate()
    for text in (d.log(), out, err):
        assert secret not in text


def test_json_logs(daemon) -> None:
    import orjson

    d = daemon(QUANTSHIFT_LOG_JSON="true").start()
    d.wait_for(r'"msg":"ready"')
    assert d.stop()[0] == 0
    lines = [orjson.loads(line) for line in d.log().splitlines() if line]
    assert all({"ts", "level", "msg", "bot"} <= set(rec) for rec in lines)
    assert any(rec["msg"].startswith("shutdown complete") for rec in lines)


def test_second_ledger_owner_is_refused(daemon, tmp_path: Path) -> None:
    ledger = tmp_path / "var" / "equity-paper.sqlite"
    ledger.parent.mkdir(parents=True)
    Journal(ledger, bot="crypto", executor="paper").close()
    d = daemon().start()
    code = d.proc.wait(20)
    _, err = d.communicate()
    assert code == 78
    assert "QUANTSHIFT_STATE_DIR" in err and "crypto" in err
    assert "Traceback" not in err
    with sqlite3.connect(ledger) as db:  # untouched
        assert db.execute("SELECT value FROM meta WHERE key='bot'").fetchone()[0] == "crypto"


def test_warm_start_decides_on_the_first_live_bars(daemon, tmp_path: Path) -> None:
    d = daemon(QUANTSHIFT_WARMUP_BARS="50", QUANTSHIFT_SIM_INTERVAL="0.2").start()
    text = d.wait_for(r"\| signal ma_cross", timeout=15)
    assert "strategies warmed up on 150 history bars" in text
    assert d.stop()[0] == 0
    ledger = tmp_path / "var" / "equity-paper.sqlite"
    first_intent = read_db(ledger, "SELECT min(ts) FROM intents")[0][0]
    started = read_db(ledger, "SELECT value FROM meta WHERE key='created_ns'")[0][0]
    assert first_intent >= int(started)  # decided on a live bar, never on history
