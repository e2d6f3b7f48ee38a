"""Champion/challenger comparison: 500 trades per side, 10,000 bootstrap resamples
(target p99 <= 50 ms).

Each run is one ``compare_versions`` call on the same two return series (a champion and
a slightly better challenger, normal per-trade returns) with another bootstrap seed, so
every run draws fresh resamples: the Welch test, the bootstrap interval of the mean
difference, Sharpe, win rate and drawdown, decision and score. The bootstrap alone (both
sides) is timed too, since it is nearly all of the cost.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
from _common import percentile, save

from quantshift.shadow.promotion import bootstrap_means, compare_versions

TARGET_MS = 50.0


def run(runs: int, trades: int, n_bootstrap: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    champion = rng.normal(0.0005, 0.01, trades)
    challenger = rng.normal(0.0020, 0.01, trades)
    for warm in range(2):  # scipy's first call and numpy's first allocations
        compare_versions(champion, challenger, n_bootstrap=n_bootstrap, seed=warm)
    gc.collect()
    took: list[float] = []
    boot: list[float] = []
    result = None
    for i in range(runs):
        t0 = time.perf_counter()
        result = compare_versions(champion, challenger, n_bootstrap=n_bootstrap, seed=seed + i)
        took.append((time.perf_counter() - t0) * 1e3)
        g = np.random.default_rng(seed + i)
        t0 = time.perf_counter()
        bootstrap_means(challenger, n_bootstrap, g)
        bootstrap_means(champion, n_bootstrap, g)
        boot.append((time.perf_counter() - t0) * 1e3)
    assert result is not None
    p99 = percentile(took, 99)
    return {
        "trades_per_side": trades, "n_bootstrap": n_bootstrap, "runs": runs,
        "compare_ms": {"p50": round(percentile(took, 50), 2), "p99": round(p99, 2),
                       "min": round(min(took), 2), "max": round(max(took), 2)},
        "bootstrap_both_sides_ms": {"p50": round(percentile(boot, 50), 2),
                                    "p99": round(percentile(boot, 99), 2)},
        "last_decision": result.decision.value, "last_score": result.score,
        "target_p99_ms": TARGET_MS,
        "meets_target": p99 <= TARGET_MS,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--trades", type=int, default=500)
    ap.add_argument("--bootstrap", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=17)
    args = ap.parse_args()
    save("promotion_stats", run(args.runs, args.trades, args.bootstrap, args.seed))


if __name__ == "__main__":
    main()
