"""The CLI's side of the HTTP API: a small blocking client (the CLI has no event loop)
that turns every way of failing into one clear line."""

from __future__ import annotations

import contextlib
import getpass
import http.client
import socket
import urllib.error
import urllib.request
from typing import Any

import orjson

from quantshift.settings import Settings

__all__ = ["ApiError", "DaemonApi", "DaemonDown"]

TIMEOUT = 5.0


class ApiError(Exception):
    """The daemon could not be asked, or answered something unusable."""


class DaemonDown(ApiError):
    """Nothing listens where the daemon would."""


def _connect_host(host: str) -> str:
    # A daemon bound to every address is reached on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _actor() -> str:
    user = "cli"
    with contextlib.suppress(Exception):  # no passwd entry in some containers
        user = getpass.getuser()
    return f"{user}@{socket.gethostname()} (cli)"


class DaemonApi:
    def __init__(self, settings: Settings, timeout: float = TIMEOUT) -> None:
        self.bot = settings.bot
        self.url = f"http://{_connect_host(settings.http_host)}:{settings.http_port}"
        self._token = settings.api_token
        self.timeout = timeout

    def status(self) -> dict[str, Any]:
        """GET /status of this bot's daemon."""
        code, payload = self._call("GET", "/status")
        if code != 200 or payload.get("bot") is None:
            raise ApiError(f"{self.url}/status answered {code}: "
                           f"{payload.get('error', 'not a QuantShift status')}")
        if payload["bot"] != self.bot:
            raise ApiError(f"the daemon at {self.url} runs bot {payload['bot']!r}, not "
                           f"{self.bot!r}: check QUANTSHIFT_HTTP_PORT")
        return payload

    def control(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """POST /<action> with the token; the answer's status and JSON."""
        return self._call("POST", f"/{action}", {**body, "bot": self.bot}, self._auth())

    def read(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET a token-protected path (``/versions``)."""
        return self._call("GET", path, None, self._auth())

    def _auth(self) -> dict[str, str]:
        token = self._token.get_secret_value() if self._token is not None else ""
        return {"Authorization": f"Bearer {token}", "X-QuantShift-Actor": _actor()}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                code, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            code, raw = exc.code, exc.read()
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ConnectionRefusedError):
                raise DaemonDown(f"nothing answers at {self.url}") from None
            if isinstance(exc.reason, TimeoutError):
                raise ApiError(f"{self.url} did not answer within {self.timeout:g}s") from None
            raise ApiError(f"cannot reach {self.url}: {exc.reason}") from None
        except TimeoutError:
            raise ApiError(f"{self.url} did not answer within {self.timeout:g}s") from None
        except (OSError, http.client.HTTPException) as exc:  # reset, or not HTTP at all
            raise ApiError(f"cannot talk to {self.url}: {exc or type(exc).__name__}") from None
        try:
            payload = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise ApiError(f"{self.url}{path} answered {code} with something other than "
                           "JSON: is another service on this port?") from None
        if not isinstance(payload, dict):
            raise ApiError(f"{self.url}{path} answered {code} with unexpected JSON")
        return code, payload
