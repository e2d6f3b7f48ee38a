"""ccxt websockets: candles and order updates by ccxt.pro against the local exchange
emulator (127.0.0.1, 1-second bars), the REST fallback and the settings that choose them.

The real ccxt.pro ``binance`` client talks to the emulator; no test reaches the internet.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from quantshift import clients as vc
from quantshift.backoff import Backoff
from quantshift.domain import NS_PER_SECOND, Bar, ExecutorKind, OrderIntent, OrderState, Side
from quantshift.emulators.exchange import ExchangeEmulator
from quantshift.errors import ConfigError
from quantshift.execution.broker import BrokerExecutor
from quantshift.execution.venues.base import VenueOrder
from quantshift.execution.venues.ccxt import CcxtVenue, ws_ping
from quantshift.feeds.ccxt import CcxtFeed
from quantshift.settings import Settings
from tests.conftest import DaemonProcess, clean_env
from tests.test_broker_process import Emulator

PAIRS = ["BTC/USDT", "ETH/USDT"]
STEP = NS_PER_SECOND


@pytest.fixture
async def emu() -> AsyncIterator[ExchangeEmulator]:
    e = ExchangeEmulator(PAIRS, interval=1.0, warmup=30)
    await e.start("127.0.0.1")
    yield e
    await e.stop()


@pytest.fixture
async def book() -> AsyncIterator[ExchangeEmulator]:
    """An exchange whose bars come only by hand: nothing fills a resting order by itself."""
    e = ExchangeEmulator(PAIRS, interval=120)
    await e.start("127.0.0.1", run_bars=False)
    yield e
    await e.stop()


def ws_feed(emu: ExchangeEmulator, **kw: Any) -> CcxtFeed:
    kw = {"websocket": "on", **kw}
    return CcxtFeed("binance", PAIRS, "key", "secret", None, api_url=emu.base_url,
                    bar_seconds=1, reconnect_max_seconds=1, **kw)


def klines(emu: ExchangeEmulator) -> int:
    return int(emu.extra_state()["kline_requests"])


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


class Run:
    """A feed's run() as a task, with each bar and the wall time it arrived."""

    def __init__(self, feed: CcxtFeed) -> None:
        self.feed = feed
        self.bars: list[Bar] = []
        self.arrived: list[int] = []
        self.task = asyncio.create_task(feed.run(self._on_bar))

    def _on_bar(self, bar: Bar) -> None:
        self.bars.append(bar)
        self.arrived.append(time.time_ns())

    async def bars_after(self, n: int, timeout: float = 10.0) -> None:
        target = len(self.bars) + n
        await until(lambda: len(self.bars) >= target or self.task.done(), f"{n} more bars",
                    timeout)
        assert not self.task.done(), f"run() ended early: {self.task}"

    async def stop(self) -> None:
        self.feed.stop()
        await asyncio.wait_for(self.task, 5)


def assert_contiguous(bars: list[Bar]) -> None:
    """Per symbol: one bar per second, none missing, none twice."""
    for symbol in PAIRS:
        ts = [b.ts for b in bars if b.symbol == symbol]
        assert len(ts) >= 2, symbol
        assert {b - a for a, b in itertools.pairwise(ts)} == {STEP}, f"{symbol}: {ts}"


def assert_matches(bars: list[Bar], emu: ExchangeEmulator) -> None:
    for bar in bars:
        src = {round(b.time * NS_PER_SECOND): b for b in emu.engine.history[bar.symbol]}[bar.ts]
        assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == pytest.approx(
            (src.open, src.high, src.low, src.close, src.volume), rel=1e-12)


