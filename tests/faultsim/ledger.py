"""What the daemon's journal says, read after the schedule (the daemon stopped)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faultsim.world import LEDGER


@dataclass
class Journal:
    path: str
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    fills: list[dict[str, Any]] = field(default_factory=list)  # in seq order
    last_state: dict[str, str] = field(default_factory=dict)
    demotions: list[float] = field(default_factory=list)  # epoch seconds
    error: str | None = None

    def filled(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for f in self.fills:
            out[f["client_order_id"]] += f["qty"]
        return dict(out)

    def positions(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for f in self.fills:
            out[f["symbol"]] += f["qty"] if f["side"] == "buy" else -f["qty"]
        return {s: q for s, q in out.items() if abs(q) > 1e-9}

    def booked_at(self, coid: str, cum_qty: float) -> float | None:
        """When the journal's fills of ``coid`` first added up to ``cum_qty``."""
        total = 0.0
        for f in self.fills:
            if f["client_order_id"] == coid:
                total += f["qty"]
                if total >= cum_qty - 1e-9:
                    return float(f["ts"]) / 1e9
        return None


def read(state_dir: Path) -> Journal:
    return read_file(state_dir / LEDGER)


def read_file(path: Path) -> Journal:
    out = Journal(str(path))
    if not path.exists():
        out.error = "no ledger"
        return out
    try:
        db = sqlite3.connect(path)
    except sqlite3.Error as exc:
        out.error = str(exc)
        return out
    try:
        db.row_factory = sqlite3.Row
        for r in db.execute("SELECT client_order_id, symbol, side, qty, reduce_only, "
                            "created_ns FROM intents"):
            out.intents[r["client_order_id"]] = dict(r)
        out.fills = [dict(r) for r in db.execute(
            "SELECT seq, client_order_id, symbol, side, qty, price, ts FROM fills ORDER BY seq")]
        for r in db.execute("SELECT client_order_id, state FROM order_events ORDER BY id"):
            out.last_state[r["client_order_id"]] = r["state"]
        out.demotions = [r["ts_ns"] / 1e9 for r in db.execute(
            "SELECT ts_ns FROM control WHERE action = 'demote' ORDER BY ts_ns")]
    except sqlite3.Error as exc:  # not a ledger (another file, or damaged)
        out.error = str(exc)
    finally:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    return out
