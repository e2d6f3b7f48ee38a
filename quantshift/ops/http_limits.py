"""What keeps the operator's HTTP server answerable whatever a client does.

* A cap on open connections. When it is reached, a new connection takes the place of the
  oldest one that is not in the middle of a request (still sending its request head, or
  idle between two requests). When every connection is serving a request, a few more are
  let in for health checks only: ``/healthz`` and ``/readyz`` are answered, anything else
  gets a 503 with Retry-After at once, and the connection is closed after its one answer
  (no newcomer evicts it meanwhile); past those few the connection itself is refused
  (503, closed). Nothing is queued. So neither silent sockets nor slow requests lock a
  health check out, and the process never runs out of file descriptors.
* A deadline for the request head, counted from the connection (or from the first byte
  of the next request on a kept-alive one): a client that sends half a request line and
  stops (slowloris) is closed, with a 408 when it sent anything.
* An idle keep-alive timeout (aiohttp's own), so idle connections do not pile up either.
* Malformed requests (bad request line or header, NUL or control characters, a header
  too large) get a short JSON answer: 400, 414 or 431. aiohttp's own answer quotes the
  raw bytes (the token in an ``Authorization`` header with them) and logs a traceback;
  here nothing of the request is echoed or logged but its address and the kind of fault.
* ``/status`` and ``/metrics`` are built once for many requests (``SharedBuild``), and
  the answers go out in batches, so a flood of them costs a build per interval and never
  one long turn of the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from loguru import logger

__all__ = ["BUSY", "LISTEN_BACKLOG", "BuildFailed", "ConnectionGate", "GuardedRequestHandler",
           "HttpLimits", "SharedBuild", "fd_headroom"]

# The request line holds only a method and one of a few short paths: 4 KiB is plenty,
# and a limit unlike the header's tells a too-long URL (414) from a too-long header (431).
MAX_LINE = 4096
MAX_FIELD = 8190  # one header, name and value (aiohttp's default)
MAX_HEADERS = 64
LINGER = 1.0  # seconds to drain an unread request body after the answer (aiohttp: 10)
HEALTH_RESERVE = 16  # connections beyond the cap, for health checks only
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
# A burst of connections waits in the kernel's queue instead of having its SYNs dropped
# (a dropped SYN is retried after a second: a health check that takes a second).
LISTEN_BACKLOG = 1024
# Files the daemon needs besides its API connections (journal, logs, broker sockets),
# plus a backlog's worth of sockets accepted in one go only to be refused.
FD_RESERVE = LISTEN_BACKLOG + 128
ANSWER_BATCH = 32  # shared answers released per turn of the loop
T = TypeVar("T")


def _raw_answer(status: int, reason: str, error: str, extra: str = "") -> bytes:
    body = orjson.dumps({"error": error})
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


BUSY = "too many requests in progress; retry shortly"
_REFUSED = _raw_answer(503, "Service Unavailable", BUSY, "Retry-After: 1\r\n")
_HEAD_TIMEOUT = _raw_answer(408, "Request Timeout", "request head not received in time")


@dataclass(frozen=True)
class HttpLimits:
    max_connections: int = 512
    head_timeout: float = 5.0  # s to send a whole request head (and a control body)
    keepalive_timeout: float = 15.0  # s an idle kept-alive connection stays open
    status_ttl: float = 0.05  # s at least between two builds of /status (and /metrics)


class ConnectionGate:
    """The server's open connections: those under the cap, of which the ones not serving
    a request are kept oldest first (a newcomer may take the place of the oldest), and
    the few let in past the cap for health checks only, which nothing evicts."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: set[GuardedRequestHandler] = set()
        self.waiting: dict[GuardedRequestHandler, None] = {}  # insertion order: oldest first
        self.reserve: set[GuardedRequestHandler] = set()  # health checks only, past the cap
        self.counts = {"refused": 0, "evicted": 0, "head_timeouts": 0, "malformed": 0}

    def admit(self, conn: GuardedRequestHandler) -> bool:
        if len(self.open) - len(self.reserve) >= self.limit:
            victim = next(iter(self.waiting), None)
            if victim is not None:
                self.counts["evicted"] += 1
                self.release(victim)
                victim.force_close()
            elif len(self.reserve) < HEALTH_RESERVE:
                conn.health_only = True
                self.reserve.add(conn)
                self.open.add(conn)
                return True
            else:
                self.counts["refused"] += 1
                return False
        self.open.add(conn)
        self.waiting[conn] = None
        return True

    def busy(self, conn: GuardedRequestHandler) -> None:
        self.waiting.pop(conn, None)

    def idle(self, conn: GuardedRequestHandler) -> None:
        if conn in self.open and conn not in self.reserve:
            self.waiting.pop(conn, None)
            self.waiting[conn] = None  # now the youngest

    def release(self, conn: GuardedRequestHandler) -> None:
        self.open.discard(conn)
        self.reserve.discard(conn)
        self.waiting.pop(conn, None)

    def stats(self) -> dict[str, int]:
        return {"open": len(self.open), "serving": sum(c.serving for c in self.open),
                "limit": self.limit, **self.counts}


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol with the gate, the head deadline and quiet answers
    to requests that cannot be parsed."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 gate: ConnectionGate, head_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, max_line_size=MAX_LINE, max_field_size=MAX_FIELD,
                         max_headers=MAX_HEADERS, lingering_time=LINGER, **kwargs)
        self._gate = gate
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._admitted = False
        self.serving = False
        self._got_bytes = False
        self.health_only = False  # let in past the cap: health checks only

    # -- the connection's life ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._gate.admit(self):
            assert isinstance(transport, asyncio.Transport)
            transport.write(_REFUSED)
            transport.close()  # never handed to aiohttp: nothing else to undo
            return
        self._admitted = True
        super().connection_made(transport)
        self._arm_head_deadline()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._gate.release(self)
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        if data and not self.serving:
            self._got_bytes = True
            if self._head_timer is None:  # the first byte of the next request
                self._arm_head_deadline()
        super().data_received(data)

    def _arm_head_deadline(self) -> None:
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_overdue)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.serving or self.transport is None:
            return
        self._gate.counts["head_timeouts"] += 1
        if self._got_bytes:
            self.transport.write(_HEAD_TIMEOUT)
        self.force_close()

    # -- requests (started by the app's outermost middleware, ended by aiohttp) ------
    def request_started(self, path: str) -> bool:
        """A request's head is in; False when it must be refused (a connection let in
        past the cap asking for anything but a health check)."""
        self.serving = True
        self._got_bytes = False
        self._disarm()
        self._gate.busy(self)
        if self.health_only and path not in HEALTH_PATHS:
            self._gate.counts["refused"] += 1
            return False
        return True

    def log_access(self, request: web.BaseRequest, response: web.StreamResponse,
                   time: float | None) -> None:
        # aiohttp calls this once the answer is written, for every request: the
        # connection is between requests again from here.
        super().log_access(request, response, time)
        self.serving = False
        self._gate.idle(self)

    # -- requests that cannot be parsed -------------------------------------------------
    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # The parser's message quotes the raw bytes: never answered, never logged.
        self._gate.counts["malformed"] += 1
        status, error = _parse_fault(exc)
        logger.debug("http: malformed request from {} answered {} ({})",
                     request.remote or "?", status, type(exc).__name__)
        if request.writer.output_size > 0:  # aiohttp's own rule: the answer has begun
            raise ConnectionError("an answer was already sent")
        resp = web.Response(body=orjson.dumps({"error": error}), status=status,
                            content_type="application/json")
        resp.force_close()
        return resp


