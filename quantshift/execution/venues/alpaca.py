"""Alpaca through alpaca-py: REST off the loop (the SDK is synchronous), trade updates from
the trading websocket, and lookups by client order id.

alpaca-py retries 429 by itself with a fixed wait and sends requests without a timeout;
both are switched off here, in one place, so that the executor honours ``Retry-After``
and a slow broker cannot hold a thread forever.

Alpaca holds a position's exits itself: an intent with a take-profit and/or a stop-loss
goes out as a bracket (both) or an oto (one), good till cancelled so the legs outlive the
day. Alpaca names the legs; they come back nested in the entry's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from loguru import logger

from quantshift.aio import within
from quantshift.clients import ALPACA_LIVE_URL, ALPACA_PAPER_URL, alpaca_trading_client
from quantshift.domain import Instrument, OrderIntent, OrderState, Side
from quantshift.errors import ConfigError
from quantshift.execution.venues.base import (
    DuplicateOrder,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    VenueError,
    VenueOrder,
    VenueUnavailable,
)
from quantshift.execution.venues.common import stream_and_poll

_STATES = {
    "new": OrderState.SUBMITTED, "accepted": OrderState.SUBMITTED,
    "pending_new": OrderState.SUBMITTED, "accepted_for_bidding": OrderState.SUBMITTED,
    "held": OrderState.SUBMITTED, "calculated": OrderState.SUBMITTED,
    "done_for_day": OrderState.SUBMITTED, "pending_cancel": OrderState.SUBMITTED,
    "pending_replace": OrderState.SUBMITTED, "replaced": OrderState.CANCELLED,
    "partially_filled": OrderState.PARTIALLY_FILLED, "filled": OrderState.FILLED,
    "canceled": OrderState.CANCELLED, "expired": OrderState.EXPIRED,
    "rejected": OrderState.REJECTED, "stopped": OrderState.SUBMITTED,
    "suspended": OrderState.SUBMITTED,
}
# The SDK's own, but a dead socket is given up after 20 s of unanswered pings (not 180),
# and closing one waits at most a second for the server's close frame (not 10).
_WS_PARAMS = {"ping_interval": 10, "ping_timeout": 20, "max_queue": 1024, "close_timeout": 1}


def _value(x: Any) -> str:
    return str(getattr(x, "value", x) or "")


def _leg(vo: VenueOrder, order_type: str, limit: Any, stop: Any) -> VenueOrder:
    """A leg says what it is: a limit leg takes the profit, a stop (limit) leg the loss."""
    vo.leg = "take_profit" if order_type == "limit" else "stop_loss"
    vo.price = float((limit if vo.leg == "take_profit" else stop) or 0)
    return vo


def to_venue_order(order: Any) -> VenueOrder:
    side = Side.BUY if _value(order.side).lower() == "buy" else Side.SELL
    status = _value(order.status).lower()
    return VenueOrder(
        client_order_id=order.client_order_id or "", venue_id=str(order.id),
        symbol=order.symbol or "", side=side, qty=float(order.qty or 0),
        filled_qty=float(order.filled_qty or 0), avg_price=float(order.filled_avg_price or 0),
        state=_STATES.get(status, OrderState.SUBMITTED), status=status,
        legs=[_leg(to_venue_order(leg), _value(leg.type).lower(), leg.limit_price,
                   leg.stop_price) for leg in order.legs or ()],
    )


def raw_to_venue_order(order: dict[str, Any]) -> VenueOrder:
    """The same, from an order as the trading stream sends it (JSON)."""
    status = str(order.get("status", "")).lower()
    return VenueOrder(
        client_order_id=order.get("client_order_id") or "", venue_id=str(order.get("id", "")),
        symbol=order.get("symbol") or "",
        side=Side.BUY if str(order.get("side", "")).lower() == "buy" else Side.SELL,
        qty=float(order.get("qty") or 0), filled_qty=float(order.get("filled_qty") or 0),
        avg_price=float(order.get("filled_avg_price") or 0),
        state=_STATES.get(status, OrderState.SUBMITTED), status=status,
        legs=[_leg(raw_to_venue_order(leg), str(leg.get("type", "")).lower(),
                   leg.get("limit_price"), leg.get("stop_price"))
              for leg in order.get("legs") or ()],
    )


def _translate(exc: Exception) -> VenueError:
    from alpaca.common.exceptions import APIError
    from requests import RequestException

    if isinstance(exc, APIError):
        status = exc.status_code or 0
        try:
            message = exc.message
        except (ValueError, KeyError, TypeError):
            message = str(exc)[:200]
        if status == 429:
            header = exc.response.headers.get("Retry-After") if exc.response is not None else None
            try:
                retry_after = float(header) if header is not None else None
            except ValueError:
                retry_after = None
            return RateLimited(message, retry_after)
        if status >= 500 or status == 0:
            return VenueUnavailable(f"HTTP {status}: {message}")
        if status == 404:
            return OrderNotFound(message)
        if "client_order_id" in str(message) and "unique" in str(message):
            return DuplicateOrder(message)
        return OrderRejected(f"HTTP {status}: {message}")
    if isinstance(exc, RequestException | ConnectionError | OSError):
        return VenueUnavailable(f"{type(exc).__name__}: {exc}")
    return VenueError(f"{type(exc).__name__}: {exc}")


class AlpacaVenue:
    name = "alpaca"
    supports_brackets = True
    endpoint_label = ""  # the endpoint's class (quantshift/endpoints.py), set by make_venue

    def __init__(self, key: str, secret: str, *, paper: bool, base_url: str | None = None,
                 timeout: float = 10.0, poll_every: float = 5.0) -> None:
        self.endpoint = base_url or (ALPACA_PAPER_URL if paper else ALPACA_LIVE_URL)
        self._key, self._secret, self._paper = key, secret, paper
        self._base_url = base_url
        self._client = alpaca_trading_client(key, secret, base_url, paper)
        self._client._retry = 0  # the executor retries, honouring Retry-After
        session = self._client._session
        session.request = functools.partial(session.request, timeout=timeout)  # type: ignore[method-assign]
        self._poll_every = poll_every
        self._queue: asyncio.Queue[VenueOrder] = asyncio.Queue()
        self._stream: Any = None
        self._stream_task: asyncio.Task[None] | None = None
        self._poll_now = asyncio.Event()
        self._stream_was_up = False

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            raise _translate(exc) from exc

    async def connect(self) -> None:
        from alpaca.trading.stream import TradingStream

        try:
            await self._call(self._client.get_account)  # fails early on bad credentials
        except OrderRejected as exc:
            raise ConfigError("APCA_API_KEY_ID", f"Alpaca refused the credentials: "
                                                 f"{exc.reason}") from None
        url = self._base_url.replace("http", "ws", 1) + "/stream" if self._base_url else None
        # raw_data: the update is read straight from the JSON; building the SDK's pydantic
        # models for every event costs more than the rest of the order path.
        self._stream = TradingStream(self._key, self._secret, paper=self._paper,
                                     raw_data=True, url_override=url,
                                     websocket_params=dict(_WS_PARAMS))
        self._stream.subscribe_trade_updates(self._on_update)
        # TradingStream.run() would start its own event loop; its coroutine runs in ours.
        self._stream_task = asyncio.create_task(self._stream._run_forever(),
                                                name="alpaca-trade-updates")

    async def _on_update(self, update: Any) -> None:
        try:
            self._queue.put_nowait(raw_to_venue_order(update["data"]["order"]))
        except Exception as exc:  # a malformed update must not kill the stream
            logger.warning("alpaca: unreadable trade update skipped: {}", exc)

    async def close(self) -> None:
        stream, task = self._stream, self._stream_task
        self._stream = self._stream_task = None
        if stream is not None:
            await stream.stop_ws()
        if task is not None and not task.done():
            # The stream looks at a stop request only between 5 s receive timeouts: cancel.
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if stream is not None:
            # A cancelled stream leaves its socket open, and with it the socket's own tasks,
            # which the event loop's close would wait for (ten seconds and more).
            with contextlib.suppress(Exception):
                await within(stream.close(), 2.0)
        self._client._session.close()  # the pooled HTTP connections

    async def instruments(self, symbols: list[str]) -> dict[str, Instrument]:
        out = {}
        for symbol in symbols:
            try:
                asset = await self._call(self._client.get_asset, symbol)
            except OrderNotFound:
                raise ConfigError("QUANTSHIFT_SYMBOLS",
                                  f"Alpaca has no asset {symbol!r}") from None
            fractionable = bool(getattr(asset, "fractionable", False))
            step = float(getattr(asset, "min_trade_increment", None) or 0) if fractionable else 1
            out[symbol] = Instrument(
                symbol, qty_step=step or 1.0,
                min_qty=float(getattr(asset, "min_order_size", None) or 0) if fractionable else 1,
                price_step=float(getattr(asset, "price_increment", None) or 0))
        return out

    def bracket_tick(self, symbol: str, qty: float, price: float) -> float | None:
        """Alpaca's tick: a cent at or above $1, a hundredth of a cent below; fractional
        quantities must be simple orders (no legs)."""
        if abs(qty - round(qty)) > 1e-9:
            return None
        return 0.01 if price >= 1.0 else 0.0001

    async def submit(self, intent: OrderIntent, simple: bool = False) -> VenueOrder:
        from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
        from alpaca.trading.requests import (
            MarketOrderRequest,
            StopLossRequest,
            TakeProfitRequest,
        )

        side = OrderSide.BUY if intent.side is Side.BUY else OrderSide.SELL
        tp, sl = intent.take_profit, intent.stop_loss
        if simple or (tp is None and sl is None):
            request = MarketOrderRequest(
                symbol=intent.symbol, qty=intent.qty, side=side, time_in_force=TimeInForce.DAY,
                client_order_id=intent.client_order_id)
        else:
            request = MarketOrderRequest(
                symbol=intent.symbol, qty=intent.qty, side=side, time_in_force=TimeInForce.GTC,
                client_order_id=intent.client_order_id,
                order_class=OrderClass.BRACKET if tp is not None and sl is not None
                else OrderClass.OTO,
                take_profit=TakeProfitRequest(limit_price=tp) if tp is not None else None,
                stop_loss=StopLossRequest(stop_price=sl) if sl is not None else None)
        return to_venue_order(await self._call(self._client.submit_order, request))

    async def order(self, client_order_id: str, symbol: str) -> VenueOrder:
        return to_venue_order(await self._call(self._client.get_order_by_client_id,
                                               client_order_id))

    async def cancel(self, client_order_id: str, symbol: str) -> None:
        found = await self.order(client_order_id, symbol)
        await self._call(self._client.cancel_order_by_id, found.venue_id)

    async def open_orders(self) -> list[VenueOrder]:
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        orders = await self._call(self._client.get_orders,
                                  GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500))
        return [to_venue_order(o) for o in orders]

    async def positions(self) -> dict[str, float]:
        out = {}
        for p in await self._call(self._client.get_all_positions):
            qty = float(p.qty)
            if _value(p.side).lower() == "short" and qty > 0:
                qty = -qty
            out[p.symbol] = qty
        return out

    def _poll_interval(self) -> float:
        """Poll every second while the trade-updates stream is down, at once when it is back
        (Alpaca does not replay what it missed), and as a safety net while it is up."""
        up = _stream_connected(self._stream)
        if up and not self._stream_was_up:
            self._poll_now.set()
        self._stream_was_up = up
        return self._poll_every if up else min(self._poll_every, 1.0)

    def updates(self, tracked: Callable[[], list[tuple[str, str]]]) -> AsyncIterator[VenueOrder]:
        return stream_and_poll(self._queue, tracked, self.order, self._poll_interval,
                               poll_now=self._poll_now)


def _stream_connected(stream: Any) -> bool:
    """Whether alpaca-py's TradingStream is connected and listening (its private flag,
    read here and nowhere else)."""
    return bool(getattr(stream, "_running", False)) and getattr(stream, "_ws", None) is not None
