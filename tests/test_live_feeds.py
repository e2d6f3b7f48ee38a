"""The Alpaca and ccxt feeds against the local emulators (127.0.0.1, 1-second bars).

The real alpaca-py and ccxt clients talk to the emulators; no test reaches the internet.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import requests

from quantshift import clients as vc
from quantshift.backoff import Backoff
from quantshift.domain import NS_PER_SECOND, Bar
from quantshift.emulators.alpaca import AlpacaEmulator
from quantshift.emulators.exchange import ExchangeEmulator
from quantshift.feeds.alpaca import AlpacaFeed
from quantshift.feeds.ccxt import CcxtFeed

STOCKS = ["AAPL", "MSFT"]
PAIRS = ["BTC/USDT", "ETH/USDT"]
STEP = NS_PER_SECOND  # 1-second bars


# -- helpers ----------------------------------------------------------------------------------
class Run:
    """A feed's run() as a task, the bars it delivered, and the event loop's worst lag."""

    def __init__(self, feed: Any) -> None:
        self.feed = feed
        self.bars: list[Bar] = []
        self.max_lag = 0.0
        self.task = asyncio.create_task(feed.run(self.bars.append))
        self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            self.max_lag = max(self.max_lag, loop.time() - before - 0.01)

    def of(self, symbol: str) -> list[Bar]:
        return [b for b in self.bars if b.symbol == symbol]

    async def until(self, cond: Callable[[], bool], timeout: float = 6.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            assert not self.task.done(), f"run() ended early: {self.task}"
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.02)

    async def bars_after(self, n: int, timeout: float = 6.0) -> None:
        target = len(self.bars) + n
        await self.until(lambda: len(self.bars) >= target, timeout)

    async def stop(self) -> float:
        started = time.monotonic()
        self.feed.stop()
        await asyncio.wait_for(self.task, 5)
        took = time.monotonic() - started
        self._ticker.cancel()
        return took


def assert_contiguous(bars: list[Bar], symbols: list[str]) -> None:
    for symbol in symbols:
        ts = [b.ts for b in bars if b.symbol == symbol]
        assert len(ts) >= 2, symbol
        steps = {b - a for a, b in itertools.pairwise(ts)}
        assert steps == {STEP}, f"{symbol}: gap or duplicate in {ts}"


def assert_matches(bars: list[Bar], emu: Any) -> None:
    """Each bar carries exactly the emulator's OHLCV for that symbol and second."""
    for bar in bars:
        src = {round(b.time * NS_PER_SECOND): b for b in emu.engine.history[bar.symbol]}[bar.ts]
        assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == pytest.approx(
            (src.open, src.high, src.low, src.close, src.volume), rel=1e-12)


async def set_clock(emu: AlpacaEmulator, is_open: bool) -> None:
    async with aiohttp.ClientSession() as http, http.post(
            f"{emu.base_url}/_emulator/clock", json={"is_open": is_open}) as resp:
        assert resp.status == 200


def alpaca_feed(emu: AlpacaEmulator, **kw: Any) -> AlpacaFeed:
    kw = {"market_hours_only": False, "clock_check_seconds": 0.3, "idle_check_seconds": 0.3,
          **kw}
    return AlpacaFeed(STOCKS, "key", "secret", data_url=emu.base_url,
                      stream_url=emu.data_stream_url, trading_url=emu.base_url,
                      data_feed="iex", bar_seconds=1, reconnect_max_seconds=2, **kw)


def ccxt_feed(emu: ExchangeEmulator, **kw: Any) -> CcxtFeed:
    return CcxtFeed("binance", PAIRS, "key", "secret", None, api_url=emu.base_url,
                    bar_seconds=1, reconnect_max_seconds=1, **kw)


@pytest.fixture
async def alpaca_emu() -> AsyncIterator[AlpacaEmulator]:
    emu = AlpacaEmulator(STOCKS, interval=1.0, warmup=30)
    await emu.start("127.0.0.1")
    yield emu
    await emu.stop()


@pytest.fixture
async def exchange_emu() -> AsyncIterator[ExchangeEmulator]:
    emu = ExchangeEmulator(PAIRS, interval=1.0, warmup=30)
    await emu.start("127.0.0.1")
    yield emu
    await emu.stop()


