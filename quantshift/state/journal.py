"""The journal: every decision, veto, intent, order transition, fill and snapshot.

One SQLite file (WAL) per bot and executor. The hot path only appends rows to an
in-memory queue; ``flush`` writes everything queued so far in one transaction (group
commit) and is run off the event loop by the daemon, every ``flush_interval``. A
snapshot is queued behind the fills it includes, so a snapshot on disk never claims a
fill that is not on disk too. What a flush does when the disk refuses the rows:
``state/writer.py``. Which files are a ledger, and the one-writer lock: ``state/ledger.py``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter, deque
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from loguru import logger

from quantshift.domain import Fill, OrderIntent, OrderState, Side, Trade, trade_return
from quantshift.state import ledger
from quantshift.state.ledger import LedgerError
from quantshift.state.writer import GROUP as _GROUP
from quantshift.state.writer import JournalHealth, Writer, rows_of

__all__ = ["SCHEMA_VERSION", "Journal", "JournalHealth", "JournalOwnerError", "LedgerError",
           "check_ledger", "count_orders"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ns INTEGER);
CREATE TABLE IF NOT EXISTS decisions (
  id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, strategy TEXT NOT NULL, symbol TEXT NOT NULL,
  target INTEGER NOT NULL, outcome TEXT NOT NULL, reason TEXT, confidence REAL,
  indicators TEXT, client_order_id TEXT, version TEXT);
CREATE TABLE IF NOT EXISTS vetoes (
  id INTEGER PRIMARY KEY, ts INTEGER NOT NULL, strategy TEXT NOT NULL, symbol TEXT NOT NULL,
  target INTEGER NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intents (
  client_order_id TEXT PRIMARY KEY, ts INTEGER NOT NULL, strategy TEXT NOT NULL,
  symbol TEXT NOT NULL, side TEXT NOT NULL, qty REAL NOT NULL, ref_price REAL NOT NULL,
  reduce_only INTEGER NOT NULL, reason TEXT, created_ns INTEGER NOT NULL,
  take_profit REAL, stop_loss REAL, parent TEXT, leg TEXT);
CREATE TABLE IF NOT EXISTS order_events (
  id INTEGER PRIMARY KEY, client_order_id TEXT NOT NULL, state TEXT NOT NULL, detail TEXT,
  ts_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS order_events_coid ON order_events (client_order_id, id);
CREATE TABLE IF NOT EXISTS fills (
  seq INTEGER PRIMARY KEY, client_order_id TEXT NOT NULL, strategy TEXT NOT NULL,
  symbol TEXT NOT NULL, side TEXT NOT NULL, qty REAL NOT NULL, price REAL NOT NULL,
  commission REAL NOT NULL, ts INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS fills_coid ON fills (client_order_id);
CREATE TABLE IF NOT EXISTS trades (
  id INTEGER PRIMARY KEY, strategy TEXT NOT NULL, symbol TEXT NOT NULL, direction INTEGER,
  qty REAL, entry_ts INTEGER, entry_price REAL, exit_ts INTEGER, exit_price REAL, pnl REAL);
CREATE TABLE IF NOT EXISTS equity (
  id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, equity REAL NOT NULL, drawdown REAL);
CREATE TABLE IF NOT EXISTS snapshots (
  id INTEGER PRIMARY KEY, created_ns INTEGER NOT NULL, fill_seq INTEGER NOT NULL,
  state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS order_fences (
  client_order_id TEXT PRIMARY KEY, epoch INTEGER NOT NULL, instance TEXT NOT NULL,
  ts_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS control (
  id INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, action TEXT NOT NULL, params TEXT,
  actor TEXT, result TEXT);
CREATE VIEW IF NOT EXISTS orders AS
  SELECT i.*, e.state, e.detail, e.ts_ns AS updated_ns FROM intents i
  JOIN order_events e ON e.id = (SELECT max(id) FROM order_events
                                 WHERE client_order_id = i.client_order_id);
"""

