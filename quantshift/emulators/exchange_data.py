"""The Binance-shaped exchange's public market-data endpoints (a mixin)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from quantshift.emulators.bars import Bar
from quantshift.emulators.base import now_ms
from quantshift.emulators.matching import OrderError

if TYPE_CHECKING:
    from quantshift.emulators.matching import MatchingEngine

INTERVALS = {"1s": 1, "1m": 60, "3m": 180, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600,
             "2h": 7200, "4h": 14400, "6h": 21600, "8h": 28800, "12h": 43200, "1d": 86400,
             "3d": 259200, "1w": 604800, "1M": 2592000}
# The matching engine's order status -> Binance's
STATUS = {"new": "NEW", "accepted": "NEW", "partially_filled": "PARTIALLY_FILLED",
          "filled": "FILLED", "canceled": "CANCELED", "rejected": "REJECTED",
          "expired": "EXPIRED"}


def f8(x: float | None) -> str:
    return f"{x or 0.0:.8f}"


def market_id(symbol: str) -> str:
    return symbol.replace("/", "").replace("-", "").upper()


class _BadRequest(OrderError):
    """A request Binance refuses with its own code (answered HTTP 400)."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__("bad_request", msg)
        self.code = code


def _bad(code: int, msg: str) -> _BadRequest:
    return _BadRequest(code, msg)


def _num(p: Mapping[str, str], key: str) -> float | None:
    if not p.get(key):
        return None
    try:
        value = float(p[key])
    except ValueError:
        raise _bad(-1100, f"Illegal characters found in parameter '{key}'.") from None
    if not math.isfinite(value):
        raise _bad(-1100, f"Illegal characters found in parameter '{key}'.")
    return value


def _ms(p: Mapping[str, str], key: str) -> float | None:
    value = _num(p, key)
    return None if value is None else value / 1000.0


def _limit(p: Mapping[str, str], default: int, top: int) -> int:
    value = _num(p, "limit")
    return default if value is None else max(1, min(int(value), top))