def _parse_fault(exc: HttpProcessingError) -> tuple[int, str]:
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else None
        if limit == MAX_LINE:
            return 414, "request line too long"
        return 431, "request header too large"
    if "Too many headers" in exc.message:
        return 431, "too many request headers"
    return 400, "malformed request"


class BuildFailed(Exception):
    """The shared build raised (logged once, with its traceback, by SharedBuild)."""


class SharedBuild(Generic[T]):
    """An answer built for many requests at once. Each request waits for the next build
    and shares it with every request that came in meanwhile, so an answer never
    predates its request; builds are at least ``ttl`` apart (the first after a quiet
    spell goes at once); and the answers go out a batch per turn of the loop, since 500
    written in one turn would hold a bar up for tens of milliseconds. A build that fails
    is logged once and raises BuildFailed in every request that waited for it."""

    def __init__(self, build: Callable[[], T], ttl: float) -> None:
        self._build = build
        self.ttl = ttl
        self._waiters: list[asyncio.Future[T]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._built_at = -float("inf")

    async def get(self) -> T:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[T] = loop.create_future()
        self._waiters.append(answer)
        if self._timer is None:
            wait = max(0.0, self._built_at + self.ttl - time.monotonic())
            self._timer = loop.call_later(wait, self._run)
        return await answer

    def flush(self) -> None:
        """Build now for whoever waits (the server is closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._run()

    def _run(self) -> None:
        self._timer = None
        waiters, self._waiters = self._waiters, []
        self._built_at = time.monotonic()
        try:
            body = self._build()
        except Exception:
            logger.opt(exception=True).error("http: building an answer failed")
            for answer in waiters:
                if not answer.done():
                    answer.set_exception(BuildFailed())
            return
        self._answer(waiters, body, 0)

    def _answer(self, waiters: list[asyncio.Future[T]], body: T, start: int) -> None:
        end = start + ANSWER_BATCH
        for answer in waiters[start:end]:
            if not answer.done():  # its request may have been cancelled
                answer.set_result(body)
        if end < len(waiters):
            asyncio.get_running_loop().call_soon(self._answer, waiters, body, end)


def fd_headroom(connections: int) -> int:
    """The connection cap the open-file limit leaves room for: the soft limit is raised
    (up to the hard one) to hold ``connections`` plus the daemon's own files and a
    backlog's worth of sockets accepted only to be refused; past EMFILE the listener
    would stop accepting, health checks included."""
    want = connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return connections
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    room = max(soft - FD_RESERVE, 8)
    if room < connections:
        logger.warning("http: the open-file limit ({}) leaves room for {} connections, not "
                       "QUANTSHIFT_HTTP_MAX_CONNECTIONS={} (raise LimitNOFILE)", soft, room,
                       connections)
        return room
    return connections
