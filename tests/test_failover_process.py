"""Two daemons of one bot on one account (real processes, a real redis-server, the exchange
emulator): the lease's holder trades, the other is a standby whose orders go nowhere.
SIGSTOP the primary → the standby is primary within ``ttl + 1 s`` and trades on; SIGCONT
the old one → it finds the lease lost, is a standby and sends nothing. SIGKILL the new
primary → the old one takes over again. At the end: no client order id twice at the
venue, every order journaled with the lease epoch it went out under and no two instances
in one epoch, and the last primary's positions equal to the venue's."""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import quantshift_bin
from tests.redis_server import RedisServer
from tests.test_account_process import Bot, until
from tests.test_broker_process import VENUES, Emulator

pytestmark = pytest.mark.process

TTL = 2.0


def lease_env(emu: Emulator, venue: str, ttl: float, mode: str, **extra: str) -> dict[str, str]:
    """The settings of daemons of one bot sharing a lease against ``emu``: the venue's
    sizing, 1 s bars, a journal flushed often, ma_cross 2/4 in ``mode``; ``extra`` on top."""
    return {**emu.exports, **VENUES[venue]["env"], "QUANTSHIFT_BAR_SECONDS": "1",
            "QUANTSHIFT_FLUSH_INTERVAL": "0.05", "QUANTSHIFT_RECONCILE_INTERVAL": "0",
            "QUANTSHIFT_LEASE_TTL": str(ttl),
            "QUANTSHIFT_STRATEGIES": json.dumps([{"name": "ma_cross", "params": {
                "fast": 2, "slow": 4, "mode": mode}}]), **extra}


def role(bot: Bot) -> str | None:
    try:
        code, st = bot.call("GET", "/status")
    except OSError:  # frozen (SIGSTOP): it does not answer
        return None
    return str(st.get("role")) if code == 200 and isinstance(st, dict) else None


def fences(bot: Bot) -> list[tuple[str, int, str, int]]:
    """The fencing rows of the bot's ledger (none for a daemon that never started):
    client order id, epoch, instance, ns."""
    ledgers = list((bot.root / "var").glob("*-sandbox.sqlite"))
    if not ledgers:
        return []
    with sqlite3.connect(f"file:{ledgers[0]}?mode=ro", uri=True) as db:
        return db.execute("SELECT client_order_id, epoch, instance, ts_ns FROM order_fences"
                          ).fetchall()


def test_the_primary_frozen_or_killed_hands_trading_to_the_standby_and_never_two_send(
        tmp_path: Path, redis_server: RedisServer) -> None:
    emu = Emulator("exchange", tmp_path)
    env = lease_env(emu, "exchange", TTL, "long_short")
    a = Bot(tmp_path / "a", redis_server.url, "a", **env).start()
    until(lambda: role(a) == "primary", 10)
    b = Bot(tmp_path / "b", redis_server.url, "b", **env).start()
    try:
        assert role(b) == "standby"
        a.proc.wait_for(r"\| fill ", count=1, timeout=40)
        b.proc.wait_for(r"would execute", count=1, timeout=20)  # the standby decides too

        a.proc.signal(signal.SIGSTOP)
        stopped = time.time()
        took = until(lambda: role(b) == "primary", TTL + 5)
        assert took <= TTL + 1.0 + 0.5  # the status poll's own time on a loaded machine
        b.proc.wait_for(r"lease: primary \(epoch 2\)", timeout=5)
        a.proc.signal(signal.SIGCONT)
        until(lambda: role(a) == "standby", TTL + 2)
        a.proc.wait_for(r"no longer the primary", timeout=5)
        woke = time.time()
        b.proc.wait_for(r"\| fill ", count=2, timeout=40)  # trading goes on at b

        b.proc.signal(signal.SIGKILL)
        b.proc.proc.wait(10)  # type: ignore[union-attr]
        until(lambda: role(a) == "primary", TTL + 5)
        a.proc.wait_for(r"lease: primary \(epoch 3\)", timeout=5)
        time.sleep(3 * 1.0)  # a few bars of trading at a again
        venue = emu.state()
        code, st = a.call("GET", "/status")
        assert code == 200 and isinstance(st, dict)
        assert st["trading"]["state"] == "active", st["trading"]  # no mismatch halted it
        # and a switch of primaries is no error: no trigger demoted it
        assert not st["demoted"], st["demoted_reason"]
    finally:
        a_code = a.stop()
        emu.stop()
    assert a_code == 0
    coids = [o["client_order_id"] for o in venue["orders"]]
    assert len(coids) == len(set(coids)), "a client order id reached the venue twice"
    sent = fences(a) + fences(b)
    by_epoch: dict[int, set[str]] = {}
    for _, epoch, instance, _ in sent:
        by_epoch.setdefault(epoch, set()).add(instance)
    assert all(len(names) == 1 for names in by_epoch.values()), by_epoch
    assert by_epoch.get(1) == {"a"} and by_epoch.get(2) == {"b"}
    # Frozen and woken, a sent nothing until it was the primary again (epoch 3).
    assert not [row for row in fences(a) if row[1] < 3 and row[3] / 1e9 > stopped]
    assert not [row for row in fences(a) if row[1] == 2]
    assert woke > stopped
    positions = {p["symbol"]: p["qty"] for p in st["positions"]}
    theirs = {s: p["qty"] for s, p in venue["positions"].items() if abs(p["qty"]) > 1e-9}
    assert {s: q for s, q in positions.items() if abs(q) > 1e-9} == pytest.approx(theirs)


