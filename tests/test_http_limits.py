"""No client can wedge the operator API: malformed requests get a short 4xx with nothing of
the request echoed or logged (the token least of all).

The process tests run `quantshift run`, as systemd would.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import orjson
import pytest

from tests.test_http_api import TOKEN, free_port


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# -- malformed requests, the token and tracebacks (a process, as systemd runs it) -------
MALFORMED = [
    # a control character in the Authorization header, right after the token
    ("control character", b"GET /status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
     + TOKEN.encode() + b"\x01\r\n\r\n", 400),
    ("NUL in a header", b"POST /halt HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
     + TOKEN.encode() + b"\x00x\r\n\r\n", 400),
    ("9 KB header", b"GET /status HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
     + TOKEN.encode() + b"a" * 9 * 1024 + b"\r\n\r\n", 431),
    ("too many headers", b"GET /status HTTP/1.1\r\nHost: t\r\n"
     + b"".join(b"X-H%d: %s\r\n" % (i, TOKEN.encode()) for i in range(200)) + b"\r\n", 431),
    ("9 KB request line", b"GET /" + TOKEN.encode() + b"b" * 9 * 1024 + b" HTTP/1.1\r\n\r\n",
     414),
    ("garbage request line", b"\x00\x01GARBAGE " + TOKEN.encode() + b"\r\n\r\n", 400),
    ("NUL bytes only", b"\x00" * 64 + b"\r\n\r\n", 400),
    ("bad request line", b"GET /st atus?" + TOKEN.encode() + b" HTTP/1.1 extra\r\n\r\n", 400),
    ("bad version", b"GET /status HTTP/9.Z\r\nAuthorization: Bearer " + TOKEN.encode()
     + b"\r\n\r\n", 400),
]


@pytest.mark.process
def test_malformed_requests_get_4xx_and_the_token_reaches_no_log(daemon: Any) -> None:
    port = free_port()
    d = daemon(QUANTSHIFT_HTTP_PORT=str(port), QUANTSHIFT_API_TOKEN=TOKEN).start()
    try:
        d.wait_for(r"\| ready$")
        for name, data, want in MALFORMED:
            answer = raw_request(port, data)
            assert answer, f"{name}: no answer"
            assert status_of(answer) == want, (name, answer[:200])
            _, _, body = answer.partition(b"\r\n\r\n")
            assert TOKEN.encode() not in answer, name  # nothing of the request echoed
            assert b"Traceback" not in body and len(body) < 200, (name, body)
            assert "error" in orjson.loads(body), name
        # The server is none the worse for it.
        assert status_of(raw_request(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n"
                                           b"Connection: close\r\n\r\n")) == 200
    finally:
        code, _ = d.stop()
    out, err = d.communicate()
    log = d.log()
    assert code == 0
    for where, text in (("stderr", err), ("stdout", out), ("log file", log)):
        assert TOKEN not in text, where
        assert "Traceback" not in text, where
        assert "Error handling request" not in text, where
