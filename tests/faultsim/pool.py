"""Many schedules at once: worker processes, each with its own emulator loop and zygote.

The daemons mostly wait (on bars, on the venue, on timers), so more workers than cores
keep the machine busy; each worker runs one schedule at a time.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.util
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.faultsim import invariants, world
from tests.faultsim.runner import ScheduleRunner
from tests.faultsim.schedule import Schedule
from tests.faultsim.venue import Loop
from tests.faultsim.zygote import BinaryLauncher, Launcher, Zygote


@dataclass
class Result:
    venue: str
    seed: int | None
    name: str
    schedule: dict[str, Any]
    kinds: list[str]
    violations: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    workdir: str = ""
    launcher: str = "zygote"

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def label(self) -> str:
        return f"{self.venue} {'named ' + self.name if self.name else f'seed={self.seed}'}"

    def replay_command(self) -> str:
        if self.name:
            return f"python -m tests.faultsim replay --named {self.name}"
        if self.seed is None:
            return f"python -m tests.faultsim replay --schedule {self.workdir}/schedule.json"
        return f"python -m tests.faultsim replay --venue {self.venue} --seed {self.seed}"

    def report(self) -> str:
        """What a failure prints: the seed, the violations, the logs and the schedule."""
        lines = [f"FAIL {self.label()}: {len(self.violations)} violation(s) "
                 f"({self.elapsed:.1f}s, {self.launcher})"]
        lines += [f"  [{v['invariant']}:{v['code']}] {v['message']}" for v in self.violations]
        lines += [f"  skipped: {s}" for s in self.skipped]
        lines.append(f"  logs: {self.workdir}/logs, {self.workdir}/runs (evidence.json, "
                     "schedule.json beside them)")
        lines.append(f"  replay: {self.replay_command()}")
        lines.append(f"  schedule: {json.dumps(self.schedule)}")
        return "\n".join(lines)


def simulate(schedule: Schedule, workdir: Path, launcher: Launcher, loop: Loop,
             launcher_name: str = "zygote") -> Result:
    """Run one schedule and check every invariant."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    runner = ScheduleRunner(schedule, workdir, launcher, loop)
    ev = runner.run()
    violations = invariants.check(ev, runner.world.secrets)
    (workdir / "evidence.json").write_text(json.dumps(ev.as_dict(), indent=1, default=str))
    result = Result(schedule.venue, schedule.seed, schedule.name, schedule.as_dict(),
                    schedule.kinds(), [v.as_dict() for v in violations], ev.skipped,
                    ev.elapsed, str(workdir), launcher_name)
    (workdir / "result.json").write_text(json.dumps(asdict(result), indent=1))
    return result


# -- workers ------------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _init(slots: Any) -> None:
    with slots.get_lock():
        world.PORT_SLOT = slots.value
        slots.value += 1
    _WORKER["loop"] = Loop()


def _launcher(binary: str | None) -> Launcher:
    if binary:
        return BinaryLauncher(binary)
    if "zygote" not in _WORKER:  # started on first use: a binary-only worker needs none
        _WORKER["zygote"] = zygote = Zygote()
        # Closed (and waited for) when the worker ends: atexit does not run in a pool's
        # worker, multiprocessing's finalizers do.
        multiprocessing.util.Finalize(None, zygote.close, exitpriority=10)
    return _WORKER["zygote"]  # type: ignore[no-any-return]


def _work(schedule: dict[str, Any], workdir: str, keep: bool,
          binary: str | None) -> dict[str, Any]:
    result = simulate(Schedule.from_dict(schedule), Path(workdir), _launcher(binary),
                      _WORKER["loop"], "binary" if binary else "zygote")
    if not result.failed and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return asdict(result)


def run_many(schedules: Iterable[Schedule], root: Path, workers: int, *, keep: bool = False,
             binary: str | None = None, binary_for: Iterable[Schedule] = (),
             on_result: Callable[[Result], None] | None = None) -> Iterator[Result]:
    """Run the schedules on ``workers`` processes; yield each result as it completes.
    ``binary``: the console script's path, for every schedule, or (with ``binary_for``)
    only for those; the others start from each worker's zygote."""
    ctx = multiprocessing.get_context("spawn")
    chosen = {id(s) for s in binary_for}
    slots = ctx.Value("i", 0)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init,
                             initargs=(slots,)) as pool:
        futures: list[Future[dict[str, Any]]] = []
        for s in schedules:
            tag = s.name or f"{s.seed}"
            use = binary if binary and (not chosen or id(s) in chosen) else None
            futures.append(pool.submit(_work, s.as_dict(), str(root / f"{s.venue}-{tag}"),
                                       keep, use))
        try:
            for fut in as_completed(futures):
                result = Result(**fut.result())
                if on_result is not None:
                    on_result(result)
                yield result
        finally:  # the caller stopped early: what has not started never starts
            for fut in futures:
                fut.cancel()


@dataclass
class Tally:
    """What a batch of schedules did and found."""

    schedules: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    violations: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    schedules_by_code: dict[str, list[str]] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    elapsed: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, r: Result) -> None:
        self.schedules[r.venue] += 1
        self.failed[r.venue] += r.failed
        self.events.update(r.kinds)
        self.elapsed.append(r.elapsed)
        seen = set()
        for v in r.violations:
            self.violations[v["invariant"]] += 1
            key = f"{r.venue}:{v['invariant']}:{v['code']}"
            if key not in seen:  # schedules showing it, not violation lines
                seen.add(key)
                self.codes[key] += 1
                examples = self.schedules_by_code.setdefault(key, [])
                if len(examples) < 5:
                    examples.append(r.label())
        self.skipped.update(s.split(":")[0] for s in r.skipped)

    def lines(self) -> list[str]:
        wall = time.monotonic() - self.started
        out = [f"schedules run: {dict(self.schedules)} (failed: {dict(self.failed)}) in "
               f"{wall:.0f}s; per schedule {sum(self.elapsed) / max(len(self.elapsed), 1):.1f}s"
               f" wall each, {len(self.elapsed) / max(wall, 1e-9) * 3600:.0f} schedules/hour",
               "events injected: " + ", ".join(f"{k} {n}" for k, n in sorted(self.events.items()))]
        out.append("violations by invariant: " + (", ".join(
            f"{k} {n}" for k, n in sorted(self.violations.items())) or "none"))
        for key, n in sorted(self.codes.items()):
            examples = ", ".join(self.schedules_by_code[key])
            out.append(f"  {key}: in {n} schedule(s), e.g. {examples}")
        if self.skipped:
            out.append("skipped: " + ", ".join(f"{k} x{n}" for k, n in self.skipped.items()))
        return out


def print_progress(r: Result) -> None:
    mark = "FAIL" if r.failed else "ok  "
    codes = sorted({f"{v['invariant']}:{v['code']}" for v in r.violations})
    print(f"{mark} {r.label():<28} {r.elapsed:5.1f}s {' '.join(codes)}", file=sys.stderr,
          flush=True)
