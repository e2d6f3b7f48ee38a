"""Decision latency, bar in -> intent out, 100 symbols on the sim feed (target p99 <= 1 ms).

Runs the daemon's own components (journal with its group-commit flusher, engine, Paper
executor, sim feed) on uvloop, and times every `Engine.on_bar` call; the figures for bars
that produced at least one intent are the decision latency.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import uvloop
from _common import percentile, rss_mb, save, timed_engine_run

from quantshift.settings import Settings, StrategySpec

TARGET_P99_MS = 1.0


def bench_settings(state: Path, symbols: int) -> Settings:
    """ma_cross on ``symbols`` symbols, fixed size, no money limits: many decisions."""
    return Settings(
        state_dir=state, symbols=[f"S{i:03d}" for i in range(symbols)], sizing="fixed:10",
        risk_max_trades_per_day=0, risk_max_open_positions=0, risk_max_exposure=0,
        risk_max_daily_loss=0, risk_max_drawdown=0, risk_max_position_notional=0,
        strategies=[StrategySpec(name="ma_cross",
                                 params={"fast": 2, "slow": 5, "mode": "long_short"})])


async def run(seconds: float, symbols: int, interval: float, state: Path) -> dict:
    settings = bench_settings(state, symbols)
    ms, all_ms, _ = await timed_engine_run(settings, seconds, interval)
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
