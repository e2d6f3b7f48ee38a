"""Telegram alerts against a local Bot API stand-in: delivery, faults, and a trading loop
that never waits for Telegram."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from loguru import logger
from pydantic import SecretStr

from quantshift.app import build_engine, open_journal
from quantshift.config import check_startup
from quantshift.errors import ConfigError
from quantshift.feeds.sim import SimFeed
from quantshift.ops.notify import TelegramAlerter, build_alerter
from quantshift.settings import Settings

TOKEN = "123456:test-token-not-real"


@dataclass
class BotApi:
    """A stand-in for api.telegram.org's sendMessage; behaviour switched per test."""

    url: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    paths: set[str] = field(default_factory=set)
    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # consumed first
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.paths.add(request.path)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.answers:
            status, body = self.answers.pop(0)
            return web.json_response(body, status=status)
        self.messages.append(await request.json())
        return web.json_response({"ok": True, "result": {"message_id": len(self.messages)}})


@pytest.fixture
async def bot_api() -> AsyncIterator[BotApi]:
    api = BotApi()
    app = web.Application()
    app.router.add_post("/bot{token}/sendMessage", api.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    api.url = f"http://127.0.0.1:{port}"
    yield api
    await runner.cleanup()


@pytest.fixture
def log_lines() -> list[str]:
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    yield lines
    logger.remove(sink)


def alerter(url: str, **kw: Any) -> TelegramAlerter:
    kw.setdefault("min_interval", 0.0)
    kw.setdefault("retry_base", 0.01)
    return TelegramAlerter(SecretStr(TOKEN), "42", bot="equity", phase="dry_run", api_url=url,
                           **kw)


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_bound_log_lines_reach_the_chat_with_bot_and_phase(bot_api: BotApi) -> None:
    a = alerter(bot_api.url)
    a.install()
    task = asyncio.create_task(a.run())
    logger.bind(alert="fill").info("fill buy 10 AAPL @ 190.0")
    logger.info("an ordinary line is not an alert")
    await wait_for(lambda: len(bot_api.messages) == 1)
    await a.close()
    task.cancel()
    msg = bot_api.messages[0]
    assert msg["chat_id"] == "42"
    assert msg["text"] == "[equity/dry_run] fill: fill buy 10 AAPL @ 190.0"
    assert bot_api.paths == {f"/bot{TOKEN}/sendMessage"}
    assert a.stats.sent == 1 and a.stats.by_kind == {"fill": 1}


async def test_kinds_filter_what_goes_out(bot_api: BotApi) -> None:
    a = alerter(bot_api.url, kinds=["halt"])
    assert a.alert("fill", "x") is False
    assert a.alert("halt", "trading halted") is True
    task = asyncio.create_task(a.run())
    await wait_for(lambda: len(bot_api.messages) == 1)
    await a.close()
    task.cancel()
    assert "halt: trading halted" in bot_api.messages[0]["text"]


async def test_429_is_retried_after_the_delay_telegram_asks_for(bot_api: BotApi) -> None:
    bot_api.answers = [(429, {"ok": False, "error_code": 429,
                              "description": "Too Many Requests: retry after 1",
                              "parameters": {"retry_after": 1}})]
    a = alerter(bot_api.url)
    task = asyncio.create_task(a.run())
    a.alert("halt", "halted")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_for(lambda: len(bot_api.messages) == 1)
    waited = loop.time() - started
    await a.close()
    task.cancel()
    assert bot_api.requests == 2
    assert waited >= 0.9  # the retry waited for retry_after, not the 10 ms base
    assert a.stats.sent == 1 and a.stats.failed == 0


async def test_5xx_is_retried_and_4xx_is_not(bot_api: BotApi) -> None:
    bot_api.answers = [(502, {"ok": False, "description": "Bad Gateway"}),
                       (500, {"ok": False, "description": "Internal"})]
    a = alerter(bot_api.url)
    task = asyncio.create_task(a.run())
    a.alert("start", "up")
    await wait_for(lambda: len(bot_api.messages) == 1)
    assert bot_api.requests == 3

    bot_api.answers = [(400, {"ok": False, "error_code": 400,
                              "description": "Bad Request: chat not found"})]
    a.alert("stop", "down")
    await wait_for(lambda: a.stats.failed == 1)
    await a.close()
    task.cancel()
    assert bot_api.requests == 4  # refused once, never retried
    assert "chat not found" in a.stats.last_error


async def test_telegram_down_gives_up_without_leaking_the_token(log_lines: list[str]) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    a = alerter(f"http://127.0.0.1:{port}", retries=2)
    task = asyncio.create_task(a.run())
    a.alert("halt", "halted")
    await wait_for(lambda: a.stats.failed == 1)
    await a.close()
    task.cancel()
    assert a.stats.sent == 0
    assert any("not delivered" in line for line in log_lines)
    assert not any(TOKEN in line or "test-token" in line for line in log_lines)
    assert "test-token" not in a.stats.last_error


async def test_full_queue_drops_instead_of_blocking(bot_api: BotApi) -> None:
    bot_api.delay = 30.0  # Telegram hangs
    a = alerter(bot_api.url, queue_size=5, timeout=0.2, retries=0)
    results = [a.alert("fill", f"fill {i}") for i in range(20)]
    assert results.count(True) == 5
    assert a.stats.dropped == 15 and a.pending == 5


async def test_trading_never_waits_for_a_hanging_telegram(bot_api: BotApi, tmp_path: Path,
                                                          log_lines: list[str]) -> None:
    """Thousands of bars with fills, each fill an alert, while Telegram does not answer:
    every bar is decided in the same synchronous pass and the queue stays bounded."""
    bot_api.delay = 30.0
    settings = Settings(state_dir=tmp_path / "var", symbols=["AAA", "BBB"], sizing="fixed:1",
                        risk_max_trades_per_day=0,
                        strategies=[{"name": "ma_cross",
                                     "params": {"fast": 2, "slow": 4, "mode": "long_short"}}])
    journal = open_journal(settings, durable=False)
    engine = build_engine(settings, journal)
    a = alerter(bot_api.url, queue_size=50, timeout=30.0)
    a.install()
    sender = asyncio.create_task(a.run())
    await asyncio.sleep(0)  # the sender is now waiting on Telegram or the queue
    feed = SimFeed(settings.symbols, 0.0, seed=3, start_prices={})
    ts = 1_704_067_200 * 1_000_000_000
    for i in range(2_000):
        for symbol in settings.symbols:
            engine.on_bar(feed.next_bar(symbol, ts + i * 60_000_000_000))
    assert engine.bars == 4_000
    assert engine.counts["fills"] > 60  # plenty of fill alerts were raised
    assert a.pending <= 50 and a.stats.dropped > 0
    assert bot_api.messages == []  # nothing got through, and trading did not wait for it
    sender.cancel()
    await a.close(timeout=0.05)
    journal.close()


def test_settings_need_both_token_and_chat(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        check_startup(Settings(state_dir=tmp_path, telegram_bot_token=TOKEN))
    assert err.value.setting == "TELEGRAM_CHAT_ID"
    with pytest.raises(ConfigError) as err:
        check_startup(Settings(state_dir=tmp_path, telegram_chat_id="42"))
    assert err.value.setting == "TELEGRAM_BOT_TOKEN"
    assert build_alerter(Settings(state_dir=tmp_path)) is None
    a = build_alerter(Settings(state_dir=tmp_path, telegram_bot_token=TOKEN,
                               telegram_chat_id="42", alerts="fill,halt"))
    assert a is not None and a.kinds == {"fill", "halt"}
    assert TOKEN not in repr(Settings(state_dir=tmp_path, telegram_bot_token=TOKEN))


def test_unknown_alert_kind_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from quantshift.config import load_settings

    monkeypatch.setenv("QUANTSHIFT_ALERTS", "fills")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.setting == "QUANTSHIFT_ALERTS"
    assert "unknown alert kind 'fills'" in str(err.value)


class _StandIn:
    """A Bot API stand-in in a thread, for a daemon running as another process."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        self.texts: list[str] = []
        texts = self.texts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                texts.append(body["text"])
                out = b'{"ok": true, "result": {"message_id": 1}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.process
def test_the_daemon_alerts_start_fills_and_stop(daemon) -> None:
    import time

    api = _StandIn()
    try:
        d = daemon(TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_CHAT_ID="42",
                   TELEGRAM_API_URL=api.url).start()
        d.wait_for(r"\| fill (buy|sell) ")
        deadline = time.monotonic() + 20
        while not any("] fill: fill " in t for t in api.texts):
            assert time.monotonic() < deadline, api.texts
            time.sleep(0.05)
        code, _ = d.stop()
        assert code == 0
        assert api.texts[0].startswith("[equity/dry_run] start: started: paper executor")
        assert api.texts[-1].startswith("[equity/dry_run] stop: stopped (SIGTERM)")
        assert TOKEN not in d.log()
    finally:
        api.close()


@pytest.mark.process
def test_the_daemon_trades_and_stops_on_time_with_telegram_down(daemon) -> None:
    import socket

    with socket.socket() as s:  # nothing listens here: every alert fails to connect
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = daemon(TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_CHAT_ID="42",
               TELEGRAM_API_URL=f"http://127.0.0.1:{port}").start()
    d.wait_for(r"\| fill (buy|sell) ", count=10)
    d.wait_for(r"telegram: \w+ alert not delivered")
    code, _ = d.stop()
    assert code == 0  # 1 would mean the shutdown overran its bound waiting for Telegram
    log = d.log()
    assert "shutdown complete" in log and TOKEN not in log