def held_by(bot: Bot) -> dict[str, float]:
    code, st = bot.call("GET", "/status")
    assert code == 200 and isinstance(st, dict)
    return {p["symbol"]: p["qty"] for p in st["positions"] if abs(p["qty"]) > 1e-9}


def test_a_handover_moves_trading_to_the_named_standby_with_nothing_in_flight(
        tmp_path: Path, redis_server: RedisServer) -> None:
    emu = Emulator("exchange", tmp_path)
    env = lease_env(emu, "exchange", 3, "long_only", QUANTSHIFT_RECONCILE_INTERVAL="2")
    a = Bot(tmp_path / "a", redis_server.url, "a", **env).start()
    until(lambda: role(a) == "primary", 10)
    b = Bot(tmp_path / "b", redis_server.url, "b", **env).start()
    c = Bot(tmp_path / "c", redis_server.url, "c", **env).start()
    try:
        until(lambda: bool(held_by(a)), 40)  # hand over with a position open
        code, answer = b.call("POST", "/handover", {"to": "c"})
        assert code == 409 and "not the primary" in answer["error"], answer  # b is a standby
        code, answer = a.call("POST", "/handover", {"to": "a"})
        assert code == 400, answer
        # An instance that is not there (or whose feed is not fresh) gets nothing.
        code, answer = a.call("POST", "/handover", {"to": "zz"})
        assert code == 409 and "instance zz is not ready" in answer["error"], answer
        assert role(a) == "primary"
        held = held_by(a)
        out = subprocess.run([quantshift_bin(), "handover", "--to", "c"], env=a.env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        handed = time.monotonic()
        assert "handed the lease (epoch 1) over to instance c" in out.stdout, out.stdout
        assert "it is a standby now" in out.stdout
        took = until(lambda: role(c) == "primary", 5)
        assert took <= 1.0, f"the named standby took {took:.2f}s"
        assert role(a) == "standby" and role(b) == "standby"
        c.proc.wait_for(r"lease: took over from instance a \(epoch 1\)", timeout=5)
        c.proc.wait_for(r"\| fill ", count=1, timeout=40)  # trading goes on at c
        time.sleep(2.5)  # a periodic reconciliation at c: positions agree, nothing halts
        code, st = c.call("GET", "/status")
        assert st["trading"]["state"] == "active" and st["lease_epoch"] == 2, st["trading"]
        began = st["lease"]["primary_since_ns"]  # c may send from here on
        assert max(ts for *_, ts in fences(a)) < began  # a's last order came before
        code, ast = a.call("GET", "/status")
        assert ast["role"] == "standby"
        assert c.call("POST", "/halt", {"reason": "the end of the test"})[0] == 200
        time.sleep(0.5)  # the last fills' updates
        mine, venue = held_by(c), emu.state()
    finally:
        codes = [x.stop() for x in (a, b, c)]
        emu.stop()
    assert codes == [0, 0, 0]
    assert held, "the handover moved no position: the test proved nothing"
    coids = [o["client_order_id"] for o in venue["orders"]]
    assert len(coids) == len(set(coids)), "a client order id reached the venue twice"
    by_epoch: dict[int, set[str]] = {}
    for bot, name in ((a, "a"), (b, "b"), (c, "c")):
        for _, epoch, instance, ts in fences(bot):
            assert instance == name
            by_epoch.setdefault(epoch, set()).add(name)
            if name == "a":
                assert ts / 1e9 < time.time() - (time.monotonic() - handed), \
                    "the old primary sent after the handover"
    assert by_epoch.get(1) == {"a"} and by_epoch.get(2) == {"c"}, by_epoch
    # The new primary's book, which began as the old one's, is the venue's.
    theirs = {s: p["qty"] for s, p in venue["positions"].items() if abs(p["qty"]) > 1e-9}
    assert mine == pytest.approx(theirs)


def test_a_partition_from_redis_and_a_restart_of_redis_never_let_two_send_in_one_epoch(
        tmp_path: Path, redis_server: RedisServer) -> None:
    from tests.tcp_proxy import TcpProxy

    proxy = TcpProxy(redis_server.port)
    emu = Emulator("exchange", tmp_path)
    env = lease_env(emu, "exchange", TTL, "long_only", QUANTSHIFT_RISK_MAX_TRADES_PER_DAY="0")
    a = Bot(tmp_path / "a", proxy.url(), "a", **env).start()  # its Redis is behind the proxy
    until(lambda: role(a) == "primary", 10)
    b = Bot(tmp_path / "b", redis_server.url, "b", **env).start()
    try:
        a.proc.wait_for(r"\| fill ", count=1, timeout=40)
        proxy.pause()  # a and Redis no longer hear each other; nothing is closed
        cut = time.time()
        until(lambda: role(b) == "primary", TTL + 5)
        until(lambda: role(a) == "standby", TTL + 2)  # it stopped at ttl - margin
        b.proc.wait_for(r"\| fill .* coid=qs-", count=1, timeout=40)  # b trades meanwhile
        a.proc.wait_for(r"shared store .* unreachable", timeout=10)  # a noticed the cut
        proxy.resume()
        a.proc.wait_for(r"shared store .* is back", timeout=15)
        assert role(a) == "standby"
        # Redis itself goes (SIGKILL) and comes back with its append-only file.
        redis_server.kill()
        time.sleep(TTL + 0.5)  # every lease lapses meanwhile
        redis_server.start()
        until(lambda: "primary" in (role(a), role(b)), 15)
        new = a if role(a) == "primary" else b
        fills = len(re.findall(r"\| fill .* coid=qs-", new.proc.log()))
        new.proc.wait_for(r"\| fill .* coid=qs-", count=fills + 1, timeout=40)
        assert new.call("POST", "/halt", {"reason": "the end of the test"})[0] == 200
        time.sleep(0.5)
        mine, venue = held_by(new), emu.state()
    finally:
        codes = [x.stop() for x in (a, b)]
        emu.stop()
        proxy.close()
    assert codes == [0, 0]
    coids = [o["client_order_id"] for o in venue["orders"]]
    assert len(coids) == len(set(coids)), "a client order id reached the venue twice"
    by_epoch: dict[int, set[str]] = {}
    for bot in (a, b):
        for _, epoch, instance, _ in fences(bot):
            by_epoch.setdefault(epoch, set()).add(instance)
    assert all(len(names) == 1 for names in by_epoch.values()), by_epoch
    assert max(by_epoch) >= 3  # a, then b in the partition, then one after Redis's restart
    # Partitioned, a sent nothing under its epoch after the cut (beyond ttl - margin).
    assert not [r for r in fences(a) if r[1] == 1 and r[3] / 1e9 > cut + TTL]
    theirs = {s: p["qty"] for s, p in venue["positions"].items() if abs(p["qty"]) > 1e-9}
    assert mine == pytest.approx(theirs)
