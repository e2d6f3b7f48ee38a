"""The daemon's HTTP API as an operator (and an attacker) uses it, with what was sent when.

Each operator command records the time the request was sent and the time its answer
came (``time.time()``, the clock the emulator stamps its orders with), the status code
and the body: invariant 1 counts a halt as acknowledged only from the moment a 200 for
it arrived.
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

TIMEOUT = 8.0
BODIES: dict[str, dict[str, Any]] = {
    "halt": {"reason": "fault simulator halt"},
    "halt_flatten": {"reason": "fault simulator halt and flatten", "flatten": True},
    "resume": {},
    "reduce": {"reason": "fault simulator reduce"},
    "flatten": {"reason": "fault simulator flatten"},
    "promote": {"strategy": "ma_cross", "version": "v2", "force": True,
                "reason": "fault simulator promote"},
    "rollback": {"strategy": "ma_cross", "reason": "fault simulator rollback"},
}
HOSTILE = ("control_char_auth", "long_auth_header", "long_other_header", "garbage_line")


@dataclass
class Command:
    command: str          # a key of BODIES
    action: str           # the endpoint: halt, resume, ...
    body: dict[str, Any]
    sent: float
    answered: float | None
    status: int | None    # None: no answer (refused, reset, timed out)
    response: Any
    run: int              # the daemon run it was sent to

    @property
    def acknowledged(self) -> bool:
        return self.status == 200

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def command(port: int, token: str, name: str, run: int) -> Command:
    action = "halt" if name == "halt_flatten" else name
    body = BODIES[name]
    payload = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    sent = time.time()
    try:
        conn.request("POST", f"/{action}", body=payload,
                     headers={"Authorization": f"Bearer {token}",
                              "Content-Type": "application/json",
                              "X-QuantShift-Actor": "faultsim"})
        resp = conn.getresponse()
        raw = resp.read()
        answered, status = time.time(), resp.status
        try:
            response: Any = json.loads(raw)
        except ValueError:
            response = raw.decode("utf-8", "replace")[:500]
    except (OSError, http.client.HTTPException) as exc:
        answered, status, response = None, None, f"no answer: {exc!r}"
    finally:
        conn.close()
    return Command(name, action, body, sent, answered, status, response, run)


def status(port: int) -> dict[str, Any] | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3.0)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        data = resp.read()
        return json.loads(data) if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def hostile(port: int, token: str, kind: str, rng: random.Random) -> dict[str, Any]:
    """A malformed request that carries the token where a careless server would echo it.
    Sent to GET /status, so a lenient parser that accepts it changes nothing."""
    pad = "A" * rng.randint(8300, 12000)
    if kind == "control_char_auth":
        head = f"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\x01\r\n"
    elif kind == "long_auth_header":
        head = f"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}{pad}\r\n"
    elif kind == "long_other_header":
        head = f"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Note: {token}{pad}\r\n"
    else:
        head = rng.choice(["\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 / HTTP/1.1\r\n",
                           "GET /status HTTP/9.Z\r\n", "\x00\x00\x00\x00\r\n",
                           "POST\t/halt\tHTTP/1.1 extra\r\n"])
    data = (head + "\r\n").encode("latin-1")
    sent = time.time()
    answer = ""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3.0) as sock:
            sock.sendall(data)
            answer = sock.recv(200).decode("latin-1").split("\r\n", 1)[0]
    except OSError as exc:
        answer = f"no answer: {exc!r}"
    return {"kind": kind, "sent": sent, "answer": answer}