# -- backoff ----------------------------------------------------------------------------------
def test_backoff_grows_is_jittered_capped_and_never_zero() -> None:
    draws = []
    for seed in range(50):
        b = Backoff(base=0.5, factor=2, cap=8, rng=random.Random(seed))
        draws.append([b.next_delay() for _ in range(10)])
    for n in range(10):
        column = [d[n] for d in draws]
        ceiling = min(0.5 * 2 ** n, 8)
        assert all(0.1 <= x <= ceiling for x in column)  # floor: no zero-spin; cap holds
        assert len({round(x, 6) for x in column}) > 40  # jittered, not a fixed schedule
    means = [sum(d[n] for d in draws) / len(draws) for n in range(10)]
    assert means[0] < means[2] < means[4]  # grows...
    assert max(max(d) for d in draws) <= 8  # ...up to the cap


def test_backoff_resets_after_a_healthy_period() -> None:
    now = [0.0]
    b = Backoff(base=0.5, cap=60, reset_after=30, clock=lambda: now[0], rng=random.Random(1))
    for _ in range(6):
        b.next_delay()
    assert b.attempts == 6
    b.succeeded()
    now[0] += 10  # healthy, but not long enough
    b.next_delay()
    assert b.attempts == 7
    b.succeeded()
    now[0] += 31
    assert b.next_delay() <= 0.5 and b.attempts == 1


async def test_backoff_wait_returns_at_once_on_stop() -> None:
    b = Backoff(base=30, cap=60, floor=20)
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stopping.set)
    started = time.monotonic()
    assert await b.wait(stopping) >= 20
    assert time.monotonic() - started < 1


# -- clients ----------------------------------------------------------------------------------
def test_timeframes() -> None:
    assert [vc.ccxt_timeframe(s) for s in (1, 60, 300, 3600, 86400)] == \
        ["1s", "1m", "5m", "1h", "1d"]
    for bad in (0, 1.5, 90, 7200 * 13, 2 * 86400):
        with pytest.raises(ValueError):
            vc.ccxt_timeframe(bad)
    assert [str(vc.alpaca_timeframe(s)) for s in (1, 60, 300, 3600, 86400)] == \
        ["1Sec", "1Min", "5Min", "1Hour", "1Day"]
    with pytest.raises(ValueError):
        CcxtFeed("binance", PAIRS, bar_seconds=7)  # binance has no 7s candles


async def test_ccxt_urls_replace_every_host_and_sandbox_keeps_them() -> None:
    base = "http://127.0.0.1:9"
    ex = vc.ccxt_exchange("binance", "k", "s", api_url=base)
    try:
        assert ex.enableRateLimit is False
        urls = [u for u in ex.urls["api"].values() if isinstance(u, str)]
        assert urls and all(u.startswith(base + "/") for u in urls)
        assert ex.urls["api"]["public"] == base + "/api/v3"
    finally:
        await ex.close()
    sandbox = vc.ccxt_exchange("binance", api_url=base, sandbox=True)
    try:
        assert sandbox.isSandboxModeEnabled
        assert sandbox.urls["api"]["public"] == base + "/api/v3"
        assert sandbox.urls["api"]["sapi"] == base + "/sapi/v1"
    finally:
        await sandbox.close()
    real = vc.ccxt_exchange("binance")
    try:
        assert real.enableRateLimit is True
        assert real.urls["api"]["public"].startswith("https://api.binance.com")
    finally:
        await real.close()
    assert vc.rebase_url("wss://stream.example.com:9443/ws", base) == "ws://127.0.0.1:9/ws"


async def test_feeds_from_settings() -> None:
    from quantshift.settings import Settings

    settings = Settings(symbols=["BTC/USDT"], bar_seconds=60, reconnect_max_seconds=5,
                        apca_api_key_id="k", apca_api_secret_key="s",
                        apca_api_base_url="http://127.0.0.1:9", ccxt_exchange="binance",
                        ccxt_api_key="k", ccxt_secret="s", ccxt_api_url="http://127.0.0.1:9")
    alpaca = AlpacaFeed.from_settings(settings)
    assert (alpaca.name, alpaca.symbols, alpaca.bar_seconds, alpaca.idle) == \
        ("alpaca", ["BTC/USDT"], 60.0, False)
    assert alpaca.backoff.cap == 5 and alpaca.market_hours_only
    crypto = CcxtFeed.from_settings(settings)
    try:
        assert (crypto.name, crypto.timeframe, crypto.last_bar_at) == ("ccxt", "1m", 0.0)
        assert crypto.exchange.apiKey == "k"
        assert crypto.exchange.urls["api"]["public"] == "http://127.0.0.1:9/api/v3"
    finally:
        await crypto.close()