_INSERT = {
    "decision": "INSERT INTO decisions (ts, strategy, symbol, target, outcome, reason, "
                "confidence, indicators, client_order_id, version) "
                "VALUES (?,?,?,?,?,?,?,?,?,?)",
    "veto": "INSERT INTO vetoes (ts, strategy, symbol, target, reason) VALUES (?,?,?,?,?)",
    "intent": "INSERT OR IGNORE INTO intents (client_order_id, ts, strategy, symbol, side, "
              "qty, ref_price, reduce_only, reason, created_ns, take_profit, stop_loss, "
              "parent, leg) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    # An order found at the venue under an id of this bot: the venue's quantity is the truth.
    "adopt": "INSERT OR REPLACE INTO intents (client_order_id, ts, strategy, symbol, side, "
             "qty, ref_price, reduce_only, reason, created_ns, take_profit, stop_loss, "
             "parent, leg) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
    "order": "INSERT INTO order_events (client_order_id, state, detail, ts_ns) VALUES (?,?,?,?)",
    "fence": "INSERT OR REPLACE INTO order_fences (client_order_id, epoch, instance, ts_ns) "
             "VALUES (?,?,?,?)",
    "fill": "INSERT OR IGNORE INTO fills VALUES (?,?,?,?,?,?,?,?,?)",
    "trade": "INSERT INTO trades (strategy, symbol, direction, qty, entry_ts, entry_price, "
             "exit_ts, exit_price, pnl) VALUES (?,?,?,?,?,?,?,?,?)",
    "equity": "INSERT INTO equity (ts_ns, equity, drawdown) VALUES (?,?,?)",
    "snapshot": "INSERT INTO snapshots (created_ns, fill_seq, state) VALUES (?,?,?)",
    "control": "INSERT INTO control (ts_ns, action, params, actor, result) VALUES (?,?,?,?,?)",
    "kv": "INSERT INTO kv (key, value, updated_ns) VALUES (?,?,?) ON CONFLICT(key) DO UPDATE "
          "SET value = excluded.value, updated_ns = excluded.updated_ns",
}
_KEEP_SNAPSHOTS = 50
_AFTER = {"snapshot": ("DELETE FROM snapshots WHERE id <= (SELECT max(id) FROM snapshots) - ?",
                       (_KEEP_SNAPSHOTS,))}
# Columns added to intents after the first release: (name, type), added where missing.
_INTENT_COLUMNS = (("take_profit", "REAL"), ("stop_loss", "REAL"), ("parent", "TEXT"),
                   ("leg", "TEXT"))
_INTENT_FIELDS = ("client_order_id, ts, strategy, symbol, side, qty, ref_price, reduce_only, "
                  "reason, take_profit, stop_loss, parent, leg")
_FINAL = tuple(s.value for s in OrderState if s.final)
# An intent no order of this ledger went out for: every order sent is fenced first.
_SHADOW = ("client_order_id NOT IN (SELECT client_order_id FROM order_fences) AND "
           "client_order_id NOT IN (SELECT client_order_id FROM fills)")


def _unsettled(fields: str) -> str:
    """Every intent with no final state on disk, its ``fields`` followed by what the disk
    says of it: the quantity filled, its average price, the last order event's state
    (NULL: none) and whether it reached the venue. It did if it has an order event or a
    fill: a fill can be on disk while the order event after it is not (the daemon died
    between two group commits). Without either, the venue may or may not have it. Takes
    the ``_FINAL`` states."""
    return (
        f"SELECT *, state IS NOT NULL OR filled > 0 AS sent FROM (SELECT {fields}, (SELECT "
        f"coalesce(sum(qty), 0) FROM fills f WHERE f.client_order_id = i.client_order_id) "
        f"AS filled, (SELECT coalesce(sum(qty * price) / sum(qty), 0) FROM fills f WHERE "
        f"f.client_order_id = i.client_order_id), (SELECT state FROM order_events e WHERE "
        f"e.client_order_id = i.client_order_id ORDER BY id DESC LIMIT 1) AS state FROM "
        f"intents i) WHERE state IS NULL OR state NOT IN ({','.join('?' * len(_FINAL))})")


_UNSETTLED = _unsettled(_INTENT_FIELDS)


def count_orders(db: sqlite3.Connection) -> tuple[int, int]:
    """How many intents of a ledger are open (sent) and how many unsent, as a restart sees
    them (any connection: the status command reads a ledger read-only)."""
    # The id alone: a ledger an older release wrote lacks the later intent columns, and
    # the status command reads it read-only, without the journal's migration.
    row = db.execute(f"SELECT coalesce(sum(sent), 0), coalesce(sum(NOT sent), 0) FROM "
                     f"({_unsettled('client_order_id')})", _FINAL).fetchone()
    return int(row[0]), int(row[1])


