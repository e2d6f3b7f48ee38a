"""Replay throughput through `quantshift replay` (target: >= 150,000 bars/s on one core).

1,000,000 one-minute bars of a seeded random walk, one symbol; ma_cross EMA(10)/EMA(30)
long_short (reverses on each cross), fixed quantity, fills at bar close, 5 bps
commission, Paper executor, journal on. Pinned to one core with taskset when present.
The file is written twice, with epoch-second timestamps (the headline figure) and with
ISO 8601 ones (parsing those costs about 0.5 us a row more); both are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import quantshift_bin, random_walk_csv, save

TARGET = 150_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    figures = {}
    for fmt in ("epoch", "iso"):
        figures[fmt] = measure(args.bars, args.runs, fmt)
    best = figures["epoch"]
    save("replay_throughput", {**best, "iso_timestamps": {
        k: figures["iso"][k] for k in ("bars_per_s_runs", "bars_per_s_median")},
        "target_bars_per_s": TARGET, "meets_target": best["bars_per_s_median"] >= TARGET})


def measure(bars: int, n_runs: int, fmt: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = random_walk_csv(Path(tmp) / "walk.csv", bars, seed=11, symbol="WALK",
                               ts_format=fmt)
        env = dict(os.environ, QUANTSHIFT_STATE_DIR=f"{tmp}/var", QUANTSHIFT_LOG_DIR=f"{tmp}/logs",
                   QUANTSHIFT_CONFIG_DIR=f"{tmp}/none", QUANTSHIFT_PHASE="dry_run",
                   QUANTSHIFT_SIZING="fixed:10", QUANTSHIFT_PAPER_FILL="close",
                   QUANTSHIFT_PAPER_COMMISSION_BPS="5", QUANTSHIFT_PAPER_SLIPPAGE_BPS="0",
                   QUANTSHIFT_RISK_MAX_TRADES_PER_DAY="0", QUANTSHIFT_ENV_FILE=f"{tmp}/none.env",
                   # a fixed quantity, always in the market: no drawdown stop, no regime scaling
                   QUANTSHIFT_RISK_MAX_DRAWDOWN="0", QUANTSHIFT_RISK_MAX_DAILY_LOSS="0",
                   QUANTSHIFT_RISK_REGIME_BEAR="1", QUANTSHIFT_RISK_REGIME_CHOPPY="1",
                   QUANTSHIFT_RISK_REGIME_CRISIS="1")
        cmd = [quantshift_bin(), "replay", "--data", str(data), "--strategy", "ma_cross",
               "--param", "ma=ema", "--param", "fast=10", "--param", "slow=30",
               "--param", "mode=long_short", "--json", "--no-progress"]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0", *cmd]
        runs = []
        for _ in range(n_runs):
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            runs.append(json.loads(out.stdout))
    best = max(runs, key=lambda r: r["bars_per_s"])
    rates = sorted(r["bars_per_s"] for r in runs)
    return {
        "timestamps": fmt, "bars": best["bars"], "orders": best["orders"],
        "trades": best["trades"], "bars_per_order": round(best["bars"] / max(best["orders"], 1), 2),
        "bars_per_s_runs": rates, "bars_per_s_median": rates[len(rates) // 2],
        "bars_per_s_best": best["bars_per_s"], "summary": best,
    }


if __name__ == "__main__":
    main()
