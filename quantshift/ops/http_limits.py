"""What keeps the operator's HTTP server answerable whatever a client does.

* Malformed requests (bad request line or header, NUL or control characters, a header
  too large) get a short JSON answer: 400, 414 or 431. aiohttp's own answer quotes the
  raw bytes (the token in an ``Authorization`` header with them) and logs a traceback;
  here nothing of the request is echoed or logged but its address and the kind of fault.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from loguru import logger

__all__ = ["GuardedRequestHandler"]

# The request line holds only a method and one of a few short paths: 4 KiB is plenty,
# and a limit unlike the header's tells a too-long URL (414) from a too-long header (431).
MAX_LINE = 4096
MAX_FIELD = 8190  # one header, name and value (aiohttp's default)
MAX_HEADERS = 64
LINGER = 1.0  # seconds to drain an unread request body after the answer (aiohttp: 10)


class GuardedRequestHandler(web.RequestHandler):
    """aiohttp's connection protocol with quiet answers to requests that cannot be
    parsed."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, max_line_size=MAX_LINE, max_field_size=MAX_FIELD,
                         max_headers=MAX_HEADERS, lingering_time=LINGER, **kwargs)

    # -- requests that cannot be parsed -------------------------------------------------
    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        # The parser's message quotes the raw bytes: never answered, never logged.
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