# -- alpaca -----------------------------------------------------------------------------------
async def test_alpaca_history_then_live_bars(alpaca_emu: AlpacaEmulator) -> None:
    feed = alpaca_feed(alpaca_emu)
    history = await feed.history(10)
    assert len(history) == 20
    for symbol in STOCKS:
        ts = [b.ts for b in history if b.symbol == symbol]
        assert len(ts) == 10 and ts == sorted(ts)
        assert {b - a for a, b in itertools.pairwise(ts)} == {STEP}
        assert ts[-1] + STEP <= time.time_ns()  # closed bars only
    assert [b.ts for b in history] == sorted(b.ts for b in history)  # oldest first overall
    assert_matches(history, alpaca_emu)
    assert feed.last_bar_at == 0.0  # history is not delivery

    run = Run(feed)
    await run.bars_after(6)
    assert feed.last_bar_at > 0 and not feed.idle
    bars = history + run.bars
    assert_contiguous(bars, STOCKS)  # live continues exactly where history ended
    assert_matches(run.bars, alpaca_emu)
    assert feed.validator.rejected == 0
    assert run.max_lag < 0.5  # REST in threads: the loop never blocks
    assert await run.stop() < 1.0


async def test_alpaca_rest_calls_give_up_in_their_thread_at_the_timeout(
        alpaca_emu: AlpacaEmulator) -> None:
    # The feed abandons a slow call at once on stop(), but its thread stays in the call
    # until requests gives up: each request carries the feed's timeout.
    feed = alpaca_feed(alpaca_emu, timeout=0.5)
    alpaca_emu.faults.slow("status", count=2, delay=3.0)
    with pytest.raises(requests.exceptions.Timeout):
        await asyncio.to_thread(feed._trading.get_clock)
    with pytest.raises(requests.exceptions.Timeout):
        await asyncio.to_thread(feed._fetch_latest, "AAPL", 2)


async def test_alpaca_dropped_stream_reconnects_and_backfills_despite_rest_errors(
        alpaca_emu: AlpacaEmulator) -> None:
    feed = alpaca_feed(alpaca_emu)
    # Every reconnect waits > 1 s, so the outage always swallows at least one live bar.
    feed.backoff = Backoff(base=1.2, factor=1, cap=1.5, floor=1.1)
    run = Run(feed)
    await run.bars_after(4)
    alpaca_emu.faults.server_error("status", 3)  # and the backfill's REST answers 500 thrice
    alpaca_emu.faults.drop_ws()  # the server closes the websocket now
    await run.until(lambda: feed.reconnects >= 1)
    await run.until(lambda: feed.backfilled >= 1)
    await run.bars_after(4)
    # The SDK's stream task itself dies: the feed starts another one.
    assert feed._stream is not None
    feed._stream.task.cancel()
    await run.until(lambda: feed.reconnects >= 2)
    await run.bars_after(6)
    assert_contiguous(run.bars, STOCKS)
    assert_matches(run.bars, alpaca_emu)
    assert alpaca_emu.ws_connections >= 3
    assert await run.stop() < 1.0
    assert not alpaca_emu.sockets  # the websocket is closed on stop


async def test_alpaca_failed_handshakes_back_off_then_stream(
        alpaca_emu: AlpacaEmulator) -> None:
    alpaca_emu.faults.server_error("stream", 2)  # the first two upgrades answer 500
    feed = alpaca_feed(alpaca_emu)
    run = Run(feed)
    await run.bars_after(4, timeout=8)
    assert feed.reconnects == 2 and feed.backoff.attempts >= 2
    assert_contiguous(run.bars, STOCKS)
    assert await run.stop() < 1.0


