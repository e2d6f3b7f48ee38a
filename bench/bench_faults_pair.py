"""The two-instance fault simulator at scale (tests/faultsim/pair.py): many random schedules
of kills, freezes, Redis cuts and losses, handovers, halts and venue faults against two real
daemons of one bot on one Redis and the exchange emulator, every invariant checked after
each. Prints and saves (bench/results/faults_pair.json) the schedules run, the events by
kind, the orders the venue took, the violations with the seeds that showed them, and the
time taken. A failing seed replays with ``python -m tests.faultsim.pair --seed S``.

    .venv/bin/python bench/bench_faults_pair.py [--schedules 40] [--workers 4] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import ROOT, save

sys.path.insert(0, str(ROOT))

from tests.faultsim.pair import run_seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=40)
    parser.add_argument("--workers", type=int, default=4, help="schedules at once")
    parser.add_argument("--events", type=int, default=8, help="events per schedule")
    parser.add_argument("--seed", type=int, default=1, help="first seed (then seed+1, ...)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-faults-pair-"))
    started = time.monotonic()
    kinds: Counter[str] = Counter()
    failed: dict[int, list[str]] = {}
    orders = 0
    done = 0

    def one(seed: int) -> tuple[int, list[str], list[str], int]:
        ev, bad = run_seed(seed, base / str(seed), args.events)
        return seed, bad, [e["kind"] for e in ev.events], len(ev.venue.get("orders", []))

    seeds = range(args.seed, args.seed + args.schedules)
    with ThreadPoolExecutor(args.workers) as pool:
        for seed, bad, events, n in pool.map(one, seeds):
            done += 1
            kinds.update(events)
            orders += n
            if bad:
                failed[seed] = bad
            print(f"[{done}/{args.schedules}] seed {seed}: {n} orders, "
                  f"{'; '.join(bad) or 'ok'}", flush=True)
    elapsed = time.monotonic() - started
    save("faults_pair", {
        "schedules": args.schedules, "events_per_schedule": args.events,
        "first_seed": args.seed, "events": sum(kinds.values()),
        "events_by_kind": dict(kinds.most_common()), "venue_orders": orders,
        "failed": len(failed), "failures": {str(k): v for k, v in failed.items()},
        "elapsed_s": round(elapsed, 1),
        "schedules_per_minute": round(args.schedules / elapsed * 60, 2),
        "kept": str(base)})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
