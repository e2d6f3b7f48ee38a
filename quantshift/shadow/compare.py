"""Side-by-side comparison of a strategy's versions, read from their version books.

Every version of a multi-version strategy keeps its own paper book (shadow/books.py) on
the same bars, so their figures compare like for like: signals, approvals, vetoes by
reason, trades, P&L, win rate, per-trade Sharpe, max drawdown, and the divergence rate
against the active version (the share of bars on which the two decided differently: one
gave a signal the other did not, or they wanted different targets). Each challenger also
gets the champion/challenger verdict of shadow/promotion.py against the active version.

Only reads: the journals are opened read-only, so this works beside a running daemon.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from quantshift.domain import trade_return
from quantshift.settings import Settings
from quantshift.shadow.books import book_path
from quantshift.shadow.promotion import compare_versions, max_drawdown, sharpe
from quantshift.shadow.versions import VersionRegistry, VersionStatus


@dataclass
class VersionFigures:
    strategy: str
    version: str
    status: str
    bars: int = 0
    signals: int = 0
    approved: int = 0
    vetoes: Counter[str] = field(default_factory=Counter)
    trades: int = 0
    pnl: float = 0.0
    win_rate: float | None = None
    sharpe: float | None = None
    max_drawdown: float = 0.0  # money, on the closed-trade P&L curve
    divergence: float | None = None  # vs the active version; None for the active itself
    verdict: dict[str, Any] | None = None  # promotion.compare_versions(...).to_dict()
    returns: list[float] = field(default_factory=list, repr=False)
    decisions: dict[tuple[int, str], int] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("returns", "decisions")}
        out["vetoes"] = dict(self.vetoes)
        return out


def _open_ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def read_book(path: Path, strategy: str, version: str, status: str,
              since_ns: int | None = None) -> VersionFigures:
    """One version's figures from its book (empty figures when it has no book yet)."""
    fig = VersionFigures(strategy, version, status)
    if not path.is_file():
        return fig
    since = since_ns or 0
    db = _open_ro(path)
    try:
        for ts, symbol, target, outcome in db.execute(
                "SELECT ts, symbol, target, outcome FROM decisions WHERE ts >= ?", (since,)):
            fig.signals += 1
            fig.decisions[(ts, symbol)] = target
            if outcome in ("approved", "exit_only"):
                fig.approved += 1
        for (reason,) in db.execute("SELECT reason FROM vetoes WHERE ts >= ?", (since,)):
            fig.vetoes[reason.partition(":")[0]] += 1
        rows = db.execute("SELECT qty, entry_price, pnl FROM trades WHERE exit_ts >= ? "
                          "ORDER BY id", (since,)).fetchall()
        snap = db.execute("SELECT state FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        db.close()
    if snap is not None:
        fig.bars = int(orjson.loads(snap[0]).get("counts", {}).get("bars", 0))
    pnls = [float(p) for _, _, p in rows]
    fig.trades = len(pnls)
    fig.pnl = round(sum(pnls), 2)
    fig.returns = [r for r in (trade_return(q, e, p) for q, e, p in rows) if r is not None]
    if pnls:
        fig.win_rate = sum(1 for p in pnls if p > 0) / len(pnls)
        # The same measures as the promotion statistics: the drawdown on the P&L curve.
        fig.max_drawdown = round(max_drawdown(np.asarray(pnls)), 2)
    ratio = sharpe(np.asarray(fig.returns))
    # No Sharpe from fewer than two trades, or from returns that never vary.
    fig.sharpe = round(ratio, 4) if math.isfinite(ratio) and np.std(fig.returns) > 0 else None
    return fig


def divergence(a: VersionFigures, b: VersionFigures) -> float | None:
    """Share of bars on which two versions decided differently."""
    bars = max(a.bars, b.bars)
    if bars <= 0:
        return None
    keys = a.decisions.keys() | b.decisions.keys()
    differ = sum(1 for k in keys if a.decisions.get(k) != b.decisions.get(k))
    return differ / bars


def compare(settings: Settings, registry: VersionRegistry, strategy: str | None = None,
            since_ns: int | None = None, *, verdicts: bool = True) -> list[VersionFigures]:
    """Every version of every (or one) multi-version strategy, active first."""
    out: list[VersionFigures] = []
    for name in registry.strategies():
        if strategy is not None and name != strategy:
            continue
        versions = registry.versions(name)
        if len(versions) < 2:
            continue
        active = registry.active(name)
        figs = [read_book(book_path(settings, name, v.version), name, v.version,
                          v.status.value, since_ns)
                for v in sorted(versions, key=lambda v: v.version != active)]
        champion = figs[0]
        for fig in figs[1:]:
            fig.divergence = divergence(champion, fig)
            if verdicts and VersionStatus(fig.status) is not VersionStatus.RETIRED:
                fig.verdict = compare_versions(
                    champion.returns, fig.returns, n_bootstrap=settings.shadow_n_bootstrap,
                    alpha=settings.shadow_alpha, min_trades=settings.shadow_min_trades,
                    mdd_tolerance=settings.shadow_mdd_tolerance).to_dict()
        out.extend(figs)
    return out
