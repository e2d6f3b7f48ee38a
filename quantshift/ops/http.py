"""The operator's HTTP surface, served by aiohttp inside the daemon's own event loop.

Reads: ``GET /healthz`` (the loop is responsive), ``/readyz`` (ready to trade),
``/status`` (JSON), ``/metrics`` (Prometheus). Control: ``POST /halt``, ``/resume``,
``/flatten``, ``/reduce``, ``/promote``, ``/rollback``, each behind
``Authorization: Bearer <QUANTSHIFT_API_TOKEN>``; without a configured token they are off.

Handlers run on the loop between bars (``Engine.on_bar`` is synchronous), so a control
action never meets a bar half done. A control request becomes a command of the control
plane (quantshift/control.py), which answers only once it holds: a halt after the
submission attempts in flight have returned, every command after the journal commit that
makes it durable (503 when it cannot be made durable). Reads come from a status source
(the daemon's read-only view). Every answer is JSON; an unexpected failure is logged with
its traceback and answered 500 without one.

No client can wedge it (``quantshift.ops.http_limits``): connections are capped, a request
head (and a control request's body) must arrive within a deadline, a malformed request
gets a short 4xx, and ``/status`` and ``/metrics`` are built at most once per
``status_ttl`` however many ask for them (each answer is still built after its request
came in).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from aiohttp import web
from loguru import logger
from pydantic import SecretStr

from quantshift.aio import within
from quantshift.control import ControlPlane, NotDurable
from quantshift.errors import ConfigError
from quantshift.ops.bodies import (
    ACTIONS,
    PATH_ACTIONS,
    BadRequest,
    ControlRefused,
    parse_body,
    to_command,
)
from quantshift.ops.http_limits import (
    BUSY,
    LISTEN_BACKLOG,
    BuildFailed,
    ConnectionGate,
    GuardedRequestHandler,
    HttpLimits,
    SharedBuild,
    fd_headroom,
)

__all__ = ["HEALTH_DEADLINE", "Heartbeat", "HttpLimits", "HttpServer", "StatusSource",
           "probe_bind"]

HEARTBEAT_INTERVAL = 0.5
# A heartbeat older than this means the loop (or the heartbeat) is stuck: /healthz 503.
HEALTH_DEADLINE = 5.0
MAX_BODY = 16 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_INTERNAL = "internal error; the daemon's log has the details"


class StatusSource(Protocol):
    """What the API reads (the daemon's read-only view)."""

    def status(self) -> dict[str, Any]: ...

    def ready_reasons(self) -> list[str]: ...

    def metrics(self) -> tuple[bytes, str] | None: ...


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
    """Every answer in JSON: aiohttp's own 404/405/413 too, and never a traceback. Also
    the first code to see a parsed request: its connection is serving from here on."""
    proto = request.protocol
    if isinstance(proto, GuardedRequestHandler) and not proto.request_started(request.path):
        busy = _json({"error": BUSY}, 503, {"Retry-After": "1"})
        busy.force_close()
        return busy
    try:
        response = await handler(request)
        if isinstance(proto, GuardedRequestHandler) and proto.health_only:
            response.force_close()  # a reserve slot past the cap: one answer, then free
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _json({"error": exc.reason}, exc.status, headers)
    except asyncio.CancelledError:
        raise
    except (ConnectionError, web.RequestPayloadError) as exc:
        # The client hung up, or its body broke off: its fault, not the daemon's.
        logger.debug("http: {} {} from {}: body not received ({})", request.method,
                     request.path, request.remote or "?", type(exc).__name__)
        return _json({"error": "the request body could not be read"}, 400)
    except Exception:
        logger.opt(exception=True).error("http: {} {} failed", request.method, request.path)
        return _json({"error": _INTERNAL}, 500)


class HttpServer:
    def __init__(self, control: ControlPlane, source: StatusSource, host: str, port: int,
                 token: SecretStr | None, heartbeat: Heartbeat, *, bot: str,
                 deadline: float = HEALTH_DEADLINE, limits: HttpLimits | None = None) -> None:
        self.control = control
        self.source = source
        self.bot = bot
        self.host = host
        self.port = port
        self._token = token.get_secret_value().encode() if token is not None else None
        self.heartbeat = heartbeat
        self.deadline = deadline
        self.limits = limits = limits or HttpLimits()
        self.gate = ConnectionGate(limits.max_connections)
        # A flood of /status or /metrics costs one build per status_ttl, not one a request.
        self._status = SharedBuild(self._status_body, limits.status_ttl)
        self._metrics = SharedBuild(self._metrics_body, limits.status_ttl)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None

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
            if action not in PATH_ACTIONS:
                app.router.add_post(f"/{action}", self._control(action))
        app.router.add_get("/versions", self.versions)
        app.router.add_post("/versions", self._control("add"))
        app.router.add_post("/versions/{strategy}/{version}", self._control("version"))
        self.gate.limit = fd_headroom(self.limits.max_connections)
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=1.0)
        await runner.setup()
        server, loop, lim = runner.server, asyncio.get_running_loop(), self.limits
        assert server is not None

        def connection() -> GuardedRequestHandler:
            return GuardedRequestHandler(server, loop=loop, gate=self.gate,
                                         head_timeout=lim.head_timeout,
                                         keepalive_timeout=lim.keepalive_timeout,
                                         access_log=None)

        try:
            # Our own listener rather than a TCPSite: each connection gets the guarded
            # protocol; the runner still closes the open ones at the end.
            self._listener = await loop.create_server(connection, self.host, self.port,
                                                      backlog=LISTEN_BACKLOG)
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
        self._status.flush()  # answer who waits, then close
        self._metrics.flush()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
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
        reasons = self.source.ready_reasons()
        return _json({"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)

    async def status(self, request: web.Request) -> web.Response:
        try:
            body = await self._status.get()
        except BuildFailed:
            return _json({"error": _INTERNAL}, 500)
        return web.Response(body=body, content_type="application/json")

    def _status_body(self) -> bytes:
        return orjson.dumps({**self.source.status(), "http": self.gate.stats()}, default=str)

    async def metrics(self, request: web.Request) -> web.Response:
        try:
            rendered = await self._metrics.get()
        except BuildFailed:
            return _json({"error": _INTERNAL}, 500)
        if rendered is None:
            return _json({"error": "metrics are not available yet"}, 503)
        body, content_type = rendered
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _metrics_body(self) -> tuple[bytes, str] | None:
        return self.source.metrics()

    async def versions(self, request: web.Request) -> web.Response:
        """Every strategy's versions with their parameters (the token's: parameters are
        the operator's edge, not for anyone who can reach the port)."""
        refused = self._refusal(request, "versions")
        if refused is not None:
            return refused
        versions = self.control.versions
        if versions is None:
            return _json({"error": "no strategy versions in this daemon"}, 404)
        return _json({"strategies": versions.listing()})

    # -- control -------------------------------------------------------------------------
    def _control(self, action: str) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle_control(action, request)

        return handle

    def _refusal(self, request: web.Request, action: str) -> web.Response | None:
        """The answer to a request without the token (None: it has it)."""
        if self._token is None:
            return _json({"error": "control is off: the daemon was started without "
                                   "QUANTSHIFT_API_TOKEN"}, 403)
        if not self._authorized(request.headers.get("Authorization", "")):
            logger.warning("control: {} from {} refused: missing or wrong token", action,
                           request.remote or "?")
            return _json({"error": "missing or wrong token: send Authorization: Bearer "
                                   "<QUANTSHIFT_API_TOKEN>"}, 401,
                         {"WWW-Authenticate": 'Bearer realm="quantshift"'})
        return None

    async def _handle_control(self, action: str, request: web.Request) -> web.Response:
        remote = request.remote or "?"
        refused = self._refusal(request, action)
        if refused is not None:
            return refused
        actor = _actor(request.headers.get("X-QuantShift-Actor", ""), remote)
        params: dict[str, Any] = dict(request.match_info)  # a version's path names it
        try:
            raw = await self._read_body(request)
        except TimeoutError:
            answer = await self._refused(action, params, actor, 408,
                                         "request body not received in time")
            answer.force_close()  # what is left of the body would be read as a request
            return answer
        try:
            body = parse_body(action, raw, dict(request.match_info) or None)
            params = body.model_dump(exclude_none=True)
            if body.bot is not None and body.bot != self.bot:
                raise ControlRefused(f"this daemon runs bot {self.bot!r}, not {body.bot!r}")
            cmd = to_command(action, body, actor)
        except BadRequest as exc:
            return await self._refused(action, params, actor, 400, str(exc))
        except ControlRefused as exc:  # before the control plane: journaled here
            return await self._refused(action, params, actor, exc.status, exc.message)
        try:
            result = await self.control.command(cmd)  # journaled by the control plane
        except NotDurable as exc:
            payload = {"error": exc.message, "action": action, "durable": False, **exc.result}
            logger.error("control: {} by {} {} -> 503 {}", action, actor, params or "{}",
                         exc.message)
            return _json(payload, 503)
        except ControlRefused as exc:
            logger.info("control: {} by {} {} -> {} {}", action, actor, params or "{}",
                        exc.status, exc.message)
            return _json({"error": exc.message}, exc.status)
        logger.warning("control: {} by {} {} -> 200 done", action, actor, params or "{}")
        return _json({"ok": True, "action": action, **result})

    async def _refused(self, action: str, params: dict[str, Any], actor: str, code: int,
                       message: str) -> web.Response:
        self.control.record(action, params, actor, {"status": code, "error": message})
        await self.control.durable()  # written before it is answered, as every request
        logger.info("control: {} by {} {} -> {} {}", action, actor, params or "{}", code,
                    message)
        return _json({"error": message}, code)

    async def _read_body(self, request: web.Request) -> bytes:
        """The body, within the head's deadline again: a stalled client (a token holder's
        too) cannot keep a connection serving, and a slot under the cap taken, forever.
        One declared too large is refused before a byte of it is awaited."""
        declared = request.content_length
        if declared is not None and declared > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=declared)
        return await within(request.read(), self.limits.head_timeout)

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


def probe_bind(host: str, port: int) -> None:
    """Bind (and let go) what the server will bind, as ``loop.create_server`` binds it
    (SO_REUSEADDR, each address of the host): a port in use is then refused before the
    daemon logs a line."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
    except OSError as exc:
        raise _bind_error(host, port, exc) from None


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
