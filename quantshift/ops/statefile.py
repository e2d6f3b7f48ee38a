"""The bot's status read from its state file while the daemon is down.

The SQLite journal is opened read-only (a running daemon, or one starting meanwhile, is
never disturbed) and its latest snapshot, trading state and unfinished orders are turned
into the same shape as GET /status, with ``source`` = ``state file``.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from quantshift.domain import Position
from quantshift.ops.status import positions
from quantshift.state.journal import check_ledger, count_orders
from quantshift.state.ledger import LedgerError

__all__ = ["StateFileError", "read_state"]


class StateFileError(Exception):
    """No state file, or not one QuantShift can read."""


def _iso(ns: int | None) -> str | None:
    if not ns:
        return None
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="seconds")


def read_state(path: Path) -> dict[str, Any]:
    try:
        meta = check_ledger(path)  # read-only, as every reader
    except LedgerError as exc:
        raise StateFileError(str(exc)) from None
    if meta is None:
        raise StateFileError(f"no state file at {path}: this bot has not run with this "
                             "executor here")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StateFileError(f"cannot open {path}: {exc}") from None
    try:
        return _read(db, path)
    except sqlite3.Error as exc:
        raise StateFileError(f"cannot read {path}: {exc}") from None
    finally:
        db.close()


def _read(db: sqlite3.Connection, path: Path) -> dict[str, Any]:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    kv = {k: orjson.loads(v) for k, v in db.execute(
        "SELECT key, value FROM kv WHERE key IN ('trading_state', 'reconcile_last')")}
    row = db.execute("SELECT created_ns, state FROM snapshots ORDER BY id DESC "
                     "LIMIT 1").fetchone()
    snap: dict[str, Any] = orjson.loads(row[1]) if row else {}
    open_orders, unsent = count_orders(db)
    # The way a restart sees it: a halt in the journal's trading state wins.
    state = snap.get("trading_state", "active")
    reason = snap.get("halt_reason", "")
    trading = kv.get("trading_state") or {}
    if trading.get("state") == "halted":
        state, reason = "halted", trading.get("reason", "")
    out: dict[str, Any] = {
        "source": "state file", "state_file": str(path), "bot": meta.get("bot"),
        "executor": {"kind": meta.get("executor"), "description": ""},
        "snapshot_at": _iso(row[0]) if row else None,
        "trading": {"state": state, "reason": reason},
        "orders": {"open": int(open_orders), "in_flight": int(unsent)},
        "reconcile_last": kv.get("reconcile_last"),
    }
    pf = snap.get("portfolio")
    if pf:
        equity, peak = pf.get("equity", pf["cash"]), pf.get("peak_equity", 0.0)
        held = [Position(p[0], p[1], p[2], p[3]) for p in pf.get("positions", [])]
        out["portfolio"] = {
            "cash": pf["cash"], "equity": equity,
            "day_pnl": equity - pf.get("day_start_equity", equity),
            "realized_pnl": pf.get("realized_pnl", 0.0),
            "drawdown": max(0.0, (peak - equity) / peak) if peak > 0 else 0.0,
            "max_drawdown": pf.get("max_drawdown", 0.0),
        }
        out["positions"] = positions(held, pf.get("marks", {}))
        out["portfolio"]["unrealized_pnl"] = sum(p["unrealized"] for p in out["positions"])
    counts = snap.get("counts")
    if counts:
        out["bars"] = counts.get("bars")
    return out
