"""The operator's HTTP surface, served by aiohttp inside the daemon's own event loop.

Reads: ``GET /healthz`` (the loop is responsive), ``/readyz`` (ready to trade),
``/status`` (JSON), ``/metrics`` (Prometheus). Control: ``POST /halt``, ``/resume``,
``/flatten``, ``/reduce``, ``/promote``, ``/rollback``, each behind
``Authorization: Bearer <QUANTSHIFT_API_TOKEN>``; without a configured token they are off.

Handlers run on the loop between bars (``Engine.on_bar`` is synchronous), so a control
action never meets a bar half done, and none of them waits on anything but the journal
commit that makes an action durable before it is answered. Every answer is JSON; an
unexpected failure is logged with its traceback and answered 500 without one.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import inspect
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from loguru import logger
from pydantic import SecretStr

from quantshift.errors import ConfigError
from quantshift.ops.control import ACTIONS, BadRequest, ControlRefused, parse_body
from quantshift.ops.status import build_status, ready_reasons

if TYPE_CHECKING:  # ops is used by the daemon, never the reverse
    from quantshift.daemon import Daemon

__all__ = ["HEALTH_DEADLINE", "Heartbeat", "HttpServer"]

HEARTBEAT_INTERVAL = 0.5
# A heartbeat older than this means the loop (or the heartbeat) is stuck: /healthz 503.
HEALTH_DEADLINE = 5.0
MAX_BODY = 16 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Heartbeat:
    """A task that wakes every ``interval`` and records how late it woke: the loop's lag."""

    def __init__(self, interval: float = HEARTBEAT_INTERVAL) -> None:
        self.interval = interval
        self.last = time.monotonic()
        self.lag = 0.0  # seconds late at the last wake-up

    async def run(self) -> None:
        while True:
            due = time.monotonic() + self.interval
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            self.lag = max(0.0, now - due)
            self.last = now

    def age(self) -> float:
        return time.monotonic() - self.last


def _json(payload: dict[str, Any], status: int = 200,
          headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(payload, default=str), status=status,
                        content_type="application/json", headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer in JSON: aiohttp's own 404/405/413 too, and never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _json({"error": exc.reason}, exc.status, headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.opt(exception=True).error("http: {} {} failed", request.method, request.path)
        return _json({"error": "internal error; the daemon's log has the details"}, 500)


class HttpServer:
    def __init__(self, daemon: Daemon, host: str, port: int, token: SecretStr | None,
                 heartbeat: Heartbeat, deadline: float = HEALTH_DEADLINE) -> None:
        self.daemon = daemon
        self.host = host
        self.port = port
        self._token = token.get_secret_value().encode() if token is not None else None
        self.heartbeat = heartbeat
        self.deadline = deadline
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; a port that cannot be bound is a configuration error."""
        app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/status", self.status)
        app.router.add_get("/metrics", self.metrics)
        for action in ACTIONS:
            app.router.add_post(f"/{action}", self._control(action))
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as exc:
            await runner.cleanup()
            raise _bind_error(self.host, self.port, exc) from None
        self._runner = runner
        control = "on" if self._token else "off (no QUANTSHIFT_API_TOKEN)"
        logger.info("http: serving {} (healthz, readyz, status, metrics; control {})",
                    self.url, control)
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            logger.warning("http: listening on {}, not loopback: the API is plain HTTP, so "
                           "keep it behind a firewall or a TLS proxy", self.host)

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- reads ---------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        hb = self.heartbeat
        age = hb.age()
        ok = age <= self.deadline
        return _json({"healthy": ok, "loop_lag_seconds": round(hb.lag, 6),
                      "heartbeat_age_seconds": round(age, 3),
                      "deadline_seconds": self.deadline}, 200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        reasons = ready_reasons(self.daemon)
        return _json({"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)

    async def status(self, request: web.Request) -> web.Response:
        return _json(build_status(self.daemon))

    async def metrics(self, request: web.Request) -> web.Response:
        metrics = self.daemon.metrics
        if metrics is None:
            return _json({"error": "metrics are not available yet"}, 503)
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    # -- control -------------------------------------------------------------------------
    def _control(self, action: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle_control(action, request)

        return handle

    async def _handle_control(self, action: str, request: web.Request) -> web.Response:
        remote = request.remote or "?"
        if self._token is None:
            return _json({"error": "control is off: the daemon was started without "
                                   "QUANTSHIFT_API_TOKEN"}, 403)
        if not self._authorized(request.headers.get("Authorization", "")):
            logger.warning("control: {} from {} refused: missing or wrong token", action,
                           remote)
            return _json({"error": "missing or wrong token: send Authorization: Bearer "
                                   "<QUANTSHIFT_API_TOKEN>"}, 401,
                         {"WWW-Authenticate": 'Bearer realm="quantshift"'})
        actor = _actor(request.headers.get("X-QuantShift-Actor", ""), remote)
        params: dict[str, Any] = {}
        try:
            body = parse_body(action, await request.read())
            params = body.model_dump(exclude_none=True)
            result = self.daemon.apply_control(action, body)
            if inspect.isawaitable(result):  # a promotion judges the versions off the loop
                result = await result
            code, payload = 200, {"ok": True, "action": action, **result}
        except BadRequest as exc:
            code, payload = 400, {"error": str(exc)}
        except ControlRefused as exc:
            code, payload = exc.status, {"error": exc.message}
        d = self.daemon
        if d.journal is not None:
            d.journal.control(action, params, actor, orjson.dumps(
                {"status": code, **payload}, default=str).decode())
        log = logger.warning if code == 200 else logger.info
        log("control: {} by {} {} -> {} {}", action, actor, params or "{}", code,
            payload.get("error") or "done")
        if d.journal is not None and not await d.make_durable():
            payload["durable"] = False  # done in memory; the journal keeps retrying
        return _json(payload, code)

    def _authorized(self, header: str) -> bool:
        scheme, _, given = header.partition(" ")
        assert self._token is not None
        # compare_digest: the time taken does not tell how much of the token matched.
        ok = hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token)
        return ok and scheme.lower() == "bearer"


def _actor(claimed: str, remote: str) -> str:
    """Who asked, for the journal: the client's own word (kept short and printable) at
    the address the request came from."""
    name = "".join(c for c in claimed if c.isprintable())[:64].strip() or "api"
    return f"{name} from {remote}"


def _bind_error(host: str, port: int, exc: OSError) -> ConfigError:
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        return ConfigError("QUANTSHIFT_HTTP_HOST", f"cannot listen on {where}: "
                                                   f"{exc.strerror or exc}")
    if exc.errno == errno.EADDRINUSE:
        return ConfigError("QUANTSHIFT_HTTP_PORT", f"{where} is already in use (another "
                                                   "daemon? give each bot its own port, or "
                                                   "0 to turn HTTP off)")
    return ConfigError("QUANTSHIFT_HTTP_PORT", f"cannot listen on {where}: "
                                               f"{exc.strerror or exc}")