# -- the emulator's websockets ---------------------------------------------------------------
async def test_emulator_kline_stream_agrees_with_rest_klines() -> None:
    emu = ExchangeEmulator(PAIRS, interval=0.25, warmup=8)  # four bars to a 1s candle
    await emu.start("127.0.0.1")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{emu.base_url.replace('http', 'ws')}/ws/0") as ws:
                await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@kline_7x"],
                                    "id": 1})
                assert (await ws.receive_json())["error"]["code"] == 2
                await ws.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@kline_1s"],
                                    "id": 2})
                assert await ws.receive_json() == {"result": None, "id": 2}
                await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 3})
                assert (await ws.receive_json())["result"] == ["btcusdt@kline_1s"]
                events = []
                while sum(e["k"]["x"] for e in events) < 3:
                    events.append(await asyncio.wait_for(ws.receive_json(), 5))
            async with http.get(f"{emu.base_url}/api/v3/klines", params={
                    "symbol": "BTCUSDT", "interval": "1s", "limit": "50"}) as resp:
                rest = {row[0]: row for row in await resp.json()}
            async with http.ws_connect(f"{emu.base_url.replace('http', 'ws')}/ws-api/v3") as ws:
                await ws.send_json({"id": "a", "method": "userDataStream.subscribe.signature",
                                    "params": {"timestamp": 1}})
                refused = await ws.receive_json()
        assert (refused["id"], refused["status"]) == ("a", 401)
        closed = [e["k"] for e in events if e["k"]["x"]]
        for k in closed:  # a closed candle is the REST kline of the same second, exactly
            row = rest[k["t"]]
            assert [k["o"], k["h"], k["l"], k["c"], k["v"], k["T"]] == \
                [row[1], row[2], row[3], row[4], row[5], row[6]]
        # every closed candle is followed by the first update of the next one
        after = [events[i + 1]["k"] for i, e in enumerate(events[:-1]) if e["k"]["x"]]
        assert [k["t"] for k in after] == [k["t"] + 1000 for k in closed][:len(after)]
        assert all(not k["x"] for k in after)
    finally:
        await emu.stop()


# -- candles ---------------------------------------------------------------------------------
async def test_closed_bars_arrive_by_websocket_without_polling(emu: ExchangeEmulator) -> None:
    # A generous grace: the REST fallback must not fire on a slow machine either.
    feed = ws_feed(emu, grace=0.8)
    assert feed.transport == "websocket"
    history = await feed.history(5)
    run = Run(feed)
    await until(lambda: feed.ws_bars >= 2, "bars from the stream")
    # The history and the start's backfill (and a gap fill, should the subscription have
    # missed a bar's close), then nothing more.
    polled = (klines(emu), feed.fallback_polls, feed.gap_fills)
    await run.bars_after(6)
    assert (klines(emu), feed.fallback_polls, feed.gap_fills) == polled
    assert emu.ws_subscriptions == len(PAIRS) and feed.ws_sessions == 1
    assert_contiguous(history + run.bars)
    assert_matches(run.bars, emu)
    for bar, at in zip(run.bars, run.arrived, strict=True):  # closed bars only
        assert bar.ts + STEP <= at
    await run.stop()
    assert feed.exchange.session is None and not feed.exchange.clients


async def test_a_dropped_websocket_reconnects_and_backfills_without_gap_or_repeat(
        emu: ExchangeEmulator) -> None:
    feed = ws_feed(emu)
    run = Run(feed)
    await until(lambda: feed.ws_bars >= 2, "bars from the stream")
    # The socket drops and every reconnect fails until two more bars have closed: those
    # come from the backfill each new attempt starts with.
    emu.faults.server_error("stream", 10_000)
    emu.faults.drop_ws()
    emitted = emu.engine.bars_emitted
    await until(lambda: emu.engine.bars_emitted >= emitted + 2 * len(PAIRS), "two bars")
    await until(lambda: feed.reconnects >= 2, "two failed reconnects")
    from_stream = feed.ws_bars
    emu.faults.clear()
    await until(lambda: feed.ws_bars >= from_stream + 4, "the stream back")
    assert len(run.bars) > feed.ws_bars  # the missed bars came by REST
    assert feed.ws_sessions >= 2 and emu.ws_subscriptions >= 2 * len(PAIRS)
    assert_contiguous(run.bars)
    assert_matches(run.bars, emu)
    await run.stop()


