"""Shared fixtures: an isolated environment for the daemon and a way to run it as a process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def quantshift_bin() -> str:
    candidate = Path(sys.executable).with_name("quantshift")
    if candidate.exists():
        return str(candidate)
    found = shutil.which("quantshift")
    if found is None:
        pytest.fail("the quantshift console script is not installed in this environment")
    return found


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The process environment without any QuantShift or broker setting, rooted in tmp_path."""
    drop = ("QUANTSHIFT_", "SHADOW_MODE", "NOTIFY_SOCKET", "WATCHDOG_", "APCA_", "CCXT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        QUANTSHIFT_STATE_DIR=str(tmp_path / "var"),
        QUANTSHIFT_LOG_DIR=str(tmp_path / "logs"),
        QUANTSHIFT_CONFIG_DIR=str(tmp_path / "config"),
        QUANTSHIFT_ENV_FILE=str(tmp_path / "absent.env"),
        # HTTP only where a test asks for it: the default port may be a real daemon's.
        QUANTSHIFT_HTTP_PORT="0",
    )
    env.update(extra)
    return env


FAST = {
    "QUANTSHIFT_SIM_INTERVAL": "0.01",
    "QUANTSHIFT_SYMBOLS": "AAA,BBB,CCC",
    "QUANTSHIFT_STRATEGIES": '[{"name":"ma_cross","params":{"fast":2,"slow":5,'
                             '"mode":"long_short"}}]',
    "QUANTSHIFT_RISK_MAX_TRADES_PER_DAY": "0",
    "QUANTSHIFT_SNAPSHOT_INTERVAL": "0.2",
    "QUANTSHIFT_FLUSH_INTERVAL": "0.05",
    # Cold strategies: a restarted daemon's first round of bars cannot signal.
    "QUANTSHIFT_WARMUP_BARS": "0",
}


class DaemonProcess:
    """`quantshift run` as a child process, with helpers to read its log and state."""

    def __init__(self, tmp_path: Path, env: dict[str, str], bot: str = "equity") -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.bot = bot
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = Path(env["QUANTSHIFT_LOG_DIR"]) / f"quantshift-{bot}.log"

    def start(self) -> DaemonProcess:
        # Only this run's lines count: a restarted daemon appends to the same file.
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Files, not pipes: a chatty daemon must never block on a pipe nobody drains.
        n = len(list(self.tmp_path.glob("daemon-*.err")))
        self._out = self.tmp_path / f"daemon-{n}.out"
        self._err = self.tmp_path / f"daemon-{n}.err"
        with self._out.open("w") as out, self._err.open("w") as err:
            self.proc = subprocess.Popen(
                [quantshift_bin(), "run", "--bot", self.bot], env=self.env, cwd=self.tmp_path,
                stdout=out, stderr=err, text=True)
        return self

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        with self.log_path.open() as fh:
            fh.seek(getattr(self, "_offset", 0))
            return fh.read()

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern, re.M)
        while time.monotonic() < deadline:
            text = self.log()
            if len(rx.findall(text)) >= count:
                return text
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        _, err = self.communicate(0.1) if self.proc and self.proc.poll() is not None else ("", "")
        raise AssertionError(f"{pattern!r} x{count} not seen in the log within {timeout}s\n"
                             f"log:\n{self.log()[-3000:]}\nstderr:\n{err[-2000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM; return (exit status, seconds until exit)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        return code, time.monotonic() - started

    def communicate(self, timeout: float = 15.0) -> tuple[str, str]:
        """Wait for the exit; return what the daemon wrote to stdout and stderr."""
        assert self.proc is not None
        self.proc.wait(timeout)
        return self._out.read_text(), self._err.read_text()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def clean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An in-process daemon's world: the working directory is tmp_path and no QuantShift,
    broker or systemd setting leaks in from the environment."""
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("QUANTSHIFT_", "SHADOW_MODE", "APCA_", "CCXT_", "NOTIFY_",
                           "TELEGRAM_")):
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture(autouse=True)
def _no_default_http_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process daemons serve HTTP only on a port a test chose: the default one may
    belong to a real daemon on this machine, or to another test run."""
    import quantshift.settings

    monkeypatch.setattr(quantshift.settings, "DEFAULT_HTTP_PORT", 0)


def read_db(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def latest_snapshot(path: Path) -> dict[str, Any]:
    rows = read_db(path, "SELECT state FROM snapshots ORDER BY id DESC LIMIT 1")
    assert rows, f"no snapshot in {path}"
    return orjson.loads(rows[0][0])


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Any]:
    started: list[DaemonProcess] = []

    def make(**extra: str) -> DaemonProcess:
        d = DaemonProcess(tmp_path, clean_env(tmp_path, **{**FAST, **extra}))
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()

@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for this test (tests/redis_server.py)."""
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
