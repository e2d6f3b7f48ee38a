"""``python -m tests.faultsim run|replay|named``: the fault simulator from the shell.

    python -m tests.faultsim run --venue alpaca --schedules 20 [--seed 1] [--workers 6]
    python -m tests.faultsim replay --venue alpaca --seed 17
    python -m tests.faultsim replay --schedule /tmp/faultsim-.../alpaca-17/schedule.json
    python -m tests.faultsim replay --named h1_halt_between_retries_alpaca
    python -m tests.faultsim named            # the regression schedules and what they find

Exit status 0 when every schedule ran clean, 1 when any invariant was violated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.faultsim import seeds
from tests.faultsim.pool import Tally, print_progress, run_many
from tests.faultsim.schedule import VENUES, Schedule


def default_workers() -> int:
    import os

    return max(2, 3 * (os.cpu_count() or 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faultsim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="draw and run schedules")
    run.add_argument("--venue", choices=[*VENUES, "both"], default="both")
    run.add_argument("--schedules", type=int, default=10, help="per venue")
    run.add_argument("--seed", type=int, default=1, help="first seed (then seed+1, ...)")
    replay = sub.add_parser("replay", help="run one schedule again")
    replay.add_argument("--venue", choices=VENUES)
    group = replay.add_mutually_exclusive_group(required=True)
    group.add_argument("--seed", type=int)
    group.add_argument("--schedule", type=Path, help="a schedule's JSON (schedule.json)")
    group.add_argument("--named", choices=["all", *sorted(seeds.NAMED)],
                       help="a regression schedule (see `named`), or all of them")
    for p in (run, replay):
        p.add_argument("--workers", type=int, default=default_workers())
        p.add_argument("--out", type=Path, default=None,
                       help="where the schedules' directories go (default: a new temp dir)")
        p.add_argument("--keep", action="store_true", help="keep passing schedules' files too")
        p.add_argument("--binary", action="store_true",
                       help="start the quantshift console script instead of the zygote")
        p.add_argument("--print-schedule", action="store_true",
                       help="print each schedule's JSON before running it")
    sub.add_parser("named", help="list the regression schedules")
    args = parser.parse_args(argv)

    if args.cmd == "named":
        for name, reg in sorted(seeds.NAMED.items()):
            print(f"{name}: {reg.venue}, finds {reg.finding}: {reg.why}")
        return 0
    if args.cmd == "run":
        venues = VENUES if args.venue == "both" else (args.venue,)
        schedules = [Schedule.generate(v, args.seed + i) for i in range(args.schedules)
                     for v in venues]
    elif args.named:
        names = sorted(seeds.NAMED) if args.named == "all" else [args.named]
        schedules = [seeds.NAMED[n].schedule() for n in names]
    elif args.schedule:
        schedules = [Schedule.from_json(args.schedule.read_text())]
    else:
        if not args.venue:
            parser.error("--seed needs --venue")
        schedules = [Schedule.generate(args.venue, args.seed)]
    if args.print_schedule:
        for s in schedules:
            print(s.to_json())
    root = args.out or Path(tempfile.mkdtemp(prefix=f"faultsim-{time.strftime('%H%M%S')}-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"fault simulator: {len(schedules)} schedule(s), {args.workers} worker(s), "
          f"files under {root}", file=sys.stderr)
    tally = Tally()
    failures = []
    binary = _binary() if args.binary else None
    for result in run_many(schedules, root, min(args.workers, len(schedules)),
                           keep=args.keep or args.cmd == "replay", binary=binary,
                           on_result=print_progress):
        tally.add(result)
        if result.failed:
            failures.append(result)
    for r in failures:
        print(r.report())
    print("\n".join(tally.lines()))
    return 1 if failures else 0


def _binary() -> str:
    from tests.conftest import quantshift_bin

    return quantshift_bin()


if __name__ == "__main__":
    raise SystemExit(main())