class BinanceMarketData:
    """``/api/v3`` ping, time, exchangeInfo, ticker/24hr, ticker/price, depth, klines."""

    engine: MatchingEngine
    ids: dict[str, str]
    bases: dict[str, str]
    quote: str

    def _symbol(self, params: Mapping[str, str], required: bool = True) -> str | None:
        mid = params.get("symbol")
        if not mid:
            if required:
                raise _bad(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, "
                                  "or malformed.")
            return None
        if mid not in self.ids:
            raise _bad(-1121, "Invalid symbol.")
        return self.ids[mid]

    # -- JSON shapes ---------------------------------------------------------------------------

    @staticmethod
    def kline(b: Bar, seconds: int) -> list[Any]:
        t = round(b.time * 1000)
        return [t, f8(b.open), f8(b.high), f8(b.low), f8(b.close), f8(b.volume),
                t + seconds * 1000 - 1, f8(b.volume * b.vwap), b.trades,
                f8(b.volume / 2), f8(b.volume * b.vwap / 2), "0"]

    # -- public REST ---------------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": now_ms()})

    async def exchange_info(self, request: web.Request) -> web.Response:
        wanted = set(self.ids.values())
        if request.query.get("symbol"):
            wanted = {self._symbol(request.query)}  # type: ignore[arg-type]
        out = []
        for symbol in wanted:
            inst = self.engine.instruments[symbol]
            out.append({
                "symbol": market_id(symbol), "status": "TRADING",
                "baseAsset": self.bases[symbol], "baseAssetPrecision": 8,
                "quoteAsset": self.quote, "quotePrecision": 8, "quoteAssetPrecision": 8,
                "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"], "icebergAllowed": False,
                "ocoAllowed": False, "otoAllowed": False, "quoteOrderQtyMarketAllowed": True,
                "allowTrailingStop": False, "cancelReplaceAllowed": False,
                "isSpotTradingAllowed": True, "isMarginTradingAllowed": False,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": f8(inst.price_step),
                     "maxPrice": f8(10_000_000), "tickSize": f8(inst.price_step)},
                    {"filterType": "LOT_SIZE", "minQty": f8(inst.min_qty),
                     "maxQty": f8(9_000_000), "stepSize": f8(inst.qty_step)},
                    {"filterType": "NOTIONAL", "minNotional": f8(inst.min_notional),
                     "applyMinToMarket": True, "maxNotional": f8(9_000_000),
                     "applyMaxToMarket": False, "avgPriceMins": 5},
                ],
                "permissions": [], "permissionSets": [["SPOT"]],
                "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
                "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_MAKER", "EXPIRE_TAKER",
                                                    "EXPIRE_BOTH"],
            })
        return web.json_response({"timezone": "UTC", "serverTime": now_ms(),
                                  "rateLimits": [], "exchangeFilters": [], "symbols": out})

    def _ticker(self, symbol: str) -> dict[str, Any]:
        now = time.time()
        bars = self.engine.bars(symbol, start=now - 86400) or list(self.engine.history[symbol])[-1:]
        last = self.engine.last[symbol]
        first = bars[0].open if bars else last
        high = max((b.high for b in bars), default=last)
        low = min((b.low for b in bars), default=last)
        vol = sum(b.volume for b in bars)
        step = self.engine.instruments[symbol].price_step
        return {
            "symbol": market_id(symbol), "priceChange": f8(last - first),
            "priceChangePercent": f"{(last / first - 1) * 100 if first else 0:.3f}",
            "weightedAvgPrice": f8(sum(b.vwap * b.volume for b in bars) / vol if vol else last),
            "prevClosePrice": f8(first), "lastPrice": f8(last), "lastQty": f8(0),
            "bidPrice": f8(last - step), "bidQty": f8(1), "askPrice": f8(last + step),
            "askQty": f8(1), "openPrice": f8(first), "highPrice": f8(high),
            "lowPrice": f8(low), "volume": f8(vol), "quoteVolume": f8(vol * last),
            "openTime": int((bars[0].time if bars else now) * 1000), "closeTime": now_ms(),
            "firstId": -1, "lastId": -1, "count": sum(b.trades for b in bars),
        }

    def _symbols_param(self, q: Mapping[str, str]) -> list[str] | None:
        if q.get("symbol"):
            return [self._symbol(q)]  # type: ignore[list-item]
        if q.get("symbols"):
            try:
                ids = json.loads(q["symbols"])
            except ValueError:
                raise _bad(-1100, "Illegal characters found in parameter 'symbols'.") from None
            return [self._symbol({"symbol": i}) for i in ids]  # type: ignore[misc]
        return None

    async def ticker_24hr(self, request: web.Request) -> web.Response:
        chosen = self._symbols_param(request.query)
        if request.query.get("symbol"):
            return web.json_response(self._ticker(chosen[0]))  # type: ignore[index]
        return web.json_response([self._ticker(s) for s in chosen or self.ids.values()])

    async def ticker_price(self, request: web.Request) -> web.Response:
        chosen = self._symbols_param(request.query)
        items = [{"symbol": market_id(s), "price": f8(self.engine.last[s])}
                 for s in chosen or self.ids.values()]
        return web.json_response(items[0] if request.query.get("symbol") else items)

    async def depth(self, request: web.Request) -> web.Response:
        symbol = self._symbol(request.query)
        assert symbol is not None
        last, step = self.engine.last[symbol], self.engine.instruments[symbol].price_step
        levels = max(1, min(int(request.query.get("limit", 5) or 5), 100))
        return web.json_response({
            "lastUpdateId": self.engine.bars_emitted,
            "bids": [[f8(last - step * (i + 1)), f8(1)] for i in range(levels)],
            "asks": [[f8(last + step * (i + 1)), f8(1)] for i in range(levels)]})

    async def klines(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = self._symbol(q)
        assert symbol is not None
        seconds = INTERVALS.get(q.get("interval", ""))
        if seconds is None:
            raise _bad(-1120, "Invalid interval.")
        start, end, limit = _ms(q, "startTime"), _ms(q, "endTime"), _limit(q, 500, 1000)
        bars = self.engine.bars(symbol, start, end, seconds)
        bars = bars[:limit] if start is not None else bars[-limit:]
        return web.json_response([self.kline(b, seconds) for b in bars])

    # -- private REST --------------------------------------------------------------------------
