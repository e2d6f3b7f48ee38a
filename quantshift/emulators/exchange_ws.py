"""The Binance-shaped exchange's websockets, as ccxt.pro's ``binance`` class uses them.

* Market streams at ``/ws`` and ``/ws/<name>`` (ccxt dials ``/ws/<n>``; a stream name in the
  path subscribes at once): ``{"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"],
  "id": 1}`` answers ``{"result": null, "id": 1}``; candles then arrive as
  ``{"e": "kline", "E", "s", "k": {"t", "T", "s", "i", "o", "c", "h", "l", "v", "x", ...}}``.
  ``/stream?streams=a/b`` is the combined form: each event wrapped as ``{"stream", "data"}``.
* The WebSocket API at ``/ws-api/v3``: ``userDataStream.subscribe.signature`` (what ccxt
  sends for spot; there is no listenKey) opens the account's user-data stream on that
  socket, and order updates arrive as ``{"subscriptionId": n, "event": {"e":
  "executionReport", ...}}``.

Candles come from the engine's bars, the history ``/api/v3/klines`` serves, so a REST
backfill and the stream always agree. When a bar closes, a subscriber gets the closed candle
(``x: true``) and then, as Binance sends right after, the first update of the candle in
progress (``x: false``, opened at the close) - only when the emulator knows that candle's
bar is next, so a candle in progress is never one that REST will not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from quantshift.emulators.bars import Bar, aggregate
from quantshift.emulators.base import now_ms
from quantshift.emulators.exchange_data import INTERVALS, STATUS, f8, market_id
from quantshift.emulators.faults import Fault, Faults
from quantshift.emulators.matching import OrderEvent

if TYPE_CHECKING:
    from quantshift.emulators.exchange import ExchangeEmulator

KLINE = re.compile(r"^([a-z0-9]+)@kline_([0-9]+[smhdwM])$")
EXEC_TYPE = {"new": "NEW", "fill": "TRADE", "partial_fill": "TRADE", "canceled": "CANCELED",
             "rejected": "REJECTED", "expired": "EXPIRED"}
WS_PATHS = ("/ws", "/stream", "/ws-api/v3")


@dataclass(eq=False)
class Conn:
    """One client socket: its queue of frames to send and what it subscribed to."""

    ws: web.WebSocketResponse
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    streams: set[str] = field(default_factory=set)
    combined: bool = False
    user_stream: int | None = None  # the user-data subscription id on a WebSocket API socket


def is_ws_path(path: str) -> bool:
    return path in WS_PATHS or path.startswith("/ws/")


class ExchangeStreams:
    """The exchange emulator's websocket side (a mixin): routes, counters and stalls."""

    faults: Faults
    sockets: set[web.WebSocketResponse]

    def init_streams(self) -> None:
        self.ws_subscriptions = 0     # kline streams subscribed, ever (the feed's reconnects)
        self.user_streams = 0         # user-data streams open right now
        self.user_subscriptions = 0   # user-data stream subscriptions, ever
        self.stalled: set[web.WebSocketResponse] = set()  # open, but silent both ways
        self.faults.on_add.append(self._stall_added)

    def add_stream_routes(self, app: web.Application) -> None:
        for path in ("/ws", "/ws/{name}", "/stream"):
            app.router.add_get(path, self._market_ws)
        app.router.add_get("/ws-api/v3", self._api_ws)

    def stream_state(self) -> dict[str, int]:
        return {"ws_subscriptions": self.ws_subscriptions, "user_streams": self.user_streams,
                "user_subscriptions": self.user_subscriptions,
                "stalled_sockets": len(self.stalled)}

    def next_user_stream(self) -> int:
        self.user_streams += 1
        self.user_subscriptions += 1
        return self.user_subscriptions - 1

    def stalls(self, ws: web.WebSocketResponse) -> bool:
        """Whether ``ws`` is stalled; an armed ``stall`` fault stalls every open socket."""
        if ws not in self.stalled and self.faults.take("stream", ("stall",)):
            self.stalled.update(self.sockets | {ws})
        return ws in self.stalled

    def _stall_added(self, fault: Fault) -> None:
        # Stall the sockets open now; with none open, the next socket to speak stalls.
        if fault.name == "stall" and self.sockets and self.faults.take("stream", ("stall",)):
            self.stalled.update(self.sockets)

    async def _market_ws(self, request: web.Request) -> web.StreamResponse:
        return await market_stream(self, request)  # type: ignore[arg-type]

    async def _api_ws(self, request: web.Request) -> web.StreamResponse:
        return await api_stream(self, request)  # type: ignore[arg-type]


# -- payloads -------------------------------------------------------------------------------
def kline_event(mid: str, interval: str, seconds: int, bar: Bar, closed: bool
                ) -> dict[str, Any]:
    """The ``kline`` event of a candle; the same numbers as the REST kline of that bar."""
    t = round(bar.time * 1000)
    quote = bar.volume * bar.vwap
    return {"e": "kline", "E": now_ms(), "s": mid, "k": {
        "t": t, "T": t + seconds * 1000 - 1, "s": mid, "i": interval, "f": -1, "L": -1,
        "o": f8(bar.open), "c": f8(bar.close), "h": f8(bar.high), "l": f8(bar.low),
        "v": f8(bar.volume), "n": bar.trades, "x": closed, "q": f8(quote),
        "V": f8(bar.volume / 2), "Q": f8(quote / 2), "B": "0"}}