async def test_alpaca_idles_while_the_market_is_closed(alpaca_emu: AlpacaEmulator) -> None:
    feed = alpaca_feed(alpaca_emu, market_hours_only=True)
    run = Run(feed)
    await run.bars_after(4)
    await set_clock(alpaca_emu, False)
    await run.until(lambda: feed.idle, timeout=3)
    await asyncio.sleep(0.3)
    assert not alpaca_emu.sockets  # cheap idling: the stream is disconnected
    seen = len(run.bars)
    await asyncio.sleep(2.0)
    assert feed.idle and len(run.bars) == seen  # no bars while closed
    before = run.bars[-1].ts
    reopened = time.monotonic()
    await set_clock(alpaca_emu, True)
    await run.until(lambda: not feed.idle, timeout=3)
    assert feed.last_bar_at >= reopened  # not stale the moment it wakes
    await run.bars_after(4)
    assert run.bars[seen].ts > before
    assert_contiguous(run.bars[seen:], STOCKS)
    assert feed.validator.rejected == 0
    await set_clock(alpaca_emu, False)
    await run.until(lambda: feed.idle, timeout=3)
    assert await run.stop() < 1.0  # stop() wakes an idle feed at once


async def test_alpaca_starts_idle_when_closed(alpaca_emu: AlpacaEmulator) -> None:
    await set_clock(alpaca_emu, False)
    feed = alpaca_feed(alpaca_emu, market_hours_only=True)
    run = Run(feed)
    await run.until(lambda: feed.idle, timeout=3)
    await asyncio.sleep(1.2)
    assert run.bars == [] and alpaca_emu.ws_connections == 0
    assert await run.stop() < 1.0


# -- ccxt -------------------------------------------------------------------------------------
async def test_ccxt_history_then_live_bars(exchange_emu: ExchangeEmulator) -> None:
    feed = ccxt_feed(exchange_emu)
    history = await feed.history(10)
    assert len(history) == 20
    for symbol in PAIRS:
        ts = [b.ts for b in history if b.symbol == symbol]
        assert len(ts) == 10 and {b - a for a, b in itertools.pairwise(ts)} == {STEP}
        assert ts[-1] + STEP <= time.time_ns()
    assert [b.ts for b in history] == sorted(b.ts for b in history)
    assert_matches(history, exchange_emu)

    run = Run(feed)
    await run.bars_after(6)
    assert feed.last_bar_at > 0 and not feed.idle
    assert_contiguous(history + run.bars, PAIRS)
    assert_matches(run.bars, exchange_emu)
    for bar in run.bars:  # only closed bars, each shortly after its close
        assert bar.ts + STEP <= time.time_ns()
    assert run.max_lag < 0.5
    assert await run.stop() < 1.0
    assert feed.exchange.session is None  # the HTTP session is closed with the feed
    paths = {p for _m, p, _q in exchange_emu.requests}
    assert paths == {"/api/v3/exchangeInfo", "/api/v3/klines"}  # load_markets is one call


async def test_ccxt_rest_errors_back_off_then_fill_the_gap(
        exchange_emu: ExchangeEmulator) -> None:
    feed = ccxt_feed(exchange_emu)
    run = Run(feed)
    await run.bars_after(4)
    exchange_emu.faults.rate_limit("status", 3)
    exchange_emu.faults.server_error("status", 3)
    await run.until(lambda: feed.failures >= 2)
    await run.bars_after(4)
    # A venue down for good: the feed keeps trying, but never in a tight loop.
    exchange_emu.faults.server_error("status", 10_000)
    start = len(exchange_emu.requests)
    await asyncio.sleep(2.5)
    attempts = (len(exchange_emu.requests) - start) / len(PAIRS)
    assert 2 <= attempts <= 12
    exchange_emu.faults.clear()
    await run.bars_after(4, timeout=8)  # recovered: the missed bars come first, then live
    assert_contiguous(run.bars, PAIRS)
    assert_matches(run.bars, exchange_emu)
    assert await run.stop() < 1.0


async def test_ccxt_sandbox_path_reaches_the_emulator(exchange_emu: ExchangeEmulator) -> None:
    feed = ccxt_feed(exchange_emu, sandbox=True)
    assert feed.exchange.isSandboxModeEnabled
    history = await feed.history(3)
    assert len(history) == 6
    feed.stop()  # never ran: stop() closes the session by itself
    await asyncio.sleep(0.4)
    assert feed.exchange.session is None
