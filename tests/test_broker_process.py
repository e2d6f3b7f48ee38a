"""The daemon as a process in sandbox mode against each emulator (started with
`quantshift emulate`): it trades, stops, restarts where it was, and survives SIGKILLs
between journaling an intent and the venue answering."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import DaemonProcess, clean_env, quantshift_bin, read_db

pytestmark = pytest.mark.process

VENUES = {
    "alpaca": {"symbols": "AAA,BBB", "env": {"QUANTSHIFT_SIZING": "fixed:2"},
               "mode": "long_short"},
    "exchange": {"symbols": "BTC/USDT,ETH/USDT",
                 "env": {"QUANTSHIFT_SIZING": "fraction:0.01", "QUANTSHIFT_FRACTIONAL": "true"},
                 "mode": "long_only"},  # spot: no shorts
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, venue: str, tmp_path: Path, interval: float = 0.25) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [quantshift_bin(), "emulate", venue, "--port", str(self.port), "--interval",
             str(interval), "--symbols", VENUES[venue]["symbols"]],
            env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.exports: dict[str, str] = {}
        assert self.proc.stdout is not None
        while "QUANTSHIFT_SYMBOLS" not in self.exports:  # the last export line
            line = self.proc.stdout.readline()
            if not line.startswith("export "):
                raise AssertionError(f"unexpected emulator output: {line!r}")
            key, _, value = line.removeprefix("export ").strip().partition("=")
            self.exports[key] = value
        assert self.exports, "the emulator printed no export lines"

    def state(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_emulator/state",
                                    timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


@pytest.fixture(params=list(VENUES))
def venue(request, tmp_path: Path):
    emu = Emulator(request.param, tmp_path)
    emu.name = request.param  # type: ignore[attr-defined]
    yield emu
    emu.stop()


def daemon_for(emu: Emulator, tmp_path: Path) -> DaemonProcess:
    spec = VENUES[emu.name]  # type: ignore[attr-defined]
    env = clean_env(tmp_path, **emu.exports, **spec["env"], QUANTSHIFT_BAR_SECONDS="1",
                    QUANTSHIFT_RISK_MAX_TRADES_PER_DAY="0", QUANTSHIFT_FLUSH_INTERVAL="0.05",
                    QUANTSHIFT_SNAPSHOT_INTERVAL="0.5", QUANTSHIFT_RECONCILE_INTERVAL="0",
                    QUANTSHIFT_STRATEGIES=json.dumps([{"name": "ma_cross", "params": {
                        "fast": 2, "slow": 4, "mode": spec["mode"]}}]))
    return DaemonProcess(tmp_path, env)


def venue_positions(emu: Emulator) -> dict[str, float]:
    return {s: float(p["qty"]) for s, p in emu.state()["positions"].items()}


def journal_positions(ledger: Path) -> dict[str, float]:
    rows = read_db(ledger, "SELECT symbol, sum(CASE side WHEN 'buy' THEN qty ELSE -qty END) "
                           "FROM fills GROUP BY symbol")
    return {s: q for s, q in rows}


def assert_books_agree(emu: Emulator, ledger: Path) -> None:
    theirs, mine = venue_positions(emu), journal_positions(ledger)
    for symbol in set(theirs) | set(mine):
        assert mine.get(symbol, 0.0) == pytest.approx(theirs.get(symbol, 0.0), abs=1e-9), symbol
    orders = emu.state()["orders"]
    intents = {r[0]: r[1] for r in read_db(
        ledger, "SELECT client_order_id, state FROM orders")}
    venue_ids = Counter(o["client_order_id"] for o in orders)
    assert max(venue_ids.values(), default=1) == 1  # never two venue orders for one id
    assert set(venue_ids) <= set(intents)  # never an order under an id the journal lacks
    for coid, state in intents.items():  # exactly one venue order per intent that went out
        expected = 0 if state == "cancelled" and coid not in venue_ids else 1
        assert venue_ids.get(coid, 0) == expected, (coid, state)
    venue_filled = {o["client_order_id"]: o["filled_qty"] for o in orders}
    journal_filled = dict(read_db(ledger, "SELECT client_order_id, sum(qty) FROM fills "
                                          "GROUP BY client_order_id"))
    for coid, qty in venue_filled.items():
        assert journal_filled.get(coid, 0.0) == pytest.approx(qty, abs=1e-9), coid


def test_sandbox_trades_stops_and_restarts_with_the_same_positions(venue, tmp_path) -> None:
    ledger = tmp_path / "var" / "equity-sandbox.sqlite"
    first = daemon_for(venue, tmp_path).start()
    text = first.wait_for(r"\| fill (buy|sell) ", count=3, timeout=40)
    code, _ = first.stop()  # first: a failed assertion must not leave the daemon running
    assert "executor=sandbox: orders go to" in text
    assert "(paper/testnet: loopback) at http://127.0.0.1:" in text  # classified by its host
    assert code == 0
    assert_books_agree(venue, ledger)
    held = journal_positions(ledger)

    second = daemon_for(venue, tmp_path).start()
    text = second.wait_for(r"positions agree", timeout=30)
    assert "restored from snapshot" in text
    second.wait_for(r"\| fill (buy|sell) ", count=1, timeout=40)  # and keeps trading
    assert second.stop()[0] == 0
    assert_books_agree(venue, ledger)
    assert held  # it held something across the restart


@pytest.mark.parametrize("kills", [8])  # the fault simulator kills far more
def test_sigkill_between_intent_and_venue_leaves_one_order_per_intent(
        venue, tmp_path, kills: int) -> None:
    ledger = tmp_path / "var" / "equity-sandbox.sqlite"
    rng = random.Random(7)
    seen = 0
    for _ in range(kills):
        d = daemon_for(venue, tmp_path).start()
        d.wait_for(r"\| signal ma_cross", count=1, timeout=40)
        time.sleep(rng.choice([0.0, 0.0, 0.002, 0.005, 0.01, 0.03]))  # before or after
        d.signal(signal.SIGKILL)
        d.proc.wait(10)
        seen += 1
    final = daemon_for(venue, tmp_path).start()
    text = final.wait_for(r"positions agree|positions differ", timeout=40)
    assert "positions differ" not in text
    assert final.stop()[0] == 0
    assert seen == kills
    assert_books_agree(venue, ledger)
    assert read_db(ledger, "SELECT count(*) FROM intents")[0][0] >= kills


def test_unknown_symbol_exits_78_and_unreachable_broker_exits_69(venue, tmp_path) -> None:
    d = daemon_for(venue, tmp_path)
    d.env["QUANTSHIFT_SYMBOLS"] = "NOPE" if venue.name == "alpaca" else "NOPE/USDT"
    d.start()
    assert d.proc.wait(30) == 78
    _, err = d.communicate()
    last = err.strip().splitlines()[-1]  # after the start-up log lines: one clear line
    assert last.startswith("quantshift: invalid setting QUANTSHIFT_SYMBOLS") and "NOPE" in last
    assert "Traceback" not in err

    closed = f"http://127.0.0.1:{free_port()}"
    d = daemon_for(venue, tmp_path)
    for key in ("APCA_API_BASE_URL", "APCA_API_DATA_URL", "CCXT_API_URL"):
        if key in d.env:
            d.env[key] = closed
    d.env["QUANTSHIFT_BROKER_TIMEOUT"] = "2"
    d.start()
    assert d.proc.wait(60) == 69
    _, err = d.communicate()
    assert err.strip().splitlines()[-1].startswith("quantshift: broker unreachable")
    assert "Traceback" not in err


def arm(emu: Emulator, fault: dict) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{emu.port}/_emulator/fault", data=json.dumps(fault).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 200


@pytest.mark.parametrize("slow", [False, True], ids=["healthy", "slow-status"])
def test_sigterm_exits_within_the_shutdown_bound(venue, tmp_path, slow: bool) -> None:
    # The bound holds for the process, not only for the logged shutdown: nothing the
    # broker or the feed left open (a websocket, a thread in a REST call) holds the exit.
    d = daemon_for(venue, tmp_path)
    d.env["QUANTSHIFT_SHUTDOWN_TIMEOUT"] = "3"
    if slow:  # reconciliations keep REST calls in flight; each takes 8 s to be answered
        d.env["QUANTSHIFT_RECONCILE_INTERVAL"] = "0.5"
    d.start()
    d.wait_for(r"\| fill (buy|sell) ", timeout=40)
    if slow:
        arm(venue, {"name": "slow", "scope": "status", "count": 100_000, "delay": 8})
        time.sleep(1.5)
    code, took = d.stop(timeout=20)
    assert code == 0
    assert took < 3 + 1.0, f"the process took {took:.2f}s to exit after SIGTERM"
    text = d.log()
    assert "shutdown complete" in text
    last = text.strip().splitlines()[-1]
    assert "process exiting" in last and "after the signal" in last
    if not slow:
        assert "everything closed" in last
