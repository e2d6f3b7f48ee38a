"""A crypto exchange through ccxt (async): orders by client order id; order updates from
the exchange's order websocket where ccxt.pro offers ``watchOrders`` (``CCXT_WEBSOCKET``),
with polling of the tracked orders as the fallback and as the safety net after a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from loguru import logger

from quantshift.aio import within
from quantshift.backoff import Backoff
from quantshift.clients import ccxt_exchange, ccxt_streams
from quantshift.domain import Instrument, OrderIntent, OrderState, Side
from quantshift.errors import ConfigError
from quantshift.execution.venues.base import (
    DuplicateOrder,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    VenueOrder,
    VenueUnavailable,
)
from quantshift.execution.venues.common import stream_and_poll

_STATES = {"open": OrderState.SUBMITTED, "closed": OrderState.FILLED,
           "canceled": OrderState.CANCELLED, "cancelled": OrderState.CANCELLED,
           "expired": OrderState.EXPIRED, "rejected": OrderState.REJECTED}
_STREAM_POLL_FACTOR = 10  # while the order stream is up, the poll is only a safety net
_SETTLE = 0.25  # a watch pending this long without failing: the stream is subscribed
# An order stream is quiet for hours, so its silence says nothing: a ping says whether the
# socket still answers. Every second, at most 1.5 s for the answer: a stall is noticed
# within about 2.5 s, and the poll runs every second from then on.
_HEARTBEAT = 1.0
_PONG_DEADLINE = 1.5
_PONG_CHECK = 0.02  # seconds between looks at a socket's last pong


def _api_url(exchange: Any) -> str | None:
    """The exchange's WebSocket API (Binance's ``ws-api``, where ccxt watches spot orders)."""
    ws = (exchange.urls.get("api") or {}).get("ws")
    api = ws.get("ws-api") if isinstance(ws, dict) else None
    url = api.get("spot") if isinstance(api, dict) else None
    return url if isinstance(url, str) else None


async def ws_ping(exchange: Any) -> None:
    """One round trip through each of the exchange's open websockets; raises when one
    fails. On a WebSocket API socket the request is the API's own ``ping`` method, answered
    by the server's application: a socket that still answers the protocol's pings but has
    stopped serving (the stall) fails it. Elsewhere a protocol ping and its pong (ccxt's
    ``lastPong``). Everything this needs of ccxt's websocket internals is here."""
    api_url = _api_url(exchange)
    clients = list((getattr(exchange, "clients", None) or {}).items())
    if not clients:
        raise ConnectionError("no websocket is open")
    for url, client in clients:
        if client.closed():
            raise ConnectionError(f"the websocket {url} is closed")
        if url != api_url:
            before = client.lastPong
            await client.connection.ping()
            while client.lastPong == before:
                await asyncio.sleep(_PONG_CHECK)
            continue
        rid = str(exchange.request_id(url))

        def answered(c: Any, message: Any, rid: str = rid) -> None:
            c.subscriptions.pop(rid, None)
            c.resolve(message, rid)

        try:  # ccxt routes an answer by its id to the "subscription" of that id
            await exchange.watch(url, rid, {"id": rid, "method": "ping"}, rid,
                                 {"id": rid, "method": answered})
        finally:
            client.futures.pop(rid, None)
            if rid in client.subscriptions:
                # Not answered (a timeout, a cancel), and the answer may still come: ccxt's
                # route for an id with no subscription fails on the entry its user-data
                # stream keeps there (True, not a dict), and the loop logs a traceback. The
                # id keeps a subscription that takes the late answer and goes with it.
                client.subscriptions[rid] = {"id": rid, "method": _late_answer}


def _late_answer(client: Any, message: Any) -> None:
    client.subscriptions.pop(str((message or {}).get("id")), None)