def execution_report(ev: OrderEvent, base: str) -> dict[str, Any]:
    """An order event as Binance's spot ``executionReport`` (taken when the event happens:
    the order object goes on changing); a trade's commission is 0 of ``base``."""
    o, fill = ev.order, ev.fill
    cancel = ev.event == "canceled"
    return {
        "e": "executionReport", "E": now_ms(), "s": market_id(o.symbol),
        # A cancel carries the cancel request's own id in "c", the order's in "C".
        "c": uuid.uuid4().hex[:22] if cancel else o.client_order_id,
        "S": o.side.upper(), "o": o.type.upper(), "f": o.time_in_force.upper(),
        "q": f8(o.qty), "p": f8(o.limit_price), "P": f8(0), "F": f8(0), "g": -1,
        "C": o.client_order_id if cancel else "", "x": EXEC_TYPE.get(ev.event, "NEW"),
        "X": STATUS[o.status], "r": (o.reason or "REJECTED") if ev.event == "rejected"
        else "NONE", "i": o.seq, "l": f8(fill.qty if fill else 0), "z": f8(o.filled_qty),
        "L": f8(fill.price if fill else 0), "n": "0", "N": base if fill else None,
        "T": int(ev.time * 1000),
        "t": fill.seq if fill else -1, "I": o.seq * 10, "w": o.is_open, "m": False,
        "M": fill is not None, "O": int(o.created_at * 1000),
        "Z": f8((o.filled_avg_price or 0.0) * o.filled_qty),
        "Y": f8(fill.qty * fill.price if fill else 0), "Q": f8(o.notional),
        "W": int(o.created_at * 1000), "V": "EXPIRE_MAKER",
    }


def _next_bar_time(emu: ExchangeEmulator, bar: Bar) -> float | None:
    """When the bar after ``bar`` will open, if the emulator knows: the next CSV round, or
    the next slot of the random walk (whose timed loop never skips a slot)."""
    rounds = emu.engine._rounds  # the CSV rounds still to come (None: a random walk)
    if rounds is None:
        return bar.time + emu.engine.interval
    return rounds[0][0].time if rounds else None


def candles(emu: ExchangeEmulator, bar: Bar, seconds: int) -> list[tuple[Bar, bool]]:
    """What a ``<symbol>@kline_<seconds>`` subscriber gets for a new bar: the candle that
    bar belongs to (closed or not) and, after a closed one, the next candle's first update."""
    base = emu.engine.bar_seconds
    nxt = _next_bar_time(emu, bar)
    if seconds <= base + 1e-9:
        candle, end = bar, bar.time + base
    else:
        bucket = math.floor(bar.time / seconds + 1e-9) * seconds
        end = bucket + seconds
        members: list[Bar] = []
        for b in reversed(emu.engine.history[bar.symbol]):  # newest first: stop early
            if b.time < bucket:
                break
            if b.time < end:
                members.append(b)
        candle = aggregate(members[::-1] or [bar], seconds)[-1]
    closed = nxt >= end - 1e-9 if nxt is not None else bar.time + base >= end - 1e-9
    out = [(candle, closed)]
    if closed and nxt is not None:
        start = math.floor(nxt / seconds + 1e-9) * seconds if seconds > base + 1e-9 else nxt
        c = bar.close
        out.append((Bar(bar.symbol, start, c, c, c, c, 0.0, 0, c), False))
    return out


# -- serving --------------------------------------------------------------------------------
async def _pump(emu: ExchangeEmulator, conn: Conn) -> None:
    """Send what the listeners queue, one JSON frame per message, unless the socket stalls."""
    while not conn.ws.closed:
        item = await conn.queue.get()
        if emu.stalls(conn.ws):
            continue  # a stalled socket stays open and silent: the frame is lost
        if not await emu.ws_send(conn.ws, json.dumps(item)):
            return


async def _serve(emu: ExchangeEmulator, request: web.Request, conn: Conn,
                 on_message: Any) -> web.WebSocketResponse:
    ws = conn.ws
    await ws.prepare(request)
    emu.sockets.add(ws)
    emu.ws_connections += 1
    pump = asyncio.create_task(_pump(emu, conn))
    try:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                data = json.loads(msg.data)
            except ValueError:
                data = None
            if not emu.stalls(ws):  # a stalled socket reads nothing either
                on_message(data)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        emu.sockets.discard(ws)
        emu.stalled.discard(ws)
    return ws


def _kline_stream(emu: ExchangeEmulator, name: str) -> tuple[str, str, int] | None:
    """(symbol, interval, seconds) of a valid kline stream name, else None."""
    m = KLINE.match(name)
    if m is None or m.group(2) not in INTERVALS:
        return None
    symbol = emu.ids.get(m.group(1).upper())
    return None if symbol is None else (symbol, m.group(2), INTERVALS[m.group(2)])