async def test_a_stalled_websocket_falls_back_to_rest_then_reconnects(
        emu: ExchangeEmulator) -> None:
    feed = ws_feed(emu)
    run = Run(feed)
    await until(lambda: feed.ws_bars >= 2, "bars from the stream")
    emu.faults.stall()  # the socket stays open, answers pings, says nothing
    await until(lambda: feed.reconnects >= 1, "the stall noticed")
    assert feed.fallback_polls >= 1  # bars kept coming by REST meanwhile
    from_stream = feed.ws_bars
    await until(lambda: feed.ws_bars >= from_stream + 4, "the stream back")
    assert feed.ws_sessions == 2 and emu.ws_subscriptions == 2 * len(PAIRS)
    assert_contiguous(run.bars)
    assert_matches(run.bars, emu)
    await run.stop()


async def test_a_bar_the_stream_skipped_comes_from_rest_first(emu: ExchangeEmulator) -> None:
    feed = ws_feed(emu)
    # As if bars closed between the backfill and the subscription: the feed is two bars
    # behind when the stream starts (and the backfill finds nothing).
    for symbol in PAIRS:
        feed._last[symbol] = round(emu.engine.history[symbol][-1].time * 1000) - 2000
    start = dict(feed._last)
    feed._poll = _no_backfill  # type: ignore[method-assign]
    run = Run(feed)
    await until(lambda: feed.ws_bars >= 2 * len(PAIRS), "bars from the stream")
    assert feed.gap_fills >= 1
    for symbol in PAIRS:  # the first bar is the one after the last delivered
        first = min(b.ts for b in run.bars if b.symbol == symbol)
        assert first == (start[symbol] + 1000) * 1_000_000
    assert_contiguous(run.bars)
    assert_matches(run.bars, emu)
    await run.stop()


async def _no_backfill() -> bool:
    return True


async def test_websocket_off_polls_and_auto_streams(emu: ExchangeEmulator) -> None:
    base = {"symbols": PAIRS, "bar_seconds": 1, "ccxt_exchange": "binance",
            "ccxt_api_key": "k", "ccxt_secret": "s", "ccxt_api_url": emu.base_url}
    assert Settings(**base).ccxt_websocket == "auto"
    auto = CcxtFeed.from_settings(Settings(**base))
    assert auto.transport == "websocket"
    await auto.close()
    feed = CcxtFeed.from_settings(Settings(**base, ccxt_websocket="OFF"))
    assert feed.transport == "polling"
    run = Run(feed)
    await run.bars_after(4)
    before = klines(emu)
    await run.bars_after(2 * len(PAIRS))
    assert klines(emu) >= before + len(PAIRS)  # every bar by a REST poll
    assert emu.ws_connections == 0 and emu.ws_subscriptions == 0
    assert_contiguous(run.bars)
    await run.stop()


async def test_the_emulator_url_replaces_the_websocket_hosts_too() -> None:
    ex = vc.ccxt_exchange("binance", "k", "s", api_url="http://127.0.0.1:9", sandbox=True,
                          pro=True)
    try:
        assert ex.has["watchOHLCV"] and ex.has["watchOrders"]
        assert ex.urls["api"]["ws"]["spot"] == "ws://127.0.0.1:9/ws"
        assert ex.urls["api"]["ws"]["ws-api"]["spot"] == "ws://127.0.0.1:9/ws-api/v3"
        assert ex.urls["api"]["public"] == "http://127.0.0.1:9/api/v3"
    finally:
        await ex.close()


async def test_websocket_on_needs_the_exchange_to_offer_it() -> None:
    with pytest.raises(ConfigError) as err:
        CcxtFeed("bitstamp", ["BTC/USD"], bar_seconds=60, websocket="on")
    assert err.value.setting == "CCXT_WEBSOCKET" and "watchOHLCV" in err.value.message
    auto = CcxtFeed("bitstamp", ["BTC/USD"], bar_seconds=60, websocket="auto")
    assert auto.transport == "polling"
    await auto.close()