def _trade_row(t: Trade) -> tuple[Any, ...]:
    return (t.strategy, t.symbol, int(t.direction), t.qty, t.entry_ts, t.entry_price, t.exit_ts,
            t.exit_price, t.pnl)


def _intent(r: tuple[Any, ...]) -> OrderIntent:
    """An intent from the first 13 columns of a row read with ``_INTENT_FIELDS``."""
    return OrderIntent(r[0], r[2], r[3], Side(r[4]), r[5], r[1], r[6], bool(r[7]), r[8],
                       r[9], r[10], r[11] or "", r[12] or "")


class JournalOwnerError(LedgerError):
    """The file belongs to another bot or executor."""


@cache
def _schema_objects() -> frozenset[str]:
    """The names of the tables, indexes and views of ``_SCHEMA``."""
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(_SCHEMA)
        return frozenset(r[0] for r in db.execute("SELECT name FROM sqlite_master"))
    finally:
        db.close()


def check_ledger(path: Path) -> dict[str, str] | None:
    """The meta rows of the ledger at ``path``, None when there is none; raises
    ``ledger.NotALedger`` (one line naming the file) for a file that is not a QuantShift
    ledger this release can use. Read-only: readers call it too."""
    return ledger.inspect(path, _schema_objects(), SCHEMA_VERSION)


