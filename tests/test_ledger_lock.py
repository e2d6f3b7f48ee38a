"""One writer per ledger: a second journal or daemon on it is refused; readers never lock;
the lock dies with its holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quantshift.state.journal import Journal
from quantshift.state.ledger import LedgerInUse
from tests.conftest import FAST, DaemonProcess, clean_env, quantshift_bin, read_db


def test_a_second_journal_on_a_ledger_is_refused_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "equity-paper.sqlite"
    first = Journal(path, bot="equity", executor="paper")
    try:
        with pytest.raises(LedgerInUse) as info:
            Journal(path, bot="equity", executor="paper")
        assert str(info.value) == (f"{path} is in use by another QuantShift process (pid "
                                   f"{os.getpid()}): one daemon per ledger")
        first.veto(1, "s", "X", 1, "the holder still writes")
        first.flush()
    finally:
        first.close()
    second = Journal(path, bot="equity", executor="paper")  # released on close
    try:
        assert second.count("vetoes") == 1
    finally:
        second.close()


HOLD = """
import sys, time
from pathlib import Path
from quantshift.state.journal import Journal
j = Journal(Path(sys.argv[1]), bot="equity", executor="paper")
print("holding", flush=True)
time.sleep(60)
"""


def test_a_sigkilled_holder_leaves_no_lock_behind(tmp_path: Path) -> None:
    path = tmp_path / "equity-paper.sqlite"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        with pytest.raises(LedgerInUse, match=f"pid {holder.pid}"):
            Journal(path, bot="equity", executor="paper")
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
        holder.wait(10)
    assert Path(f"{path}.lock").exists()  # the file stays; its lock went with the process
    Journal(path, bot="equity", executor="paper").close()


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([quantshift_bin(), *args], env=clean_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.process
def test_two_daemons_on_one_state_dir(tmp_path: Path) -> None:
    ledger = tmp_path / "var" / "equity-paper.sqlite"
    first = DaemonProcess(tmp_path, clean_env(tmp_path, **FAST)).start()
    second = third = None
    try:
        first.wait_for(r"\| fill (buy|sell) ", count=2)
        second = DaemonProcess(tmp_path, clean_env(tmp_path, **FAST)).start()
        code = second.proc.wait(30)  # type: ignore[union-attr]
        _, err = second.communicate()
        assert code == 78
        lines = [line for line in err.splitlines() if line.startswith("quantshift:")]
        assert lines == [f"quantshift: invalid setting QUANTSHIFT_STATE_DIR: {ledger} is in use "
                         f"by another QuantShift process (pid {first.proc.pid}): one daemon "  # type: ignore[union-attr]
                         "per ledger"]
        assert "Traceback" not in err
        assert first.proc.poll() is None  # type: ignore[union-attr]

        # Readers do not lock: they work while the daemon runs.
        status = run_cli(tmp_path, "status", "--json")
        assert status.returncode == 3, status.stderr  # from the state file (no HTTP here)
        assert '"source":"state file"' in status.stdout
        safe = run_cli(tmp_path, "safe-to-restart")
        assert "cannot tell" not in safe.stdout and "from the state file" in safe.stdout
        history = run_cli(tmp_path, "history")
        assert history.returncode == 0, history.stderr
        compare = run_cli(tmp_path, "compare")
        assert "no strategy with more than one version" in compare.stdout + compare.stderr

        fills = first.log().count("| fill ")
        first.wait_for(r"\| fill (buy|sell) ", count=fills + 1)  # still trading
        first.kill()  # SIGKILL: the lock goes with the process
        third = DaemonProcess(tmp_path, clean_env(tmp_path, **FAST)).start()
        text = third.wait_for(r"\| ready$")
        assert "in use" not in text
        assert third.stop()[0] == 0
        assert read_db(ledger, "SELECT count(*) FROM fills")[0][0] >= 2
    finally:
        for d in (first, second, third):
            if d is not None:
                d.kill()
