"""The fault simulator's fork server keeps each child's exit apart from its pid's reuse."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

from tests.faultsim.zygote import Zygote


def zygote_reading(lines: bytes) -> Zygote:
    """A Zygote handle that has read ``lines`` from its server (no process started)."""
    z = Zygote.__new__(Zygote)
    z._cond = threading.Condition()
    z._pids, z._exits, z._next, z._ready = {}, {}, 0, False
    z._proc = SimpleNamespace(stdout=io.BytesIO(lines))  # type: ignore[assignment]
    z._read()
    return z


def test_a_child_given_an_earlier_childs_pid_is_not_taken_for_exited() -> None:
    # A long run forks more daemons (and their threads take pids too) than pid_max: the
    # kernel gives a new child the pid of one that exited long ago. Taking the old exit for
    # the new child's made the harness start a second daemon beside a live one.
    z = zygote_reading(b'{"ready": 9}\n{"id": 1, "pid": 500}\n{"exit": 500, "status": -9}\n'
                       b'{"id": 2, "pid": 500}\n')
    assert z._ready
    assert z.status(500) is None
    assert z.wait(500, 0.01) is None


def test_the_exit_of_the_child_with_that_pid_now_is_kept() -> None:
    z = zygote_reading(b'{"id": 1, "pid": 500}\n{"exit": 500, "status": -9}\n'
                       b'{"id": 2, "pid": 500}\n{"exit": 500, "status": 0}\n')
    assert z.status(500) == 0
