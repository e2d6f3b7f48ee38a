"""Two daemons of one bot on one Alpaca account (real processes, a real redis-server, the
Alpaca emulator, which refuses a second market-data websocket as Alpaca does): one
instance holds the websocket and shares its bars through Redis, the other reads them, so
the standby sees every bar; killed, the source's feed and trading go to the other, which
fills the gap through REST and trades on."""

from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.redis_server import RedisServer
from tests.test_account_process import Bot, until
from tests.test_broker_process import Emulator
from tests.test_failover_process import held_by, lease_env, role

pytestmark = pytest.mark.process


def decided(bot: Bot) -> dict[str, list[int]]:
    """The bar times each instance decided on, per symbol (its journal)."""
    [ledger] = (bot.root / "var").glob("*-sandbox.sqlite")
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT symbol, ts FROM decisions ORDER BY ts").fetchall()
    out: dict[str, list[int]] = {}
    for symbol, ts in rows:
        out.setdefault(symbol, []).append(ts)
    return out


def test_a_standby_sees_the_bars_of_the_one_websocket_and_takes_it_over(
        tmp_path: Path, redis_server: RedisServer) -> None:
    emu = Emulator("alpaca", tmp_path)
    env = lease_env(emu, "alpaca", 2, "long_short", QUANTSHIFT_RISK_MAX_TRADES_PER_DAY="0")
    a = Bot(tmp_path / "a", redis_server.url, "a", **env).start()
    until(lambda: role(a) == "primary", 10)
    a.proc.wait_for(r"holds the venue's connection and shares its bars", timeout=10)
    b = Bot(tmp_path / "b", redis_server.url, "b", **env).start()
    try:
        b.proc.wait_for(r"reading the bars instance a shares", timeout=10)
        until(lambda: b.call("GET", "/status")[1]["feed"]["shared"]["read"] > 0, 10)
        shared = b.call("GET", "/status")[1]["feed"]["shared"]
        assert shared["source"] is False and shared["holder"] == "a", shared
        a.proc.wait_for(r"\| fill ", count=1, timeout=40)
        b.proc.wait_for(r"would execute", count=1, timeout=20)  # the standby decides too
        until(lambda: sum(map(len, decided(b).values())) >= 8, 30)  # bars through Redis
        until(lambda: bool(held_by(a)), 40)
        a.proc.signal(signal.SIGKILL)
        a.proc.proc.wait(10)  # type: ignore[union-attr]
        until(lambda: role(b) == "primary", 10)
        b.proc.wait_for(r"holds the venue's connection and shares its bars", timeout=10)
        b.proc.wait_for(r"\| fill .* coid=qs-", count=1, timeout=40)  # b trades on
        assert b.call("POST", "/halt", {"reason": "the end of the test"})[0] == 200
        until(lambda: not [o for o in emu.state()["orders"]
                           if o.get("status") in ("new", "accepted", "partially_filled")], 5)
        mine, venue = held_by(b), emu.state()
    finally:
        b_code = b.stop()
        emu.stop()
    assert b_code == 0
    log = b.proc.log()
    assert "connection limit exceeded" not in log
    # The standby decided on the bars the source shared: every bar time a decided on
    # while both ran, b decided on too (b started later and warmed from REST).
    mine_bars, theirs_bars = decided(b), decided(a)
    both = 0
    for symbol, times in theirs_bars.items():
        shared = [t for t in times if t >= min(mine_bars.get(symbol, [0]))]
        assert set(shared) <= set(mine_bars.get(symbol, [])), symbol
        both += len(shared)
    assert both >= 4, "the instances decided on too few bars together to tell"
    coids = [o["client_order_id"] for o in venue["orders"]]
    assert len(coids) == len(set(coids)), "a client order id reached the venue twice"
    theirs = {s: p["qty"] for s, p in venue["positions"].items() if abs(p["qty"]) > 1e-9}
    assert mine == pytest.approx(theirs)
    assert re.search(r"took over from instance a|venue holds", log)
