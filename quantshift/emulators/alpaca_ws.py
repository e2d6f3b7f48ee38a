"""Alpaca's two websockets: market data (msgpack or JSON) and trade updates (JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import WSMsgType, web

from quantshift.emulators.bars import Bar
from quantshift.emulators.base import iso, num
from quantshift.emulators.matching import OrderEvent

if TYPE_CHECKING:
    from quantshift.emulators.alpaca import AlpacaEmulator

CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars", "statuses", "lulds",
            "corrections", "cancelErrors")


async def _pump(emu: AlpacaEmulator, ws: web.WebSocketResponse,
                queue: asyncio.Queue[Any], encode: Any) -> None:
    """Send what the listeners queue; everything waiting goes out as one frame."""
    while not ws.closed:
        items = [await queue.get()]
        while not queue.empty():
            items.append(queue.get_nowait())
        for frame in encode(items):
            if not await emu.ws_send(ws, frame):
                return


def _decode(msg: Any) -> Any:
    if msg.type == WSMsgType.BINARY:
        try:
            return msgpack.unpackb(msg.data)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return json.loads(msg.data)
    return json.loads(msg.data)


async def _serve(emu: AlpacaEmulator, request: web.Request, on_message: Any,
                 queue: asyncio.Queue[Any], encode: Any, greeting: Any = None
                 ) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=True, timeout=2.0)  # close waits <= 2 s for the peer
    await ws.prepare(request)
    emu.sockets.add(ws)
    emu.ws_connections += 1
    pump = asyncio.create_task(_pump(emu, ws, queue, encode))
    try:
        if greeting is not None:
            queue.put_nowait(greeting)
        async for msg in ws:
            if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                data = _decode(msg)
            except (ValueError, UnicodeDecodeError):
                data = None
            await on_message(ws, data)
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
        emu.sockets.discard(ws)
    return ws


async def data_stream(emu: AlpacaEmulator, request: web.Request) -> web.WebSocketResponse:
    """``/v2/iex`` (and sip/test): greet, auth, subscribe; bars as ``{"T": "b", ...}``.

    Frames are msgpack when the client says ``Content-Type: application/msgpack`` (as
    alpaca-py does; ``t`` is then a msgpack Timestamp), JSON text otherwise."""
    use_msgpack = request.headers.get("Content-Type", "") == "application/msgpack"
    subs: dict[str, set[str]] = {c: set() for c in CHANNELS}
    state = {"authed": False, "counted": False}
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def encode(items: list[Any]) -> list[bytes | str]:
        msgs: list[dict[str, Any]] = []
        for item in items:
            if isinstance(item, Bar):
                msgs.append({"T": "b", "S": item.symbol, "o": item.open, "h": item.high,
                             "l": item.low, "c": item.close, "v": item.volume,
                             "t": (msgpack.Timestamp.from_unix_nano(round(item.time * 1e9))
                                   if use_msgpack else iso(item.time, micro=False)),
                             "n": item.trades, "vw": round(item.vwap, 4)})
            else:
                msgs.extend(item)
        return [msgpack.packb(msgs) if use_msgpack else json.dumps(msgs)]

    def listener(item: Bar | OrderEvent) -> None:
        if isinstance(item, Bar) and state["authed"] and (
                item.symbol in subs["bars"] or "*" in subs["bars"]):
            queue.put_nowait(item)

    async def on_message(ws: web.WebSocketResponse, data: Any) -> None:
        action = data.get("action") if isinstance(data, dict) else None
        if action == "auth":
            if not (data.get("key") and data.get("secret")):
                queue.put_nowait([{"T": "error", "code": 402, "msg": "auth failed"}])
            elif state["authed"]:
                queue.put_nowait([{"T": "error", "code": 403, "msg": "already authenticated"}])
            elif 0 < emu.max_data_connections <= emu.data_authed:
                [frame] = encode([[{"T": "error", "code": 406,
                                    "msg": "connection limit exceeded"}]])
                await emu.ws_send(ws, frame)
                await ws.close()
            else:
                state["authed"] = True
                emu.data_authed += 1
                queue.put_nowait([{"T": "success", "msg": "authenticated"}])
        elif action in ("subscribe", "unsubscribe"):
            if not state["authed"]:
                queue.put_nowait([{"T": "error", "code": 401, "msg": "not authenticated"}])
                return
            for channel in CHANNELS:
                names = data.get(channel) or []
                if isinstance(names, list):
                    if action == "subscribe":
                        subs[channel].update(str(n) for n in names)
                    else:
                        subs[channel].difference_update(str(n) for n in names)
            queue.put_nowait([{"T": "subscription", **{c: sorted(subs[c]) for c in CHANNELS}}])
            if bool(subs["bars"]) != state["counted"]:
                state["counted"] = bool(subs["bars"])
                emu.subscribed += 1 if state["counted"] else -1
        else:
            queue.put_nowait([{"T": "error", "code": 400, "msg": "invalid syntax"}])

    emu.engine.add_listener(listener)
    try:
        return await _serve(emu, request, on_message, queue, encode,
                            [{"T": "success", "msg": "connected"}])
    finally:
        emu.engine.remove_listener(listener)
        if state["counted"]:
            emu.subscribed -= 1
        if state["authed"]:
            emu.data_authed -= 1


async def trading_stream(emu: AlpacaEmulator, request: web.Request) -> web.WebSocketResponse:
    """``/stream``: authenticate, listen to ``trade_updates``; frames are JSON sent as
    binary frames, as Alpaca's paper endpoint does."""
    state = {"authed": False, "listening": False}
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def encode(items: list[Any]) -> list[bytes]:
        return [json.dumps(item).encode() for item in items]

    def listener(item: Bar | OrderEvent) -> None:
        if not (isinstance(item, OrderEvent) and state["listening"]):
            return
        data: dict[str, Any] = {"event": item.event, "order": emu.order_json(item.order),
                                "timestamp": iso(item.time)}
        if item.fill is not None:
            data.update(execution_id=_exec_id(item.fill.id), price=num(item.fill.price),
                        qty=num(item.fill.qty), position_qty=num(item.position_qty))
        queue.put_nowait({"stream": "trade_updates", "data": data})

    async def on_message(ws: web.WebSocketResponse, data: Any) -> None:
        action = data.get("action") if isinstance(data, dict) else None
        body = data.get("data") if isinstance(data, dict) else None
        body = body if isinstance(body, dict) else {}
        if action in ("authenticate", "auth"):
            ok = bool(body.get("key_id") and body.get("secret_key")) or bool(
                body.get("oauth_token"))
            state["authed"] = ok
            queue.put_nowait({"stream": "authorization", "data": {
                "action": "authenticate", "status": "authorized" if ok else "unauthorized"}})
        elif action == "listen":
            if not state["authed"]:
                queue.put_nowait({"stream": "authorization", "data": {
                    "action": "listen", "status": "unauthorized"}})
                return
            streams = [s for s in body.get("streams") or [] if s == "trade_updates"]
            if bool(streams) != state["listening"]:
                emu.listening += 1 if streams else -1
            state["listening"] = bool(streams)
            queue.put_nowait({"stream": "listening", "data": {"streams": streams}})
        else:
            queue.put_nowait({"stream": "listening", "data": {
                "error": "invalid syntax", "streams": []}})

    emu.engine.add_listener(listener)
    try:
        return await _serve(emu, request, on_message, queue, encode)
    finally:
        emu.engine.remove_listener(listener)
        if state["listening"]:
            emu.listening -= 1


def _exec_id(fill_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"quantshift-emulator-fill:{fill_id}"))