async def market_stream(emu: ExchangeEmulator, request: web.Request) -> web.WebSocketResponse:
    """``/ws``, ``/ws/<name>`` and ``/stream?streams=...``: kline streams."""
    conn = Conn(web.WebSocketResponse(autoping=True, timeout=2.0))
    conn.combined = request.path == "/stream"
    initial = request.query.get("streams", "").split("/") if conn.combined \
        else [request.path[len("/ws/"):]] if request.path.startswith("/ws/") else []
    conn.streams.update(s for s in initial if _kline_stream(emu, s) is not None)
    emu.ws_subscriptions += len(conn.streams)

    def send(stream: str, payload: dict[str, Any]) -> None:
        conn.queue.put_nowait({"stream": stream, "data": payload} if conn.combined
                              else payload)

    def listener(item: Bar | OrderEvent) -> None:
        if not isinstance(item, Bar):
            return
        for stream in list(conn.streams):
            parsed = _kline_stream(emu, stream)
            if parsed is None or parsed[0] != item.symbol:
                continue
            _, interval, seconds = parsed
            for candle, closed in candles(emu, item, seconds):
                send(stream, kline_event(market_id(item.symbol), interval, seconds, candle,
                                         closed))

    def on_message(data: Any) -> None:
        if not isinstance(data, dict) or "id" not in data:
            conn.queue.put_nowait({"error": {"code": 3, "msg": "Invalid JSON: expected an "
                                                               "object with an id"},
                                   "id": None})
            return
        rid, method, params = data.get("id"), data.get("method"), data.get("params")
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            names = params if isinstance(params, list) else []
            if not names or any(not isinstance(n, str) or _kline_stream(emu, n) is None
                                for n in names):
                conn.queue.put_nowait({"error": {"code": 2, "msg": "Invalid request: invalid "
                                                                   "stream"}, "id": rid})
                return
            if method == "SUBSCRIBE":
                emu.ws_subscriptions += len(set(names) - conn.streams)
                conn.streams.update(names)
            else:
                conn.streams.difference_update(names)
            conn.queue.put_nowait({"result": None, "id": rid})
        elif method == "LIST_SUBSCRIPTIONS":
            conn.queue.put_nowait({"result": sorted(conn.streams), "id": rid})
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            conn.queue.put_nowait({"result": None if method == "SET_PROPERTY" else False,
                                   "id": rid})
        else:
            conn.queue.put_nowait({"error": {"code": 1, "msg": "Invalid request: unknown "
                                                               "method"}, "id": rid})

    emu.engine.add_listener(listener)
    try:
        return await _serve(emu, request, conn, on_message)
    finally:
        emu.engine.remove_listener(listener)


async def api_stream(emu: ExchangeEmulator, request: web.Request) -> web.WebSocketResponse:
    """``/ws-api/v3``: the user-data stream subscription and a few housekeeping methods."""
    conn = Conn(web.WebSocketResponse(autoping=True, timeout=2.0))

    def answer(rid: Any, result: Any = None, status: int = 200, code: int = 0,
               msg: str = "") -> None:
        body: dict[str, Any] = {"id": rid, "status": status}
        if status == 200:
            body["result"] = result
        else:
            body["error"] = {"code": code, "msg": msg}
        body["rateLimits"] = []
        conn.queue.put_nowait(body)

    def listener(item: Bar | OrderEvent) -> None:
        if isinstance(item, OrderEvent) and conn.user_stream is not None:
            conn.queue.put_nowait({"subscriptionId": conn.user_stream,
                                   "event": execution_report(item,
                                                             emu.bases[item.order.symbol])})

    def on_message(data: Any) -> None:
        if not isinstance(data, dict):
            answer(None, status=400, code=-1102, msg="Malformed request.")
            return
        rid, method = data.get("id"), data.get("method")
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        if method == "userDataStream.subscribe.signature":
            if not (params.get("apiKey") and params.get("signature")
                    and params.get("timestamp")):
                answer(rid, status=401, code=-2015,
                       msg="Invalid API-key, IP, or permissions for action.")
                return
            if conn.user_stream is None:
                conn.user_stream = emu.next_user_stream()
            answer(rid, {"subscriptionId": conn.user_stream})
        elif method == "userDataStream.unsubscribe":
            if conn.user_stream is not None:
                conn.user_stream = None
                emu.user_streams -= 1
            answer(rid, {})
        elif method in ("ping", "session.status"):
            answer(rid, {})
        elif method == "time":
            answer(rid, {"serverTime": now_ms()})
        else:
            answer(rid, status=400, code=-1020, msg="This operation is not supported.")

    emu.engine.add_listener(listener)
    try:
        return await _serve(emu, request, conn, on_message)
    finally:
        emu.engine.remove_listener(listener)
        if conn.user_stream is not None:
            emu.user_streams -= 1
