"""The broker emulators, driven by the real alpaca-py and ccxt clients on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import (
    AccountStatus,
    OrderSide,
    OrderStatus,
    PositionSide,
    QueryOrderStatus,
    TimeInForce,
    TradeEvent,
)
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream

from quantshift.emulators.alpaca import AlpacaEmulator
from quantshift.emulators.cli import add_subparser, cmd_emulate
from quantshift.emulators.exchange import ExchangeEmulator

ROOT = Path(__file__).resolve().parent.parent
KEY, SECRET = "test-key", "test-secret"
AUTH = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
call = asyncio.to_thread


async def wait_for(pred: Callable[[], Any], timeout: float = 5.0, step: float = 0.02,
                   tick: Callable[[], Any] | None = None) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        if tick is not None:
            tick()
        await asyncio.sleep(step)


async def control(emu: Any, method: str, path: str, body: Any = None,
                  raw: bytes | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.request(
            method, f"{emu.base_url}{path}", json=body if raw is None else None,
            data=raw) as r:
        return r.status, await r.json()


@contextlib.asynccontextmanager
async def running(stream: Any, emu: AlpacaEmulator) -> AsyncIterator[asyncio.Task[None]]:
    """An alpaca-py stream inside this loop (its private ``_run_forever``)."""
    task = asyncio.create_task(stream._run_forever())
    try:
        yield task
    finally:
        await stream.stop_ws()
        await emu.close_streams(1001, "test over")  # so the SDK leaves its 5 s receive wait
        await asyncio.wait_for(task, 10)


def market(symbol: str, qty: float, side: OrderSide = OrderSide.BUY,
           coid: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=TimeInForce.DAY,
                              client_order_id=coid)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
async def alpaca() -> AsyncIterator[AlpacaEmulator]:
    """One-minute bars, 100 of history, no bar timer: prices move only when a test says."""
    emu = AlpacaEmulator(["AAPL", "MSFT"], interval=60, warmup=100)
    await emu.start(run_bars=False)
    yield emu
    await emu.stop()


@pytest.fixture
def trading(alpaca: AlpacaEmulator) -> TradingClient:
    client = TradingClient(KEY, SECRET, paper=True, url_override=alpaca.base_url)
    # TradingClient takes no retry settings and retries a 429 three times after fixed 3 s
    # sleeps (ignoring Retry-After): let the first 429 reach the test instead.
    client._retry_codes = []
    return client


@pytest.fixture
async def exchange() -> AsyncIterator[ExchangeEmulator]:
    emu = ExchangeEmulator(("BTC/USDT", "ETH/USDT"), interval=1.0, warmup=300,
                           balances={"USDT": 100_000})
    await emu.start(run_bars=False)
    yield emu
    await emu.stop()


@pytest.fixture
async def binance(exchange: ExchangeEmulator) -> AsyncIterator[Any]:
    ex = ccxt.binance({"apiKey": KEY, "secret": SECRET, "enableRateLimit": False,
                       "options": {"fetchMarkets": {"types": ["spot"]},
                                   "fetchCurrencies": False, "fetchMargins": False}})
    ex.urls["test"] = exchange.ccxt_urls(ex.urls["api"])
    ex.set_sandbox_mode(True)  # the daemon's sandbox path: test urls copied over api
    yield ex
    await ex.close()


# -- alpaca: trading REST -----------------------------------------------------------------------


async def test_alpaca_account_market_order_position_and_cash(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    acct = await call(trading.get_account)
    assert acct.status == AccountStatus.ACTIVE and float(acct.cash) == 100_000
    last = alpaca.engine.history["AAPL"][-1].close
    order = await call(trading.submit_order, market("AAPL", 10, coid="qs-aapl-1"))
    assert order.status == OrderStatus.FILLED and order.client_order_id == "qs-aapl-1"
    assert float(order.filled_qty) == 10 and float(order.filled_avg_price) == pytest.approx(last)
    [pos] = await call(trading.get_all_positions)
    assert (pos.symbol, float(pos.qty), pos.side) == ("AAPL", 10, PositionSide.LONG)
    assert float(pos.avg_entry_price) == pytest.approx(last)
    acct = await call(trading.get_account)
    assert float(acct.cash) == pytest.approx(100_000 - 10 * last, abs=0.01)
    await call(trading.submit_order, market("AAPL", 15, OrderSide.SELL))  # long 10 -> short 5
    [pos] = await call(trading.get_all_positions)
    assert float(pos.qty) == -5 and pos.side == PositionSide.SHORT
    assert float((await call(trading.get_account)).cash) == pytest.approx(100_000 + 5 * last,
                                                                          abs=0.01)
    notional = await call(trading.submit_order, MarketOrderRequest(
        symbol="MSFT", notional=500, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    assert notional.qty is None and notional.notional == "500"  # as Alpaca answers
    assert float(notional.filled_qty) == pytest.approx(500 / alpaca.engine.last["MSFT"], abs=1e-8)
    asset = await call(trading.get_asset, "AAPL")
    assert asset.fractionable and asset.price_increment == 0.01
    assert (await call(trading.get_clock)).is_open


async def test_alpaca_limit_order_fills_when_a_bar_crosses(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    last = alpaca.engine.last["MSFT"]
    limit = round(last - 1.0, 2)
    order = await call(trading.submit_order, LimitOrderRequest(
        symbol="MSFT", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=limit, client_order_id="qs-lim-1"))
    assert order.status == OrderStatus.NEW and float(order.filled_qty) == 0
    alpaca.engine.push("MSFT", close=last - 0.5)  # low stays above the limit
    assert (await call(trading.get_order_by_id, order.id)).status == OrderStatus.NEW
    alpaca.engine.push("MSFT", close=limit - 0.5)  # opens above, trades through the limit
    filled = await call(trading.get_order_by_id, order.id)
    assert filled.status == OrderStatus.FILLED
    assert float(filled.filled_avg_price) == pytest.approx(limit)
    assert await call(trading.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []


async def test_alpaca_duplicate_client_order_id_raises_api_error(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    await call(trading.submit_order, market("AAPL", 1, coid="qs-dup"))
    with pytest.raises(APIError) as err:
        await call(trading.submit_order, market("MSFT", 2, coid="qs-dup"))
    assert err.value.status_code == 422 and err.value.code == 40010001
    assert err.value.message == "client_order_id must be unique"
    assert len(alpaca.engine.orders) == 1


async def test_alpaca_lookup_by_client_id_and_cancel(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    limit = round(alpaca.engine.last["AAPL"] * 0.8, 2)
    order = await call(trading.submit_order, LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
        limit_price=limit, client_order_id="qs-cancel"))
    found = await call(trading.get_order_by_client_id, "qs-cancel")
    assert found.id == order.id and found.status == OrderStatus.NEW
    open_orders = await call(trading.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN))
    assert [o.id for o in open_orders] == [order.id]
    await call(trading.cancel_order_by_id, order.id)
    assert (await call(trading.get_order_by_id, order.id)).status == OrderStatus.CANCELED
    with pytest.raises(APIError) as err:
        await call(trading.cancel_order_by_id, order.id)
    assert err.value.status_code == 422
    with pytest.raises(APIError) as err:
        await call(trading.get_order_by_client_id, "no-such-id")
    assert err.value.status_code == 404 and err.value.code == 40410000
    closed = await call(trading.get_orders, GetOrdersRequest(status=QueryOrderStatus.CLOSED))
    assert [o.client_order_id for o in closed] == ["qs-cancel"]


# -- alpaca: market data ------------------------------------------------------------------------


async def test_alpaca_bars_backfill_through_the_sdk(alpaca: AlpacaEmulator) -> None:
    client = StockHistoricalDataClient(KEY, SECRET, url_override=alpaca.base_url)
    hist = list(alpaca.engine.history["AAPL"])
    start = datetime.fromtimestamp(hist[-30].time, UTC)
    barset = await call(client.get_stock_bars, StockBarsRequest(
        symbol_or_symbols=["AAPL", "MSFT"], timeframe=TimeFrame.Minute, start=start))
    aapl = barset["AAPL"]
    assert len(aapl) == 30 and len(barset["MSFT"]) == 30
    assert aapl[-1].timestamp == datetime.fromtimestamp(hist[-1].time, UTC)
    assert [b.close for b in aapl] == [b.close for b in hist[-30:]]
    assert all((b.timestamp - a.timestamp).total_seconds() == 60
               for a, b in itertools.pairwise(aapl))
    five = await call(client.get_stock_bars, StockBarsRequest(
        symbol_or_symbols="AAPL", timeframe=TimeFrame(5, TimeFrameUnit.Minute), limit=5))
    assert len(five["AAPL"]) == 5
    assert all(b.timestamp.timestamp() % 300 == 0 for b in five["AAPL"])
    # url_override is the host: the SDK asks for /v2/stocks/bars on it
    assert {p for m, p, _ in alpaca.requests if m == "GET"} == {"/v2/stocks/bars"}


async def test_alpaca_bars_pagination(alpaca: AlpacaEmulator) -> None:
    seen, token = 0, None
    async with aiohttp.ClientSession(headers=AUTH) as s:
        for _ in range(10):
            params = {"symbols": "AAPL,MSFT", "timeframe": "1Min", "limit": "50"}
            if token:
                params["page_token"] = token
            async with s.get(f"{alpaca.base_url}/v2/stocks/bars", params=params) as r:
                body = await r.json()
            seen += sum(len(v) for v in body["bars"].values())
            token = body["next_page_token"]
            if token is None:
                break
    assert seen == 200


async def test_alpaca_live_bars_over_the_data_websocket(alpaca: AlpacaEmulator) -> None:
    stream = StockDataStream(KEY, SECRET, url_override=alpaca.data_stream_url)
    got: list[Any] = []

    async def on_bar(bar: Any) -> None:
        got.append(bar)

    stream.subscribe_bars(on_bar, "AAPL")
    async with running(stream, alpaca):
        await wait_for(lambda: alpaca.subscribed == 1, timeout=10)
        sent = alpaca.engine.step()
        await wait_for(lambda: got, timeout=5)
    bar = got[0]
    assert isinstance(bar.timestamp, datetime) and bar.timestamp.tzinfo is not None
    [aapl] = [b for b in sent if b.symbol == "AAPL"]
    assert bar.symbol == "AAPL" and bar.timestamp.timestamp() == aapl.time
    assert (bar.open, bar.close, bar.volume) == (aapl.open, aapl.close, aapl.volume)


async def test_bar_timer_aligns_bars_and_continues_prices() -> None:
    emu = AlpacaEmulator(["AAPL"], interval=0.1, warmup=3)
    await emu.start()
    try:
        await wait_for(lambda: emu.engine.bars_emitted >= 3, timeout=5)
    finally:
        await emu.stop()
    hist = list(emu.engine.history["AAPL"])
    for a, b in itertools.pairwise(hist):
        assert b.time - a.time == pytest.approx(0.1, abs=1e-6) and b.open == a.close
    assert all(abs(b.time / 0.1 - round(b.time / 0.1)) < 1e-5 for b in hist)


async def test_alpaca_trade_updates_for_a_fill(alpaca: AlpacaEmulator,
                                               trading: TradingClient) -> None:
    stream = TradingStream(KEY, SECRET, url_override=alpaca.trading_stream_url)
    updates: list[Any] = []

    async def on_update(update: Any) -> None:
        updates.append(update)

    stream.subscribe_trade_updates(on_update)
    async with running(stream, alpaca):
        await wait_for(lambda: alpaca.listening == 1, timeout=10)
        order = await call(trading.submit_order, market("AAPL", 7, coid="qs-tu"))
        await wait_for(lambda: any(u.event == TradeEvent.FILL for u in updates))
    assert [u.event for u in updates] == [TradeEvent.NEW, TradeEvent.FILL]
    fill = updates[-1]
    assert fill.order.id == order.id and fill.order.client_order_id == "qs-tu"
    assert fill.order.status == OrderStatus.FILLED and updates[0].order.status == OrderStatus.NEW
    assert (fill.qty, fill.position_qty) == (7, 7)
    assert fill.price == pytest.approx(float(order.filled_avg_price))


# -- alpaca: faults -----------------------------------------------------------------------------


async def test_alpaca_rate_limit_and_server_error(alpaca: AlpacaEmulator,
                                                  trading: TradingClient) -> None:
    alpaca.faults.rate_limit(scope="submit", retry_after=7)
    with pytest.raises(APIError) as err:
        await call(trading.submit_order, market("AAPL", 1, coid="qs-429"))
    assert err.value.status_code == 429 and err.value.response.headers["Retry-After"] == "7"
    assert not alpaca.engine.orders  # a refused request does nothing
    alpaca.faults.server_error(scope="status")
    await call(trading.submit_order, market("AAPL", 1, coid="qs-429"))  # submit unaffected
    with pytest.raises(APIError) as err:
        await call(trading.get_account)
    assert err.value.status_code == 500 and err.value.code == 50010000
    assert (await call(trading.get_account)).status == AccountStatus.ACTIVE  # count was 1


async def test_alpaca_slow_submit_times_out_but_executes(alpaca: AlpacaEmulator) -> None:
    alpaca.faults.slow(scope="submit", delay=1.0)
    body = {"symbol": "AAPL", "qty": "2", "side": "buy", "type": "market",
            "time_in_force": "day", "client_order_id": "qs-slow"}
    async with aiohttp.ClientSession(headers=AUTH) as s:
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(f"{alpaca.base_url}/v2/orders", json=body,
                              timeout=aiohttp.ClientTimeout(total=0.3)) as r:
                await r.read()
    assert alpaca.engine.by_client["qs-slow"].status == "filled"


async def test_alpaca_duplicate_id_fault_executes_then_answers_duplicate(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    alpaca.faults.duplicate_id()
    with pytest.raises(APIError) as err:
        await call(trading.submit_order, market("AAPL", 3, coid="qs-retry"))
    assert err.value.status_code == 422 and "unique" in err.value.message
    order = await call(trading.get_order_by_client_id, "qs-retry")
    assert order.status == OrderStatus.FILLED and float(order.filled_qty) == 3


async def test_alpaca_partial_fill_then_fill_rest_or_next_bar(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    alpaca.faults.partial_fill(fraction=0.4)
    order = await call(trading.submit_order, market("AAPL", 10, coid="qs-part"))
    assert order.status == OrderStatus.PARTIALLY_FILLED and float(order.filled_qty) == 4
    assert float((await call(trading.get_open_position, "AAPL")).qty) == 4
    status, body = await control(alpaca, "POST", "/_emulator/fill_rest")
    assert status == 200 and len(body["fills"]) == 1
    order = await call(trading.get_order_by_id, order.id)
    assert order.status == OrderStatus.FILLED and float(order.filled_qty) == 10
    alpaca.faults.partial_fill(fraction=0.5)
    second = await call(trading.submit_order, market("AAPL", 4, coid="qs-part-2"))
    assert float(second.filled_qty) == 2
    bar = alpaca.engine.push("AAPL", open=alpaca.engine.last["AAPL"] + 2.0,
                             close=alpaca.engine.last["AAPL"] + 3.0)
    second = await call(trading.get_order_by_id, second.id)
    assert second.status == OrderStatus.FILLED  # the rest at the next bar's open
    assert alpaca.engine.fills[-1].price == bar.open and alpaca.engine.fills[-1].qty == 2


async def test_alpaca_lost_ack_executes_but_the_client_sees_a_connection_error(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    alpaca.faults.lost_ack()
    with pytest.raises(requests.exceptions.ConnectionError):
        await call(trading.submit_order, market("MSFT", 5, coid="qs-lost"))
    order = await call(trading.get_order_by_client_id, "qs-lost")
    assert order.status == OrderStatus.FILLED


async def test_alpaca_reject_fault(alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    alpaca.faults.reject()
    order = await call(trading.submit_order, market("MSFT", 5, coid="qs-rej"))
    assert order.status == OrderStatus.REJECTED and not alpaca.engine.account.positions


async def test_alpaca_drop_ws_closes_the_stream_and_the_sdk_reconnects(
        alpaca: AlpacaEmulator) -> None:
    stream = StockDataStream(KEY, SECRET, url_override=alpaca.data_stream_url)
    got: list[Any] = []

    async def on_bar(bar: Any) -> None:
        got.append(bar)

    stream.subscribe_bars(on_bar, "MSFT")
    async with running(stream, alpaca):
        await wait_for(lambda: alpaca.subscribed == 1, timeout=10)
        first = alpaca.ws_connections
        alpaca.faults.drop_ws()  # a socket is open: closed now
        await wait_for(lambda: alpaca.subscribed == 0)
        await wait_for(lambda: alpaca.subscribed == 1 and alpaca.ws_connections > first,
                       timeout=10)
        alpaca.engine.step()
        await wait_for(lambda: got)
        # Alpaca allows one market-data connection per account: a second one is refused
        async with aiohttp.ClientSession() as s, s.ws_connect(
                str(alpaca.data_stream_url)) as ws:
            assert (await ws.receive_json(timeout=5))[0]["msg"] == "connected"
            await ws.send_json({"action": "auth", "key": KEY, "secret": SECRET})
            assert (await ws.receive_json(timeout=5))[0]["code"] == 406
    # with no socket open the fault waits for the next message: the greeting
    alpaca.faults.drop_ws()
    async with aiohttp.ClientSession() as s, s.ws_connect(str(alpaca.data_stream_url)) as ws:
        msg = await ws.receive(timeout=5)
    assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert not alpaca.faults.pending()


async def test_alpaca_auth_clock_and_activities(alpaca: AlpacaEmulator,
                                                trading: TradingClient) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{alpaca.base_url}/v2/account") as r:
        assert r.status == 401 and (await r.json())["code"] == 40110000
    day = await call(trading.submit_order, LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
        limit_price=round(alpaca.engine.last["AAPL"] * 0.5, 2)))
    status, _ = await control(alpaca, "POST", "/_emulator/clock", {"is_open": False})
    assert status == 200 and not (await call(trading.get_clock)).is_open
    assert (await call(trading.get_order_by_id, day.id)).status == OrderStatus.EXPIRED
    queued = await call(trading.submit_order, market("AAPL", 2, coid="qs-closed"))
    assert queued.status == OrderStatus.ACCEPTED
    assert alpaca.engine.step() == []  # no bars while closed
    await control(alpaca, "POST", "/_emulator/clock", {"is_open": True})
    alpaca.engine.step()
    assert (await call(trading.get_order_by_id, queued.id)).status == OrderStatus.FILLED
    async with aiohttp.ClientSession(headers=AUTH) as s, s.get(
            f"{alpaca.base_url}/v2/account/activities/FILL") as r:
        [activity] = await r.json()
    assert activity["activity_type"] == "FILL" and activity["order_id"] == str(queued.id)
    assert activity["qty"] == "2" and activity["type"] == "fill"


# -- control surface ----------------------------------------------------------------------------


async def test_control_surface(alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    alpaca.engine.add_listener(lambda item: 1 / 0)  # a broken listener is counted, not fatal
    await call(trading.submit_order, market("AAPL", 1, coid="qs-state"))
    status, state = await control(alpaca, "GET", "/_emulator/state")
    assert state["error_count"] >= 2 and "ZeroDivisionError" in state["errors"][0]["error"]
    assert status == 200 and state["venue"] == "alpaca" and state["clock"]["is_open"]
    assert [o["client_order_id"] for o in state["orders"]] == ["qs-state"]
    assert state["fills"][0]["client_order_id"] == "qs-state"
    assert state["positions"]["AAPL"]["qty"] == 1 and state["cash"] < 100_000
    assert set(state["last_prices"]) == {"AAPL", "MSFT"}
    for bad in ([1], {"name": "nope"}, {"name": "slow", "scope": "galaxy"},
                {"name": "rate_limit", "count": 0}, {"name": "duplicate_id", "scope": "stream"},
                {"name": "slow", "delay": "x"}, {"name": "slow", "colour": "red"},
                {"name": "partial_fill", "fraction": 1.5}):
        status, body = await control(alpaca, "POST", "/_emulator/fault", bad)
        assert status == 400 and body["error"], bad
    status, body = await control(alpaca, "POST", "/_emulator/fault", raw=b"{not json")
    assert status == 400 and "JSON" in body["error"]
    for bad in ({"symbol": "ZZZ", "qty": 1, "avg_price": 1}, {"symbol": "AAPL", "qty": "1"},
                {"symbol": "AAPL", "qty": 1}):
        status, body = await control(alpaca, "POST", "/_emulator/position", bad)
        assert status == 400 and body["error"], bad
    assert (await control(alpaca, "POST", "/_emulator/clock", {"is_open": "yes"}))[0] == 400
    assert (await control(alpaca, "POST", "/_emulator/bar", {"symbol": "AAPL"}))[0] == 400
    status, _ = await control(alpaca, "POST", "/_emulator/position",
                              {"symbol": "MSFT", "qty": -5, "avg_price": 100.0})
    assert status == 200
    positions = {p.symbol: p for p in await call(trading.get_all_positions)}
    assert float(positions["MSFT"].qty) == -5 and positions["MSFT"].side == PositionSide.SHORT
    status, _ = await control(alpaca, "POST", "/_emulator/fault",
                              {"name": "server_error", "scope": "status", "count": 2})
    assert status == 200
    with pytest.raises(APIError):
        await call(trading.get_clock)
    with pytest.raises(APIError):
        await call(trading.get_clock)
    assert (await call(trading.get_clock)).is_open
    status, body = await control(alpaca, "POST", "/_emulator/bar",
                                 {"symbol": "AAPL", "close": 123.45})
    assert status == 200 and alpaca.engine.last["AAPL"] == 123.45


# -- exchange (ccxt binance) --------------------------------------------------------------------


async def test_exchange_markets_and_ohlcv(exchange: ExchangeEmulator, binance: Any) -> None:
    await binance.load_markets()
    assert [(m, p) for m, p, _ in exchange.requests] == [("GET", "/api/v3/exchangeInfo")]
    btc = binance.market("BTC/USDT")
    assert btc["limits"]["amount"]["min"] == 1e-5 and btc["limits"]["cost"]["min"] == 5
    assert btc["precision"]["price"] == 0.01
    hist = list(exchange.engine.history["BTC/USDT"])
    secs = await binance.fetch_ohlcv("BTC/USDT", "1s", limit=10)
    assert [row[0] for row in secs] == [round(b.time * 1000) for b in hist[-10:]]
    assert [row[4] for row in secs] == [b.close for b in hist[-10:]]
    minutes = await binance.fetch_ohlcv("BTC/USDT", "1m")
    assert minutes and all(row[0] % 60_000 == 0 for row in minutes)
    last_minute = [b for b in hist if minutes[-1][0] <= b.time * 1000 < minutes[-1][0] + 60_000]
    assert len(last_minute) == 60 and minutes[-1][4] == last_minute[-1].close
    ticker = await binance.fetch_ticker("BTC/USDT")
    assert ticker["last"] == exchange.engine.last["BTC/USDT"]


async def test_exchange_market_order_trades_and_balance(exchange: ExchangeEmulator,
                                                        binance: Any) -> None:
    last = exchange.engine.last["BTC/USDT"]
    order = await binance.create_order("BTC/USDT", "market", "buy", 0.01, None,
                                       {"clientOrderId": "qs-btc-1"})
    assert order["status"] == "closed" and order["clientOrderId"] == "qs-btc-1"
    assert order["filled"] == 0.01 and order["average"] == pytest.approx(last)
    balance = await binance.fetch_balance()
    assert balance["total"]["BTC"] == 0.01
    assert balance["total"]["USDT"] == pytest.approx(100_000 - 0.01 * last)
    [trade] = await binance.fetch_my_trades("BTC/USDT")
    assert trade["order"] == order["id"] and trade["price"] == pytest.approx(last)
    with pytest.raises(ccxt.InsufficientFunds):  # spot: no short selling
        await binance.create_order("BTC/USDT", "market", "sell", 0.02)


async def test_exchange_limit_fetch_by_client_id_and_cancel(exchange: ExchangeEmulator,
                                                            binance: Any) -> None:
    last = exchange.engine.last["ETH/USDT"]
    limit = round(last - 10, 2)
    order = await binance.create_order("ETH/USDT", "limit", "buy", 0.5, limit,
                                       {"clientOrderId": "qs-eth-lim"})
    assert order["status"] == "open"
    assert [o["id"] for o in await binance.fetch_open_orders("ETH/USDT")] == [order["id"]]
    assert (await binance.fetch_balance())["used"]["USDT"] == pytest.approx(0.5 * limit)
    exchange.engine.push("ETH/USDT", close=limit - 1)
    fetched = await binance.fetch_order(None, "ETH/USDT", {"clientOrderId": "qs-eth-lim"})
    assert fetched["status"] == "closed" and fetched["average"] == pytest.approx(limit)
    far = await binance.create_order("ETH/USDT", "limit", "buy", 0.5, round(limit / 2, 2),
                                     {"clientOrderId": "qs-eth-far"})
    canceled = await binance.cancel_order(far["id"], "ETH/USDT")
    assert canceled["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound):
        await binance.cancel_order(far["id"], "ETH/USDT")
    with pytest.raises(ccxt.OrderNotFound):
        await binance.fetch_order(None, "ETH/USDT", {"clientOrderId": "qs-nothing"})
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        await binance.create_order("ETH/USDT", "limit", "buy", 0.5, round(limit / 2, 2),
                                   {"clientOrderId": "qs-eth-far"})
    assert await binance.fetch_open_orders("ETH/USDT") == []


async def test_exchange_faults(exchange: ExchangeEmulator, binance: Any) -> None:
    await binance.load_markets()
    exchange.faults.rate_limit(scope="status", retry_after=3)
    with pytest.raises(ccxt.DDoSProtection):
        await binance.fetch_balance()
    assert binance.last_response_headers["Retry-After"] == "3"
    exchange.faults.server_error(scope="submit")
    with pytest.raises(ccxt.OperationFailed):  # how ccxt maps Binance's -1001
        await binance.create_order("BTC/USDT", "market", "buy", 0.001, None,
                                   {"clientOrderId": "qs-500"})
    assert not exchange.engine.orders
    exchange.faults.slow(scope="submit", delay=1.0)
    binance.timeout = 300  # ms
    with pytest.raises(ccxt.RequestTimeout):
        await binance.create_order("BTC/USDT", "market", "buy", 0.001, None,
                                   {"clientOrderId": "qs-slow"})
    binance.timeout = 10_000
    landed = await binance.fetch_order(None, "BTC/USDT", {"clientOrderId": "qs-slow"})
    assert landed["status"] == "closed"
    exchange.faults.duplicate_id()
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        await binance.create_order("BTC/USDT", "market", "buy", 0.001, None,
                                   {"clientOrderId": "qs-dupf"})
    landed = await binance.fetch_order(None, "BTC/USDT", {"clientOrderId": "qs-dupf"})
    assert landed["status"] == "closed" and landed["filled"] == 0.001
    exchange.faults.lost_ack()
    with pytest.raises(ccxt.NetworkError):
        await binance.create_order("BTC/USDT", "market", "buy", 0.001, None,
                                   {"clientOrderId": "qs-lost"})
    landed = await binance.fetch_order(None, "BTC/USDT", {"clientOrderId": "qs-lost"})
    assert landed["status"] == "closed"
    exchange.faults.partial_fill(fraction=0.5)
    part = await binance.create_order("BTC/USDT", "market", "buy", 0.01, None,
                                      {"clientOrderId": "qs-part"})
    assert part["status"] == "open" and part["filled"] == 0.005
    status, body = await control(exchange, "POST", "/_emulator/fill_rest")
    assert status == 200 and len(body["fills"]) == 1
    done = await binance.fetch_order(part["id"], "BTC/USDT")
    assert done["status"] == "closed" and done["filled"] == 0.01


async def test_exchange_filters_and_error_shapes(exchange: ExchangeEmulator) -> None:
    base = f"{exchange.base_url}/api/v3"
    hdrs = {"X-MBX-APIKEY": KEY}
    now = int(datetime.now(UTC).timestamp() * 1000)

    async def post(s: aiohttp.ClientSession, **form: Any) -> tuple[int, Any]:
        fields = {"symbol": "BTCUSDT", "side": "BUY", "type": "MARKET", "timestamp": now,
                  **form}
        async with s.post(f"{base}/order", data={k: str(v) for k, v in fields.items()}) as r:
            return r.status, await r.json()

    async with aiohttp.ClientSession(headers=hdrs) as s:
        assert await post(s, quantity="0.000011") == (400, {"code": -1013,
                                                            "msg": "Filter failure: LOT_SIZE"})
        assert (await post(s, quantity="0.00001"))[1]["msg"] == "Filter failure: NOTIONAL"
        assert (await post(s, type="LIMIT", timeInForce="GTC", quantity="0.01",
                           price="100.001"))[1]["msg"] == "Filter failure: PRICE_FILTER"
        assert (await post(s, quantity="0.01", newClientOrderId="x" * 37))[1]["code"] == -1100
        assert (await post(s, quantity="0.01", timestamp=now - 60_000))[1]["code"] == -1021
        assert (await post(s, symbol="NOPE", quantity="1"))[1] == {"code": -1121,
                                                                   "msg": "Invalid symbol."}
        async with s.get(f"{base}/order", params={"symbol": "BTCUSDT", "orderId": "99"}) as r:
            assert (r.status, await r.json()) == (400, {"code": -2013,
                                                        "msg": "Order does not exist."})
        async with s.get(f"{base}/klines", params={"symbol": "BTCUSDT", "interval": "7m"}) as r:
            assert (await r.json())["code"] == -1120
    async with aiohttp.ClientSession() as s, s.get(f"{base}/account") as r:
        assert r.status == 401 and (await r.json())["code"] == -2014
    assert not exchange.engine.orders


async def test_csv_replay(tmp_path: Path) -> None:
    csv = tmp_path / "bars.csv"
    csv.write_text("timestamp,open,high,low,close,volume,symbol\n"
                   "2024-01-02T00:00:00Z,100,101,99,100.5,10,SOL/USDT\n"
                   "2024-01-02T00:00:00Z,2000,2010,1990,2005,3,ETH/USDT\n"
                   "2024-01-02T00:01:00Z,100.5,102,100,101.5,12,SOL/USDT\n"
                   "bad row\n"
                   "2024-01-02T00:01:00Z,2005,2006,1980,1990,4,ETH/USDT\n")
    emu = ExchangeEmulator(None, data=csv)
    await emu.start(run_bars=False)
    try:
        assert list(emu.engine.instruments) == ["SOL/USDT", "ETH/USDT"]
        first, second = emu.engine.step(), emu.engine.step()
        assert [b.close for b in first] == [100.5, 2005] and [b.close for b in second] == [
            101.5, 1990]
        assert emu.engine.step() == [] and emu.engine.state()["data_left"] == 0
        async with aiohttp.ClientSession() as s, s.get(
                f"{emu.base_url}/api/v3/klines",
                params={"symbol": "SOLUSDT", "interval": "1m"}) as r:
            rows = await r.json()
        assert [(r[0], r[4]) for r in rows] == [(1704153600000, "100.50000000"),
                                                (1704153660000, "101.50000000")]
    finally:
        await emu.stop()
    plain = tmp_path / "plain.csv"
    plain.write_text("timestamp,open,high,low,close,volume\n1704153600,10,11,9,10.5,100\n")
    alp = AlpacaEmulator(["AAA", "BBB"], data=plain)
    assert [(b.symbol, b.close) for b in alp.engine.step()] == [("AAA", 10.5), ("BBB", 10.5)]


# -- the command --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def emulate(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APCA_", "CCXT_"))}
    return subprocess.Popen([sys.executable, "-m", "quantshift.emulators.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT, env=env)


@pytest.mark.parametrize(("venue", "n", "symbols"), [
    ("alpaca", 8, "AAPL,MSFT"), ("exchange", 7, "BTC/USDT,ETH/USDT")])
def test_cli_prints_exports_serves_and_stops_on_sigterm(venue: str, n: int,
                                                        symbols: str) -> None:
    port = free_port()
    proc = emulate(venue, "--port", str(port), "--symbols", symbols, "--interval", "0.5")
    killer = threading.Timer(20, proc.kill)
    killer.start()
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline().rstrip("\n") for _ in range(n)]
        base = f"http://127.0.0.1:{port}"
        expected = {
            "alpaca": ["QUANTSHIFT_FEED=alpaca", "SHADOW_MODE=sandbox",
                       "APCA_API_KEY_ID=emulator-key", "APCA_API_SECRET_KEY=emulator-secret",
                       f"APCA_API_BASE_URL={base}", f"APCA_API_DATA_URL={base}",
                       f"APCA_API_STREAM_URL=ws://127.0.0.1:{port}/v2/iex"],
            "exchange": ["QUANTSHIFT_FEED=ccxt", "SHADOW_MODE=sandbox", "CCXT_EXCHANGE=binance",
                         "CCXT_API_KEY=emulator-key", "CCXT_SECRET=emulator-secret",
                         f"CCXT_API_URL={base}"],
        }[venue] + [f"QUANTSHIFT_SYMBOLS={symbols}"]
        assert lines == [f"export {e}" for e in expected]
        with urllib.request.urlopen(f"{base}/_emulator/state", timeout=5) as r:
            assert b'"venue"' in r.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_cli_port_in_use_exits_78_naming_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        proc = emulate("exchange", "--port", str(busy.getsockname()[1]))
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 78 and out == ""
    assert len(err.strip().splitlines()) == 1 and "--port" in err


def test_cli_add_subparser_registers_emulate() -> None:
    parser = argparse.ArgumentParser(prog="quantshift")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["emulate", "exchange", "--port", "0", "--seed", "7",
                              "--symbols", "BTC/USDT"])
    assert args.func is cmd_emulate and (args.venue, args.port, args.seed) == ("exchange", 0, 7)
    assert args.interval == 1.0 and args.data is None
    defaults = parser.parse_args(["emulate", "alpaca"])
    assert defaults.port is None  # the handler picks 8801 / 8802


def test_emulators_import_nothing_else_from_quantshift() -> None:
    code = ("import sys, quantshift.emulators.alpaca, quantshift.emulators.exchange, "
            "quantshift.emulators.cli; print(sorted(m for m in sys.modules "
            "if m.startswith('quantshift') and not m.startswith('quantshift.emulators')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=30, check=True).stdout
    assert out.strip() == "['quantshift']"
