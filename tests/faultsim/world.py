"""A schedule's world on disk: its directories, the daemon's settings and secrets, the
tmpfs its state lives on when the disk is to fill up, and the ledger accidents.

The daemon's environment starts from ``tests.conftest.clean_env`` (what the process tests
use) plus the emulator's own export lines, and names only real settings: a fixed daemon
refuses unknown ``QUANTSHIFT_*`` names.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import secrets
import shutil
import socket
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import clean_env

BOT = "equity"
LEDGER = f"{BOT}-sandbox.sqlite"
SHUTDOWN_TIMEOUT = 5.0
RECONCILE_INTERVAL = 2.0
SETTINGS = {
    "QUANTSHIFT_BAR_SECONDS": "1",
    "QUANTSHIFT_RISK_MAX_TRADES_PER_DAY": "0",
    "QUANTSHIFT_RECONCILE_INTERVAL": f"{RECONCILE_INTERVAL:g}",
    "QUANTSHIFT_BROKER_TIMEOUT": "3",
    "QUANTSHIFT_SHUTDOWN_TIMEOUT": f"{SHUTDOWN_TIMEOUT:g}",
    "QUANTSHIFT_FLUSH_INTERVAL": "0.05",
    "QUANTSHIFT_SNAPSHOT_INTERVAL": "0.5",
}
SIZING = {"alpaca": {"QUANTSHIFT_SIZING": "fixed:2"},
          "exchange": {"QUANTSHIFT_SIZING": "fraction:0.01", "QUANTSHIFT_FRACTIONAL": "true"}}
MODE = {"alpaca": "long_short", "exchange": "long_only"}  # spot: no shorts
# Two versions, so a forced promotion and a rollback have something to do.
TOML = """\
[[strategies]]
name = "ma_cross"
params = {{ fast = 2, slow = 4, mode = "{mode}" }}
versions = [
  {{ version = "v1", status = "active" }},
  {{ version = "v2", status = "shadow", params = {{ fast = 3 }} }},
]
"""
TMPFS_SIZE = "32m"


@dataclass(frozen=True)
class Secrets:
    """Values that must never appear in an output, a log file or a ledger."""

    api_token: str
    broker_key: str
    broker_secret: str

    @classmethod
    def fresh(cls) -> Secrets:
        # Distinctive, so a search for them finds nothing by chance.
        return cls(secrets.token_hex(16), "FSKEY" + secrets.token_hex(10).upper(),
                   "FSSECRET" + secrets.token_hex(16))

    def items(self) -> list[tuple[str, str]]:
        return [("API token", self.api_token), ("broker key", self.broker_key),
                ("broker secret", self.broker_secret)]


class World:
    def __init__(self, root: Path, venue: str) -> None:
        self.root = root
        self.venue = venue
        self.state = root / "var"
        self.logs = root / "logs"
        self.runs = root / "runs"
        self.keep = root / "keep"
        for d in (self.state, self.logs, self.runs, self.keep, root / "config"):
            d.mkdir(parents=True, exist_ok=True)
        (root / "config" / f"{BOT}.toml").write_text(TOML.format(mode=MODE[venue]))
        self.secrets = Secrets.fresh()
        self.http_port = free_port()
        self.tmpfs = False
        self._filler = self.state / "filler.bin"

    @property
    def ledger(self) -> Path:
        return self.state / LEDGER

    @property
    def log_file(self) -> Path:
        return self.logs / f"quantshift-{BOT}.log"

    def env(self, exports: dict[str, str], extra: dict[str, str] | None = None) -> dict[str, str]:
        exports = dict(exports)
        if self.venue == "alpaca":
            exports.update(APCA_API_KEY_ID=self.secrets.broker_key,
                           APCA_API_SECRET_KEY=self.secrets.broker_secret)
        else:
            exports.update(CCXT_API_KEY=self.secrets.broker_key,
                           CCXT_SECRET=self.secrets.broker_secret)
        return clean_env(self.root, **exports, **SETTINGS, **SIZING[self.venue],
                         QUANTSHIFT_HTTP_PORT=str(self.http_port),
                         QUANTSHIFT_API_TOKEN=self.secrets.api_token, **(extra or {}))

    # -- disk full ---------------------------------------------------------------------
    def mount_tmpfs(self) -> str | None:
        """Put the state directory on a small tmpfs; None, or why it cannot be done."""
        if os.geteuid() != 0:
            return "not root: cannot mount a tmpfs"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755",
                               "faultsim", str(self.state)], capture_output=True, text=True)
        if done.returncode != 0:
            return f"mount failed: {done.stderr.strip() or done.returncode}"
        self.tmpfs = True
        return None

    def fill_disk(self) -> int:
        """Fill the tmpfs up to the last byte; returns the bytes written."""
        written = 0
        with self._filler.open("ab", buffering=0) as fh:  # unbuffered: nothing left to flush
            for size in (1 << 20, 1 << 14, 1 << 10, 64, 1):
                block = b"\0" * size
                try:
                    while True:
                        written += fh.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        return written

    def free_disk(self) -> None:
        self._filler.unlink(missing_ok=True)

    def unmount(self) -> Path:
        """Copy the state out of the tmpfs and unmount it; returns where the state is now."""
        if not self.tmpfs:
            return self.state
        self.free_disk()
        final = self.root / "var.final"
        shutil.copytree(self.state, final, dirs_exist_ok=True)
        done = subprocess.run(["umount", str(self.state)], capture_output=True)
        if done.returncode != 0:  # still busy (a daemon we could not reap): detach it
            subprocess.run(["umount", "-l", str(self.state)], capture_output=True)
        self.tmpfs = False
        return final

    # -- the ledger between two runs -----------------------------------------------------
    def ledger_files(self, where: Path | None = None) -> list[Path]:
        base = (where or self.state) / LEDGER
        return [base, *(Path(f"{base}{s}") for s in ("-wal", "-shm"))]

    def corrupt(self, how: str, rng: random.Random, n: int) -> Path:
        """Keep a copy of the ledger (as an operator's backup), then damage it; returns
        the copy's directory."""
        keep = self.keep / f"{n}-{how}"
        keep.mkdir(parents=True, exist_ok=True)
        for f in self.ledger_files():
            if f.exists():
                shutil.copy2(f, keep / f.name)
                f.unlink()
        if how == "zero":
            self.ledger.write_bytes(b"")
        elif how == "other_app":  # another application's SQLite file
            db = sqlite3.connect(self.ledger)
            db.executescript("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);"
                             "INSERT INTO notes (body) VALUES ('shopping list');")
            db.close()
        else:
            self.ledger.write_bytes(rng.randbytes(rng.randint(1, 64) * 512))
        return keep

    def restore(self, keep: Path) -> None:
        """Put the kept ledger back, as an operator would after a refused start."""
        for f in self.ledger_files():
            f.unlink(missing_ok=True)
        for f in keep.iterdir():
            shutil.copy2(f, self.state / f.name)


# Each worker process of a pool draws from its own slice of the range (pool.py sets it), so
# two schedules running side by side never pick the same port for their daemons.
PORT_SLOT: int | None = None
_SLICE = 500


def free_port() -> int:
    """A free port below the kernel's ephemeral range, so no emulator (bound to port 0) of
    a schedule running beside this one can take it before the daemon binds it."""
    rng = random.SystemRandom()
    lo, hi = 20_000, 32_000
    if PORT_SLOT is not None:
        lo += (PORT_SLOT % ((hi - lo) // _SLICE)) * _SLICE
        hi = lo + _SLICE
    while True:
        port = rng.randrange(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def outside_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (None when it has none)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                return parts[parts.index("inet") + 1].split("/")[0]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        addr = s.getsockname()[0]
        if not addr.startswith("127."):
            return str(addr)
    return None
