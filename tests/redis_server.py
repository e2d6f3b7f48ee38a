"""A real Redis for the tests: a private ``redis-server`` on a free port in a temp dir.

Each test that needs one starts its own, so it can kill it, restart it on the same port
(with its append-only file, or without it: a Redis that lost everything) and give it a
password. scripts/test installs ``redis-server`` where it is missing (as root, with
apt-get); without the binary the tests that need it skip, saying so.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

BINARY = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    def __init__(self, root: Path, *, password: str | None = None,
                 persist: bool = True) -> None:
        if BINARY is None:
            pytest.skip("redis-server is not installed (scripts/test installs it with "
                        "apt-get when run as root)")
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [str(BINARY), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.root), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.persist else "no",
                "--appendfsync", "always", "--logfile", str(self.root / "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: what the append-only file holds survives; nothing else."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def wipe(self) -> None:
        """Forget everything (a Redis that restarts without its data)."""
        for f in self.root.glob("appendonly*"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
