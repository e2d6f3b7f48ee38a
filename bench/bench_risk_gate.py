"""RiskGate.evaluate per signal with every rule on, 100 symbols (target p99 <= 20 us).

Three passes by default; the figure is the median of their p99s, over all evaluations and
over the approved entries alone (the whole chain of rules and the sizing); the target holds
when both readings meet it.

The state is a day of trading in production: 100 symbols marked and warmed through
``gate.on_bar`` (ATR, average volume, the 5x higher timeframe, the regime of the reference
symbol), every symbol traded once already (the book's net map holds all 100), 8 positions
open, a few orders pending, Kelly statistics for one strategy (ATR sizing for the other),
losing exits cooling a few symbols down, the capital ramp and the market clock on.

Each round: a new bar of one symbol (``pf.mark`` + ``gate.on_bar``, not timed), then one
signal through ``gate.evaluate`` (timed). Nothing is filled, and the day's and hour's
order counts are put back to a realistic level between rounds (not timed) so the caps do
not end up short-circuiting every later evaluation: most entries run the whole chain.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import time
from collections import Counter, deque

from _common import percentile, save

from quantshift.domain import (
    NS_PER_DAY,
    NS_PER_SECOND,
    Bar,
    Direction,
    Fill,
    Instrument,
    Phase,
    Side,
    Signal,
    Trade,
)
from quantshift.portfolio import Portfolio
from quantshift.risk.gate import RiskGate
from quantshift.risk.pending import Pending
from quantshift.risk.profiles import limits_for
from quantshift.risk.sizing import Sizing

TARGET_P99_US = 20.0
T0 = 1_704_207_600 * NS_PER_SECOND  # 2024-01-02 15:00Z
MIN = 60 * NS_PER_SECOND


def build(symbols: int, seed: int) -> tuple[RiskGate, Portfolio, dict, list[str], dict]:
    rng = random.Random(seed)
    names = [f"S{i:03d}" for i in range(symbols)]
    limits = limits_for(Phase.PRODUCTION, {
        "max_exposure": 60_000, "max_position_notional": 8_000, "max_open_positions": 12,
        "max_trades_per_day": 50, "max_trades_per_hour": 10, "max_daily_loss": 1_000,
        "max_drawdown": 5_000, "loss_cooldown_seconds": 900, "min_price": 1.0,
        "min_avg_volume": 100.0, "htf_factor": 5, "htf_sma": 10,
        "max_position_fraction": 0.05})
    gate = RiskGate("bench", limits, Sizing.parse("kelly:0.5:30:0.05,atr:0.002:2"), False,
                    regime_symbol=names[0])
    gate.control.set_market_open(True)
    gate.start_phase(T0 // NS_PER_DAY - 20)  # the ramp's schedule is evaluated, at 100 %
    for s in names:
        gate.instruments[s] = Instrument(s, qty_step=1.0, min_qty=1.0, min_notional=1.0)
    pf = Portfolio(100_000)
    prices = {s: rng.uniform(20, 400) for s in names}
    ts = T0 - 300 * MIN
    for _ in range(300):  # five hours of one-minute bars
        for s in names:
            p = prices[s] = prices[s] * math.exp(rng.gauss(0, 0.001) + 0.0001)
            pf.mark(s, p, ts)
            gate.on_bar(Bar(s, ts, p, p * 1.0008, p * 0.9992, p, rng.randint(200, 5_000)))
        ts += MIN
    seq = 0
    for k, s in enumerate(names):  # every symbol traded earlier: the net map holds all
        for side in (Side.BUY, Side.SELL):
            seq += 1
            pf.apply_fill(Fill(seq, f"c{seq}", "s2", s, side, 5, prices[s], 0.0, ts))
        if k < 8:  # and eight positions open now
            seq += 1
            qty = max(1, int(4_000 / prices[s]))
            pf.apply_fill(Fill(seq, f"c{seq}", "s1", s, Side.BUY if k % 2 else Side.SELL, qty,
                               prices[s], 0.0, ts))
    for n in range(40):  # Kelly statistics for s1 (s2 stays on its ATR base)
        pnl = 30.0 if n % 5 < 3 else -25.0
        gate.on_trade(Trade("s1", names[n % 8], Direction.LONG, 10, ts - MIN, 100.0, ts,
                            100.0 + pnl / 10, pnl))
    for s in names[90:95]:  # losing exits cooling five symbols down
        gate.on_trade(Trade("s2", s, Direction.LONG, 5, ts - 2 * MIN, 100.0, ts - MIN, 99.0,
                            -5.0))
    pending = Pending()  # as the engine keeps it
    pending.add("s1", names[10], 7.0)
    pending.add("s2", names[11], -3.0)
    return gate, pf, pending, names, prices


def run(evaluations: int, symbols: int, seed: int) -> dict:
    gate, pf, pending, names, prices = build(symbols, seed)
    rng = random.Random(seed + 1)
    ts = T0
    # The rounds, drawn before timing: (symbol, strategy, wanted direction).
    plan = [(names[rng.randrange(symbols)], "s1" if rng.random() < 0.5 else "s2", rng.random(),
             rng.random(), math.exp(rng.gauss(0, 0.001)), rng.randint(200, 5_000))
            for _ in range(evaluations)]
    took: list[int] = []
    outcome: Counter[str] = Counter()
    full_path: list[int] = []
    perf = time.perf_counter_ns
    evaluate = gate.evaluate
    hour_base = [ts - 40 * MIN, ts - 20 * MIN, ts - 5 * MIN]
    gc.collect()
    gc.freeze()  # the set-up's objects: no collection walks them again
    for s, strategy, roll, agree, move, volume in plan:
        ts += NS_PER_SECOND
        p = prices[s] = prices[s] * move
        pf.mark(s, p, ts)
        gate.on_bar(Bar(s, ts, p, p * 1.0008, p * 0.9992, p, volume))
        if roll < 0.7:  # an entry, mostly along the higher timeframe's trend
            trend = gate.symbols[s].htf_dir or 1
            want = Direction(trend if agree < 0.8 else -trend)
        elif roll < 0.85:
            want = Direction.FLAT
        else:
            want = Direction(1 if agree < 0.5 else -1)
        gate.trades_today = 12
        gate.hour_ts = deque(t + (ts - T0) for t in hour_base)
        signal = Signal(strategy, s, ts, want, "bench")
        t0 = perf()
        d = evaluate(signal, p, pf, pending)
        dt = perf() - t0
        took.append(dt)
        if d.veto is not None:
            outcome["veto: " + d.veto.split(":")[0]] += 1
        if any(not i.reduce_only for i in d.intents):
            outcome["entry approved"] += 1
            full_path.append(dt)
        elif d.intents:
            outcome["exit approved"] += 1
        elif d.veto is None:
            outcome["no change"] += 1
    gc.unfreeze()
    us = [t / 1_000 for t in took]
    full = [t / 1_000 for t in full_path]
    p99 = percentile(us, 99)
    return {
        "symbols": symbols, "evaluations": evaluations,
        "rules": "all on: states, stale feed, market clock, daily loss, drawdown, trades/day, "
                 "trades/hour, cooldown, min price, min avg volume, 5x higher timeframe, "
                 "kelly (atr base) sizing with regime, caps and buying power, venue "
                 "increments, position notional, ramped exposure, open positions",
        "evaluate_us": {"p50": round(percentile(us, 50), 3), "p90": round(percentile(us, 90), 3),
                        "p99": round(p99, 3), "max": round(max(us), 3)},
        "approved_entry_us": {"n": len(full), "p50": round(percentile(full, 50), 3),
                              "p99": round(percentile(full, 99), 3)},
        "outcomes": dict(outcome.most_common()),
        "regime": gate.regime,
        "target_p99_us": TARGET_P99_US,
        "meets_target": p99 <= TARGET_P99_US,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evaluations", type=int, default=200_000)
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--runs", type=int, default=3,
                    help="passes over the same plan; the headline is their median p99")
    args = ap.parse_args()
    # A shared VM's speed drifts from minute to minute: several passes, each its own p99,
    # and the median of those as the figure (as the replay benchmark does with rates).
    runs = [run(args.evaluations, args.symbols, args.seed) for _ in range(args.runs)]
    p99s = sorted(r["evaluate_us"]["p99"] for r in runs)
    median = p99s[len(p99s) // 2]
    # The strictest reading as well: only the evaluations that ran every rule and sized an
    # entry (vetoes and repeated signals return early and pull the overall p99 down).
    entry_p99s = sorted(r["approved_entry_us"]["p99"] for r in runs)
    entry_median = entry_p99s[len(entry_p99s) // 2]
    first = runs[0]
    save("risk_gate", {**first, "evaluate_us_runs": [r["evaluate_us"] for r in runs],
                       "approved_entry_us_runs": [r["approved_entry_us"] for r in runs],
                       "p99_us_median": median, "approved_entry_p99_us_median": entry_median,
                       "meets_target": max(median, entry_median) <= TARGET_P99_US})


if __name__ == "__main__":
    main()