def to_venue_order(o: dict[str, Any]) -> VenueOrder:
    filled = float(o.get("filled") or 0)
    amount = float(o.get("amount") or 0)
    state = _STATES.get(str(o.get("status") or "open"), OrderState.SUBMITTED)
    if state is OrderState.SUBMITTED and filled > 0:
        state = OrderState.PARTIALLY_FILLED
    if state is OrderState.FILLED and filled + 1e-12 < amount:
        state = OrderState.PARTIALLY_FILLED
    info = o.get("info") if isinstance(o.get("info"), dict) else {}
    reason = str(info.get("r") or "") if state is OrderState.REJECTED else ""
    return VenueOrder(
        client_order_id=str(o.get("clientOrderId") or ""), venue_id=str(o.get("id") or ""),
        symbol=str(o.get("symbol") or ""), side=Side.BUY if o.get("side") == "buy" else Side.SELL,
        qty=amount, filled_qty=filled, avg_price=float(o.get("average") or o.get("price") or 0),
        state=state, reason="" if reason == "NONE" else reason)


class CcxtVenue:
    endpoint_label = ""  # the endpoint's class (quantshift/endpoints.py), set by make_venue
    def __init__(self, exchange_id: str, *, key: str | None, secret: str | None,
                 password: str | None = None, api_url: str | None = None, sandbox: bool = True,
                 timeout: float = 10.0, poll_every: float = 1.0, websocket: str = "off",
                 heartbeat: float = _HEARTBEAT, pong_deadline: float = _PONG_DEADLINE,
                 backoff: Backoff | None = None) -> None:
        self.name = exchange_id
        self._exchange = ccxt_exchange(exchange_id, key=key or "", secret=secret or "",
                                       password=password or "", api_url=api_url,
                                       sandbox=sandbox, timeout=timeout,
                                       pro=websocket != "off")
        # "on" without an order websocket is a ConfigError naming CCXT_WEBSOCKET; the
        # stream is private, so it needs the keys.
        self.streaming = ccxt_streams(self._exchange, websocket, "watchOrders") and bool(key)
        api = self._exchange.urls.get("api")
        hosts = [u for u in (api.values() if isinstance(api, dict) else [api])
                 if isinstance(u, str) and u.startswith("http")]
        first = urlsplit(hosts[0] if hosts else str(api))
        self.endpoint = f"{first.scheme}://{first.netloc}" + (" (sandbox)" if sandbox else "")
        self._poll_every = poll_every
        self._heartbeat_every = heartbeat
        self._pong_deadline = pong_deadline
        self.backoff = backoff or Backoff(cap=30.0)  # between redials of the order stream
        self._queue: asyncio.Queue[VenueOrder] = asyncio.Queue()
        self._symbols: set[str] = set()  # the markets this bot trades (instruments())
        self._poll_now = asyncio.Event()
        self._stream_task: asyncio.Task[None] | None = None
        self.stream_up = False
        self._streamed: dict[str, tuple[Any, Any]] = {}  # order id -> (filled, status) seen
        self.stream_updates = 0  # order updates that came by websocket
        self.stream_errors = 0

    async def _call(self, coro: Awaitable[Any]) -> Any:
        import ccxt.async_support as ccxt

        try:
            return await coro
        except (ccxt.DDoSProtection, ccxt.RateLimitExceeded) as exc:
            headers = getattr(self._exchange, "last_response_headers", None) or {}
            raw = headers.get("Retry-After") or headers.get("retry-after")
            try:
                retry_after = float(raw) if raw is not None else None
            except ValueError:
                retry_after = None
            raise RateLimited(str(exc)[:200], retry_after) from exc
        except ccxt.OrderNotFound as exc:
            raise OrderNotFound(str(exc)[:200]) from exc
        except ccxt.InvalidOrder as exc:
            if "Duplicate order" in str(exc) or isinstance(exc, ccxt.DuplicateOrderId):
                raise DuplicateOrder(str(exc)[:200]) from exc
            raise OrderRejected(str(exc)[:200]) from exc
        except (ccxt.InsufficientFunds, ccxt.BadRequest, ccxt.AuthenticationError,
                ccxt.PermissionDenied, ccxt.BadSymbol) as exc:
            raise OrderRejected(str(exc)[:200]) from exc
        except ccxt.BaseError as exc:
            # Anything else (5xx, timeouts, an exchange's internal error): the outcome is
            # unknown, which sends the executor to look the order up before any retry.
            raise VenueUnavailable(str(exc)[:200]) from exc

    async def connect(self) -> None:
        try:
            await self._call(self._exchange.load_markets())
            if self._exchange.apiKey:
                await self._call(self._exchange.fetch_balance())  # the keys work
        except OrderRejected as exc:  # authentication and permission errors land here
            raise ConfigError("CCXT_API_KEY", f"{self.name} refused the credentials: "
                                              f"{exc.reason}") from None
        if self.streaming and self._stream_task is None:
            self._stream_task = asyncio.create_task(self._watch_orders(),
                                                    name=f"{self.name}-order-stream")

    async def close(self) -> None:
        if self._stream_task is not None:
            self._stream_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream_task
            self._stream_task = None
        await self._exchange.close()  # the websockets and the HTTP session

    # -- the order stream --------------------------------------------------------------------
    def _poll_interval(self) -> float:
        return self._poll_every * (_STREAM_POLL_FACTOR if self.stream_up else 1)

    def _stream_is(self, up: bool) -> None:
        if up != self.stream_up:
            self.stream_up = up
            # Down: poll at once and often. Back up: once more, for what happened between
            # the drop and the new subscription (the exchange does not replay it).
            self._poll_now.set()

    def _take_streamed(self, returned: list[dict[str, Any]]) -> None:
        """Queue every order whose state changed in ccxt's order cache. The cache, not the
        watch's answer: ccxt wakes no watch for an update that lands before the watch is
        renewed, so that update is only found there."""
        cache = getattr(self._exchange, "orders", None)
        orders = list(cache) if isinstance(cache, list) else returned
        seen: dict[str, tuple[Any, Any]] = {}
        for order in orders:
            key = (order.get("filled"), order.get("status"))
            oid = f"{order.get('symbol')}:{order.get('id') or order.get('clientOrderId')}"
            seen[oid] = key
            if self._streamed.get(oid) == key:
                continue
            try:
                vo = to_venue_order(order)
            except (TypeError, ValueError, AttributeError) as exc:
                logger.warning("order stream of {}: unreadable update ({!r})", self.name, exc)
                continue
            self.stream_updates += 1
            self._queue.put_nowait(vo)
        self._streamed = seen

    async def _watch_orders(self) -> None:
        backoff = self.backoff
        while True:
            error = await self._order_session(backoff)
            self._stream_is(False)
            self.stream_errors += 1
            await self._close_sockets()  # a stalled socket is still open: the next dials anew
            delay = backoff.next_delay()
            logger.warning("order stream of {} lost ({}); polling meanwhile, reconnecting "
                           "in {:.2f} s", self.name, error, delay)
            await asyncio.sleep(delay)

    async def _order_session(self, backoff: Backoff) -> str:
        """Watch the orders until the stream fails or stalls; return why it ended. While it
        is up, a heartbeat checks that the socket still answers (an order stream has no
        regular traffic, so silence alone says nothing)."""
        heartbeat: asyncio.Task[str] | None = None
        watch: asyncio.Future[Any] | None = None
        try:
            while True:
                watch = asyncio.ensure_future(self._exchange.watch_orders())
                while not watch.done():
                    waits: set[asyncio.Future[Any]] = {watch} if heartbeat is None \
                        else {watch, heartbeat}
                    await asyncio.wait(waits, timeout=_SETTLE,
                                       return_when=asyncio.FIRST_COMPLETED)
                    if heartbeat is not None and heartbeat.done():
                        return heartbeat.result()
                    if not watch.done():  # pending without failing: subscribed
                        self._stream_is(True)
                        # Healthy, though quiet: 30 s of this and the next loss starts
                        # the backoff over (an order stream may see no update for hours).
                        backoff.succeeded()
                        self._take_streamed([])
                        heartbeat = heartbeat or asyncio.create_task(self._heartbeat())
                if watch.cancelled():
                    return "the websocket was closed"
                if watch.exception() is not None:
                    return repr(watch.exception())[:200]
                self._stream_is(True)
                backoff.succeeded()
                self._take_streamed(list(watch.result() or ()))
                heartbeat = heartbeat or asyncio.create_task(self._heartbeat())
        finally:
            for task in (watch, heartbeat):
                if task is not None and not task.done():
                    task.cancel()

    async def _heartbeat(self) -> str:
        """Ping the order socket every ``heartbeat`` seconds; return (the stream is stalled)
        when an answer takes longer than ``pong_deadline``."""
        while True:
            await asyncio.sleep(self._heartbeat_every)
            try:
                await within(ws_ping(self._exchange), self._pong_deadline)
            except TimeoutError:
                return f"stalled: no answer to a ping within {self._pong_deadline:g} s"
            except Exception as exc:  # a socket that fails under the ping is as good as gone
                return f"ping failed: {exc!r}"[:200]

    async def _close_sockets(self) -> None:
        """Close the order websockets (the REST session stays); the next watch dials anew."""
        clients = getattr(self._exchange, "clients", None)
        if not isinstance(clients, dict):
            return
        for url, client in list(clients.items()):
            with contextlib.suppress(Exception):
                await within(client.close(), 2.0)
            clients.pop(url, None)

    async def instruments(self, symbols: list[str]) -> dict[str, Instrument]:
        markets = self._exchange.markets or await self._call(self._exchange.load_markets())
        out = {}
        self._symbols.update(symbols)
        for symbol in symbols:
            m = markets.get(symbol)
            if m is None:
                raise ConfigError("QUANTSHIFT_SYMBOLS", f"{self.name} has no market {symbol!r}")
            precision, limits = m.get("precision") or {}, m.get("limits") or {}
            out[symbol] = Instrument(
                symbol, qty_step=float(precision.get("amount") or 0),
                min_qty=float((limits.get("amount") or {}).get("min") or 0),
                min_notional=float((limits.get("cost") or {}).get("min") or 0),
                price_step=float(precision.get("price") or 0))
        return out

    async def submit(self, intent: OrderIntent) -> VenueOrder:
        order = await self._call(self._exchange.create_order(
            intent.symbol, "market", intent.side.value, intent.qty, None,
            {"clientOrderId": intent.client_order_id}))
        if not order.get("clientOrderId"):
            order["clientOrderId"] = intent.client_order_id
        return to_venue_order(order)

    async def order(self, client_order_id: str, symbol: str) -> VenueOrder:
        order = await self._call(self._exchange.fetch_order(
            None, symbol, {"clientOrderId": client_order_id,
                           "origClientOrderId": client_order_id}))
        return to_venue_order(order)

    async def cancel(self, client_order_id: str, symbol: str) -> None:
        await self._call(self._exchange.cancel_order(
            None, symbol, {"clientOrderId": client_order_id,
                           "origClientOrderId": client_order_id}))

    async def open_orders(self) -> list[VenueOrder]:
        return [to_venue_order(o) for o in await self._call(self._exchange.fetch_open_orders())]

    async def positions(self) -> dict[str, float]:
        """Spot holdings of the base asset of each market this bot trades, as positions."""
        balance = await self._call(self._exchange.fetch_balance())
        totals = balance.get("total") or {}
        out = {}
        markets = self._exchange.markets or {}
        for symbol in self._symbols:
            qty = float(totals.get((markets.get(symbol) or {}).get("base"), 0) or 0)
            if qty:
                out[symbol] = qty
        return out

    def updates(self, tracked: Callable[[], list[tuple[str, str]]]) -> AsyncIterator[VenueOrder]:
        return stream_and_poll(self._queue, tracked, self.order, self._poll_interval,
                               poll_now=self._poll_now)
