"""The seeded fault simulator (tests/faultsim) in CI: every named regression schedule, and a
bounded batch of random schedules for both venues, against the real daemon as a process.

Each test fails when any invariant is violated; its message names the invariants, the
evidence, the seed and the schedule, and how to replay it.

The random batch's base seed is fixed (the same schedules on every run, so CI's verdict is
the code's, never the day's; bench/bench_faults.py explores far more seeds), or taken from
``FAULTSIM_SEED``; ``FAULTSIM_SCHEDULES`` sets how many per venue
(default 8). The module prints both. Two of the random schedules start the `quantshift`
console script itself instead of a child of the zygote.

All schedules run at once, on worker processes, when the first test here asks for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import quantshift_bin
from tests.faultsim import seeds
from tests.faultsim.pool import Result, Tally, run_many
from tests.faultsim.schedule import VENUES, Schedule

pytestmark = pytest.mark.process

CI_SEED = 2_512_000
PER_VENUE = int(os.environ.get("FAULTSIM_SCHEDULES", "8"))
WORKERS = int(os.environ.get("FAULTSIM_WORKERS", str(max(4, 4 * (os.cpu_count() or 1)))))


def base_seed() -> int:
    return int(os.environ.get("FAULTSIM_SEED", str(CI_SEED)))


BASE = base_seed()
RANDOM = [Schedule.generate(v, BASE + i) for v in VENUES for i in range(PER_VENUE)]
BINARY = [Schedule.generate(v, BASE + PER_VENUE) for v in VENUES]  # the console script
# Random seeds that bench/bench_faults.py once found failing, kept as they were drawn.
FOUND = {
    # a full disk during a periodic reconciliation: its closing commit crashed the component
    ("alpaca", 24): "5:crashed 5:traceback",
    # a halt, then a reduce: the exits reduce-only allows are no order after a halt
    ("alpaca", 84): "1:order_after_halt (the invariant, not the daemon)",
    # a SIGTERM during a candle poll: a cancelled gather's exception never retrieved
    ("exchange", 193): "5:traceback",
}
FOUND_SCHEDULES = [Schedule.generate(v, seed) for v, seed in FOUND]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Result]]:
    root = Path(tmp_path_factory.mktemp("faultsim"))
    named = [reg.schedule() for reg in seeds.NAMED.values()]
    every = [*named, *RANDOM, *BINARY, *FOUND_SCHEDULES]
    print(f"\nfault simulator: base seed {BASE} (FAULTSIM_SEED={BASE} to repeat), "
          f"{PER_VENUE} random schedules per venue, {len(named)} named, {WORKERS} workers, "
          f"files under {root}")
    out: dict[str, Result] = {}
    tally = Tally()
    for r in run_many(every, root, WORKERS, binary=quantshift_bin(), binary_for=BINARY):
        key = r.name or f"{r.venue}-{r.seed}-{r.launcher}"
        out[key] = r
        tally.add(r)
    print("\n".join(tally.lines()))
    yield out


def _explain(failed: list[Result]) -> str:
    return f"base seed {BASE}\n" + "\n\n".join(r.report() for r in failed)


@pytest.mark.parametrize("name", sorted(seeds.NAMED))
def test_named_regression_schedule_runs_clean(results: dict[str, Result], name: str) -> None:
    r = results[name]
    assert not r.failed, f"{seeds.NAMED[name].finding}: {seeds.NAMED[name].why}\n" \
                         + _explain([r])


@pytest.mark.parametrize(("venue", "seed"), sorted(FOUND))
def test_a_seed_the_benchmark_found_runs_clean(results: dict[str, Result], venue: str,
                                              seed: int) -> None:
    r = results[f"{venue}-{seed}-zygote"]
    assert not r.failed, f"once failed with {FOUND[venue, seed]}\n" + _explain([r])


@pytest.mark.parametrize("venue", VENUES)
def test_random_schedules_run_clean(results: dict[str, Result], venue: str) -> None:
    mine = [results[f"{s.venue}-{s.seed}-zygote"] for s in RANDOM if s.venue == venue]
    assert len(mine) == PER_VENUE
    failed = [r for r in mine if r.failed]
    assert not failed, _explain(failed)


@pytest.mark.parametrize("venue", VENUES)
def test_random_schedule_with_the_console_script_runs_clean(results: dict[str, Result],
                                                            venue: str) -> None:
    s = next(s for s in BINARY if s.venue == venue)
    r = results[f"{venue}-{s.seed}-binary"]
    assert r.launcher == "binary"
    assert not r.failed, _explain([r])


def test_a_schedule_replays_from_its_json() -> None:
    """What a failure prints is enough to run it again: the same events, in order."""
    for venue in VENUES:
        for seed in (BASE, BASE + 1, 7):
            s = Schedule.generate(venue, seed)
            again = Schedule.from_json(s.to_json())
            assert again.as_dict() == s.as_dict() == Schedule.generate(venue, seed).as_dict()
