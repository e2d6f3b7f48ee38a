"""Alpaca bracket, oto and oco orders in the emulator, through the real alpaca-py client:
legs held until the entry fills, a leg's fill cancelling its sibling, Alpaca's answers to
bad prices, nested and flat listings, the trade_updates of every leg, and the fault
switches on the entry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import (
    OrderClass,
    OrderSide,
    OrderStatus,
    OrderType,
    QueryOrderStatus,
    TimeInForce,
    TradeEvent,
)
from alpaca.trading.requests import (
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream

from quantshift.emulators.alpaca import AlpacaEmulator

KEY, SECRET = "test-key", "test-secret"
call = asyncio.to_thread


async def wait_for(pred: Callable[[], Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def bracket(symbol: str, qty: float, tp: float, sl: float, side: OrderSide = OrderSide.BUY,
            limit: float | None = None, sl_limit: float | None = None,
            coid: str | None = None,
            tif: TimeInForce = TimeInForce.GTC) -> MarketOrderRequest | LimitOrderRequest:
    kw: dict[str, Any] = {
        "symbol": symbol, "qty": qty, "side": side, "time_in_force": tif,
        "order_class": OrderClass.BRACKET, "client_order_id": coid,
        "take_profit": TakeProfitRequest(limit_price=tp),
        "stop_loss": StopLossRequest(stop_price=sl, limit_price=sl_limit)}
    return LimitOrderRequest(limit_price=limit, **kw) if limit else MarketOrderRequest(**kw)


def legs_by_type(order: Any) -> dict[OrderType, Any]:
    return {leg.type: leg for leg in order.legs}


@pytest.fixture
async def alpaca() -> AsyncIterator[AlpacaEmulator]:
    emu = AlpacaEmulator(["AAPL", "MSFT"], interval=60, warmup=50)
    await emu.start(run_bars=False)  # prices move only when a test pushes a bar
    yield emu
    await emu.stop()


@pytest.fixture
def trading(alpaca: AlpacaEmulator) -> TradingClient:
    client = TradingClient(KEY, SECRET, paper=True, url_override=alpaca.base_url)
    client._retry_codes = []
    return client


async def test_bracket_legs_are_held_until_the_entry_fills_and_every_step_is_streamed(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    last = alpaca.engine.last["AAPL"]
    limit, tp, sl = round(last - 1, 2), round(last + 3, 2), round(last - 3, 2)
    stream = TradingStream(KEY, SECRET, url_override=alpaca.trading_stream_url)
    updates: list[Any] = []

    async def on_update(update: Any) -> None:
        updates.append(update)

    stream.subscribe_trade_updates(on_update)
    task = asyncio.create_task(stream._run_forever())
    try:
        await wait_for(lambda: alpaca.listening == 1)
        order = await call(trading.submit_order, bracket("AAPL", 5, tp, sl, limit=limit,
                                                         coid="qs-bk-1"))
        assert order.order_class == OrderClass.BRACKET and order.status == OrderStatus.NEW
        legs = legs_by_type(order)
        assert {leg.status for leg in order.legs} == {OrderStatus.HELD}
        assert float(legs[OrderType.LIMIT].limit_price) == tp
        assert float(legs[OrderType.STOP].stop_price) == sl
        assert {leg.side for leg in order.legs} == {OrderSide.SELL}
        assert len({leg.client_order_id for leg in order.legs} | {"qs-bk-1"}) == 3
        alpaca.engine.push("AAPL", close=last - 0.5)  # stays above the entry's limit
        assert (await call(trading.get_order_by_id, order.id)).status == OrderStatus.NEW
        alpaca.engine.push("AAPL", open=last - 0.5, close=limit - 0.2)  # trades through it
        await wait_for(lambda: sum(u.event == TradeEvent.NEW for u in updates) == 3)
    finally:
        await stream.stop_ws()
        await alpaca.close_streams(1001, "test over")
        await asyncio.wait_for(task, 10)
    entry = await call(trading.get_order_by_id, order.id)
    assert entry.status == OrderStatus.FILLED and float(entry.filled_avg_price) == limit
    assert {leg.status for leg in entry.legs} == {OrderStatus.NEW}  # working now
    seen = [(u.event, u.order.client_order_id) for u in updates]
    leg_ids = {leg.client_order_id for leg in order.legs}
    assert seen[:2] == [(TradeEvent.NEW, "qs-bk-1"), (TradeEvent.FILL, "qs-bk-1")]
    assert {c for e, c in seen[2:]} == leg_ids and {e for e, _ in seen[2:]} == {TradeEvent.NEW}
    assert {leg.status for leg in updates[0].order.legs} == {OrderStatus.HELD}  # nested
    assert float(alpaca.engine.position_qty("AAPL")) == 5


async def test_take_profit_fill_cancels_the_stop_and_books_cash(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    last = alpaca.engine.last["MSFT"]
    tp, sl = round(last + 2, 2), round(last - 2, 2)
    order = await call(trading.submit_order, bracket("MSFT", 4, tp, sl))
    assert order.status == OrderStatus.FILLED  # a market entry fills at once
    assert {leg.status for leg in order.legs} == {OrderStatus.NEW}
    position = await call(trading.get_open_position, "MSFT")
    assert float(position.qty) == 4 and float(position.qty_available) == 0  # legs hold it
    alpaca.engine.push("MSFT", close=last + 1, high=tp + 0.5)
    done = legs_by_type(await call(trading.get_order_by_id, order.id))
    assert done[OrderType.LIMIT].status == OrderStatus.FILLED
    assert float(done[OrderType.LIMIT].filled_avg_price) == tp
    assert done[OrderType.STOP].status == OrderStatus.CANCELED
    assert alpaca.engine.position_qty("MSFT") == 0
    assert alpaca.engine.account.cash == pytest.approx(100_000 + 4 * (tp - last), abs=1e-6)
    assert await call(trading.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []


async def test_stop_fill_cancels_the_take_profit_a_gap_fills_at_the_open(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    last = alpaca.engine.last["AAPL"]
    tp, sl = round(last + 2, 2), round(last - 2, 2)
    order = await call(trading.submit_order, bracket("AAPL", 3, tp, sl))
    gap = round(sl - 1, 2)
    alpaca.engine.push("AAPL", open=gap, close=gap + 0.5)  # opens below the stop
    done = legs_by_type(await call(trading.get_order_by_id, order.id))
    assert done[OrderType.STOP].status == OrderStatus.FILLED
    assert float(done[OrderType.STOP].filled_avg_price) == gap
    assert done[OrderType.LIMIT].status == OrderStatus.CANCELED
    assert alpaca.engine.position_qty("AAPL") == 0
    assert alpaca.engine.account.cash == pytest.approx(100_000 + 3 * (gap - last), abs=1e-6)


async def test_stop_limit_leg_rests_past_its_limit_then_fills_as_a_limit(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    last = alpaca.engine.last["MSFT"]
    tp, sl, sl_limit = round(last + 2, 2), round(last - 2, 2), round(last - 2.5, 2)
    order = await call(trading.submit_order, bracket("MSFT", 2, tp, sl, sl_limit=sl_limit))
    stop = legs_by_type(await call(trading.get_order_by_id, order.id))[OrderType.STOP_LIMIT]
    assert float(stop.limit_price) == sl_limit and float(stop.stop_price) == sl
    alpaca.engine.push("MSFT", open=sl_limit - 1, close=sl_limit - 0.8)  # triggered, too low
    assert alpaca.engine.position_qty("MSFT") == 2
    alpaca.engine.push("MSFT", open=sl_limit - 0.5, close=sl_limit + 0.3)  # back up to it
    stop = legs_by_type(await call(trading.get_order_by_id, order.id))[OrderType.STOP_LIMIT]
    assert stop.status == OrderStatus.FILLED and float(stop.filled_avg_price) == sl_limit
    assert alpaca.engine.position_qty("MSFT") == 0


@pytest.mark.parametrize(("side", "tp_off", "sl_off", "message"), [
    (OrderSide.BUY, -0.5, -2, "take_profit.limit_price must be >= base_price + 0.01"),
    (OrderSide.BUY, 2, 0.5, "stop_loss.stop_price must be <= base_price - 0.01"),
    (OrderSide.SELL, 0.5, 2, "take_profit.limit_price must be <= base_price - 0.01"),
    (OrderSide.SELL, -2, -0.5, "stop_loss.stop_price must be >= base_price + 0.01"),
    (OrderSide.BUY, 2.005, -2, "sub-penny increment does not fulfill minimum pricing criteria"),
])
async def test_invalid_bracket_prices_are_refused_with_alpacas_answer(
        alpaca: AlpacaEmulator, trading: TradingClient, side: OrderSide, tp_off: float,
        sl_off: float, message: str) -> None:
    last = alpaca.engine.last["AAPL"]
    with pytest.raises(APIError) as err:
        await call(trading.submit_order,
                   bracket("AAPL", 1, round(last + tp_off, 3), round(last + sl_off, 3), side))
    assert (err.value.status_code, err.value.code) == (422, 42210000)
    assert err.value.message == message
    assert not alpaca.engine.orders and not alpaca.engine.account.positions


async def test_orders_list_legs_flat_or_nested(alpaca: AlpacaEmulator,
                                               trading: TradingClient) -> None:
    last = alpaca.engine.last["AAPL"]
    order = await call(trading.submit_order,
                       bracket("AAPL", 2, round(last + 2, 2), round(last - 2, 2)))
    flat = await call(trading.get_orders, GetOrdersRequest(status=QueryOrderStatus.ALL))
    assert len(flat) == 3 and all(o.legs is None for o in flat)
    assert {o.order_class for o in flat} == {OrderClass.BRACKET}
    nested = await call(trading.get_orders,
                        GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True))
    assert [o.id for o in nested] == [order.id] and len(nested[0].legs) == 2
    open_flat = await call(trading.get_orders, GetOrdersRequest(status=QueryOrderStatus.OPEN))
    assert {o.id for o in open_flat} == {leg.id for leg in order.legs}  # the entry is filled
    open_nested = await call(trading.get_orders,
                             GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True))
    assert [o.id for o in open_nested] == [order.id]  # listed for its open legs


async def test_oco_on_a_held_position_holds_its_shares_and_cancels_as_a_pair(
        alpaca: AlpacaEmulator, trading: TradingClient) -> None:
    last = alpaca.engine.last["MSFT"]
    await call(trading.submit_order, MarketOrderRequest(
        symbol="MSFT", qty=6, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
    oco = await call(trading.submit_order, LimitOrderRequest(
        symbol="MSFT", qty=6, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
        order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=round(last + 2, 2)),
        stop_loss=StopLossRequest(stop_price=round(last - 2, 2))))
    assert oco.order_class == OrderClass.OCO and oco.status == OrderStatus.NEW
    assert float(oco.limit_price) == round(last + 2, 2)
    [stop] = oco.legs
    assert stop.type == OrderType.STOP and stop.status == OrderStatus.NEW
    with pytest.raises(APIError) as err:  # the shares are held for the oco
        await call(trading.submit_order, MarketOrderRequest(
            symbol="MSFT", qty=6, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
    assert err.value.status_code == 403
    assert err.value.message == "insufficient qty available for order (requested: 6, available: 0)"
    await call(trading.cancel_order_by_id, stop.id)  # cancelling one cancels the other
    assert (await call(trading.get_order_by_id, oco.id)).status == OrderStatus.CANCELED
    await call(trading.submit_order, MarketOrderRequest(
        symbol="MSFT", qty=6, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
    assert alpaca.engine.position_qty("MSFT") == 0


async def test_oco_stop_fill_cancels_its_take_profit(alpaca: AlpacaEmulator,
                                                     trading: TradingClient) -> None:
    last = alpaca.engine.last["AAPL"]
    alpaca.engine.set_position("AAPL", 4, last)
    oco = await call(trading.submit_order, LimitOrderRequest(
        symbol="AAPL", qty=4, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
        order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=round(last + 2, 2)),
        stop_loss=StopLossRequest(stop_price=round(last - 2, 2))))
    alpaca.engine.push("AAPL", close=last - 1, low=last - 2.5)
    oco = await call(trading.get_order_by_id, oco.id)
    assert oco.status == OrderStatus.CANCELED and oco.legs[0].status == OrderStatus.FILLED
    assert float(oco.legs[0].filled_avg_price) == round(last - 2, 2)
    assert alpaca.engine.position_qty("AAPL") == 0


async def test_entry_faults_take_the_legs_along(alpaca: AlpacaEmulator,
                                                trading: TradingClient) -> None:
    last = alpaca.engine.last["AAPL"]
    tp, sl = round(last + 2, 2), round(last - 2, 2)
    alpaca.faults.reject()
    rejected = await call(trading.submit_order, bracket("AAPL", 3, tp, sl))
    assert rejected.status == OrderStatus.REJECTED
    assert {leg.status for leg in rejected.legs} == {OrderStatus.CANCELED}
    alpaca.faults.partial_fill(fraction=0.5)
    part = await call(trading.submit_order, bracket("AAPL", 4, tp, sl))
    assert part.status == OrderStatus.PARTIALLY_FILLED
    assert {leg.status for leg in part.legs} == {OrderStatus.HELD}  # until the entry is in
    alpaca.engine.fill_rest()
    part = await call(trading.get_order_by_id, part.id)
    assert part.status == OrderStatus.FILLED
    assert {(leg.status, float(leg.qty)) for leg in part.legs} == {(OrderStatus.NEW, 4)}
    with pytest.raises(APIError) as err:
        await call(trading.submit_order, bracket("AAPL", 1.5, tp, sl, tif=TimeInForce.DAY))
    assert err.value.status_code == 422 and "simple" in err.value.message


