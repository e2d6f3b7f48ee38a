"""Decision latency with the whole strategy library: all five strategies on 100 symbols in
one engine on the sim feed, bar in -> intent out (target p99 <= 1 ms).

Like bench_decision_latency.py: the daemon's own components (journal with its
group-commit flusher, engine, Paper executor, sim feed) on uvloop, every `Engine.on_bar`
call timed; the figures for bars that produced at least one intent are the decision
latency. Also reports each strategy's own `on_bar` cost, alone, on the same kind of bars.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import uvloop
from _common import percentile, rss_mb, save, timed_engine_run

from quantshift.feeds.sim import SimFeed
from quantshift.settings import Settings, StrategySpec
from quantshift.strategies import factory

TARGET_P99_MS = 1.0

# Short windows and long_short, so that every strategy trades often on the sim walk.
STRATEGIES = [
    StrategySpec(name="ma_cross", params={"ma": "ema", "fast": 5, "slow": 20,
                                          "mode": "long_short"}),
    StrategySpec(name="rsi_reversion", params={"period": 14, "mode": "long_short"}),
    StrategySpec(name="bollinger_reversion", params={"period": 20, "k": 2.0,
                                                     "mode": "long_short"}),
    StrategySpec(name="breakout_momentum", params={"lookback": 20, "exit_lookback": 10,
                                                   "volume_period": 20, "vol_mult": 1.2,
                                                   "mode": "long_short"}),
    StrategySpec(name="donchian_breakout", params={"entry": 20, "exit": 10,
                                                   "mode": "long_short"}),
]


async def run(seconds: float, symbols: int, interval: float, state: Path) -> dict:
    # Limits off: 500 strategy instances trading a random walk lose the paper slippage
    # fast, and a daily-loss or drawdown veto would cut the path short of the executor.
    limits_off = {"risk_max_trades_per_day": 0, "risk_max_open_positions": 0,
                  "risk_max_exposure": 0, "risk_max_daily_loss": 0}
    if "risk_max_drawdown" in Settings.model_fields:
        limits_off["risk_max_drawdown"] = 0
    settings = Settings(
        state_dir=state, symbols=[f"S{i:03d}" for i in range(symbols)], sizing="fixed:10",
        strategies=STRATEGIES, **limits_off)
    ms, all_ms, counts = await timed_engine_run(settings, seconds, interval)
    return {
        "strategies": [s.name for s in STRATEGIES], "symbols": symbols,
        "sim_interval_s": interval, "seconds": seconds,
        "bars": len(all_ms), "decisions_with_intent": len(ms),
        "signals": counts["signals"], "orders": counts["orders"], "vetoes": counts["vetoed"],
        "intent_latency_ms": {"p50": percentile(ms, 50), "p99": percentile(ms, 99),
                              "max": max(ms, default=float("nan"))},
        "bar_latency_ms": {"p50": percentile(all_ms, 50), "p99": percentile(all_ms, 99)},
        "rss_mb": round(rss_mb(), 1), "target_p99_ms": TARGET_P99_MS,
        "meets_target": percentile(ms, 99) <= TARGET_P99_MS,
    }


def strategy_cost(bars_per_symbol: int = 20_000, repeats: int = 5) -> dict[str, dict]:
    """Each strategy alone: ns per `on_bar` (the best of ``repeats`` runs: the machine's
    other work only ever adds) and signals per 1,000 bars."""
    feed = SimFeed(["S"], 0.0, seed=7)
    bars = [feed.next_bar("S", i) for i in range(bars_per_symbol)]
    out = {}
    for spec in STRATEGIES:
        best = float("inf")
        for _ in range(repeats):
            strat = factory(spec.name, spec.key, spec.params)("S")
            on_bar = strat.on_bar
            signals = 0
            t0 = time.perf_counter_ns()
            for bar in bars:
                sig = on_bar(bar)
                if sig is not None:
                    signals += 1
                    strat.position = 10.0 * int(sig.target)  # a fill at the close
            best = min(best, time.perf_counter_ns() - t0)
        out[spec.name] = {"ns_per_bar": round(best / len(bars), 1),
                          "signals_per_1000_bars": round(1000 * signals / len(bars), 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.02, help="sim interval (s)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = uvloop.run(run(args.seconds, args.symbols, args.interval, Path(tmp)))
    figures["strategy_on_bar"] = strategy_cost()
    save("strategies_latency", figures)


if __name__ == "__main__":
    main()