def test_websocket_on_without_it_exits_78_naming_the_setting(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path, clean_env(
        tmp_path, QUANTSHIFT_FEED="ccxt", CCXT_EXCHANGE="bitstamp", CCXT_WEBSOCKET="on",
        QUANTSHIFT_SYMBOLS="BTC/USD", SHADOW_MODE="log_only"))
    d.start()
    assert d.proc is not None and d.proc.wait(30) == 78
    _, err = d.communicate()
    last = err.strip().splitlines()[-1]
    assert last.startswith("quantshift: invalid setting CCXT_WEBSOCKET") and "bitstamp" in last
    assert "Traceback" not in err


# -- order updates ---------------------------------------------------------------------------
def intent(coid: str, qty: float = 0.01) -> OrderIntent:
    return OrderIntent(coid, "t", "BTC/USDT", Side.BUY, qty, time.time_ns(), 0.0)


class Updates:
    """The venue's update iterator drained into a list, tracking the given orders."""

    def __init__(self, venue: CcxtVenue) -> None:
        self.tracked: list[tuple[str, str]] = []
        self.got: list[VenueOrder] = []
        self.task = asyncio.create_task(self._drain(venue))

    async def _drain(self, venue: CcxtVenue) -> None:
        async for vo in venue.updates(lambda: list(self.tracked)):
            self.got.append(vo)

    def of(self, coid: str) -> list[tuple[float, OrderState]]:
        return [(v.filled_qty, v.state) for v in self.got if v.client_order_id == coid]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def ws_venue(emu: ExchangeEmulator, poll_every: float) -> CcxtVenue:
    venue = CcxtVenue("binance", key="key", secret="secret", api_url=emu.base_url,
                      websocket="on", poll_every=poll_every)
    await venue.connect()
    await venue.instruments(["BTC/USDT"])
    await until(lambda: venue.stream_up and emu.user_streams == 1, "the order stream")
    return venue


def lookups(emu: ExchangeEmulator) -> int:
    return sum(1 for m, p, _q in emu.requests if (m, p) == ("GET", "/api/v3/order"))


async def test_a_fill_arrives_by_the_order_stream_before_any_poll(
        book: ExchangeEmulator) -> None:
    venue = await ws_venue(book, poll_every=30)
    updates = Updates(venue)
    try:
        book.faults.partial_fill(0.5)
        first = await venue.submit(intent("ws-fill-1"))
        assert first.state is OrderState.PARTIALLY_FILLED
        updates.tracked.append(("ws-fill-1", "BTC/USDT"))
        book.engine.fill_rest()
        await until(lambda: (0.01, OrderState.FILLED) in updates.of("ws-fill-1"), "the fill")
        assert lookups(book) == 0 and venue.stream_updates >= 2
        # (accepted,) half filled, filled: each once and in order
        seen = updates.of("ws-fill-1")
        assert seen[-2:] == [(0.005, OrderState.PARTIALLY_FILLED), (0.01, OrderState.FILLED)]
        assert len(set(seen)) == len(seen)
    finally:
        await updates.close()
        await venue.close()
    assert venue._exchange.session is None and not venue._exchange.clients


async def test_a_fill_missed_while_the_order_stream_was_down_is_found_by_polling(
        book: ExchangeEmulator) -> None:
    venue = await ws_venue(book, poll_every=0.3)
    updates = Updates(venue)
    try:
        book.faults.partial_fill(0.5)
        await venue.submit(intent("ws-drop-1"))
        updates.tracked.append(("ws-drop-1", "BTC/USDT"))
        await until(lambda: updates.of("ws-drop-1")[-1:] == [(0.005,
                                                               OrderState.PARTIALLY_FILLED)],
                    "the partial fill")
        # The stream drops and cannot come back for a while; the rest fills meanwhile.
        book.faults.server_error("stream", 3)
        book.faults.drop_ws()
        await until(lambda: not venue.stream_up, "the drop noticed")
        book.engine.fill_rest()
        await until(lambda: (0.01, OrderState.FILLED) in updates.of("ws-drop-1"), "the fill")
        assert lookups(book) >= 1
        await until(lambda: venue.stream_up and book.user_subscriptions >= 2, "the stream back")
        assert updates.of("ws-drop-1").count((0.01, OrderState.FILLED)) == 1
    finally:
        await updates.close()
        await venue.close()


