"""The ledger file before the journal writes to it: ours, new, or refused; one writer at a time.

*Ours* means a SQLite database whose ``meta`` table names its bot, its executor and a
``schema_version`` this release knows. One more case is ours: a database holding nothing
but QuantShift's own tables, every one of them empty, its ``meta`` table too. That is a
ledger whose creation was cut short (earlier releases created the schema a statement at a
time), so there is nothing in it to lose. A missing file is a new ledger; this release
creates it whole under a temporary name and links it into place, so a start killed half-way
never leaves a ledger without its meta rows. Anything else at the path (an empty file,
another program's file or SQLite database, a newer release's ledger) is refused and left
exactly as it is: the inspection opens it read-only.

The lock is ``fcntl.flock`` on ``<ledger>.lock``, which holds the holder's pid. The kernel
drops it with the process, so a SIGKILLed daemon leaves no lock behind; the file itself
stays (removing it would let two processes lock two different files of the same name).
Readers (status, safe-to-restart, compare, ...) open the ledger read-only and never lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
from collections.abc import Callable, Collection
from pathlib import Path
from urllib.parse import quote

__all__ = ["LedgerError", "LedgerInUse", "LedgerLock", "NotALedger", "create", "inspect"]

_MAGIC = b"SQLite format 3\x00"
_MOVE_ASIDE = "move it aside to start a new ledger"


class LedgerError(Exception):
    """The ledger cannot be used; the message names the file and says why, in one line."""


class NotALedger(LedgerError):
    def __init__(self, path: Path, why: str, advice: str = _MOVE_ASIDE) -> None:
        super().__init__(f"{path} is not a QuantShift ledger ({why}); {advice}")
        self.path = path
        self.why = why


class LedgerInUse(LedgerError):
    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is in use by another QuantShift process ({holder}): one "
                         "daemon per ledger")
        self.path = path
        self.holder = holder


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _has_content(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


def inspect(path: Path, objects: Collection[str], schema_version: int) -> dict[str, str] | None:
    """The meta rows of the ledger at ``path`` (``{}``: a creation cut short), None when
    there is no file; raises NotALedger for anything else. ``objects`` are the names of
    the schema's tables, indexes and views. Reads only, and read-only."""
    wal = _sidecar(path, "-wal")
    try:
        st = path.stat()
    except FileNotFoundError:
        if os.path.lexists(path):
            raise NotALedger(path, "a symbolic link to nothing") from None
        if _has_content(wal):  # SQLite would replay it into whatever is created here
            raise NotALedger(path, f"it is missing but its write-ahead log {wal.name} is "
                             "there", f"put the ledger back, or move {wal.name} aside") from None
        return None
    if not stat.S_ISREG(st.st_mode):
        raise NotALedger(path, "not a regular file")
    if st.st_size == 0 and not _has_content(wal):
        raise NotALedger(path, "an empty file")
    if st.st_size:
        try:
            with path.open("rb") as fh:
                head = fh.read(len(_MAGIC))
        except OSError as exc:
            raise NotALedger(path, f"cannot be read: {exc.strerror or exc}") from None
        if head != _MAGIC:
            raise NotALedger(path, "not an SQLite database")
    # Without a write-ahead log to replay, the main file is all there is: read it as
    # immutable, which creates no -wal or -shm beside another program's database.
    mode = "mode=ro" if _has_content(wal) else "immutable=1"
    try:
        db = sqlite3.connect(f"file:{quote(str(path))}?{mode}", uri=True)
    except sqlite3.Error as exc:
        raise NotALedger(path, f"cannot be opened: {exc}") from None
    try:
        return _read_meta(db, path, objects, schema_version)
    except sqlite3.Error as exc:
        raise NotALedger(path, f"an unreadable SQLite database: {exc}") from None
    finally:
        db.close()


def _read_meta(db: sqlite3.Connection, path: Path, objects: Collection[str],
               schema_version: int) -> dict[str, str]:
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")
             if not r[0].startswith("sqlite_")}
    if not names:
        raise NotALedger(path, "an SQLite database with no tables")
    if "meta" not in names or {r[1] for r in db.execute("PRAGMA table_info(meta)")} != {
            "key", "value"}:
        raise NotALedger(path, "an SQLite database without QuantShift's meta table")
    meta = {str(k): str(v) for k, v in db.execute("SELECT key, value FROM meta")}
    if not meta:
        foreign = sorted(names - set(objects))
        if foreign:
            raise NotALedger(path, f"no meta rows, and tables of another program: "
                             f"{', '.join(foreign[:3])}")
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = "
                                           "'table' AND name NOT LIKE 'sqlite%'")]
        if any(db.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() for t in tables):
            raise NotALedger(path, "no meta rows, but rows in its tables")
        return meta  # a creation cut short: nothing in it yet
    missing = [k for k in ("schema_version", "bot", "executor") if not meta.get(k)]
    if missing:
        raise NotALedger(path, f"its meta table lacks {', '.join(missing)}")
    version = meta["schema_version"]
    if not version.isdigit():
        raise NotALedger(path, f"schema_version {version!r} is not a number")
    if int(version) > schema_version:
        raise NotALedger(path, f"written by a newer QuantShift: schema version {version}, "
                         f"this release knows up to {schema_version}",
                         "run the newer release, or move it aside")
    return meta


def create(path: Path, initialise: Callable[[sqlite3.Connection], None]) -> None:
    """Create the ledger at ``path`` whole: ``initialise`` fills a temporary database (in
    one transaction), which is then linked into place. The caller holds the lock, so a
    temporary file left by an earlier, interrupted creation is stale and removed."""
    tmp = _sidecar(path.with_name("." + path.name), ".new")
    for suffix in ("", "-journal", "-wal", "-shm"):
        _sidecar(tmp, suffix).unlink(missing_ok=True)
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        initialise(db)
    finally:
        db.close()
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never over a file that appeared meanwhile
    except FileExistsError:
        raise NotALedger(path, "a file appeared there while the ledger was being created",
                         "start again") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.rename(tmp, path)  # a file system without hard links; the lock keeps us alone
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # a file system without directory fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LedgerLock:
    """An exclusive, process-lifetime lock on a ledger: ``<ledger>.lock`` holds the pid."""

    def __init__(self, ledger: Path) -> None:
        self.path = _sidecar(ledger, ".lock")
        self.ledger = ledger
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LedgerInUse(self.ledger, f"pid {text}" if text.isdigit() else
                              "pid unknown") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor drops the flock
