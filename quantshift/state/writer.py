"""The journal's group commit, and what it does when the disk will not take the rows.

Healthy, a flush writes everything queued in one transaction. When that fails, the rows
move to a backlog, oldest first, and every flush retries it a chunk a transaction
(groups kept whole): freeing some space lets the backlog drain chunk by chunk, where one
big transaction would need more space than was freed. While failing, memory is bounded
where nothing is lost by it: of the snapshots only the newest is kept (it is written
after every row queued before it, so it never claims a fill that is not on disk), of the
kv writes the newest per key (written first: a halt reaches the disk before the rest);
decisions, vetoes and equity points past ``RECORD_CAP`` are not kept. Intents, order
events, fills, trades, control rows and kv are never dropped.

A row that can never be written (a *poison* row: an integer SQLite cannot store, a type
it cannot bind, a NOT NULL broken) is found inside its chunk, logged once with the error,
dropped alone, and counted; it does not hold the rows behind it back. The disk being
full, the file gone read-only or a table missing are not a row's fault: those keep
every row and raise, for the daemon to stop trading.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from loguru import logger

GROUP = "group"  # a queue item of several rows, committed together or not at all
Item = tuple[str, Any]  # (kind, row) or (GROUP, ((kind, row), ...))

CHUNK = 500  # queue items per transaction while draining a backlog
RECORD_CAP = 50_000  # decisions, vetoes and equity points held while failing
_RECORDS = frozenset({"decision", "veto", "equity"})
# A row's own fault: retrying it can never succeed. Raised by binding (OverflowError for
# an integer past 64 bits, TypeError/ProgrammingError for a type SQLite has no mapping
# for, UnicodeEncodeError for a lone surrogate) or by a constraint (IntegrityError).
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError,
               sqlite3.ProgrammingError, OverflowError, TypeError, ValueError)


def rows_of(item: Item) -> Iterable[tuple[str, Any]]:
    kind, row = item
    return row if kind == GROUP else (item,)


@dataclass(frozen=True, slots=True)
class JournalHealth:
    """The journal's write side, for the daemon's status."""

    healthy: bool  # False from a failed write until the backlog is on disk again
    last_error: str | None
    failing_since: float | None  # time.time() of the first failed write
    queued: int  # queue items not yet on disk (a fill and the round trip it closed: one)
    dropped: int  # poison rows dropped
    coalesced: int  # snapshots and kv writes superseded while failing, never written
    shed: int  # decisions, vetoes and equity points not kept while failing


class Writer:
    """Writes queue items to ``db``. Only the flushing thread calls it (the journal holds
    its lock); ``health`` may be read from any thread."""

    def __init__(self, db: sqlite3.Connection, name: str, inserts: dict[str, str],
                 after: dict[str, tuple[str, tuple[Any, ...]]]) -> None:
        self.db = db
        self.name = name
        self.inserts = inserts
        self.after = after  # kind -> a statement run after rows of that kind (pruning)
        self.backlog: deque[Item] = deque()
        self._kv: dict[str, Item] = {}  # the newest write per key, while failing
        self._snapshot: Item | None = None  # the newest snapshot, while failing
        self._records = 0  # decisions, vetoes and equity points in the backlog
        self.rows_written = 0
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self.dropped = 0
        self.coalesced = 0
        self.shed = 0

    @property
    def held(self) -> int:
        """Items taken off the queue and not yet on disk."""
        return len(self.backlog) + len(self._kv) + (self._snapshot is not None)

    def unwritten(self) -> list[Item]:
        """Every item taken off the queue and not on disk yet."""
        aside = [] if self._snapshot is None else [self._snapshot]
        return [*self._kv.values(), *self.backlog, *aside]

    def health(self, queued: int) -> JournalHealth:
        return JournalHealth(self.failing_since is None, self.last_error, self.failing_since,
                             queued + self.held, self.dropped, self.coalesced, self.shed)

    # -- the two ways to flush ------------------------------------------------------------
    def write(self, batch: list[Item]) -> int:
        """Write ``batch`` (the queue, oldest first); the rows written. Raises the error
        when the disk refuses them, with every row kept for the next call."""
        if self.failing_since is None and not self.held:
            if not batch:
                return 0
            try:
                return self._commit(batch)  # the common case: one transaction
            except BaseException as exc:
                self.backlog.extend(batch)
                if not isinstance(exc, Exception):
                    raise
        else:
            self._absorb(batch)
        try:
            written = self._drain()
        except BaseException as exc:
            self._failed(exc)
            raise
        if self.failing_since is not None:
            logger.warning("journal {}: written again after {:.1f}s failing; {} superseded "
                           "snapshot and kv writes skipped, {} records not kept so far",
                           self.name, time.time() - self.failing_since, self.coalesced,
                           self.shed)
        self.failing_since = None
        self.last_error = None
        return written

    def _absorb(self, items: Iterable[Item]) -> None:
        """Move items to the backlog; while failing, the newest snapshot and kv per key are
        held aside instead, and records past the cap are not kept."""
        failing = self.failing_since is not None
        backlog = self.backlog
        for item in items:
            kind = item[0]
            if failing:
                if kind == "snapshot":
                    self.coalesced += self._snapshot is not None
                    self._snapshot = item
                    continue
                if kind == "kv":
                    self.coalesced += self._kv.pop(item[1][0], None) is not None
                    self._kv[item[1][0]] = item
                    continue
                if kind in _RECORDS:
                    if self._records >= RECORD_CAP:
                        self.shed += 1
                        continue
                    self._records += 1
            backlog.append(item)

    def _failed(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failing_since is not None:
            return
        self.failing_since = time.time()
        held, self.backlog = self.backlog, deque()
        self._records = 0
        self._absorb(held)  # failing now: snapshots and kv go aside
        logger.error("journal {}: write failed ({}); {} queued items held in memory and "
                     "retried in chunks of {}", self.name, self.last_error, self.held, CHUNK)

    def _drain(self) -> int:
        """The kv writes held aside, the backlog a chunk at a time, then the snapshot."""
        written = 0
        if self._kv:
            items = list(self._kv.values())
            try:
                written += self._write_chunk(items)
            except BaseException:
                self._kv = {item[1][0]: item for item in items}  # less any poison found
                raise
            self._kv = {}
        backlog = self.backlog
        while backlog:
            items = [backlog.popleft() for _ in range(min(CHUNK, len(backlog)))]
            try:
                written += self._write_chunk(items)
            except BaseException:
                backlog.extendleft(reversed(items))
                raise
            if self.failing_since is not None:
                self._records -= sum(1 for item in items if item[0] in _RECORDS)
        if self._snapshot is not None:
            written += self._write_chunk([self._snapshot])
            self._snapshot = None
        return written

    # -- transactions -------------------------------------------------------------------
    def _write_chunk(self, items: list[Item]) -> int:
        """One transaction; on a row's own error the poison rows are taken out of
        ``items`` (for good, even if the retry then fails on the disk) and the rest
        committed."""
        try:
            return self._commit(items)
        except _ROW_ERRORS:
            pass
        items[:] = self._without_poison(items)
        return self._commit(items)

    def _commit(self, items: list[Item]) -> int:
        by_kind: dict[str, list[Any]] = {}
        n = 0
        for item in items:
            for kind, row in rows_of(item):
                by_kind.setdefault(kind, []).append(row)
                n += 1
        if not n:
            return 0
        db = self.db
        db.execute("BEGIN")
        try:
            for kind, rows in by_kind.items():
                db.executemany(self.inserts[kind], rows)
            for kind, (sql, args) in self.after.items():
                if kind in by_kind:
                    db.execute(sql, args)
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.rows_written += n
        return n

    def _without_poison(self, items: list[Item]) -> list[Item]:
        """``items`` without the rows that fail on their own: each row is tried in a
        savepoint of a transaction that is then rolled back. A failure that is not the
        row's (the disk) is raised, and nothing is dropped."""
        db = self.db
        bad: list[tuple[int, int, str, Any, BaseException]] = []
        db.execute("BEGIN")
        try:
            for i, item in enumerate(items):
                for j, (kind, row) in enumerate(rows_of(item)):
                    db.execute("SAVEPOINT one_row")
                    try:
                        db.execute(self.inserts[kind], row)
                    except _ROW_ERRORS as exc:
                        bad.append((i, j, kind, row, exc))
                        db.execute("ROLLBACK TO one_row")
                    db.execute("RELEASE one_row")
        finally:
            self._rollback()
        for _, _, kind, row, exc in bad:
            self.dropped += 1
            text = repr(row)
            logger.error("journal {}: dropped a {} row that cannot be written ({}: {}): {}",
                         self.name, kind, type(exc).__name__, exc,
                         text if len(text) <= 300 else text[:300] + "...")
        skip = {(i, j) for i, j, *_ in bad}
        clean: list[Item] = []
        for i, item in enumerate(items):
            if item[0] != GROUP:
                if (i, 0) not in skip:
                    clean.append(item)
                continue
            rows = tuple(r for j, r in enumerate(item[1]) if (i, j) not in skip)
            if rows:
                clean.append((GROUP, rows))
        return clean

    def _rollback(self) -> None:
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