class FillSink:
    """What the executor passes on: the fills, as (client order id, qty)."""

    def __init__(self) -> None:
        self.fills: list[tuple[str, float]] = []

    def on_order_state(self, intent: OrderIntent, state: OrderState, detail: str = "") -> None:
        return None

    def on_fill(self, intent: OrderIntent, qty: float, price: float, commission: float,
                ts: int) -> None:
        self.fills.append((intent.client_order_id, qty))

    def on_leg(self, parent: OrderIntent, leg: OrderIntent) -> bool:
        return True

    def filled(self, coid: str) -> float:
        return round(sum(q for c, q in self.fills if c == coid), 9)


async def _on_disk() -> None:
    return None


async def test_a_stalled_order_stream_is_redialled_and_the_poll_takes_over_meanwhile(
        book: ExchangeEmulator) -> None:
    # The daemon's poll: every second while the stream is down, every ten while it is up.
    venue = CcxtVenue("binance", key="key", secret="secret", api_url=book.base_url,
                      websocket="on", poll_every=1.0)
    sink = FillSink()
    executor = BrokerExecutor(ExecutorKind.SANDBOX, venue, sink, durable=_on_disk,
                              permit=lambda _intent: None, timeout=2.0)
    await executor.start()
    try:
        await venue.instruments(["BTC/USDT"])
        await until(lambda: venue.stream_up and book.user_streams == 1, "the order stream")
        book.faults.partial_fill(0.5)
        executor.submit(intent("ws-stall-1"))
        await until(lambda: sink.filled("ws-stall-1") == 0.005, "the partial fill")
        await asyncio.sleep(0.5)  # the stream's own updates of it are in
        dialled, updates = book.ws_connections, venue.stream_updates
        # The order socket goes silent both ways and stays open; then the rest fills.
        book.faults.stall()
        assert book.stream_state()["stalled_sockets"] == 1
        book.engine.fill_rest()
        # Well before the ten-second safety-net poll (a functional bound, not a speed one).
        await until(lambda: sink.filled("ws-stall-1") == 0.01, "the fill, by the poll",
                    timeout=6.0)
        assert venue.stream_updates == updates  # the stalled stream delivered nothing
        await until(lambda: venue.stream_up and book.user_subscriptions >= 2
                    and book.user_streams == 1, "the stream dialled again")
        assert book.ws_connections == dialled + 1 and venue.stream_errors >= 1
        assert book.stream_state()["stalled_sockets"] == 0  # the stalled socket was closed
        # The new stream carries updates again.
        book.faults.partial_fill(0.5)
        executor.submit(intent("ws-stall-2"))
        await until(lambda: sink.filled("ws-stall-2") == 0.005, "the second partial fill")
        book.engine.fill_rest()
        await until(lambda: venue.stream_updates > updates
                    and sink.filled("ws-stall-2") == 0.01, "a fill by the new stream")
        assert sink.fills.count(("ws-stall-1", 0.005)) == 2  # each fill once, none twice
    finally:
        await executor.close()
    assert venue._exchange.session is None and not venue._exchange.clients


