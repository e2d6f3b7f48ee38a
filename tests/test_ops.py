"""Logging (rotation that `tail -f` survives, redaction, shadow log), systemd notify, signals."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from loguru import logger

from quantshift.daemon import Daemon
from quantshift.ops.logging import CopyTruncateFile, StdlibHandler, setup_logging
from quantshift.ops.systemd import Notifier
from quantshift.settings import Settings


@pytest.fixture(autouse=True)
def _reset_logger():
    root, hook, unraisable = logging.getLogger(), threading.excepthook, sys.unraisablehook
    level = root.level
    yield
    logger.remove()
    # setup_logging routes the standard library's logging through loguru: undo it.
    for handler in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)
    threading.excepthook = hook
    sys.unraisablehook = unraisable


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


def test_libraries_log_through_the_same_sinks_and_redaction(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = "stdlib-redaction-0c9e"
    setup_logging(bot="s", log_dir=tmp_path, console=True, secrets=[secret])
    server = logging.getLogger("aiohttp.server")
    server.debug("below the level %s", secret)
    server.warning("header was %s", secret)
    try:
        raise ValueError(f"Invalid header value char: Bearer {secret}")
    except ValueError:
        server.exception("Error handling request from %s", "127.0.0.1")
    logging.getLogger("urllib3.connectionpool").info("GET /v2/account?key=%s", secret)
    try:
        raise RuntimeError(f"venue refused key {secret}")
    except RuntimeError:
        logger.exception("order failed")  # the daemon's own traceback: masked too

    def poll() -> None:
        raise ConnectionError(f"stream closed for key {secret}")

    thread = threading.Thread(target=poll, name="venue-poll")
    thread.start()
    thread.join()

    class Session:
        def __del__(self) -> None:
            raise RuntimeError(f"session for key {secret} not closed")

    Session()  # gone at once: its __del__ raises where nothing can catch it
    stderr = capsys.readouterr().err
    main = (tmp_path / "quantshift-s.log").read_text()
    for text in (stderr, main):
        assert secret not in text
        assert "| WARNING | s | aiohttp.server: header was ***" in text  # level kept
        assert "| ERROR   | s | aiohttp.server: Error handling request from 127.0.0.1" in text
        assert "ValueError: Invalid header value char: Bearer ***" in text
        assert "| INFO    | s | urllib3.connectionpool: GET /v2/account?key=***" in text
        assert "RuntimeError: venue refused key ***" in text
        assert "thread venue-poll crashed" in text and "stream closed for key ***" in text
        assert "Exception ignored in" in text and "session for key *** not closed" in text
        assert "below the level" not in text


def test_json_log_lines_are_redacted_whole(tmp_path: Path) -> None:
    secret = "json-redaction-5d1f"
    setup_logging(bot="j", log_dir=tmp_path, console=False, json=True, secrets=[secret])
    try:
        raise RuntimeError(f"refused {secret}")
    except RuntimeError:
        logger.bind(order={"key": secret}).exception("submit failed")
    logging.getLogger("ccxt.base.exchange").error("binance %s", secret)
    main = (tmp_path / "quantshift-j.log").read_text()
    assert secret not in main
    assert '"exception":"refused ***"' in main and "ccxt.base.exchange: binance ***" in main


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
