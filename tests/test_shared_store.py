"""The account's shared state (state/shared.py) against a real redis-server: the kill
switch across instances, restarts and a Redis that lost its data; the caps counted
atomically by processes racing; isolation of instances that reach no broker; Redis away
(counts in memory, the grace, counts added back); bad settings."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import RedisError

from quantshift.control import ControlPlane, Flatten, Halt, Reduce, Resume
from quantshift.domain import OrderIntent, Side, TradingState
from quantshift.errors import ConfigError
from quantshift.state.journal import Journal
from quantshift.state.shared import NS_PER_DAY, AccountStore, Caps
from tests.redis_server import RedisServer, free_port

DAY = 20_500  # a UTC day number; each test uses its own keys' day where it counts
NO_CAPS = Caps()


class Instance:
    """One instance's control plane and link, on its own journal."""

    def __init__(self, root: Path, url: str, name: str, *, sends: bool = True,
                 live: bool = False, grace: float = 5.0, caps: Caps = NO_CAPS) -> None:
        self.journal = Journal(root / f"{name}.sqlite", bot="equity", executor="sandbox")
        self.control = ControlPlane(self.journal)
        self.store = AccountStore(url, "acct", name, caps, sends=sends, live=live,
                                  grace=grace, journal=self.journal, timeout=0.5)
        self.control.attach_account(self.store)
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Instance:
        self.control.restore()
        await self.store.open(self.control.adopt)
        self.task = asyncio.create_task(self.store.run())
        return self

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.store.close()
        self.journal.flush()
        self.journal.close()


async def wait_for(cond: Any, timeout: float = 5.0) -> float:
    started = time.monotonic()
    while not cond():
        assert time.monotonic() - started < timeout, "condition not met in time"
        await asyncio.sleep(0.005)
    return time.monotonic() - started


def entry(coid: str, day: int = DAY, qty: float = 1.0, price: float = 100.0,
          reduce_only: bool = False) -> OrderIntent:
    return OrderIntent(coid, "s", "AAA", Side.BUY, qty, day * NS_PER_DAY + 3_600_000_000_000,
                       price, reduce_only)