async def test_a_quiet_healthy_order_stream_starts_the_redial_backoff_over(
        book: ExchangeEmulator) -> None:
    # No order update for a long while is health too: after reset_after seconds of a
    # quiet stream, the next stall redials as quickly as the first did.
    now = [0.0]
    backoff = Backoff(base=0.05, cap=30.0, reset_after=30.0, clock=lambda: now[0])
    venue = CcxtVenue("binance", key="key", secret="secret", api_url=book.base_url,
                      websocket="on", heartbeat=0.1, pong_deadline=0.3, backoff=backoff)
    await venue.connect()
    try:
        for stall in range(1, 4):
            await until(lambda n=stall: venue.stream_up and book.user_subscriptions == n,
                        f"stream {stall}")
            if stall == 3:
                now[0] += 31.0  # the stream has been up, quiet, for half a minute
            book.faults.stall()
            await until(lambda n=stall: venue.stream_errors == n, f"stall {stall} noticed")
        assert backoff.attempts == 1  # started over: not the third failure in a row
        await until(lambda: venue.stream_up and book.user_subscriptions == 4, "stream 4")
    finally:
        await venue.close()


async def test_a_ping_answered_too_late_is_taken_quietly(book: ExchangeEmulator) -> None:
    # A ping cut by its deadline can still be answered. ccxt routes an answer whose id it
    # has no subscription of through a path that fails on the user-data stream's own entry
    # (a traceback in the loop's handler): the late answer must find a home and leave.
    venue = CcxtVenue("binance", key="key", secret="secret", api_url=book.base_url,
                      websocket="on", heartbeat=30.0)
    await venue.connect()
    ex = venue._exchange
    try:
        await until(lambda: venue.stream_up, "the order stream")
        book.faults.stall()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws_ping(ex), 0.3)
        api = next(c for u, c in ex.clients.items() if "ws-api" in u or u.endswith("/ws-api"))
        late = [k for k, v in api.subscriptions.items() if isinstance(v, dict)
                and getattr(v.get("method"), "__name__", "") == "_late_answer"]
        assert len(late) == 1, api.subscriptions
        # The window in which the user-data stream (re)subscribes: ccxt's entry is a bool.
        api.subscriptions["spot"] = True
        with pytest.raises(AttributeError):  # what an answer with an unknown id meets
            ex.handle_message(api, {"id": "999999", "result": {}})
        ex.handle_message(api, {"id": late[0], "result": {}})  # the late one: no error
        assert late[0] not in api.subscriptions
        del api.subscriptions["spot"]
    finally:
        await venue.close()


async def test_the_ping_of_a_socket_without_an_api_is_the_protocols_own(
        emu: ExchangeEmulator) -> None:
    # A market socket has no ping method of its own: its check is a protocol ping and the
    # pong ccxt records; a socket that is gone fails it at once.
    ex = vc.ccxt_exchange("binance", api_url=emu.base_url, pro=True)
    try:
        await ex.watch_ohlcv("BTC/USDT", "1s")
        (client,) = ex.clients.values()
        pong = client.lastPong
        await asyncio.wait_for(ws_ping(ex), 5)
        assert client.lastPong != pong
        await client.close()
        with pytest.raises(ConnectionError):
            await ws_ping(ex)
    finally:
        await ex.close()


# -- the daemon ------------------------------------------------------------------------------
@pytest.mark.process
def test_the_daemon_trades_over_websockets(tmp_path: Path) -> None:
    emu = Emulator("exchange", tmp_path)
    try:
        env = clean_env(
            tmp_path, **emu.exports, QUANTSHIFT_BAR_SECONDS="1",
            QUANTSHIFT_SIZING="fraction:0.01", QUANTSHIFT_FRACTIONAL="true",
            QUANTSHIFT_RISK_MAX_TRADES_PER_DAY="0", QUANTSHIFT_RECONCILE_INTERVAL="0",
            QUANTSHIFT_STRATEGIES=json.dumps([{"name": "ma_cross", "params": {
                "fast": 2, "slow": 4, "mode": "long_only"}}]))
        d = DaemonProcess(tmp_path, env).start()
        text = d.wait_for(r"\| fill buy ", timeout=40)
        assert "candles by websocket" in text
        code, _ = d.stop()
        _, err = d.communicate()
        assert code == 0 and "Unclosed" not in err
        state = emu.state()
        assert state["ws_subscriptions"] >= 2 and state["user_subscriptions"] >= 1
        assert state["user_streams"] == 0  # closed on shutdown
    finally:
        emu.stop()
