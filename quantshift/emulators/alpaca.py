"""A local Alpaca: trading REST, market-data REST and both websockets, in Alpaca's
documented shapes, so the unmodified alpaca-py clients work through ``url_override``.

    emu = AlpacaEmulator(["AAPL", "MSFT"], interval=1.0)
    await emu.start()          # emu.base_url, emu.data_stream_url, emu.trading_stream_url
    TradingClient("k", "s", paper=True, url_override=emu.base_url)
    StockHistoricalDataClient("k", "s", url_override=emu.base_url)   # GET /v2/stocks/bars
    StockDataStream("k", "s", url_override=emu.data_stream_url)
    TradingStream("k", "s", url_override=emu.trading_stream_url)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from quantshift.emulators import alpaca_ws
from quantshift.emulators.alpaca_data import AlpacaMarketData
from quantshift.emulators.alpaca_json import NS, AlpacaShapes
from quantshift.emulators.bars import csv_symbols, parse_time
from quantshift.emulators.base import BaseEmulator, ControlError, iso, num
from quantshift.emulators.matching import (
    Instrument,
    MatchingEngine,
    Order,
    OrderError,
    symbols_or_default,
)

DEFAULT_SYMBOLS = ("AAPL", "MSFT", "SPY")

# OrderError.kind -> (HTTP status, Alpaca error code)
ERRORS = {
    "duplicate": (422, 40010001),
    "unknown_symbol": (422, 40010001),
    "invalid": (422, 40010001),
    "invalid_qty": (422, 40010001),
    "invalid_price": (422, 40010001),
    "min_notional": (422, 40010001),
    "insufficient_funds": (403, 40310000),
    "insufficient_qty": (403, 40310000),
    "invalid_legs": (422, 42210000),
    "not_found": (404, 40410000),
    "not_cancelable": (422, 42210000),
}


class AlpacaEmulator(AlpacaShapes, AlpacaMarketData, BaseEmulator):
    venue = "alpaca"
    stream_paths = ("/stream", "/v2/iex", "/v2/sip", "/v2/delayed_sip", "/v2/test")

    def __init__(self, symbols: Sequence[str] | str | None = None, interval: float = 1.0,
                 data: str | Path | None = None, seed: int = 1, cash: float = 100_000,
                 *, fractionable: bool = True, warmup: int = 100,
                 max_data_connections: int = 1) -> None:
        if symbols is None and data is not None:
            symbols = csv_symbols(data) or None
        names = symbols_or_default(symbols, DEFAULT_SYMBOLS)
        step = 1e-9 if fractionable else 1.0
        instruments = [Instrument(s, qty_step=step, min_qty=step, min_notional=1.0,
                                  price_step=0.01) for s in names]
        super().__init__(MatchingEngine(instruments, interval=interval, data=data, seed=seed,
                                        cash=cash, allow_short=True, warmup=warmup))
        self.fractionable = fractionable
        self.started_at = time.time()
        self.initial_cash = float(cash)
        self.account_id = str(uuid.uuid5(NS, f"account:{seed}"))
        self.max_data_connections = max_data_connections  # Alpaca allows one; 0 = no limit
        self.data_authed = 0  # authenticated market-data sockets right now
        self.subscribed = 0   # market-data sockets subscribed to bars right now
        self.listening = 0    # trading sockets listening to trade_updates right now
        self.data_stream_url: str | None = None
        self.trading_stream_url: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    run_bars: bool = True) -> None:
        await super().start(host, port, run_bars=run_bars)
        self.data_stream_url = f"ws://{host}:{self.port}/v2/iex"
        self.trading_stream_url = f"ws://{host}:{self.port}/stream"

    # -- plumbing ------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v2/account", self.account)
        r.add_get("/v2/account/activities", self.activities)
        r.add_get("/v2/account/activities/{type}", self.activities)
        r.add_post("/v2/orders", self.submit)
        r.add_get("/v2/orders", self.list_orders)
        r.add_delete("/v2/orders", self.cancel_all)
        r.add_get("/v2/orders:by_client_order_id", self.by_client_id)
        r.add_get("/v2/orders/{id}", self.get_order)
        r.add_delete("/v2/orders/{id}", self.cancel)
        r.add_get("/v2/positions", self.positions)
        r.add_delete("/v2/positions", self.close_all)
        r.add_get("/v2/positions/{symbol}", self.position)
        r.add_delete("/v2/positions/{symbol}", self.close_position)
        r.add_get("/v2/assets", self.assets)
        r.add_get("/v2/assets/{symbol}", self.asset)
        r.add_get("/v2/clock", self.clock)
        r.add_get("/v2/stocks/bars", self.bars)
        r.add_get("/v2/stocks/bars/latest", self.latest_bars)
        r.add_get("/v2/stocks/{symbol}/bars", self.symbol_bars)
        r.add_get("/stream", self._trading_ws)
        for path in self.stream_paths[1:]:
            r.add_get(path, self._data_ws)
        r.add_post("/_emulator/clock", self._set_clock)

    def scope_of(self, request: web.Request) -> str:
        return "submit" if request.method == "POST" and request.path == "/v2/orders" \
            else "status"

    def error_response(self, status: int, kind: str, message: str) -> web.Response:
        code = {401: 40110000, 403: 40310000, 404: 40410000, 429: 42910000,
                500: 50010000}.get(status, 40010001)
        return web.json_response({"code": code, "message": message}, status=status)

    def order_error(self, exc: OrderError) -> web.Response:
        status, code = ERRORS.get(exc.kind, (422, 40010001))
        message = "client_order_id must be unique" if exc.kind == "duplicate" else exc.message
        return web.json_response({"code": code, "message": message}, status=status)

    def check_auth(self, request: web.Request) -> web.Response | None:
        h = request.headers
        if (h.get("APCA-API-KEY-ID") and h.get("APCA-API-SECRET-KEY")) \
                or h.get("Authorization", "").split(" ")[-1]:
            return None
        return self.error_response(401, "auth", "request is not authorized")

    def extra_state(self) -> dict[str, Any]:
        return {"clock": self.clock_json(), "data_connections": self.data_authed,
                "bar_subscribers": self.subscribed,
                "trade_update_listeners": self.listening}

    # -- trading REST --------------------------------------------------------------------------

    async def account(self, request: web.Request) -> web.Response:
        eng = self.engine
        longs = sum(p.qty * eng.last[s] for s, p in eng.account.positions.items() if p.qty > 0)
        shorts = sum(p.qty * eng.last[s] for s, p in eng.account.positions.items() if p.qty < 0)
        reserved = sum(o.remaining * (o.limit_price or eng.last[o.symbol])
                       for o in eng.open_orders() if o.side == "buy" and not o.protective)
        bp = num(max(eng.account.cash - reserved, 0.0), 2)
        equity = num(eng.equity(), 2)
        return web.json_response({
            "id": self.account_id, "account_number": "PA3EMULATOR1", "status": "ACTIVE",
            "crypto_status": "ACTIVE", "currency": "USD", "buying_power": bp,
            "regt_buying_power": bp, "daytrading_buying_power": bp,
            "effective_buying_power": bp, "non_marginable_buying_power": bp,
            "options_buying_power": bp, "bod_dtbp": "0", "cash": num(eng.account.cash, 2),
            "accrued_fees": "0", "pending_transfer_in": "0", "portfolio_value": equity,
            "pattern_day_trader": False, "trading_blocked": False, "transfers_blocked": False,
            "account_blocked": False, "created_at": iso(self.started_at),
            "trade_suspended_by_user": False, "multiplier": "1", "shorting_enabled": True,
            "equity": equity, "last_equity": num(self.initial_cash, 2),
            "long_market_value": num(longs, 2), "short_market_value": num(shorts, 2),
            "position_market_value": num(longs - shorts, 2), "initial_margin": "0",
            "maintenance_margin": "0", "last_maintenance_margin": "0", "sma": "0",
            "daytrade_count": 0, "options_approved_level": 0, "options_trading_level": 0,
        })

    async def submit(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return self.error_response(400, "invalid", "request body format is invalid")
        order_class = body.get("order_class") or "simple"
        take_profit, stop_loss = body.get("take_profit") or {}, body.get("stop_loss") or {}
        if not (isinstance(order_class, str) and isinstance(take_profit, dict)
                and isinstance(stop_loss, dict)):
            return self.error_response(400, "invalid", "request body format is invalid")
        try:
            qty = _opt_float(body, "qty")
            notional = _opt_float(body, "notional")
            limit = _opt_float(body, "limit_price")
            legs = {"take_profit": _opt_float(take_profit, "limit_price", "take_profit."),
                    "stop_loss": _opt_float(stop_loss, "stop_price", "stop_loss."),
                    "stop_limit": _opt_float(stop_loss, "limit_price", "stop_loss.")}
        except ValueError as exc:
            return self.error_response(422, "invalid", str(exc))
        coid = body.get("client_order_id")
        if coid is not None and (not isinstance(coid, str) or len(coid) > 128):
            return self.error_response(422, "invalid",
                                       "client_order_id must be no more than 128 characters")
        otype = body.get("type", body.get("order_type"))
        if qty is not None and notional is not None:
            return self.error_response(422, "invalid", "qty and notional can't both be set")
        if qty is not None and qty % 1 and body.get("time_in_force") != "day":
            return self.error_response(422, "invalid", "fractional orders must be DAY orders")
        if qty is not None and qty % 1 and not self.fractionable:
            return self.error_response(422, "invalid", "qty must be integer")
        symbol, side = str(body.get("symbol", "")), str(body.get("side", ""))
        self._check_available(symbol, side, qty)
        partial = self.faults.take("submit", ("partial_fill",))
        dup = self.faults.take("submit", ("duplicate_id", "lost_ack", "reject"))
        order = self.engine.submit(
            symbol, side, qty, type=str(otype), limit_price=limit,
            time_in_force=str(body.get("time_in_force", "")), client_order_id=coid,
            notional=notional, partial=partial.fraction if partial else None,
            reject=dup is not None and dup.name == "reject", order_class=order_class,
            **(legs if order_class != "simple" else {}))
        if dup is not None and dup.name == "duplicate_id":
            return self.order_error(OrderError("duplicate", "client_order_id must be unique"))
        if dup is not None and dup.name == "lost_ack":
            return self.lose_ack(request)
        return web.json_response(self.order_json(order))

    def _check_available(self, symbol: str, side: str, qty: float | None) -> None:
        """Shares that open orders hold (a bracket's legs) cannot be sold again: Alpaca
        refuses an order that closes more than the rest."""
        pos = self.engine.position_qty(symbol) if symbol in self.engine.instruments else 0.0
        if qty is None or not ((pos > 0 and side == "sell") or (pos < 0 and side == "buy")):
            return
        held = self.engine.reserved(symbol, side)
        if held > 0 and qty > abs(pos) - held + 1e-9:
            raise OrderError("insufficient_qty", f"insufficient qty available for order "
                                                 f"(requested: {num(qty)}, available: "
                                                 f"{num(max(abs(pos) - held, 0.0))})")

    async def list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise OrderError("invalid", f"invalid status {status!r}")
        nested = _flag(q.get("nested"))

        def wanted(o: Order) -> bool:
            return status == "all" or (o.is_open == (status == "open"))

        if nested:  # legs inside their order, which is listed while it or a leg matches
            orders = [o for o in self.engine.orders.values() if o.parent_id is None and (
                wanted(o) or any(wanted(leg) for leg in self.engine.legs_of(o)))]
        else:
            orders = [o for o in self.engine.orders.values() if wanted(o)]
        if q.get("symbols"):
            wanted = set(q["symbols"].split(","))
            orders = [o for o in orders if o.symbol in wanted]
        if q.get("side"):
            orders = [o for o in orders if o.side == q["side"]]
        try:
            after = parse_time(q["after"]) if q.get("after") else None
            until = parse_time(q["until"]) if q.get("until") else None
            limit = min(int(q.get("limit", 50)), 500)
        except ValueError:
            raise OrderError("invalid", "invalid after, until or limit") from None
        orders = [o for o in orders if (after is None or o.created_at > after)
                  and (until is None or o.created_at < until)]
        orders.sort(key=lambda o: o.seq, reverse=q.get("direction", "desc") == "desc")
        return web.json_response([self.order_json(o, nested) for o in orders[:limit]])

    async def get_order(self, request: web.Request) -> web.Response:
        nested = _flag(request.query.get("nested", "true"))
        return web.json_response(self.order_json(self.engine.get(request.match_info["id"]),
                                                 nested))

    async def by_client_id(self, request: web.Request) -> web.Response:
        coid = request.query.get("client_order_id", "")
        return web.json_response(self.order_json(self.engine.by_client_order_id(coid)))

    async def cancel(self, request: web.Request) -> web.Response:
        self.engine.cancel(request.match_info["id"])
        return web.Response(status=204)

    async def cancel_all(self, request: web.Request) -> web.Response:
        done = self.engine.cancel_all()
        return web.json_response(
            [{"id": o.id, "status": 200, "body": self.order_json(o)} for o in done], status=207)

    async def positions(self, request: web.Request) -> web.Response:
        return web.json_response(
            [self.position_json(s) for s in sorted(self.engine.account.positions)])

    async def position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        if symbol not in self.engine.account.positions:
            return self.error_response(404, "not_found", "position does not exist")
        return web.json_response(self.position_json(symbol))

    def _close(self, symbol: str) -> Order:
        for o in self.engine.open_orders(symbol):
            if o.is_open:  # cancelling a leg cancels its sibling
                self.engine.cancel(o.id)
        qty = self.engine.position_qty(symbol)
        return self.engine.submit(symbol, "sell" if qty > 0 else "buy", abs(qty))

    async def close_position(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        if symbol not in self.engine.account.positions:
            return self.error_response(404, "not_found", "position does not exist")
        return web.json_response(self.order_json(self._close(symbol)))

    async def close_all(self, request: web.Request) -> web.Response:
        if request.query.get("cancel_orders", "").lower() in ("true", "1"):
            self.engine.cancel_all()
        out = [{"symbol": s, "status": 200, "body": self.order_json(self._close(s))}
               for s in sorted(self.engine.account.positions)]
        return web.json_response(out, status=207)

    async def assets(self, request: web.Request) -> web.Response:
        cls = request.query.get("asset_class", "us_equity")
        items = [] if cls != "us_equity" else [self.asset_json(s) for s in self.engine.instruments]
        return web.json_response(items)

    async def asset(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        if symbol not in self.engine.instruments:
            return self.error_response(404, "not_found", f"asset not found for {symbol}")
        return web.json_response(self.asset_json(symbol))

    async def clock(self, request: web.Request) -> web.Response:
        return web.json_response(self.clock_json())

    async def activities(self, request: web.Request) -> web.Response:
        q = request.query
        kinds = request.match_info.get("type") or q.get("activity_types", "FILL")
        if "FILL" not in kinds.split(","):
            return web.json_response([])
        try:
            after = parse_time(q["after"]) if q.get("after") else None
            until = parse_time(q["until"]) if q.get("until") else None
            size = max(1, min(int(q.get("page_size", 100)), 100))
        except ValueError:
            raise OrderError("invalid", "invalid after, until or page_size") from None
        items = [self.fill_activity(f) for f in self.engine.fills
                 if (after is None or f.time > after) and (until is None or f.time < until)]
        if q.get("direction", "desc") == "desc":
            items.reverse()
        if q.get("page_token"):
            ids = [a["id"] for a in items]
            items = items[ids.index(q["page_token"]) + 1:] if q["page_token"] in ids else []
        return web.json_response(items[:size])

    # -- market-data REST ----------------------------------------------------------------------

    async def _trading_ws(self, request: web.Request) -> web.StreamResponse:
        return await alpaca_ws.trading_stream(self, request)

    async def _data_ws(self, request: web.Request) -> web.StreamResponse:
        return await alpaca_ws.data_stream(self, request)

    # -- control -------------------------------------------------------------------------------

    async def _set_clock(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        if not isinstance(body.get("is_open"), bool):
            raise ControlError("is_open (true or false) is required")
        self.engine.set_open(body["is_open"])
        return web.json_response({"ok": True, "clock": self.clock_json()})


def _opt_float(body: dict[str, Any], key: str, where: str = "") -> float | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid {where}{key}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise ValueError(f"invalid {where}{key}")
    return out


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")
