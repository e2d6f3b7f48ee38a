"""Replay a CSV file through the same engine with the Paper executor, as fast as it goes."""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantshift.app import build_engine, open_journal
from quantshift.domain import NS_PER_SECOND, ExecutorKind, Trade
from quantshift.feeds.base import BarValidator
from quantshift.feeds.replay import CsvBars, ReplayFormatError
from quantshift.settings import Settings, StrategySpec
from quantshift.state.journal import Journal

_FLUSH_ROWS = 50_000
_PROGRESS_EVERY = 16_384
_SECONDS_PER_YEAR = 365.25 * 86_400


@dataclass(slots=True)
class ReplaySummary:
    file: str
    strategies: list[str]
    bars: int
    rejected: int
    signals: int
    vetoes: int
    orders: int
    fills: int
    trades: int
    total_return_pct: float
    max_drawdown_pct: float
    sharpe: float
    win_rate_pct: float
    final_equity: float
    elapsed_s: float
    bars_per_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
    return max(n - 1, 0)


def run_replay(settings: Settings, data: Path, strategies: list[StrategySpec], *,
               journal_path: Path, symbol: str | None = None, progress: bool = False,
               ) -> tuple[ReplaySummary, list[Trade]]:
    """Run the file; the journal at ``journal_path`` starts empty each time (a backtest).

    A file that is not bars is refused (ReplayFormatError) before the journal exists; a
    replay that fails later, or in which no bar passed validation, deletes its journal.
    """
    validator = BarValidator("replay")
    bars = CsvBars(data, validator, symbol)
    bars.check()
    journal = open_journal(settings, journal_path, ExecutorKind.PAPER, durable=False,
                           fresh=True)
    try:
        return _run(settings, data, strategies, journal, validator, bars, progress)
    except BaseException:
        journal.discard()
        raise


def _run(settings: Settings, data: Path, strategies: list[StrategySpec], journal: Journal,
         validator: BarValidator, bars: CsvBars, progress: bool,
         ) -> tuple[ReplaySummary, list[Trade]]:
    engine = build_engine(settings, journal, executor=ExecutorKind.PAPER, strategies=strategies,
                          log_decisions=False, keep_trades=True)
    bar_progress = None
    if progress:
        from rich.console import Console  # only on a terminal
        from rich.progress import Progress

        # On stderr: stdout carries the summary (and --json must stay parseable).
        bar_progress = Progress(console=Console(stderr=True), transient=True)
        task = bar_progress.add_task(f"replay {data.name}", total=_count_lines(data))
        bar_progress.start()

    pf = engine.portfolio
    accept = validator.accept
    on_bar = engine.on_bar
    seen = 0
    started = time.perf_counter()
    try:
        for bar in bars:
            seen += 1
            if accept(bar):
                on_bar(bar)
            if not seen & (_PROGRESS_EVERY - 1):
                if journal.pending >= _FLUSH_ROWS:
                    journal.flush()
                if bar_progress is not None:
                    bar_progress.update(task, completed=seen)
        journal.flush()
    finally:
        if bar_progress is not None:
            bar_progress.stop()
    elapsed = time.perf_counter() - started
    if not engine.bars:
        reasons = ", ".join(f"{k}: {v}" for k, v in validator.reasons.most_common())
        raise ReplayFormatError(f"{data}: no bar passed validation ({validator.rejected} "
                                f"rows rejected{': ' + reasons if reasons else ''})")
    engine.snapshot()
    journal.flush()
    journal.close()

    sharpe = 0.0
    n_returns, sum_r, sum_r2 = pf.return_n, pf.return_sum, pf.return_sq
    first_ts = bars.first_ts
    last_ts = max(validator.last_ts.values(), default=None)
    if n_returns > 1 and first_ts is not None and last_ts is not None and last_ts > first_ts:
        mean = sum_r / n_returns
        var = max(sum_r2 / n_returns - mean * mean, 0.0) * n_returns / (n_returns - 1)
        years = (last_ts - first_ts) / NS_PER_SECOND / _SECONDS_PER_YEAR
        if var > 0 and years > 0:
            sharpe = mean / math.sqrt(var) * math.sqrt(n_returns / years)
    trades = engine.trades or []
    wins = sum(1 for t in trades if t.pnl > 0)
    c = engine.counts
    summary = ReplaySummary(
        file=str(data), strategies=[s.key for s in strategies], bars=engine.bars,
        rejected=validator.rejected, signals=c["signals"], vetoes=c["vetoed"],
        orders=c["orders"], fills=c["fills"], trades=len(trades),
        total_return_pct=round((pf.equity / pf.initial_cash - 1.0) * 100.0, 6),
        max_drawdown_pct=round(pf.max_drawdown * 100.0, 6), sharpe=round(sharpe, 6),
        win_rate_pct=round(wins / len(trades) * 100.0, 6) if trades else 0.0,
        final_equity=round(pf.equity, 6), elapsed_s=round(elapsed, 6),
        bars_per_s=round(engine.bars / elapsed, 1) if elapsed > 0 else 0.0,
    )
    return summary, trades


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts / NS_PER_SECOND, UTC).isoformat()


def write_trades(path: Path, trades: list[Trade]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "symbol", "direction", "qty", "entry_time", "entry_price",
                    "exit_time", "exit_price", "pnl"])
        for t in trades:
            w.writerow([t.strategy, t.symbol, t.direction.name.lower(), f"{t.qty:g}",
                        _iso(t.entry_ts), f"{t.entry_price:.6f}", _iso(t.exit_ts),
                        f"{t.exit_price:.6f}", f"{t.pnl:.6f}"])


def print_summary(summary: ReplaySummary, out: Any = sys.stdout) -> None:
    rows = [
        ("file", summary.file), ("strategies", ", ".join(summary.strategies)),
        ("bars", f"{summary.bars:,}"), ("rejected bars", f"{summary.rejected:,}"),
        ("signals", f"{summary.signals:,}"), ("vetoes", f"{summary.vetoes:,}"),
        ("orders", f"{summary.orders:,}"), ("trades", f"{summary.trades:,}"),
        ("total return", f"{summary.total_return_pct:.2f} %"),
        ("max drawdown", f"{summary.max_drawdown_pct:.2f} %"),
        ("Sharpe", f"{summary.sharpe:.2f}"), ("win rate", f"{summary.win_rate_pct:.2f} %"),
        ("final equity", f"{summary.final_equity:,.2f}"),
        ("elapsed", f"{summary.elapsed_s:.2f} s"),
        ("bars per second", f"{summary.bars_per_s:,.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}", file=out)
