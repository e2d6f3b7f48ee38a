"""Logging: readable lines to stderr, a size-rotated file for ``tail -f``, a shadow log.

The file rotates by copy-and-truncate: the live file keeps its name and inode, so a
plain ``tail -f logs/quantshift-<bot>.log`` keeps following it across rotations
(GNU tail reports the truncation and reads on). Older contents move to ``.1``, ``.2``...
Every message passes a redactor that masks the values of configured secrets.
"""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from loguru import logger

# loguru appends the newline and any traceback itself.
TEXT_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {extra[bot]} | {message}"
_REDACTED = "***"


class CopyTruncateFile:
    """A log file that rotates in place when it grows past ``max_bytes``."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", encoding="utf-8")
        self._size = path.stat().st_size
        self._lock = threading.Lock()

    def write(self, message: str) -> None:
        with self._lock:
            self._fh.write(message)
            self._fh.flush()
            self._size += len(message)
            if self._size >= self.max_bytes:
                self._rotate()

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        shutil.copyfile(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fh.truncate(0)
        self._size = 0

    def close(self) -> None:
        with self._lock:
            self._fh.close()


def _json_line(record: Any) -> str:
    payload = {
        "ts": record["time"].astimezone(UTC).isoformat(),
        "level": record["level"].name,
        "bot": record["extra"].get("bot"),
        "msg": record["message"],
        "module": record["name"],
    }
    extra = {k: v for k, v in record["extra"].items() if k not in ("bot",)}
    if extra:
        payload["extra"] = extra
    if record["exception"] is not None:
        payload["exception"] = str(record["exception"].value)
    return orjson.dumps(payload, default=str).decode() + "\n"


class _JsonSink:
    def __init__(self, target: CopyTruncateFile) -> None:
        self._target = target

    def write(self, message: Any) -> None:
        self._target.write(_json_line(message.record))


_files: list[CopyTruncateFile] = []


def setup_logging(*, bot: str, log_dir: Path | None, level: str = "INFO", json: bool = False,
                  secrets: Iterable[str] = (), rotate_mb: float = 20.0, keep: int = 5,
                  console: bool = True, console_level: str | None = None) -> Path | None:
    """Configure every sink; return the main log file's path (None without a log dir)."""
    logger.remove()
    for fh in _files:
        fh.close()
    _files.clear()
    hidden = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(record: Any) -> None:
        record["extra"].setdefault("bot", bot)
        if hidden:
            msg = record["message"]
            for secret in hidden:
                if secret in msg:
                    msg = msg.replace(secret, _REDACTED)
            record["message"] = msg

    logger.configure(patcher=redact, extra={"bot": bot})
    if console:
        logger.add(sys.stderr, level=console_level or level, format=TEXT_FORMAT,
                   backtrace=False, diagnose=False)
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    main_path = log_dir / f"quantshift-{bot}.log"
    max_bytes = int(rotate_mb * 1024 * 1024)
    main = CopyTruncateFile(main_path, max_bytes, keep)
    shadow = CopyTruncateFile(log_dir / f"quantshift-{bot}-shadow.log", max_bytes, keep)
    _files.extend([main, shadow])
    if json:
        logger.add(_JsonSink(main), level=level, format="{message}", diagnose=False)
        logger.add(_JsonSink(shadow), level="INFO", format="{message}", diagnose=False,
                   filter=lambda r: bool(r["extra"].get("shadow")))
    else:
        logger.add(main.write, level=level, format=TEXT_FORMAT, diagnose=False)
        logger.add(shadow.write, level="INFO", format=TEXT_FORMAT, diagnose=False,
                   filter=lambda r: bool(r["extra"].get("shadow")))
    return main_path


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
