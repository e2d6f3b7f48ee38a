"""The HTTP operator surface, in-process against a real Daemon on the sim feed: every
route, readiness following the feed, the control API's guards, a fuzz that never gets a
500, and control actions that persist across restarts and land in the journal."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from loguru import logger

from quantshift.control import Demote, Resume
from quantshift.daemon import Daemon
from quantshift.errors import ConfigError
from quantshift.ops import periodic
from quantshift.settings import Settings
from tests.conftest import latest_snapshot, read_db

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONTROL = ("halt", "resume", "flatten", "reduce", "promote", "rollback")
FAST_STRATEGY = [{"name": "ma_cross", "params": {"fast": 2, "slow": 5, "mode": "long_short"}}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(root: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        state_dir=root / "var", symbols=["AAA", "BBB"], sim_interval=0.02, warmup_bars=0,
        strategies=FAST_STRATEGY, http_port=free_port(), api_token=TOKEN,
        risk_max_trades_per_day=0, snapshot_interval=0.5)
    return Settings(**{**base, **kw})



@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    d = Daemon(settings)
    d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
    await d.startup()
    assert d.http is not None
    try:
        async with aiohttp.ClientSession(d.http.url) as client:
            yield d, client
    finally:
        d.handle_exit(signal.SIGTERM)
        await d.shutdown()


async def wait_until(cond: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def call(client: aiohttp.ClientSession, method: str, path: str,
               **kw: Any) -> tuple[int, dict[str, Any]]:
    async with client.request(method, path, **kw) as r:
        return r.status, orjson.loads(await r.read())


# -- reads ---------------------------------------------------------------------------
async def test_healthz_answers_with_the_loop_lag_and_503_when_the_heartbeat_stalls(
        clean: Path) -> None:
    async with running(make_settings(clean)) as (d, client):
        code, body = await call(client, "GET", "/healthz")
        assert code == 200 and body["healthy"] is True
        assert body["loop_lag_seconds"] >= 0 and body["heartbeat_age_seconds"] < 5
        beat = next(t for t, n in d._tasks.items() if n == "heartbeat")
        beat.cancel()  # the heartbeat stops: as if the loop had been stuck for long
        d.heartbeat.last -= 60
        code, body = await call(client, "GET", "/healthz")
        assert code == 503 and body["healthy"] is False
        assert body["heartbeat_age_seconds"] > body["deadline_seconds"]


async def test_readyz_follows_the_feed_going_stale_and_coming_back(clean: Path) -> None:
    # One round of bars at start, the next an hour later: silence is made by the clock.
    settings = make_settings(clean, sim_interval=3600, stale_bars=3)
    async with running(settings) as (d, client):
        await wait_until(lambda: d.engine.bars >= 2)  # type: ignore[union-attr]
        code, body = await call(client, "GET", "/readyz")
        assert (code, body) == (200, {"ready": True, "reasons": []})
        feed, engine = d.feed, d.engine
        assert feed is not None and engine is not None
        feed.last_bar_at -= 4 * 3600  # four bar lengths without a bar
        await periodic.watch_feed(d.settings, feed, engine.control, d.started_at)  # its own check
        code, body = await call(client, "GET", "/readyz")
        assert code == 503 and body["ready"] is False
        assert len(body["reasons"]) == 1 and "feed sim is stale" in body["reasons"][0]
        code, status = await call(client, "GET", "/status")
        assert status["ready"] is False and status["feed"]["stale"]
        engine.on_bar(feed.next_bar("AAA", time.time_ns()))  # a bar comes
        code, body = await call(client, "GET", "/readyz")
        assert (code, body) == (200, {"ready": True, "reasons": []})


async def test_readyz_reports_demotion_and_shutdown(clean: Path) -> None:
    async with running(make_settings(clean)) as (d, client):
        await wait_until(lambda: d.engine.bars >= 2)  # type: ignore[union-attr]
        control = d.control
        assert control is not None
        control.apply(Demote(reason="canary lost 3% in a day", by="test"))
        code, body = await call(client, "GET", "/readyz")
        assert code == 503 and body["reasons"] == ["demoted: canary lost 3% in a day"]
        control.apply(Resume(by="test"))
        d.handle_exit(signal.SIGTERM)  # what the signal handler does: flags only
        code, body = await call(client, "GET", "/readyz")
        assert code == 503 and body["reasons"] == ["shutting down"]
        code, _ = await call(client, "POST", "/halt", headers=AUTH)
        assert code == 503  # no control action while stopping
        d.should_exit = False
        control.accepting(True)


async def test_status_has_the_whole_picture(clean: Path) -> None:
    async with running(make_settings(clean)) as (d, client):
        engine = d.engine
        assert engine is not None
        await wait_until(lambda: engine.portfolio.open_symbols() > 0)
        logger.error("venue said no to key {}", TOKEN)  # a secret must not come back out
        code, st_ = await call(client, "GET", "/status")
        assert code == 200
        assert st_["bot"] == "equity" and st_["phase"] == "dry_run"
        assert st_["source"] == "daemon" and st_["version"] and st_["uptime_seconds"] > 0
        assert st_["executor"]["kind"] == "paper" and "paper" in st_["executor"]["description"]
        assert st_["trading"] == {"state": "active", "reason": ""}
        assert st_["feed"]["name"] == "sim" and st_["feed"]["staleness_seconds"] is not None
        assert st_["feed"]["running"] is True
        pf = st_["portfolio"]
        assert {"cash", "equity", "day_pnl", "drawdown", "realized_pnl"} <= set(pf)
        net: dict[str, float] = {}
        for p in st_["positions"]:
            net[p["symbol"]] = net.get(p["symbol"], 0.0) + p["qty"] * p["mark"]
        assert pf["equity"] == pytest.approx(pf["cash"] + sum(net.values()))
        assert st_["positions"], "the long/short strategy holds something after a cross"
        pos = st_["positions"][0]
        assert {"symbol", "qty", "avg_price", "mark", "unrealized"} <= set(pos)
        assert pos["unrealized"] == pytest.approx(pos["qty"] * (pos["mark"] - pos["avg_price"]))
        assert st_["orders"] == {"open": 0, "in_flight": 0, "protective_legs": 0}  # paper
        assert set(st_["risk"]) == set(engine.gate.status())
        assert st_["strategies"] == [{"strategy": "ma_cross", "name": "ma_cross",
                                      "version": "v1", "status": "active", "canary": None,
                                      "canary_percent": 0, "previous_active": None,
                                      "raised": [], "versions": {"v1": "active"}}]
        assert st_["version_differences"] == [] and st_["versions_from"] == "journal"
        err = st_["last_error"]
        assert err["message"] == "venue said no to key ***"
        assert err["component"] == "tests.test_http_api" and err["time"].endswith("+00:00")
        assert TOKEN not in orjson.dumps(st_).decode()


async def test_metrics_and_unknown_routes(clean: Path) -> None:
    async with running(make_settings(clean)) as (d, client):
        await wait_until(lambda: d.engine.bars >= 2)  # type: ignore[union-attr]
        async with client.get("/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        assert "quantshift_equity" in text and 'quantshift_trading_state{state="active"} 1.0' \
            in text
        code, body = await call(client, "GET", "/nowhere")
        assert code == 404 and "error" in body
        code, body = await call(client, "GET", "/halt")
        assert code == 405 and "error" in body


# -- control: guards -------------------------------------------------------------------
async def test_control_is_off_without_a_configured_token(clean: Path) -> None:
    async with running(make_settings(clean, api_token=None)) as (d, client):
        for action in CONTROL:
            code, body = await call(client, "POST", f"/{action}", headers=AUTH)
            assert code == 403 and "QUANTSHIFT_API_TOKEN" in body["error"]
        assert d.engine.gate.state == "active"  # type: ignore[union-attr]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}",
                                    TOKEN, f"Bearer {TOKEN}x", "Bearer "])
async def test_control_without_the_right_token_is_401(clean: Path, header: str | None) -> None:
    async with running(make_settings(clean)) as (d, client):
        headers = {"Authorization": header} if header is not None else {}
        for action in CONTROL:
            async with client.post(f"/{action}", headers=headers, json={}) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
                assert TOKEN not in await r.text()
        assert d.engine.gate.state == "active"  # type: ignore[union-attr]
        d.journal.flush()  # type: ignore[union-attr]
        assert d.journal.count("control") == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(("path", "body", "words"), [
    ("/halt", b"{not json", "not valid JSON"),
    ("/halt", b"[1, 2]", "JSON object"),
    ("/halt", b'"halt"', "JSON object"),
    ("/halt", b'{"flatten": "yes"}', "flatten"),
    ("/halt", b'{"reason": 5}', "reason"),
    ("/halt", b'{"reason": "two\\nlines"}', "reason"),
    ("/halt", b'{"reason": "' + b"x" * 300 + b'"}', "reason"),
    ("/halt", b'{"flatten": true, "force": true}', "unknown field 'force'"),
    ("/resume", b'{"reason": "x"}', "unknown field 'reason'"),
    ("/promote", b'{"strategy": "ma_cross"}', "version"),
    ("/promote", b'{"strategy": "ma_cross", "version": "v2", "force": 1}', "force"),
    ("/rollback", b"{}", "strategy"),
    ("/flatten", b"\xff\xfe", "not valid JSON"),
    ("/handover", b'{"to": "a b"}', "to"),
    ("/handover", b'{"to": 3}', "to"),
])
async def test_malformed_control_bodies_are_400(clean: Path, path: str, body: bytes,
                                                words: str) -> None:
    async with running(make_settings(clean)) as (d, client):
        code, answer = await call(client, "POST", path, data=body, headers=AUTH)
        assert code == 400, answer
        assert words in answer["error"]
        assert d.engine.gate.state == "active"  # type: ignore[union-attr]


async def test_promote_and_rollback_of_a_one_version_strategy_answer_409(clean: Path) -> None:
    async with running(make_settings(clean)) as (_, client):
        code, body = await call(client, "POST", "/promote", headers=AUTH,
                                json={"strategy": "ma_cross", "version": "v2"})
        assert code == 409 and "has one version: there is nothing to promote" in body["error"]
        code, body = await call(client, "POST", "/rollback", headers=AUTH,
                                json={"strategy": "ma_cross"})
        assert code == 409 and "has one version: there is nothing to rollback" in body["error"]
        code, body = await call(client, "POST", "/rollback", headers=AUTH,
                                json={"strategy": "nope"})
        assert code == 404 and "ma_cross" in body["error"]


async def test_a_handover_without_a_lease_is_409_and_changes_nothing(clean: Path) -> None:
    async with running(make_settings(clean)) as (d, client):
        code, body = await call(client, "POST", "/handover", headers=AUTH, json={"to": "b"})
        assert code == 409 and "holds no lease to hand over" in body["error"], body
        assert d.engine.gate.state == "active"  # type: ignore[union-attr]
        assert d.control.leading()  # type: ignore[union-attr]


async def test_a_request_for_another_bot_is_refused(clean: Path) -> None:
    async with running(make_settings(clean)) as (d, client):
        code, body = await call(client, "POST", "/halt", headers=AUTH, json={"bot": "crypto"})
        assert code == 409 and "crypto" in body["error"]
        assert d.engine.gate.state == "active"  # type: ignore[union-attr]


async def test_a_port_in_use_stops_the_start_naming_the_setting(clean: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = Daemon(make_settings(clean, http_port=port))
        d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
        with pytest.raises(ConfigError) as info:
            await d.startup()
        await d._abort_startup()
    assert info.value.setting == "QUANTSHIFT_HTTP_PORT"
    assert f"127.0.0.1:{port} is already in use" in info.value.message


async def test_port_zero_serves_nothing(clean: Path) -> None:
    d = Daemon(make_settings(clean, http_port=0))
    d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
    await d.startup()
    try:
        assert d.http is None
    finally:
        d.handle_exit(signal.SIGTERM)
        await d.shutdown()


# -- control: effects --------------------------------------------------------------------
async def test_halt_persists_across_a_restart_and_resume_too(clean: Path) -> None:
    settings = make_settings(clean)
    ledger = clean / "var" / "equity-paper.sqlite"
    async with running(settings) as (d, client):
        await wait_until(lambda: d.engine.portfolio.open_symbols() > 0)  # type: ignore[union-attr]
        code, body = await call(client, "POST", "/halt", headers=AUTH,
                                json={"reason": "maintenance", "flatten": True})
        assert code == 200
        assert body["state"] == "halted" and body["was"] == "active"
        assert body["flatten_orders"] >= 1
        # Durable before the answer: the journal on disk already says so.
        state = read_db(ledger, "SELECT value FROM kv WHERE key = 'trading_state'")[0][0]
        saved = orjson.loads(state)
        assert (saved["state"], saved["reason"]) == ("halted", "maintenance")
        assert saved["exits"]  # the flatten's exits pass after a restart too
        await wait_until(lambda: d.engine.portfolio.open_symbols() == 0)  # type: ignore[union-attr]
    async with running(settings) as (d, client):
        assert d.engine.gate.state == "halted"  # type: ignore[union-attr]
        code, st_ = await call(client, "GET", "/status")
        assert st_["trading"] == {"state": "halted", "reason": "maintenance"}
        code, body = await call(client, "POST", "/resume", headers=AUTH)
        assert (code, body["state"], body["was"]) == (200, "active", "halted")
        # What a restart reads, on disk before the answer (a SIGKILL now loses nothing):
        # the journal's trading state, and a snapshot that no longer says halted.
        state = read_db(ledger, "SELECT value FROM kv WHERE key = 'trading_state'")[0][0]
        assert orjson.loads(state)["state"] == "active"
        assert latest_snapshot(ledger)["trading_state"] == "active"
    async with running(settings) as (d, client):
        assert d.engine.gate.state == "active"  # type: ignore[union-attr]
        bars = d.engine.bars  # type: ignore[union-attr]
        await wait_until(lambda: d.engine.bars > bars)  # type: ignore[union-attr]
        code, st_ = await call(client, "GET", "/status")
        assert st_["trading"]["state"] == "active"


async def test_reduce_and_flatten(clean: Path) -> None:
    async with running(make_settings(clean)) as (d, client):
        engine = d.engine
        assert engine is not None
        # Reduce-only lets the strategy's own exit through, and on a fast feed that exit
        # may close the position before the flatten arrives: then flatten has nothing to
        # send, and the round is tried again from active.
        for _ in range(10):
            await wait_until(lambda: engine.portfolio.open_symbols() > 0)
            code, body = await call(client, "POST", "/reduce", headers=AUTH,
                                    json={"reason": "volatile"})
            assert (code, body["state"], body["reason"]) == (200, "reducing", "volatile")
            code, body = await call(client, "POST", "/flatten", headers=AUTH)
            assert code == 200
            if body["orders"] >= 1:
                break
            code, body = await call(client, "POST", "/resume", headers=AUTH)
            assert code == 200
        assert body["orders"] >= 1
        await wait_until(lambda: engine.portfolio.open_symbols() == 0)
        assert engine.gate.state == "reducing"  # flattening did not end reduce-only


async def test_control_actions_land_in_the_journal(clean: Path) -> None:
    ledger = clean / "var" / "equity-paper.sqlite"
    async with running(make_settings(clean)) as (_, client):
        steps = [("/halt", {"reason": "lunch"}, 200), ("/halt", {"flatten": "no"}, 400),
                 ("/promote", {"strategy": "ma_cross", "version": "v2"}, 409),
                 ("/resume", None, 200)]
        for path, body, want in steps:
            code, _ = await call(client, "POST", path, json=body,
                                 headers={**AUTH, "X-QuantShift-Actor": "ops@box"})
            assert code == want
        await call(client, "POST", "/halt", json={})  # no token: not an action, not journaled
        rows = read_db(ledger, "SELECT action, params, actor, result FROM control ORDER BY id")
    assert [r[0] for r in rows] == ["halt", "halt", "promote", "resume"]
    assert orjson.loads(rows[0][1]) == {"reason": "lunch", "flatten": False}
    assert all(r[2] == "ops@box from 127.0.0.1" for r in rows)
    results = [orjson.loads(r[3]) for r in rows]
    assert [r["status"] for r in results] == [200, 400, 409, 200]
    assert results[0]["state"] == "halted" and "flatten" in results[1]["error"]


# -- fuzz ------------------------------------------------------------------------------
class DaemonThread:
    """A daemon on its own loop in a thread, so a synchronous fuzz can hammer it."""

    def __init__(self, settings: Settings) -> None:
        self.daemon = Daemon(settings)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> DaemonThread:
        self.thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        d = self.daemon
        self.loop.call_soon_threadsafe(d.handle_exit, signal.SIGTERM)
        self._run(d.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> None:
        d = self.daemon
        d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
        await d.startup()


@pytest.fixture(scope="module")
def fuzz_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    root = tmp_path_factory.mktemp("fuzz")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(("QUANTSHIFT_", "SHADOW_MODE", "APCA_", "CCXT_", "NOTIFY_")):
                mp.delenv(key)
        with DaemonThread(make_settings(root, sim_interval=0.05)) as dt:
            yield dt


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()  # unlike orjson, any integer: the server must cope


_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | _TEXT
                     | st.floats(allow_nan=False, allow_infinity=False),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=8)
_FIELDS = st.sampled_from(["reason", "flatten", "strategy", "version", "force", "bot", "x"])
_BODIES = (st.binary(max_size=200)
           | st.dictionaries(_FIELDS | _TEXT, _JSON, max_size=4).map(_dumps)
           | _JSON.map(_dumps) | st.just(b""))
_AUTH = st.one_of(st.none(), st.just(f"Bearer {TOKEN}"), st.just(f"bearer {TOKEN}"),
                  _TEXT, _TEXT.map(lambda t: f"Bearer {t}"))
_PATHS = st.sampled_from([f"/{a}" for a in CONTROL] + ["/healthz", "/readyz", "/status",
                                                       "/metrics", "/", "/halt/", "/halt?x=1"]
                         ) | st.from_regex(r"\A/[a-z_/?=&%0-9]{0,24}\Z")
_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]) \
    | st.from_regex(r"\A[A-Z]{1,10}\Z")


@hsettings(max_examples=300, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=_METHODS, path=_PATHS, auth=_AUTH, body=_BODIES,
       content_type=st.sampled_from([None, "application/json", "text/plain", "x/y"]))
def test_fuzzed_requests_never_get_a_500(fuzz_daemon: DaemonThread, method: str, path: str,
                                         auth: str | None, body: bytes,
                                         content_type: str | None) -> None:
    port = fuzz_daemon.daemon.settings.http_port
    headers = {k: v for k, v in (("Authorization", auth), ("Content-Type", content_type))
               if v is not None}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, (resp.status, raw[:300])
    assert b"Traceback" not in raw
    if resp.status >= 400 and method != "HEAD" and \
            resp.getheader("Content-Type") == "application/json":
        assert "error" in orjson.loads(raw)  # the app's own refusals say why