@pytest.fixture
async def pair(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[tuple[Instance, ...]]:
    a = await Instance(tmp_path, redis_server.url, "a").start()
    b = await Instance(tmp_path, redis_server.url, "b").start()
    yield a, b
    await a.stop()
    await b.stop()


async def test_a_halt_on_one_instance_holds_on_the_other_and_a_resume_lifts_both(
        pair: tuple[Instance, Instance]) -> None:
    a, b = pair
    out = await a.control.command(Halt(reason="maintenance", by="api"))
    assert out["account_shared"] is True
    took = await wait_for(lambda: b.control.state is TradingState.HALTED, 1.0)
    assert took < 1.0
    assert b.control.reason == "maintenance"
    assert b.control.refusal(entry("x")) == "halted: maintenance"
    await b.control.command(Reduce(reason="calmer", by="api"))
    await wait_for(lambda: a.control.state is TradingState.REDUCING)
    await b.control.command(Resume(by="api"))
    await wait_for(lambda: a.control.state is TradingState.ACTIVE)
    assert b.control.state is TradingState.ACTIVE


async def test_a_standby_rule_demotes_itself_alone_but_an_operator_halt_on_it_reaches_all(
        tmp_path: Path, redis_server: RedisServer) -> None:
    from quantshift.control import Demote, Source

    primary = await Instance(tmp_path, redis_server.url, "primary").start()
    shadow = await Instance(tmp_path, redis_server.url, "shadow", sends=False).start()
    try:
        shadow.control.apply(Demote(reason="paper drawdown", by="guard", source=Source.RULE))
        assert shadow.control.demoted
        await asyncio.sleep(0.3)
        assert primary.control.state is TradingState.ACTIVE and not primary.control.demoted
        await shadow.control.command(Halt(reason="stop everything", by="api"))
        await wait_for(lambda: primary.control.state is TradingState.HALTED, 1.0)
    finally:
        await primary.stop()
        await shadow.stop()


async def test_an_instance_that_starts_later_starts_halted(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a").start()
    await a.control.command(Halt(reason="kill switch", by="api"))
    late = Instance(tmp_path, redis_server.url, "late")
    late.control.restore()
    await late.store.open(late.control.adopt)  # before any order could go
    try:
        assert late.control.state is TradingState.HALTED
        assert late.control.reason == "kill switch"
    finally:
        await late.stop()
        await a.stop()


async def test_the_halt_survives_a_redis_restart_and_a_redis_that_lost_everything(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a").start()
    b = await Instance(tmp_path, redis_server.url, "b").start()
    try:
        await a.control.command(Halt(reason="hold", by="api"))
        await wait_for(lambda: b.control.state is TradingState.HALTED)
        redis_server.restart()  # the append-only file keeps the key
        await wait_for(lambda: a.store.up and b.store.up, 10)
        fresh = Instance(tmp_path, redis_server.url, "fresh")
        fresh.control.restore()
        await fresh.store.open(fresh.control.adopt)
        assert fresh.control.state is TradingState.HALTED
        await fresh.stop()
        # Now a Redis that comes back empty: the instances put the halt back.
        redis_server.kill()
        redis_server.wipe()
        redis_server.start()
        await wait_for(lambda: a.store.up and b.store.up, 10)
        await asyncio.sleep(0.2)
        fresh = Instance(tmp_path, redis_server.url, "fresh2")
        fresh.control.restore()
        await fresh.store.open(fresh.control.adopt)
        assert fresh.control.state is TradingState.HALTED
        # ...and a resume after that reaches everyone (the numbers went on from there).
        await fresh.control.command(Resume(by="api"))
        await wait_for(lambda: a.control.state is TradingState.ACTIVE and
                       b.control.state is TradingState.ACTIVE)
        await fresh.stop()
    finally:
        await a.stop()
        await b.stop()


async def test_a_halt_made_while_redis_was_away_reaches_the_account_on_reconnect(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a").start()
    b = await Instance(tmp_path, redis_server.url, "b").start()
    try:
        redis_server.kill()
        await wait_for(lambda: not a.store.up, 5)
        out = await a.control.command(Halt(reason="while away", by="api"))
        assert out["account_shared"] is False  # in force here, pending for the account
        assert a.control.state is TradingState.HALTED
        assert b.control.state is TradingState.ACTIVE
        redis_server.start()
        await wait_for(lambda: b.control.state is TradingState.HALTED, 10)
        assert b.control.reason == "while away"
    finally:
        await a.stop()
        await b.stop()


# -- the caps -----------------------------------------------------------------------------
def _racer(url: str, name: str, day: int, tries: int, out: Any) -> None:
    async def main() -> int:
        store = AccountStore(url, "race", name, Caps(trades_per_day=5), sends=True,
                             live=True, grace=5.0)
        await store.open(lambda doc, live: None)
        got = 0
        for i in range(tries):
            if await store.reserve(entry(f"{name}-{i}", day), 100.0) is None:
                got += 1
        await store.close()
        return got

    out.put(asyncio.run(main()))


def test_two_processes_racing_for_five_trades_a_day_never_take_six(
        redis_server: RedisServer) -> None:
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(12):
        day = DAY + 100 + round_
        out = ctx.Queue()
        procs = [ctx.Process(target=_racer, args=(redis_server.url, f"p{k}", day, 8, out))
                 for k in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        got = [out.get(timeout=5) for _ in procs]
        assert sum(got) == 5, f"round {round_}: {got}"


async def test_caps_on_hour_loss_and_exposure_and_an_entry_counted_once(
        tmp_path: Path, redis_server: RedisServer) -> None:
    caps = Caps(trades_per_day=0, trades_per_hour=4, daily_loss=500.0, exposure=1_000.0)
    a = await Instance(tmp_path, redis_server.url, "a", caps=caps).start()
    b = await Instance(tmp_path, redis_server.url, "b", caps=caps).start()
    try:
        assert await a.control.clearance(entry("e1", qty=4)) is None
        assert await a.control.clearance(entry("e1", qty=4)) is None  # asked again: once
        assert await b.control.clearance(entry("e2", qty=5)) is None
        why = await b.control.clearance(entry("e3", qty=2))
        assert why is not None and why.startswith("account exposure: 900.00 + 200.00 > 1000")
        # An exit passes whatever the caps say, and counts as an order, as the gate counts.
        assert await b.control.clearance(entry("x1", qty=1, reduce_only=True)) is None
        counts = await a.store.counts(DAY)
        assert counts["trades"] == 3 and counts["coids"] == ["e1", "e2", "x1"]
        # The instances' reports replace what the reservations added.
        a.store.report(DAY, -300.0, 0.0)
        b.store.report(DAY, -250.0, 0.0)
        await wait_for(lambda: a.store._report is None and b.store._report is None)
        why = await a.control.clearance(entry("e4", qty=1))
        assert why is not None and why.startswith("account daily loss: day P&L -550.00")
        b.store.report(DAY, 100.0, 0.0)
        await wait_for(lambda: b.store._report is None)
        assert await a.control.clearance(entry("e5", qty=1)) is None
        why = await b.control.clearance(entry("e6", qty=1))
        assert why == "account trades per hour: 4 >= 4"
        assert await b.control.clearance(entry("x2", reduce_only=True)) is None
    finally:
        await a.stop()
        await b.stop()


async def test_an_instance_whose_orders_reach_no_broker_leaves_the_account_untouched(
        tmp_path: Path, redis_server: RedisServer) -> None:
    shadow = await Instance(tmp_path, redis_server.url, "shadow", sends=False,
                            caps=Caps(trades_per_day=1)).start()
    try:
        for i in range(5):
            assert await shadow.control.clearance(entry(f"s{i}")) is None
        shadow.store.report(DAY, -10_000.0, 50_000.0)
        await asyncio.sleep(0.7)
        assert await shadow.store.counts(DAY) == {"trades": 0, "coids": [], "pnl": {},
                                                  "exposure": {}}
    finally:
        await shadow.stop()


async def test_redis_away_counts_in_memory_stops_entries_after_the_grace_and_adds_back(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a", live=True, grace=0.6,
                       caps=Caps(trades_per_day=3)).start()
    try:
        assert await a.control.clearance(entry("before")) is None
        redis_server.kill()
        # Within the grace: counted in memory, against the last count read (1 of 3).
        assert await a.control.clearance(entry("away1")) is None
        assert await a.control.clearance(entry("away2")) is None
        why = await a.control.clearance(entry("away3"))
        assert why == "account trades per day: 3 >= 3 (in memory)"
        await wait_for(lambda: a.control.refusal(entry("later")) is not None, 3)
        assert "shared store unreachable" in (a.control.refusal(entry("later")) or "")
        assert a.control.refusal(entry("exit", reduce_only=True)) is None  # exits pass
        redis_server.start()
        await wait_for(lambda: a.store.up, 10)
        counts = await a.store.counts(DAY)
        assert counts["trades"] == 3 and counts["coids"] == ["away1", "away2", "before"]
        assert a.control.refusal(entry("later")) is None
    finally:
        await a.stop()


async def test_outside_the_live_phases_trading_goes_on_without_redis(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a", live=False, grace=0.1).start()
    try:
        redis_server.kill()
        await asyncio.sleep(0.4)
        assert a.control.refusal(entry("e")) is None
        assert await a.control.clearance(entry("e")) is None
    finally:
        await a.stop()


# -- bad settings and an unreachable Redis ----------------------------------------------
async def test_a_wrong_password_or_a_server_that_is_not_redis_is_a_bad_setting(
        tmp_path: Path) -> None:
    from aiohttp import web

    server = RedisServer(tmp_path / "pw", password="right-password-123").start()
    try:
        wrong = AccountStore(f"redis://:wrong-password-9@127.0.0.1:{server.port}/0", "a",
                             "i", Caps(), sends=True, live=False, grace=5)
        with pytest.raises(ConfigError) as err:
            await wrong.open(lambda doc, live: None)
        assert err.value.setting == "QUANTSHIFT_REDIS_URL"
        assert "refused the credentials" in err.value.message
        assert "wrong-password-9" not in str(err.value)
        await wrong.close()
    finally:
        server.stop()
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        http = AccountStore(f"redis://127.0.0.1:{port}/0", "a", "i", Caps(), sends=True,
                            live=False, grace=5)
        with pytest.raises(ConfigError) as err:
            await http.open(lambda doc, live: None)
        assert "does not speak Redis" in err.value.message
        await http.close()
    finally:
        await runner.cleanup()


async def test_an_unreachable_redis_at_start_is_retried_until_it_answers(
        tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "late")
    a = Instance(tmp_path, server.url, "a", live=True)
    a.control.restore()
    await a.store.open(a.control.adopt)
    task = asyncio.create_task(a.store.run())
    try:
        assert not a.store.up
        # Never answered yet, in a live phase: no entry goes out, not even in the grace.
        why = a.control.refusal(entry("e"))
        assert why is not None and "shared store unreachable" in why
        await asyncio.sleep(0.5)
        server.start()
        await wait_for(lambda: a.store.up, 10)
        assert a.control.refusal(entry("e")) is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await a.stop()
        server.stop()


def test_compare_streams_counts_only_the_bars_both_saw() -> None:
    from quantshift.shadow.against import compare_streams

    def row(ts: int, target: str = "1", outcome: str = "approved") -> dict[str, str]:
        return {"ts": str(ts), "symbol": "AAA", "strategy": "s", "version": "v1",
                "target": target, "outcome": outcome, "reason": "r", "orders": ""}

    mine = [row(t) for t in (1, 2, 3, 4, 5)]
    theirs = [row(t) for t in (3, 4, 6, 7)] + [row(5, target="-1")]
    d = compare_streams("b", mine, "a", theirs)
    assert d.window_ns == (3, 5)  # 1, 2 before the other started; 6, 7 after this stopped
    assert (d.compared, d.same, len(d.differ)) == (3, 2, 1)
    assert d.ratio == 1 / 3 and d.why == {"target differ": 1}
    assert compare_streams("b", [], "a", theirs).ratio == 0.0
    only = compare_streams("b", [row(3), row(5)], "a", [row(3), row(4), row(5)])
    assert (only.only_theirs, only.only_mine) == (1, 0)
    assert only.why == {"decided on one side only": 1}


def test_compare_puts_a_shadows_paper_pnl_beside_the_primarys_real_fills() -> None:
    from quantshift.shadow.against import compare_streams, money

    def row(ts: int, price: float, orders: str = "") -> dict[str, str]:
        return {"ts": str(ts), "symbol": "AAA", "strategy": "s", "version": "v1",
                "target": "1", "outcome": "approved", "reason": "r", "orders": orders,
                "price": repr(price)}

    # Both buy 2 at 100 on bar 1; the shadow sells at 110 on bar 2, the primary holds;
    # bar 3 closes at 105. Bar 0 is before the shadow started: outside the window.
    primary = [row(0, 90.0, "buy 5"), row(1, 100.0, "buy 2"), row(2, 110.0), row(3, 105.0)]
    shadow = [row(1, 100.0, "buy 2"), row(2, 110.0, "sell 2"), row(3, 105.0)]
    fills = [{"ts": "0", "symbol": "AAA", "strategy": "s", "side": "buy", "qty": "5",
              "price": "90", "commission": "0"},
             {"ts": "1", "symbol": "AAA", "strategy": "s", "side": "buy", "qty": "2",
              "price": "100.1", "commission": "0.5"}]
    d = compare_streams("shadow", shadow, "primary", primary)
    m = money(d, shadow, primary, [], fills)
    assert m["shadow"] == {"paper_pnl": 20.0, "paper_orders": 2, "fills": 0,
                           "fills_pnl": None, "slippage_bps": None}
    assert m["primary"]["paper_pnl"] == 10.0 and m["primary"]["paper_orders"] == 1
    # 2 bought at 100.1 plus 0.5 commission, marked at 105: 9.30; 10 bps worse than 100
    assert m["primary"]["fills"] == 1 and m["primary"]["fills_pnl"] == 9.3
    assert m["primary"]["slippage_bps"] == 10.0
    assert d.as_dict()["money"] == m


async def test_decisions_stream_and_the_share_that_differs_from_another_instance(
        pair: tuple[Instance, Instance]) -> None:
    from quantshift.ops import periodic

    a, b = pair
    for ts in range(10):
        a.store.tap((ts, "AAA", "s", "v1", 1, "approved", "cross", "buy 1", 100.0))
        b.store.tap((ts, "AAA", "s", "v1", 1 if ts < 8 else -1, "approved", "cross", "buy 1",
                     100.0))
    await wait_for(lambda: not a.store._decisions and not b.store._decisions)
    rows = await a.store.decisions("a")
    assert [r["ts"] for r in rows] == [str(t) for t in range(10)]
    assert rows[0] == {"ts": "0", "symbol": "AAA", "strategy": "s", "version": "v1",
                       "target": "1", "outcome": "approved", "reason": "cross",
                       "orders": "buy 1", "price": "100.0"}
    await periodic.compare_against(a.store, "b")
    assert a.store.divergence == {"b": 0.2}


# -- what an adversarial review found (each failed before its fix) -------------------------
def flattens(inst: Instance) -> list[str]:
    """Record the flattens the control plane does (it has no engine here)."""
    done: list[str] = []

    def flatten(reason: str) -> int:
        done.append(reason)
        return 0

    inst.control._flatten = flatten  # type: ignore[method-assign]
    return done


async def test_a_halt_then_a_flatten_holds_for_an_instance_that_was_down_and_a_new_one(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a").start()
    b = await Instance(tmp_path, redis_server.url, "b").start()
    await b.stop()
    await a.control.command(Halt(reason="kill switch", by="api"))
    await a.control.command(Flatten(reason="out", by="api"))
    b = Instance(tmp_path, redis_server.url, "b")
    b_flat = flattens(b)
    await b.start()
    c = await Instance(tmp_path, redis_server.url, "c").start()
    try:
        assert b.control.state is TradingState.HALTED and b.control.reason == "kill switch"
        assert c.control.state is TradingState.HALTED
        assert len(b_flat) == 1  # missed a moment ago by an instance the account knew
    finally:
        for inst in (a, b, c):
            await inst.stop()


async def test_a_halt_and_a_flatten_made_while_redis_was_away_both_reach_the_account(
        pair: tuple[Instance, Instance], redis_server: RedisServer) -> None:
    a, b = pair
    b_flat = flattens(b)
    redis_server.kill()
    await a.control.command(Halt(reason="away", by="api"))
    await a.control.command(Flatten(by="api"))
    redis_server.start()
    await wait_for(lambda: b.control.state is TradingState.HALTED, 10)
    await wait_for(lambda: len(b_flat) == 1, 5)


async def test_two_instances_changing_the_state_at_once_agree_with_the_account(
        pair: tuple[Instance, Instance], redis_server: RedisServer) -> None:
    import orjson
    import redis as sync_redis

    a, b = pair
    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        for _ in range(15):
            await asyncio.gather(a.control.command(Resume(by="a")),
                                 b.control.command(Halt(reason="stop", by="b")))
            await asyncio.sleep(0.2)
            want = orjson.loads(client.get("quantshift:acct:control"))["state"]
            assert a.control.state_name() == b.control.state_name() == want
            await a.control.command(Resume(by="reset"))
            await wait_for(lambda: b.control.state is TradingState.ACTIVE)
    finally:
        client.close()


async def test_an_instance_on_a_fresh_state_dir_takes_its_own_earlier_halt(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a").start()
    await a.control.command(Halt(reason="mine", by="api"))
    await a.stop()
    again = await Instance(tmp_path / "fresh", redis_server.url, "a").start()
    try:
        assert again.control.state is TradingState.HALTED and again.control.reason == "mine"
    finally:
        await again.stop()


@pytest.mark.parametrize("garbage", [b"not json{", b'{"cmd":"halt"}', b"[1,2]",
                                     b'{"seq":"x","state":"halted"}'])
async def test_garbage_in_the_account_key_is_logged_never_a_crash(
        tmp_path: Path, redis_server: RedisServer, garbage: bytes) -> None:
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_server.url)
    client.set("quantshift:acct:control", garbage)
    a = await Instance(tmp_path, redis_server.url, "a").start()  # no exception
    b = await Instance(tmp_path, redis_server.url, "b").start()
    try:
        assert a.store.up and a.control.state is TradingState.ACTIVE
        client.publish("quantshift:acct:control", garbage)
        await a.control.command(Halt(reason="after garbage", by="api"))
        await wait_for(lambda: b.control.state is TradingState.HALTED)
    finally:
        client.close()
        await a.stop()
        await b.stop()


async def test_one_failed_call_is_followed_by_a_resync_not_a_store_down_for_good(
        tmp_path: Path, redis_server: RedisServer) -> None:
    import redis as sync_redis

    a = await Instance(tmp_path, redis_server.url, "a", live=True, grace=1.0,
                       caps=Caps(trades_per_day=100)).start()
    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        client.execute_command("CLIENT", "PAUSE", "1200", "WRITE")
        assert await a.control.clearance(entry("during")) is None  # in memory, in the grace
        assert not a.store.up
        await wait_for(lambda: a.store.up, 10)
        counts = await a.store.counts(DAY)
        assert "during" in counts["coids"]  # added back
        assert a.control.refusal(entry("next")) is None
    finally:
        client.close()
        await a.stop()


async def test_a_redis_that_lost_its_data_gets_the_counts_back_and_no_flatten_again(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a", caps=Caps(trades_per_day=3)).start()
    b = await Instance(tmp_path, redis_server.url, "b", caps=Caps(trades_per_day=3)).start()
    b_flat = flattens(b)
    try:
        await a.control.command(Flatten(by="api"))
        await wait_for(lambda: len(b_flat) == 1)
        for i in range(2):
            assert await a.control.clearance(entry(f"a{i}")) is None
        assert await b.control.clearance(entry("b0")) is None
        redis_server.kill()
        redis_server.wipe()
        redis_server.start()
        deadline = time.monotonic() + 10
        while True:  # each puts its own back once it has noticed the restart
            assert time.monotonic() < deadline, "the counts did not come back"
            with contextlib.suppress(RedisError):  # a pooled connection of the old server
                if (await a.store.counts(DAY))["trades"] >= 3:
                    break
            await asyncio.sleep(0.05)
        why = await a.control.clearance(entry("a9"))
        assert why is not None and why.startswith("account trades per day: 3 >= 3")
        assert b_flat == ["flattened by the account"]  # not flattened again
    finally:
        await a.stop()
        await b.stop()


async def test_orders_sent_while_redis_was_away_are_counted_after_a_restart_meanwhile(
        tmp_path: Path, redis_server: RedisServer) -> None:
    a = await Instance(tmp_path, redis_server.url, "a", caps=Caps(trades_per_day=10)).start()
    redis_server.kill()
    assert await a.control.clearance(entry("away1")) is None
    assert await a.control.clearance(entry("away2")) is None
    await a.stop()
    redis_server.start()
    again = await Instance(tmp_path, redis_server.url, "a2").start()
    try:
        assert again.journal is not None
    finally:
        await again.stop()
    back = Instance(tmp_path, redis_server.url, "a")  # the same journal as before
    await back.start()
    try:
        await wait_for(lambda: back.store.up, 10)
        assert {"away1", "away2"} <= set((await back.store.counts(DAY))["coids"])
    finally:
        await back.stop()


async def test_a_halt_with_flatten_during_a_connection_blip_still_flattens(
        pair: tuple[Instance, Instance], redis_server: RedisServer) -> None:
    import redis as sync_redis

    a, b = pair
    b_flat = flattens(b)
    client = sync_redis.Redis.from_url(redis_server.url)
    try:
        client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await a.control.command(Halt(reason="get out", flatten=True, by="api"))
        await wait_for(lambda: b.control.state is TradingState.HALTED, 5)
        await wait_for(lambda: len(b_flat) == 1, 5)
    finally:
        client.close()


async def test_the_listener_ends_when_cancelled_at_any_point_of_its_start(
        tmp_path: Path, redis_server: RedisServer) -> None:
    # A daemon whose feed ends at once cancels the listener while it subscribes. With a
    # socket timeout redis-py bounded its writes with Python 3.11's wait_for, which drops
    # such a cancel: the shutdown then waited for its bound and exited 1.
    lost = []
    for turns in range(14):
        a = Instance(tmp_path / f"n{turns}", redis_server.url, f"n{turns}")
        a.control.restore()
        await a.store.open(a.control.adopt)
        task = asyncio.create_task(a.store.run())
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2.0)
        if not done:  # left to the loop's end; awaiting it would wait for ever
            lost.append(turns)
            a.journal.close()
            continue
        a.task = task
        await a.stop()
    assert lost == []
