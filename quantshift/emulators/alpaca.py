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
from quantshift.emulators.bars import csv_symbols, parse_time
from quantshift.emulators.base import BaseEmulator, ControlError, iso, num
from quantshift.emulators.matching import (
    Fill,
    Instrument,
    MatchingEngine,
    Order,
    OrderError,
    symbols_or_default,
)

DEFAULT_SYMBOLS = ("AAPL", "MSFT", "SPY")
NS = uuid.UUID("6f1c1c4e-6a55-4a8e-9d51-0c0ffee00001")

# OrderError.kind -> (HTTP status, Alpaca error code)
ERRORS = {
    "duplicate": (422, 40010001),
    "unknown_symbol": (422, 40010001),
    "invalid": (422, 40010001),
    "invalid_qty": (422, 40010001),
    "invalid_price": (422, 40010001),
    "min_notional": (422, 40010001),
    "insufficient_funds": (403, 40310000),
    "not_found": (404, 40410000),
    "not_cancelable": (422, 42210000),
}


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(NS, symbol))


class AlpacaEmulator(AlpacaMarketData, BaseEmulator):
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

    # -- JSON shapes ---------------------------------------------------------------------------

    def order_json(self, o: Order) -> dict[str, Any]:
        return {
            "id": o.id, "client_order_id": o.client_order_id,
            "created_at": iso(o.created_at), "updated_at": iso(o.updated_at),
            "submitted_at": iso(o.created_at), "filled_at": iso(o.filled_at),
            "expired_at": iso(o.expired_at), "canceled_at": iso(o.canceled_at),
            "failed_at": iso(o.failed_at), "replaced_at": None, "replaced_by": None,
            "replaces": None, "asset_id": asset_id(o.symbol), "symbol": o.symbol,
            "asset_class": "us_equity", "notional": num(o.notional),
            "qty": None if o.notional is not None else num(o.qty),
            "filled_qty": num(o.filled_qty), "filled_avg_price": num(o.filled_avg_price),
            "order_class": "simple", "order_type": o.type, "type": o.type, "side": o.side,
            "position_intent": None, "time_in_force": o.time_in_force,
            "limit_price": num(o.limit_price), "stop_price": None, "status": o.status,
            "extended_hours": False, "legs": None, "trail_percent": None,
            "trail_price": None, "hwm": None, "subtag": None, "source": None,
            "expires_at": None,
        }

    def fill_activity(self, f: Fill) -> dict[str, Any]:
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(f.time)) + f"{int(f.time % 1 * 1000):03d}"
        return {
            "id": f"{stamp}::{uuid.uuid5(NS, 'fill:' + f.id)}", "activity_type": "FILL",
            "transaction_time": iso(f.time),
            "type": "fill" if f.leaves_qty <= 0 else "partial_fill",
            "price": num(f.price), "qty": num(f.qty), "side": f.side, "symbol": f.symbol,
            "leaves_qty": num(f.leaves_qty), "order_id": f.order_id, "cum_qty": num(f.cum_qty),
            "order_status": f.order_status,
        }

    def position_json(self, symbol: str) -> dict[str, Any]:
        pos = self.engine.account.positions[symbol]
        last = self.engine.last[symbol]
        hist = self.engine.history[symbol]
        lastday = hist[0].open if hist else pos.avg_price
        value, cost = pos.qty * last, pos.qty * pos.avg_price
        upl = value - cost
        reserved = sum(o.remaining for o in self.engine.open_orders(symbol) if o.side == "sell")
        return {
            "asset_id": asset_id(symbol), "symbol": symbol, "exchange": "NASDAQ",
            "asset_class": "us_equity", "asset_marginable": True, "qty": num(pos.qty),
            "qty_available": num(pos.qty - reserved if pos.qty > 0 else pos.qty),
            "avg_entry_price": num(pos.avg_price), "side": "long" if pos.qty > 0 else "short",
            "market_value": num(value, 4), "cost_basis": num(cost, 4),
            "unrealized_pl": num(upl, 4), "unrealized_plpc": num(upl / abs(cost) if cost else 0),
            "unrealized_intraday_pl": num(upl, 4),
            "unrealized_intraday_plpc": num(upl / abs(cost) if cost else 0),
            "current_price": num(last), "lastday_price": num(lastday),
            "change_today": num(last / lastday - 1 if lastday else 0),
        }

    def asset_json(self, symbol: str) -> dict[str, Any]:
        inst = self.engine.instruments[symbol]
        return {
            "id": asset_id(symbol), "class": "us_equity", "exchange": "NASDAQ",
            "symbol": symbol, "name": f"{symbol} (emulated)", "status": "active",
            "tradable": True, "marginable": True, "shortable": True, "easy_to_borrow": True,
            "fractionable": self.fractionable, "maintenance_margin_requirement": 30,
            "min_order_size": num(inst.min_qty), "min_trade_increment": num(inst.qty_step),
            "price_increment": num(inst.price_step), "attributes": [],
        }

    def clock_json(self) -> dict[str, Any]:
        now = time.time()
        opens = now + (86400 - 6.5 * 3600 if self.engine.is_open else 3600)
        closes = now + (6.5 * 3600 if self.engine.is_open else 3600 + 6.5 * 3600)
        return {"timestamp": iso(now), "is_open": self.engine.is_open,
                "next_open": iso(opens, micro=False), "next_close": iso(closes, micro=False)}

    # -- trading REST --------------------------------------------------------------------------

    async def account(self, request: web.Request) -> web.Response:
        eng = self.engine
        longs = sum(p.qty * eng.last[s] for s, p in eng.account.positions.items() if p.qty > 0)
        shorts = sum(p.qty * eng.last[s] for s, p in eng.account.positions.items() if p.qty < 0)
        reserved = sum(o.remaining * (o.limit_price or eng.last[o.symbol])
                       for o in eng.open_orders() if o.side == "buy")
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
        try:
            qty = _opt_float(body, "qty")
            notional = _opt_float(body, "notional")
            limit = _opt_float(body, "limit_price")
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
        partial = self.faults.take("submit", ("partial_fill",))
        dup = self.faults.take("submit", ("duplicate_id", "lost_ack", "reject"))
        order = self.engine.submit(
            str(body.get("symbol", "")), str(body.get("side", "")), qty,
            type=str(otype), limit_price=limit,
            time_in_force=str(body.get("time_in_force", "")), client_order_id=coid,
            notional=notional, partial=partial.fraction if partial else None,
            reject=dup is not None and dup.name == "reject")
        if dup is not None and dup.name == "duplicate_id":
            return self.order_error(OrderError("duplicate", "client_order_id must be unique"))
        if dup is not None and dup.name == "lost_ack":
            return self.lose_ack(request)
        return web.json_response(self.order_json(order))

    async def list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status", "open")
        if status not in ("open", "closed", "all"):
            raise OrderError("invalid", f"invalid status {status!r}")
        orders = [o for o in self.engine.orders.values()
                  if status == "all" or (o.is_open == (status == "open"))]
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
        return web.json_response([self.order_json(o) for o in orders[:limit]])

    async def get_order(self, request: web.Request) -> web.Response:
        return web.json_response(self.order_json(self.engine.get(request.match_info["id"])))

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


def _opt_float(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid {key}") from None
    if out != out or out in (float("inf"), float("-inf")):
        raise ValueError(f"invalid {key}")
    return out
