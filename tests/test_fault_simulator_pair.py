"""The two-instance fault simulator (tests/faultsim/pair.py): its schedules replay event for
event, its invariants catch each kind of violation in evidence made for it, and seeded
schedules against two real daemons on one Redis run clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faultsim.pair import PairEvidence, from_json, generate, run_seed, to_json, violations
from tests.redis_server import BINARY

pytestmark = pytest.mark.process


def test_a_seed_draws_the_same_schedule_and_its_json_replays_it() -> None:
    events = generate(7, 8)
    assert events == generate(7, 8) and events != generate(8, 8)
    assert from_json(to_json(7, events)) == (7, events)
    assert len({e.kind for e in generate(1, 200)}) >= 9  # every kind gets drawn


def good() -> PairEvidence:
    ev = PairEvidence(1, [])
    ev.venue = {"orders": [{"client_order_id": "x", "created_at": 10.0},
                           {"client_order_id": "y", "created_at": 20.0}],
                "positions": {"AAA": {"qty": 2.0}}}
    ev.fences = {"a": [("x", 1, "a", 10 * 10**9)], "b": [("y", 2, "b", 20 * 10**9)]}
    ev.final_positions = {"AAA": 2.0}
    ev.exit_codes = {"a": 0, "b": 0}
    return ev


@pytest.mark.parametrize(("spoil", "words"), [
    (lambda ev: ev.venue["orders"].append({"client_order_id": "x", "created_at": 11.0}),
     "twice"),
    (lambda ev: ev.venue["orders"].append({"client_order_id": "z", "created_at": 12.0}),
     "under no lease epoch"),
    (lambda ev: ev.fences["b"].append(("w", 1, "b", 11 * 10**9)), "two instances"),
    (lambda ev: (ev.fences["a"].append(("v", 1, "a", 25 * 10**9)),
                 ev.venue["orders"].append({"client_order_id": "v", "created_at": 25.0})),
     "after one under epoch 2"),
    (lambda ev: ev.halts.append((5.0, 30.0, True)), "during a halt"),
    (lambda ev: ev.final_positions.update(AAA=1.0), "not the venue's"),
    (lambda ev: ev.exit_codes.update(b=1), "exit status"),
])
def test_each_invariant_fails_on_evidence_that_breaks_it(spoil, words: str) -> None:
    assert violations(good()) == []
    ev = good()
    spoil(ev)
    bad = violations(ev)
    assert bad and words in bad[0], bad


def test_a_clearance_whose_order_never_went_out_is_no_order_of_its_epoch() -> None:
    ev = good()
    ev.fences["a"].append(("refused-after-clearance", 1, "a", 25 * 10**9))
    assert violations(ev) == []


def test_a_halt_issued_while_redis_was_away_is_not_held_against_the_other() -> None:
    ev = good()
    ev.halts.append((5.0, 30.0, False))
    assert violations(ev) == []


@pytest.mark.skipif(BINARY is None, reason="redis-server is not installed (scripts/test "
                    "installs it with apt-get when run as root)")
@pytest.mark.parametrize("seed", [11])
def test_seeded_schedules_run_clean(tmp_path: Path, seed: int) -> None:
    ev, bad = run_seed(seed, tmp_path, n=6)
    assert bad == [], f"seed {seed}: {bad}; replay: python -m tests.faultsim.pair --seed {seed}"
    ran = [d for d in ev.done if d["kind"] != "start"]  # a start systemd would repeat: not one
    assert len(ran) == 6 and ev.venue.get("orders"), "the schedule did not run"
