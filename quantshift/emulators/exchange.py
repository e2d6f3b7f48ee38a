"""A local spot exchange shaped like Binance's REST API and websockets, so the unmodified
ccxt ``binance`` client (and ccxt.pro's, for candles and order updates) works against it.

    emu = ExchangeEmulator(("BTC/USDT", "ETH/USDT"), interval=1.0)
    await emu.start()
    ex = ccxt.async_support.binance({"apiKey": "k", "secret": "s", "enableRateLimit": False,
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False,
                    "fetchMargins": False}})
    ex.urls["test"] = emu.ccxt_urls(ex.urls["api"]); ex.set_sandbox_mode(True)

The websockets (``exchange_ws``) live on the same port: ``ccxt_urls`` rebases the ``ws``
hosts too (``wss://`` becomes ``ws://``).
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from quantshift.emulators.bars import csv_symbols, read_csv, start_price
from quantshift.emulators.base import BaseEmulator, now_ms
from quantshift.emulators.exchange_data import (
    STATUS,
    BinanceMarketData,
    _bad,
    _BadRequest,
    _limit,
    _ms,
    _num,
    f8,
    market_id,
)
from quantshift.emulators.exchange_ws import WS_PATHS, ExchangeStreams, is_ws_path
from quantshift.emulators.matching import (
    Instrument,
    MatchingEngine,
    Order,
    OrderError,
    symbols_or_default,
)

DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT")
CLIENT_ID = re.compile(r"^[a-zA-Z0-9_-]{1,36}$")
# OrderError.kind -> (Binance code, message)
ERRORS = {
    "duplicate": (-2010, "Duplicate order sent."),
    "insufficient_funds": (-2010, "Account has insufficient balance for requested action."),
    "invalid_qty": (-1013, "Filter failure: LOT_SIZE"),
    "invalid_price": (-1013, "Filter failure: PRICE_FILTER"),
    "min_notional": (-1013, "Filter failure: NOTIONAL"),
    "unknown_symbol": (-1121, "Invalid symbol."),
    "not_found": (-2013, "Order does not exist."),
    "not_cancelable": (-2011, "Unknown order sent."),
}
PRIVATE = ("/api/v3/order", "/api/v3/openOrders", "/api/v3/allOrders", "/api/v3/myTrades",
           "/api/v3/account")


class ExchangeEmulator(BinanceMarketData, ExchangeStreams, BaseEmulator):
    venue = "exchange"
    stream_paths = WS_PATHS

    def __init__(self, symbols: Sequence[str] | str | None = DEFAULT_SYMBOLS,
                 interval: float = 1.0, data: str | Path | None = None, seed: int = 1,
                 balances: Mapping[str, float] | None = None, *, warmup: int = 100) -> None:
        if symbols is None and data is not None:
            symbols = csv_symbols(data) or None
        names = symbols_or_default(symbols, DEFAULT_SYMBOLS)
        pairs = {s: s.split("/") for s in names}
        if any(len(p) != 2 or not all(p) for p in pairs.values()):
            raise ValueError("exchange symbols look like BASE/QUOTE, e.g. BTC/USDT")
        quotes = {q for _, q in pairs.values()}
        if len(quotes) != 1:
            raise ValueError("all exchange symbols must share one quote currency")
        self.quote = quotes.pop()
        self.bases = {s: p[0] for s, p in pairs.items()}
        firsts: dict[str, float] = {}
        if data is not None:
            for rnd in read_csv(data, names):
                for bar in rnd:
                    firsts.setdefault(bar.symbol, bar.open)
        instruments = [_instrument(s, firsts.get(s) or start_price(s, seed)) for s in names]
        balances = dict(balances if balances is not None else {"USDT": 100_000})
        super().__init__(MatchingEngine(instruments, interval=interval, data=data, seed=seed,
                                        cash=float(balances.pop(self.quote, 0.0)),
                                        allow_short=False, warmup=warmup))
        self.ids = {market_id(s): s for s in names}
        self.extra_balances: dict[str, float] = {}
        by_base = {b: s for s, b in self.bases.items()}
        for asset, qty in balances.items():
            if asset in by_base and qty:
                symbol = by_base[asset]
                self.engine.set_position(symbol, float(qty), self.engine.last[symbol])
            else:
                self.extra_balances[asset] = float(qty)
        self.init_streams()

    def ccxt_urls(self, api_urls: Mapping[str, Any]) -> dict[str, Any]:
        """ccxt's ``urls['api']`` with every host replaced by this emulator (a websocket
        URL by ``ws://`` and this emulator's host)."""
        ws_base = re.sub(r"^http", "ws", str(self.base_url))

        def swap(value: Any) -> Any:
            if isinstance(value, str):
                value = re.sub(r"^wss?://[^/]+", ws_base, value)
                return re.sub(r"^https?://[^/]+", str(self.base_url), value)
            if isinstance(value, Mapping):
                return {k: swap(v) for k, v in value.items()}
            return value
        return swap(api_urls)  # type: ignore[no-any-return]

    # -- plumbing ------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/v3/ping", self.ping)
        r.add_get("/api/v3/time", self.time)
        r.add_get("/api/v3/exchangeInfo", self.exchange_info)
        r.add_get("/api/v3/ticker/24hr", self.ticker_24hr)
        r.add_get("/api/v3/ticker/price", self.ticker_price)
        r.add_get("/api/v3/depth", self.depth)
        r.add_get("/api/v3/klines", self.klines)
        r.add_get("/api/v3/uiKlines", self.klines)
        r.add_post("/api/v3/order", self.submit)
        r.add_get("/api/v3/order", self.get_order)
        r.add_delete("/api/v3/order", self.cancel)
        r.add_get("/api/v3/openOrders", self.open_orders)
        r.add_delete("/api/v3/openOrders", self.cancel_open)
        r.add_get("/api/v3/allOrders", self.all_orders)
        r.add_get("/api/v3/myTrades", self.my_trades)
        r.add_get("/api/v3/account", self.account)
        self.add_stream_routes(app)

    def scope_of(self, request: web.Request) -> str:
        if is_ws_path(request.path):
            return "stream"
        return "submit" if request.method == "POST" and request.path == "/api/v3/order" \
            else "status"

    def error_response(self, status: int, kind: str, message: str) -> web.Response:
        code, msg = {
            401: (-2014, "API-key format invalid."),
            404: (-1000, "Not found."),
            429: (-1003, "Too many requests; current limit of IP(127.0.0.1) is 6000 requests "
                         "per minute. Please use the websocket for live updates to avoid "
                         "polling the API."),
            500: (-1001, "Internal error; unable to process your request. Please try again."),
        }.get(status, (-1102, message))
        return web.json_response({"code": code, "msg": msg}, status=status)

    def order_error(self, exc: OrderError) -> web.Response:
        if isinstance(exc, _BadRequest):
            return web.json_response({"code": exc.code, "msg": exc.message}, status=400)
        code, msg = ERRORS.get(exc.kind, (-1013, exc.message))
        return web.json_response({"code": code, "msg": msg}, status=400)

    def check_auth(self, request: web.Request) -> web.Response | None:
        if request.path in PRIVATE and not request.headers.get("X-MBX-APIKEY"):
            return self.error_response(401, "auth", "API-key format invalid.")
        return None

    def extra_state(self) -> dict[str, Any]:
        klines = sum(1 for _m, path, _q in self.requests if path == "/api/v3/klines")
        return {"quote": self.quote, "balances": self._balances(), "kline_requests": klines,
                **self.stream_state()}

    def order_json(self, o: Order, full: bool = False) -> dict[str, Any]:
        quote_qty = (o.filled_avg_price or 0.0) * o.filled_qty
        out: dict[str, Any] = {
            "symbol": market_id(o.symbol), "orderId": o.seq, "orderListId": -1,
            "clientOrderId": o.client_order_id, "price": f8(o.limit_price),
            "origQty": f8(o.qty), "executedQty": f8(o.filled_qty),
            "cummulativeQuoteQty": f8(quote_qty), "status": STATUS[o.status],
            "timeInForce": o.time_in_force.upper(), "type": o.type.upper(),
            "side": o.side.upper(), "stopPrice": f8(0), "icebergQty": f8(0),
            "time": int(o.created_at * 1000), "updateTime": int(o.updated_at * 1000),
            "isWorking": o.is_open, "workingTime": int(o.created_at * 1000),
            "origQuoteOrderQty": f8(o.notional), "selfTradePreventionMode": "EXPIRE_MAKER",
        }
        if full:
            out["transactTime"] = out.pop("time")
            out["fills"] = [{"price": f8(f.price), "qty": f8(f.qty), "commission": f8(0),
                             "commissionAsset": self.bases[o.symbol], "tradeId": f.seq}
                            for f in self.engine.fills if f.order_id == o.id]
        return out

    def _balances(self) -> list[dict[str, str]]:
        eng = self.engine
        locked_cash = sum(o.remaining * (o.limit_price or eng.last[o.symbol])
                          for o in eng.open_orders() if o.side == "buy")
        out = [{"asset": self.quote, "free": f8(eng.account.cash - locked_cash),
                "locked": f8(locked_cash)}]
        for symbol, base in self.bases.items():
            held = eng.position_qty(symbol)
            locked = sum(o.remaining for o in eng.open_orders(symbol) if o.side == "sell")
            out.append({"asset": base, "free": f8(held - locked), "locked": f8(locked)})
        out += [{"asset": a, "free": f8(q), "locked": f8(0)}
                for a, q in self.extra_balances.items()]
        return out

    async def _params(self, request: web.Request) -> dict[str, str]:
        """Query and form body merged; a signed request's timestamp must be fresh."""
        params = dict(request.query)
        if request.body_exists:
            params.update({k: str(v) for k, v in (await request.post()).items()})
        if params.get("timestamp"):
            stamp, window = _num(params, "timestamp"), _num(params, "recvWindow") or 5000.0
            now = now_ms()
            if stamp is None or stamp > now + 1000 or now - stamp > window:
                raise _bad(-1021, "Timestamp for this request is outside of the recvWindow.")
        return params

    async def submit(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        symbol = self._symbol(p)
        assert symbol is not None
        side, otype = p.get("side", "").lower(), p.get("type", "").upper()
        if side not in ("buy", "sell"):
            raise _bad(-1102, "Mandatory parameter 'side' was not sent, was empty/null, or "
                              "malformed.")
        if otype not in ("MARKET", "LIMIT", "LIMIT_MAKER"):
            raise _bad(-1116, "Invalid orderType.")
        coid = p.get("newClientOrderId") or None
        if coid is not None and not CLIENT_ID.match(coid):
            raise _bad(-1100, "Illegal characters found in parameter 'newClientOrderId'; "
                              "legal range is '^[a-zA-Z0-9-_]{1,36}$'.")
        qty, price = _num(p, "quantity"), _num(p, "price")
        quote_qty = _num(p, "quoteOrderQty")
        tif = p.get("timeInForce", "GTC" if otype != "MARKET" else "").upper()
        if otype == "LIMIT" and (not p.get("timeInForce") or price is None or qty is None):
            raise _bad(-1102, "Mandatory parameter 'timeInForce', 'price' or 'quantity' was "
                              "not sent, was empty/null, or malformed.")
        if otype == "MARKET" and (qty is None) == (quote_qty is None):
            raise _bad(-1102, "Mandatory parameter 'quantity' or 'quoteOrderQty' was not "
                              "sent, was empty/null, or malformed.")
        if otype == "LIMIT_MAKER" and price is not None:
            last = self.engine.last[symbol]
            if (side == "buy" and price >= last) or (side == "sell" and price <= last):
                raise _bad(-2010, "Order would immediately match and take.")
        partial = self.faults.take("submit", ("partial_fill",))
        fault = self.faults.take("submit", ("duplicate_id", "lost_ack", "reject"))
        order = self.engine.submit(
            symbol, side, qty, type="market" if otype == "MARKET" else "limit",
            limit_price=price if otype != "MARKET" else None,
            time_in_force=(tif or "GTC").lower(), client_order_id=coid, notional=quote_qty,
            partial=partial.fraction if partial else None,
            reject=fault is not None and fault.name == "reject")
        if fault is not None and fault.name == "duplicate_id":
            return self.order_error(OrderError("duplicate", "Duplicate order sent."))
        if fault is not None and fault.name == "lost_ack":
            return self.lose_ack(request)
        if p.get("newOrderRespType", "FULL").upper() == "ACK":
            return web.json_response({"symbol": market_id(symbol), "orderId": order.seq,
                                      "orderListId": -1, "clientOrderId": order.client_order_id,
                                      "transactTime": int(order.created_at * 1000)})
        full = p.get("newOrderRespType", "FULL").upper() == "FULL"
        return web.json_response(self.order_json(order, full=True) if full
                                 else {**self.order_json(order), "transactTime": now_ms()})

    def _find(self, p: Mapping[str, str], symbol: str) -> Order:
        order: Order | None = None
        if p.get("orderId"):
            try:
                order = self.engine.by_seq.get(int(p["orderId"]))
            except ValueError:
                raise _bad(-1100, "Illegal characters found in parameter 'orderId'.") from None
        elif p.get("origClientOrderId"):
            order = self.engine.by_client.get(p["origClientOrderId"])
        else:
            raise _bad(-1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both "
                              "were empty/null!")
        if order is None or order.symbol != symbol:
            raise OrderError("not_found", "Order does not exist.")
        return order

    async def get_order(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        symbol = self._symbol(p)
        assert symbol is not None
        return web.json_response(self.order_json(self._find(p, symbol)))

    async def cancel(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        symbol = self._symbol(p)
        assert symbol is not None
        try:
            order = self._find(p, symbol)
        except OrderError:
            raise OrderError("not_cancelable", "Unknown order sent.") from None
        self.engine.cancel(order.id)
        return web.json_response(self._cancel_json(order, p.get("newClientOrderId")))

    def _cancel_json(self, order: Order, cancel_id: str | None = None) -> dict[str, Any]:
        out = self.order_json(order)
        for key in ("time", "updateTime", "isWorking", "workingTime", "stopPrice",
                    "icebergQty"):
            out.pop(key, None)
        out.update(origClientOrderId=order.client_order_id, transactTime=now_ms(),
                   clientOrderId=cancel_id or uuid.uuid4().hex[:22])
        return out

    async def cancel_open(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        symbol = self._symbol(p)
        done = [self.engine.cancel(o.id) for o in self.engine.open_orders(symbol)]
        return web.json_response([self._cancel_json(o) for o in done])

    async def open_orders(self, request: web.Request) -> web.Response:
        symbol = self._symbol(await self._params(request), required=False)
        return web.json_response([self.order_json(o) for o in self.engine.open_orders(symbol)])

    async def all_orders(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        symbol = self._symbol(p)
        start, end, limit = _ms(p, "startTime"), _ms(p, "endTime"), _limit(p, 500, 1000)
        from_id = int(p["orderId"]) if p.get("orderId", "").isdigit() else None
        orders = [o for o in self.engine.orders.values() if o.symbol == symbol
                  and (from_id is None or o.seq >= from_id)
                  and (start is None or o.created_at >= start)
                  and (end is None or o.created_at <= end)]
        orders = orders[:limit] if from_id is not None or start is not None else orders[-limit:]
        return web.json_response([self.order_json(o) for o in orders])

    async def my_trades(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        symbol = self._symbol(p)
        start, end, limit = _ms(p, "startTime"), _ms(p, "endTime"), _limit(p, 500, 1000)
        order_seq = int(p["orderId"]) if p.get("orderId", "").isdigit() else None
        from_id = int(p["fromId"]) if p.get("fromId", "").isdigit() else None
        fills = [f for f in self.engine.fills if f.symbol == symbol
                 and (order_seq is None or f.order_seq == order_seq)
                 and (from_id is None or f.seq >= from_id)
                 and (start is None or f.time >= start) and (end is None or f.time <= end)]
        fills = fills[:limit] if from_id is not None or start is not None else fills[-limit:]
        return web.json_response([{
            "symbol": market_id(f.symbol), "id": f.seq, "orderId": f.order_seq,
            "orderListId": -1, "price": f8(f.price), "qty": f8(f.qty),
            "quoteQty": f8(f.qty * f.price), "commission": f8(0),
            "commissionAsset": self.bases[f.symbol], "time": int(f.time * 1000),
            "isBuyer": f.side == "buy", "isMaker": False, "isBestMatch": True,
        } for f in fills])

    async def account(self, request: web.Request) -> web.Response:
        p = await self._params(request)
        balances = self._balances()
        if p.get("omitZeroBalances") == "true":
            balances = [b for b in balances if float(b["free"]) or float(b["locked"])]
        return web.json_response({
            "makerCommission": 0, "takerCommission": 0, "buyerCommission": 0,
            "sellerCommission": 0, "commissionRates": {"maker": f8(0), "taker": f8(0),
                                                       "buyer": f8(0), "seller": f8(0)},
            "canTrade": True, "canWithdraw": False, "canDeposit": False, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": now_ms(), "accountType": "SPOT", "balances": balances,
            "permissions": ["SPOT"], "uid": 1,
        })


def _instrument(symbol: str, price: float) -> Instrument:
    """Binance-like filters from the price: BTC 0.00001 lots, ETH 0.0001, SOL 0.001..."""
    qty_step = 10.0 ** -(math.floor(math.log10(price)) + 1)
    price_step = 0.01 if price >= 10 else 0.0001
    return Instrument(symbol, qty_step=min(qty_step, 1.0), min_qty=min(qty_step, 1.0),
                      min_notional=5.0, price_step=price_step, start_price=None)
