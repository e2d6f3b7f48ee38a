"""Logging: readable lines to stderr, a size-rotated file for ``tail -f``, a shadow log.

The file rotates by copy-and-truncate: the live file keeps its name and inode, so a
plain ``tail -f logs/quantshift-<bot>.log`` keeps following it across rotations
(GNU tail reports the truncation and reads on). Older contents move to ``.1``, ``.2``...
Every message passes a redactor that masks the values of configured secrets, and so does
every line a sink writes (the traceback too: an exception's text may quote a secret). The
standard library's logging (aiohttp, asyncio, urllib3, websockets, ccxt, alpaca-py...) is
routed through the same sinks, so no library writes to stderr on its own.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import threading
from collections.abc import Callable, Iterable
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
    def __init__(self, target: CopyTruncateFile, hide: Callable[[str], str]) -> None:
        self._target = target
        self._hide = hide

    def write(self, message: Any) -> None:
        self._target.write(self._hide(_json_line(message.record)))


def _redacted(write: Callable[[str], object], hide: Callable[[str], str]) -> Callable[[str], None]:
    """A sink that masks secrets in the whole formatted line, traceback included (the
    patcher only sees the message)."""

    def sink(message: str) -> None:
        write(hide(message))

    return sink


def _stderr_write(text: str) -> None:
    sys.stderr.write(text)  # looked up at each call: whatever stderr is now


class StdlibHandler(logging.Handler):
    """The standard library's log records as loguru lines: the same sinks, format and
    redaction as the daemon's own; the level is kept and the logger's name leads the
    message (``aiohttp.server: ...``) and names the component (metrics, /status)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:  # a custom level number: loguru takes the number
            level = record.levelno
        try:
            text = record.getMessage()
        except Exception:  # a library's broken format string is still a line
            text = str(record.msg)
        if record.stack_info:
            text = f"{text}\n{record.stack_info}"
        name = record.name
        logger.patch(lambda r: r.update(name=name)).opt(
            exception=record.exc_info or None).log(level, "{}: {}", name, text)


def route_stdlib_logging(level: str = "INFO") -> None:
    """Send every standard-library log record (and ``warnings``) through loguru, from
    ``level`` up; thread crashes and unraisable exceptions too, which Python would print
    to stderr itself."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StdlibHandler)]:
        root.removeHandler(handler)
    root.addHandler(StdlibHandler())
    root.setLevel(logger.level(level).no)
    logging.captureWarnings(True)
    threading.excepthook = _thread_crashed
    sys.unraisablehook = _unraisable


def _thread_crashed(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logger.opt(exception=(args.exc_type, args.exc_value, args.exc_traceback)).error(
        "thread {} crashed", name)


def _unraisable(args: Any) -> None:
    """An exception Python cannot raise (in a ``__del__``, a finalizer): logged, since
    Python would print it and its traceback to stderr itself."""
    try:
        what = repr(args.object) if args.object is not None else "?"
    except Exception:  # a broken __repr__ is no reason to lose the line
        what = type(args.object).__name__
    logger.opt(exception=(args.exc_type, args.exc_value, args.exc_traceback)).error(
        "{}: {}", args.err_msg or "Exception ignored in", what)


_files: list[CopyTruncateFile] = []


def setup_logging(*, bot: str, log_dir: Path | None, level: str = "INFO", json: bool = False,
                  secrets: Iterable[str] = (), rotate_mb: float = 20.0, keep: int = 5,
                  console: bool = True, console_level: str | None = None) -> Path | None:
    """Configure every sink; return the main log file's path (None without a log dir)."""
    logger.remove()
    for fh in _files:
        fh.close()
    _files.clear()
    hide = redactor(secrets)

    def redact(record: Any) -> None:
        record["extra"].setdefault("bot", bot)
        record["message"] = hide(record["message"])

    logger.configure(patcher=redact, extra={"bot": bot})

    def not_shadow_only(record: Any) -> bool:
        # The version books' "would" lines (many per bar with several versions) belong in
        # the shadow log only; LogOnly's "would execute" lines go to both.
        return not record["extra"].get("shadow_only")

    lowest = min((console_level or level, level) if console else (level,),
                 key=lambda name: logger.level(name).no)
    route_stdlib_logging(lowest)
    if console:
        logger.add(_redacted(_stderr_write, hide), level=console_level or level,
                   format=TEXT_FORMAT, backtrace=False, diagnose=False,
                   filter=not_shadow_only)
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    main_path = log_dir / f"quantshift-{bot}.log"
    max_bytes = int(rotate_mb * 1024 * 1024)
    main = CopyTruncateFile(main_path, max_bytes, keep)
    shadow = CopyTruncateFile(log_dir / f"quantshift-{bot}-shadow.log", max_bytes, keep)
    _files.extend([main, shadow])
    if json:
        logger.add(_JsonSink(main, hide), level=level, format="{message}", diagnose=False,
                   filter=not_shadow_only)
        logger.add(_JsonSink(shadow, hide), level="INFO", format="{message}",
                   diagnose=False, filter=lambda r: bool(r["extra"].get("shadow")))
    else:
        logger.add(_redacted(main.write, hide), level=level, format=TEXT_FORMAT,
                   diagnose=False, filter=not_shadow_only)
        logger.add(_redacted(shadow.write, hide), level="INFO", format=TEXT_FORMAT,
                   diagnose=False, filter=lambda r: bool(r["extra"].get("shadow")))
    return main_path


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that masks every configured secret in a text (the log file's rule)."""
    hidden = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def hide(text: str) -> str:
        for secret in hidden:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    return hide


class LastError:
    """The last ERROR (or worse) log record, for /status: its message, time and component
    (the module below ``quantshift``, as in the metrics). A loguru sink; ``attach`` adds it
    and ``detach`` removes it."""

    MAX_CHARS = 500

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Redacted here too: a daemon run without setup_logging has no redacting patcher.
        self._hide = redactor(secrets)
        self.last: dict[str, str] | None = None
        self._sink_id: int | None = None

    def write(self, message: Any) -> None:
        record = message.record
        text = record["message"]
        exc = record["exception"]
        if exc is not None and exc.type is not None:
            text = f"{text} ({exc.type.__name__}: {exc.value})"
        module = record["name"] or "quantshift"
        self.last = {
            "message": self._hide(text)[: self.MAX_CHARS],
            "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds"),
            "component": module.removeprefix("quantshift.") if module != "quantshift"
            else module,
            "level": record["level"].name,
        }

    def attach(self) -> None:
        if self._sink_id is None:
            self._sink_id = logger.add(self.write, level="ERROR", format="{message}",
                                       catch=True)

    def detach(self) -> None:
        if self._sink_id is not None:
            with contextlib.suppress(ValueError):  # setup_logging removed every sink since
                logger.remove(self._sink_id)
            self._sink_id = None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
