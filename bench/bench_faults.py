"""The fault simulator at scale: many random schedules per venue against the real daemon
(tests/faultsim), every invariant checked after each.

Prints the schedules run, the events injected (by kind), the violations found (by
invariant, and by code with the schedules that showed each), the elapsed time and the
throughput, and saves them to bench/results/faults.json. A failing schedule's directory
is kept (its logs, journal, evidence and schedule); replay one with
``python -m tests.faultsim replay --venue V --seed S``.

    .venv/bin/python bench/bench_faults.py                       # 1,000 schedules per venue
    .venv/bin/python bench/bench_faults.py --schedules 100 --workers 12 --seed 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, percentile, save

sys.path.insert(0, str(ROOT))

from tests.faultsim.invariants import INVARIANTS
from tests.faultsim.pool import Tally, print_progress, run_many
from tests.faultsim.schedule import VENUES, Schedule


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=1000, help="per venue (default 1000)")
    parser.add_argument("--venue", choices=[*VENUES, "both"], default="both")
    parser.add_argument("--workers", type=int, default=6 * (os.cpu_count() or 1),
                        help="schedules at once (default 6 per core: the daemons mostly wait)")
    parser.add_argument("--seed", type=int, default=1, help="first seed (then seed+1, ...)")
    parser.add_argument("--out", type=Path, default=None, help="where failing schedules go")
    parser.add_argument("--quiet", action="store_true", help="no line per schedule")
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="stop starting schedules after this long and save what ran "
                             "(0: run them all); Ctrl-C does the same")
    args = parser.parse_args()

    venues = VENUES if args.venue == "both" else (args.venue,)
    # Interleaved, so both venues progress together and a cut-short run covers both.
    schedules = [Schedule.generate(v, args.seed + i) for i in range(args.schedules)
                 for v in venues]
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-faults-"))
    print(f"{len(schedules)} schedules ({args.schedules} per venue, seeds {args.seed}.."
          f"{args.seed + args.schedules - 1}), {args.workers} workers; failing schedules "
          f"kept under {root}", file=sys.stderr)
    tally = Tally()
    started = time.monotonic()
    deadline = started + args.minutes * 60 if args.minutes > 0 else float("inf")
    stopped = ""
    results = run_many(schedules, root, args.workers,
                       on_result=None if args.quiet else print_progress)
    try:
        for result in results:
            tally.add(result)
            if time.monotonic() > deadline:
                stopped = f"the {args.minutes:g}-minute budget ran out"
                break
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        results.close()  # the schedules not started are dropped; those running finish
    elapsed = time.monotonic() - started
    print("\n".join(tally.lines()))
    per = sorted(tally.elapsed)
    save("faults", {
        "base_seed": args.seed,
        "schedules_per_venue": args.schedules,
        "workers": args.workers,
        "schedules_run": dict(tally.schedules),
        "stopped_early": stopped or None,
        "schedules_failed": dict(tally.failed),
        "events_injected": dict(sorted(tally.events.items())),
        "violations_by_invariant": dict(sorted(tally.violations.items())),
        "schedules_by_violation": {k: {"schedules": n, "examples": tally.schedules_by_code[k]}
                                   for k, n in sorted(tally.codes.items())},
        "invariants": INVARIANTS,
        "skipped": dict(tally.skipped),
        "elapsed_seconds": round(elapsed, 1),
        "schedules_per_hour": round(len(per) / elapsed * 3600),
        "schedule_seconds": {"mean": round(statistics.fmean(per), 2) if per else None,
                             "p50": round(percentile(per, 50), 2),
                             "p95": round(percentile(per, 95), 2)},
        "failing_schedules_dir": str(root),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
