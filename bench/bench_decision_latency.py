"""Decision latency, bar in -> intent out, 100 symbols on the sim feed (target p99 <= 1 ms).

Runs the daemon's own components (journal with its group-commit flusher, engine, Paper
executor, sim feed) on uvloop, and times every `Engine.on_bar` call; the figures for bars
that produced at least one intent are the decision latency.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop
from _common import percentile, rss_mb, save

from quantshift.app import build_engine, open_journal
from quantshift.feeds.sim import SimFeed
from quantshift.settings import Settings, StrategySpec

TARGET_P99_MS = 1.0


async def run(seconds: float, symbols: int, interval: float, state: Path) -> dict:
    settings = Settings(
        state_dir=state, symbols=[f"S{i:03d}" for i in range(symbols)], sizing="fixed:10",
        risk_max_trades_per_day=0, risk_max_open_positions=0, risk_max_exposure=0,
        risk_max_daily_loss=0, risk_max_drawdown=0, risk_max_position_notional=0,
        strategies=[StrategySpec(name="ma_cross",
                                 params={"fast": 2, "slow": 5, "mode": "long_short"})])
    journal = open_journal(settings)
    engine = build_engine(settings, journal, log_decisions=False)
    decision: list[int] = []
    quiet: list[int] = []
    counts = engine.counts
    inner = engine.on_bar

    def timed(bar) -> None:
        before = counts["orders"]
        t0 = time.perf_counter_ns()
        inner(bar)
        took = time.perf_counter_ns() - t0
        (decision if counts["orders"] != before else quiet).append(took)

    feed = SimFeed(settings.symbols, interval, seed=5)
    db = ThreadPoolExecutor(1)
    loop = asyncio.get_running_loop()

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.1)
            await loop.run_in_executor(db, journal.flush)

    flush_task = asyncio.create_task(flusher())
    feed_task = asyncio.create_task(feed.run(timed))
    await asyncio.sleep(seconds)
    feed.stop()
    await feed_task
    flush_task.cancel()
    journal.flush()
    journal.close()
    ms = [x / 1e6 for x in decision]
    all_ms = [x / 1e6 for x in decision + quiet]
    return {
        "symbols": symbols, "sim_interval_s": interval, "seconds": seconds,
        "bars": len(all_ms), "decisions_with_intent": len(ms),
        "intent_latency_ms": {"p50": percentile(ms, 50), "p99": percentile(ms, 99),
                              "max": max(ms, default=float("nan"))},
        "bar_latency_ms": {"p50": percentile(all_ms, 50), "p99": percentile(all_ms, 99)},
        "rss_mb": round(rss_mb(), 1), "target_p99_ms": TARGET_P99_MS,
        "meets_target": percentile(ms, 99) <= TARGET_P99_MS,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.02, help="sim interval (s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = uvloop.run(run(args.seconds, args.symbols, args.interval, Path(tmp)))
    save("decision_latency", figures)


if __name__ == "__main__":
    main()
