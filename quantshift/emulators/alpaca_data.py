"""Alpaca's market-data REST: ``/v2/stocks/bars`` (multi-symbol, paged), the
single-symbol bars and the latest bars (a mixin of AlpacaEmulator)."""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from quantshift.emulators.bars import Bar, parse_time
from quantshift.emulators.base import iso
from quantshift.emulators.matching import OrderError

if TYPE_CHECKING:
    from quantshift.emulators.matching import MatchingEngine

TIMEFRAME = re.compile(r"^(\d+)(Sec|S|Min|T|Hour|H|Day|D|Week|W|Month|M)$")
UNIT_SECONDS = {"Sec": 1, "S": 1, "Min": 60, "T": 60, "Hour": 3600, "H": 3600, "Day": 86400,
                "D": 86400, "Week": 604800, "W": 604800, "Month": 2592000, "M": 2592000}


class AlpacaMarketData:
    engine: MatchingEngine

    @staticmethod
    def bar_json(b: Bar) -> dict[str, Any]:
        return {"t": iso(b.time, micro=False), "o": b.open, "h": b.high, "l": b.low,
                "c": b.close, "v": b.volume, "n": b.trades, "vw": round(b.vwap, 4)}

    def _query_bars(self, q: Any, symbols: list[str]) -> tuple[list[tuple[str, Bar]], str | None]:
        m = TIMEFRAME.match(q.get("timeframe", "1Min"))
        if not m:
            raise OrderError("invalid", "invalid timeframe")
        seconds = int(m.group(1)) * UNIT_SECONDS[m.group(2)]
        try:
            start = parse_time(q["start"]) if q.get("start") else None
            end = parse_time(q["end"]) if q.get("end") else None
            limit = max(1, min(int(q.get("limit") or 1000), 10_000))
            offset = int(base64.b64decode(q["page_token"]).decode()) if q.get("page_token") else 0
        except (ValueError, TypeError):
            raise OrderError("invalid", "invalid start, end, limit or page_token") from None
        rows = [(s, b) for s in sorted(symbols) if s in self.engine.instruments
                for b in self.engine.bars(s, start, end, seconds)]
        if q.get("sort") == "desc":
            rows.sort(key=lambda sb: (sb[0], -sb[1].time))
        page = rows[offset:offset + limit]
        more = offset + limit < len(rows)
        token = base64.b64encode(str(offset + limit).encode()).decode() if more else None
        return page, token

    async def bars(self, request: web.Request) -> web.Response:
        symbols = [s for s in request.query.get("symbols", "").split(",") if s]
        if not symbols:
            return self.error_response(400, "invalid", "missing symbols")
        page, token = self._query_bars(request.query, symbols)
        out: dict[str, list[dict[str, Any]]] = {}
        for symbol, bar in page:
            out.setdefault(symbol, []).append(self.bar_json(bar))
        return web.json_response({"bars": out, "next_page_token": token})

    async def symbol_bars(self, request: web.Request) -> web.Response:
        symbol = request.match_info["symbol"]
        page, token = self._query_bars(request.query, [symbol])
        return web.json_response({"bars": [self.bar_json(b) for _, b in page],
                                  "symbol": symbol, "next_page_token": token})

    async def latest_bars(self, request: web.Request) -> web.Response:
        out = {}
        for s in request.query.get("symbols", "").split(","):
            hist = self.engine.history.get(s)
            if hist:
                out[s] = self.bar_json(hist[-1])
        return web.json_response({"bars": out})