class Journal:
    """The ledger, opened for writing: only by one process at a time (``LedgerInUse``
    otherwise), and only when it is a QuantShift ledger or absent (``NotALedger``). With
    ``fresh``, an existing ledger of the same bot and executor is replaced by an empty
    one (a replay's). ``lock=False`` is for a ledger that belongs to another one whose
    lock the caller holds (the version books of the daemon's ledger)."""

    def __init__(self, path: Path, *, bot: str, executor: str, durable: bool = True,
                 fresh: bool = False, lock: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file_lock = ledger.LedgerLock(path)
        if lock:
            self._file_lock.acquire()
        try:
            self._db = self._open(bot, executor, durable, fresh)
        except BaseException:
            self._file_lock.release()
            raise
        self._queue: deque[tuple[str, Any]] = deque()
        self._lock = threading.Lock()
        self._writer = Writer(self._db, path.name, _INSERT, _AFTER)

    def _open(self, bot: str, executor: str, durable: bool, fresh: bool) -> sqlite3.Connection:
        meta = check_ledger(self.path)
        if meta and (meta["bot"] != bot or meta["executor"] != executor):
            raise JournalOwnerError(
                f"{self.path} is the ledger of bot {meta['bot']!r} with executor "
                f"{meta['executor']!r}, not {bot!r}/{executor!r}")
        if meta is not None and fresh:
            self._remove_files()
            meta = None
        if meta is None:  # a new ledger: created whole, its meta rows in it from the start
            ledger.create(self.path, lambda db: self._initialise(db, bot, executor))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed batch survives a power cut, not only a crash of the daemon.
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
            db.executescript(_SCHEMA)  # tables a ledger of an earlier release lacks
            have = {r[1] for r in db.execute("PRAGMA table_info(intents)")}
            for name, kind in _INTENT_COLUMNS:  # a ledger written before these columns
                if name not in have:
                    db.execute(f"ALTER TABLE intents ADD COLUMN {name} {kind}")
            if "version" not in {r[1] for r in db.execute("PRAGMA table_info(decisions)")}:
                db.execute("ALTER TABLE decisions ADD COLUMN version TEXT")
            if meta == {}:  # an earlier release's creation, cut short before its meta rows
                self._initialise(db, bot, executor)
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _initialise(db: sqlite3.Connection, bot: str, executor: str) -> None:
        """The schema and the meta rows, in one transaction."""
        db.executescript(f"BEGIN;{_SCHEMA}")
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [
            ("schema_version", str(SCHEMA_VERSION)), ("bot", bot), ("executor", executor),
            ("created_ns", str(time.time_ns()))])
        db.execute("COMMIT")

    def _remove_files(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    # -- queued writes (the hot path: an append each) ------------------------------------
    def decision(self, ts: int, strategy: str, symbol: str, target: int, outcome: str,
                 reason: str, confidence: float, indicators: dict[str, float] | None,
                 client_order_id: str | None, version: str | None = None) -> None:
        self._queue.append(("decision", (
            ts, strategy, symbol, target, outcome, reason, confidence,
            orjson.dumps(indicators).decode() if indicators else None, client_order_id,
            version or None)))

    def veto(self, ts: int, strategy: str, symbol: str, target: int, reason: str) -> None:
        self._queue.append(("veto", (ts, strategy, symbol, target, reason)))

    def intent(self, i: OrderIntent, replace: bool = False) -> None:
        """An order decided (``replace``: one found at the venue, whose row it rewrites)."""
        self._queue.append(("adopt" if replace else "intent", (
            i.client_order_id, i.ts, i.strategy, i.symbol, i.side.value, i.qty, i.ref_price,
            int(i.reduce_only), i.reason, time.time_ns(), i.take_profit, i.stop_loss,
            i.parent or None, i.leg or None)))

    def order_state(self, client_order_id: str, state: OrderState, detail: str = "") -> None:
        self._queue.append(("order", (client_order_id, state.value, detail, time.time_ns())))

    def fence(self, client_order_id: str, epoch: int, instance: str) -> None:
        """The lease epoch (fencing token) an order went out under."""
        self._queue.append(("fence", (client_order_id, epoch, instance, time.time_ns())))

    def fill(self, f: Fill, trade: Trade | None = None) -> None:
        """A fill, and the round trip it closed if any. The two are one item of the queue:
        a flush (in another thread) commits both or neither."""
        if trade is None:
            self._queue.append(("fill", f.to_row()))
        else:
            self._queue.append((_GROUP, (("fill", f.to_row()), ("trade", _trade_row(trade)))))

    def snapshot(self, state: dict[str, Any]) -> None:
        self._queue.append(("snapshot", (time.time_ns(), state["portfolio"]["fill_seq"],
                                         orjson.dumps(state).decode())))

    def control(self, action: str, params: dict[str, Any], actor: str, result: str) -> None:
        """An operator's control action (halt, resume, ...) and what came of it."""
        self._queue.append(("control", (time.time_ns(), action, orjson.dumps(params).decode(),
                                        actor, result)))

    def equity_point(self, equity: float, drawdown: float) -> None:
        """One point of the equity curve (kept whole, unlike the snapshots)."""
        self._queue.append(("equity", (time.time_ns(), equity, drawdown)))

    def set(self, key: str, value: Any) -> None:
        self._queue.append(("kv", (key, orjson.dumps(value).decode(), time.time_ns())))

    @property
    def pending(self) -> int:
        """Queue items not on disk yet (a fill and the round trip it closed are one)."""
        return len(self._queue) + self._writer.held

    @property
    def health(self) -> JournalHealth:
        """Whether writes succeed, the last error, what waits to be written, and what was
        dropped (poison rows) or not kept (superseded, or past the cap) while failing."""
        return self._writer.health(len(self._queue))

    @property
    def rows_written(self) -> int:
        return self._writer.rows_written

    @property
    def last_error(self) -> str | None:
        return self._writer.last_error

    # -- group commit ------------------------------------------------------------------
    def flush(self) -> int:
        """Write everything queued so far; return the rows written.

        Safe to call from another thread than the one queueing: the queue is a deque and
        only items present when the flush started are taken. When the disk refuses them
        the rows are kept, in order, and the error is raised; the next flushes retry them
        in chunks (``state/writer.py``). A row that can never be written is dropped alone,
        logged and counted, and raises nothing.
        """
        with self._lock:
            q = self._queue
            return self._writer.write([q.popleft() for _ in range(len(q))])

    def close(self) -> None:
        with self._lock:
            left = [*self._writer.unwritten(), *self._queue]
            if left:
                kinds = Counter(k for item in left for k, _ in rows_of(item))
                logger.error("journal {}: closed with {} rows not written ({}): {}",
                             self.path.name, sum(kinds.values()), self.last_error or "no "
                             "flush since", dict(kinds))
            self._db.close()
            self._file_lock.release()

    def discard(self) -> None:
        """Close and delete the ledger (a replay that did not finish leaves none)."""
        with self._lock:
            self._queue.clear()
            self._db.close()
            self._remove_files()
            self._file_lock.release()

    # -- reads (start-up and tools; not on the hot path) ---------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return orjson.loads(row[0]) if row else default

    def latest_snapshot(self) -> dict[str, Any] | None:
        row = self._db.execute("SELECT state FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
        return orjson.loads(row[0]) if row else None

    def latest_snapshot_ns(self) -> int:
        """When the last snapshot was taken (0 if there is none)."""
        row = self._db.execute("SELECT created_ns FROM snapshots ORDER BY id DESC LIMIT 1"
                               ).fetchone()
        return int(row[0]) if row else 0

    def order_times_after(self, created_ns: int) -> list[int]:
        """The bar times of the orders the daemon decided (not a bracket's legs, which the
        venue makes) journaled after ``created_ns``, oldest first: the risk counters of a
        snapshot taken at that time do not hold them yet."""
        return [int(r[0]) for r in self._db.execute(
            "SELECT ts FROM intents WHERE created_ns > ? AND parent IS NULL "
            "ORDER BY created_ns", (created_ns,))]

    def fills_after(self, seq: int) -> list[Fill]:
        rows = self._db.execute("SELECT * FROM fills WHERE seq > ? ORDER BY seq", (seq,))
        return [Fill(r[0], r[1], r[2], r[3], Side(r[4]), r[5], r[6], r[7], r[8]) for r in rows]

    def last_decision_ts(self) -> dict[str, int]:
        """Per symbol, the bar time of the last decision on disk."""
        return {s: int(t) for s, t in self._db.execute(
            "SELECT symbol, max(ts) FROM decisions GROUP BY symbol")}

    def trade_returns(self) -> list[float]:
        """Every closed trade's return on its entry notional, oldest first."""
        rows = self._db.execute("SELECT qty, entry_price, pnl FROM trades ORDER BY id")
        return [r for r in (trade_return(q, e, p) for q, e, p in rows) if r is not None]

    def recent_trade_pnls(self, limit: int, strategy: str | None = None) -> list[float]:
        """The P&L of the last ``limit`` closed trades (of one strategy), newest first."""
        if strategy is None:
            rows = self._db.execute("SELECT pnl FROM trades ORDER BY id DESC LIMIT ?",
                                    (limit,))
        else:
            rows = self._db.execute("SELECT pnl FROM trades WHERE strategy = ? ORDER BY id "
                                    "DESC LIMIT ?", (strategy, limit))
        return [float(r[0]) for r in rows]

    def max_fill_seq(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM fills").fetchone()[0])

    def max_fence_epoch(self) -> int:
        """The highest lease epoch an order of this ledger went out under (0: none)."""
        row = self._db.execute("SELECT max(epoch) FROM order_fences").fetchone()
        return int(row[0] or 0)

    def client_order_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT client_order_id FROM intents")}

    def shadow_intent(self, client_order_id: str) -> OrderIntent | None:
        """The intent journaled under this id that no order of this ledger went out for
        (a standby's decision: no fencing row), or None. The queue is written first."""
        self.flush()
        row = self._db.execute(f"SELECT {_INTENT_FIELDS} FROM intents WHERE "
                               f"client_order_id = ? AND {_SHADOW}", (client_order_id,)
                               ).fetchone()
        return None if row is None else _intent(row)

    def shadow_intents_since(self, created_ns: int, limit: int = 200) -> list[OrderIntent]:
        """Those intents (``shadow_intent``) decided since ``created_ns``, entries and
        exits only (a bracket's legs are the venue's to make), the newest first."""
        self.flush()
        return [_intent(r) for r in self._db.execute(
            f"SELECT {_INTENT_FIELDS} FROM intents WHERE created_ns >= ? AND parent IS NULL "
            f"AND {_SHADOW} ORDER BY created_ns DESC LIMIT ?", (created_ns, limit))]

    def unsettled(self) -> list[tuple[OrderIntent, float, float, bool]]:
        """Every intent with no final state on disk: the quantity already filled, its
        average price, and whether it reached the venue (see ``_UNSETTLED``)."""
        return [(_intent(r), float(r[13]), float(r[14] or 0), bool(r[16]))
                for r in self._db.execute(_UNSETTLED, _FINAL)]

    def count(self, table: str) -> int:
        if table not in {"decisions", "vetoes", "intents", "order_events", "fills", "trades",
                         "snapshots", "control", "equity"}:
            raise ValueError(table)
        return int(self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def trades(self) -> list[tuple[Any, ...]]:
        return self._db.execute(
            "SELECT strategy, symbol, direction, qty, entry_ts, entry_price, exit_ts, "
            "exit_price, pnl FROM trades ORDER BY id").fetchall()
