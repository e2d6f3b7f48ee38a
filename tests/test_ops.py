"""Logging (rotation that `tail -f` survives, redaction, shadow log), systemd notify, signals."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from loguru import logger

from quantshift.daemon import Daemon
from quantshift.ops.logging import CopyTruncateFile, setup_logging
from quantshift.ops.systemd import Notifier
from quantshift.settings import Settings


@pytest.fixture(autouse=True)
def _reset_logger():
    yield
    logger.remove()


def test_rotation_keeps_the_live_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "q.log"
    f = CopyTruncateFile(path, max_bytes=1000, keep=3)
    inode = path.stat().st_ino
    for i in range(100):
        f.write(f"line {i:03d} " + "x" * 40 + "\n")
    f.write("after the last rotation\n")
    f.close()
    assert path.stat().st_ino == inode  # same file: a `tail -f` on it keeps reading
    assert path.stat().st_size < 1000
    assert (tmp_path / "q.log.1").exists() and (tmp_path / "q.log.2").exists()
    assert not (tmp_path / "q.log.4").exists()  # keep=3 bounds the archive
    everything = "".join((tmp_path / n).read_text() for n in ("q.log.2", "q.log.1", "q.log"))
    assert path.read_text() == "after the last rotation\n"
    assert everything.index("line 060") < everything.index("line 099")


@pytest.mark.skipif(shutil.which("tail") is None, reason="no tail binary on this machine")
def test_tail_f_follows_across_rotation(tmp_path: Path) -> None:
    setup_logging(bot="t", log_dir=tmp_path, console=False, rotate_mb=0.002, keep=2)
    path = tmp_path / "quantshift-t.log"
    logger.info("first line")
    tail = subprocess.Popen(["tail", "-f", "-n", "+1", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(0.3)
        for i in range(60):  # ~2 KiB rotates several times
            logger.info("message {} {}", i, "y" * 40)
            time.sleep(0.01)
        logger.info("the very last line")
        time.sleep(1.5)
    finally:
        tail.terminate()
        out = tail.communicate(timeout=5)[0]
    assert (tmp_path / "quantshift-t.log.1").exists()
    assert "the very last line" in out


def test_secrets_are_redacted_and_shadow_lines_split(tmp_path: Path) -> None:
    secret = "redaction-check-77ab"
    setup_logging(bot="r", log_dir=tmp_path, console=False, secrets=[secret])
    logger.info("connecting with key {}", secret)
    logger.bind(shadow=True).info("would execute buy 1 X")
    main = (tmp_path / "quantshift-r.log").read_text()
    shadow = (tmp_path / "quantshift-r-shadow.log").read_text()
    assert secret not in main and "connecting with key ***" in main
    assert "would execute" in main and "would execute" in shadow
    assert "connecting" not in shadow


def test_notifier_speaks_the_protocol(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(2)
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000",
                  "WATCHDOG_PID": str(os.getpid())})
    assert n.enabled and n.watchdog_interval == pytest.approx(1.5)
    assert n.ready("ok")
    assert server.recv(1024).decode().splitlines()[0] == "READY=1"
    assert n.watchdog() and server.recv(1024) == b"WATCHDOG=1"
    assert n.stopping("bye") and server.recv(1024).startswith(b"STOPPING=1")
    server.close()
    assert not Notifier({}).enabled and not Notifier({}).ready("x")
    other = Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is for another process


def test_signal_handler_only_sets_flags(tmp_path: Path) -> None:
    d = Daemon(Settings(state_dir=tmp_path))

    async def scenario() -> None:
        d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
        d.handle_exit(signal.SIGTERM)
        assert d.should_exit and not d.force_exit and d._exit_event.is_set()
        assert d.exit_reason == "SIGTERM"
        d.handle_exit(signal.SIGINT)
        assert d.force_exit and d._force_event.is_set()

    asyncio.run(scenario())
    assert d.journal is None and not (tmp_path / "equity-paper.sqlite").exists()  # no I/O
