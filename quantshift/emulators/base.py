"""What both emulators share: the aiohttp server, the fault middleware, websocket
bookkeeping and the ``/_emulator`` control surface."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from quantshift.emulators.faults import Fault, Faults
from quantshift.emulators.matching import MatchingEngine, OrderError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def iso(ts: float | None, micro: bool = True) -> str | None:
    """Epoch seconds as RFC 3339 UTC with a Z (``None`` stays ``None``)."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def num(x: float | None, places: int = 9) -> str | None:
    """A number as the short decimal string brokers use ("10", "101.25")."""
    if x is None:
        return None
    text = f"{x:.{places}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


class ControlError(Exception):
    """A bad control request: answered 400 with the message."""


class BaseEmulator:
    """An aiohttp server around a MatchingEngine. Subclasses add the venue routes."""

    venue = "base"
    stream_paths: tuple[str, ...] = ()

    def __init__(self, engine: MatchingEngine) -> None:
        self.engine = engine
        self.faults: Faults = engine.faults
        self.port: int | None = None
        self.host = "127.0.0.1"
        self.base_url: str | None = None
        self.requests: deque[tuple[str, str, str]] = deque(maxlen=2000)
        self.sockets: set[web.WebSocketResponse] = set()
        self.ws_connections = 0
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.faults.on_add.append(self._fault_added)

    # -- venue hooks -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def scope_of(self, request: web.Request) -> str:
        return "status"

    def error_response(self, status: int, kind: str, message: str) -> web.Response:
        return web.json_response({"code": status, "message": message}, status=status)

    def order_error(self, exc: OrderError) -> web.Response:
        return self.error_response(400, exc.kind, exc.message)

    def check_auth(self, request: web.Request) -> web.Response | None:
        return None

    def extra_state(self) -> dict[str, Any]:
        return {}

    # -- life cycle --------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/_emulator/state", self._state)
        app.router.add_post("/_emulator/fault", self._fault)
        app.router.add_delete("/_emulator/fault", self._clear_faults)
        app.router.add_post("/_emulator/position", self._position)
        app.router.add_post("/_emulator/fill_rest", self._fill_rest)
        app.router.add_post("/_emulator/step", self._step)
        app.router.add_post("/_emulator/bar", self._push)
        self.add_routes(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    run_bars: bool = True) -> None:
        """Bind (OSError if the port is taken) and start the bar loop (unless
        ``run_bars`` is false: then bars come only from ``engine.step()``/``push()``)."""
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.make_app(), handle_signals=False, access_log=None,
                               shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.host = host
        self.port = int(runner.addresses[0][1])
        self.base_url = f"http://{host}:{self.port}"
        self.engine.prime()
        if run_bars:
            self._task = asyncio.create_task(self.engine.run(), name=f"{self.venue}-bars")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.close_streams(1001, "server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> BaseEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def close_streams(self, code: int = 1011, message: str = "dropped") -> int:
        """Close every open websocket; returns how many."""
        socks = list(self.sockets)
        await asyncio.gather(*(ws.close(code=code, message=message.encode()) for ws in socks),
                             return_exceptions=True)
        return len(socks)

    def _fault_added(self, fault: Fault) -> None:
        if fault.name != "drop_ws" or self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._loop.create_task(self._drop_now())
        else:
            asyncio.run_coroutine_threadsafe(self._drop_now(), self._loop)

    async def _drop_now(self) -> None:
        if self.sockets and self.faults.take("stream", ("drop_ws",)):
            await self.close_streams()

    async def ws_send(self, ws: web.WebSocketResponse, data: bytes | str) -> bool:
        """Send one frame unless a drop_ws fault closes the socket first."""
        if ws.closed:
            return False
        if self.faults.take("stream", ("drop_ws",)):
            await ws.close(code=1011, message=b"dropped")
            return False
        try:
            if isinstance(data, bytes):
                await ws.send_bytes(data)
            else:
                await ws.send_str(data)
        except (ConnectionError, RuntimeError):
            return False
        return True

    # -- middleware --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_emulator/"):
            try:
                return await handler(request)
            except ControlError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            except web.HTTPException as exc:
                return web.json_response({"error": exc.reason}, status=exc.status)
            except Exception as exc:
                self.engine.report(f"control {request.path}", exc)
                return web.json_response({"error": f"internal error: {exc}"}, status=500)
        self.requests.append((request.method, request.path, request.query_string))
        scope = "stream" if request.path in self.stream_paths else self.scope_of(request)
        fault = self.faults.take(scope, ("rate_limit", "server_error", "slow"))
        if fault is not None and fault.name == "rate_limit":
            resp = self.error_response(429, "rate_limit", "too many requests")
            resp.headers["Retry-After"] = str(fault.retry_after)
            return resp
        if fault is not None and fault.name == "server_error":
            return self.error_response(500, "server_error", "internal server error")
        if fault is not None and scope == "stream":
            await asyncio.sleep(fault.delay)
        if scope != "stream":
            denied = self.check_auth(request)
            if denied is not None:
                return denied
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            resp = self.error_response(exc.status, "http", exc.reason)
        except OrderError as exc:
            resp = self.order_error(exc)
        except Exception as exc:
            route = request.match_info.route.resource
            where = f"{request.method} {route.canonical if route else request.path}"
            self.engine.report(where, exc)
            resp = self.error_response(500, "server_error", f"internal error: {exc}")
        if fault is not None and fault.name == "slow" and scope != "stream":
            await asyncio.sleep(fault.delay)
        return resp

    @staticmethod
    def lose_ack(request: web.Request) -> web.Response:
        """Close the connection without any answer (the lost_ack fault)."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError  # aiohttp drops the request quietly

    # -- control surface ---------------------------------------------------------------------

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read() or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ControlError("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise ControlError("the body must be a JSON object")
        return body

    async def _state(self, request: web.Request) -> web.Response:
        state = {"venue": self.venue, "base_url": self.base_url, **self.engine.state(),
                 "ws_connections": len(self.sockets), "requests": len(self.requests),
                 **self.extra_state()}
        return web.json_response(state)

    async def _fault(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        unknown = set(body) - {"name", "scope", "count", "retry_after", "delay", "fraction"}
        if unknown:
            raise ControlError(f"unknown field(s): {', '.join(sorted(unknown))}")
        if not isinstance(body.get("name"), str):
            raise ControlError("name (a string) is required")
        scope = body.get("scope", "any")
        if not isinstance(scope, str):
            raise ControlError("scope must be a string")
        try:
            fault = self.faults.add(body["name"], scope, body.get("count", 1),
                                    retry_after=body.get("retry_after"),
                                    delay=body.get("delay"), fraction=body.get("fraction"))
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return web.json_response({"ok": True, "fault": fault.as_dict()})

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"ok": True})

    async def _position(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        symbol, qty, avg = body.get("symbol"), body.get("qty"), body.get("avg_price")
        if not isinstance(symbol, str):
            raise ControlError("symbol (a string) is required")
        for name, value in (("qty", qty), ("avg_price", avg)):
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise ControlError(f"{name} (a number) is required")
        try:
            pos = self.engine.set_position(symbol, float(qty), float(avg))  # type: ignore[arg-type]
        except OrderError as exc:
            raise ControlError(exc.message) from None
        return web.json_response({"ok": True, "position": pos.as_dict() if pos else None})

    async def _fill_rest(self, request: web.Request) -> web.Response:
        fills = self.engine.fill_rest()
        return web.json_response({"ok": True, "fills": [f.as_dict() for f in fills]})

    async def _step(self, request: web.Request) -> web.Response:
        bars = self.engine.step()
        return web.json_response({"ok": True, "bars": [b.as_dict() for b in bars]})

    async def _push(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        symbol = body.get("symbol")
        if not isinstance(symbol, str):
            raise ControlError("symbol (a string) is required")
        fields = {k: body.get(k) for k in ("close", "open", "high", "low", "volume")
                  if body.get(k) is not None}
        for name, value in fields.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ControlError(f"{name} must be a number")
        if "close" not in fields:
            raise ControlError("close (a number) is required")
        try:
            bar = self.engine.push(symbol, **{k: float(v) for k, v in fields.items()})
        except OrderError as exc:
            raise ControlError(exc.message) from None
        return web.json_response({"ok": True, "bar": bar.as_dict()})


def now_ms() -> int:
    return int(time.time() * 1000)
