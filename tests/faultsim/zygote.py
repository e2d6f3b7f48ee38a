"""A fork server for daemon starts, and the launcher interface the runner uses.

Importing the daemon with its SDKs (alpaca-py, ccxt, ccxt.pro, numpy, scipy) costs a few
seconds of CPU; a schedule restarts the daemon several times, and a benchmark runs
thousands of schedules. The zygote imports all of it once, then forks a child per daemon
start. Each child is still a real process: it has its own pid, takes real SIGKILL and
SIGTERM, and exits with its own status through the interpreter's normal exit (so a
non-daemon thread that holds the exit up holds it up here too, as it would for the
`quantshift` console script).

The zygote must not start a thread or an event loop before it forks (a forked child
inherits only the forking thread, and a loop's state would be shared), so it serves with
plain `select` on its stdin and a SIGCHLD wake-up pipe.

Protocol (JSON lines): the harness writes ``{"id", "argv", "env", "cwd", "stdout",
"stderr"}`` to the zygote's stdin; the zygote answers ``{"id", "pid"}`` on its stdout and,
later, ``{"exit": pid, "status": code}`` (negative: killed by that signal). When its stdin
closes it SIGKILLs the children it still has and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parents[2]

# What a daemon start imports, loaded once in the zygote.
PRELOAD = (
    "quantshift.cli", "quantshift.daemon", "quantshift.app", "quantshift.config",
    "quantshift.execution.venues.alpaca", "quantshift.execution.venues.ccxt",
    "quantshift.feeds.alpaca", "quantshift.feeds.ccxt", "quantshift.feeds.ccxt_stream",
    "quantshift.ops.http", "quantshift.ops.logging", "quantshift.shadow.promotion",
    "quantshift.shadow.books", "ccxt", "ccxt.pro", "ccxt.async_support",
    "alpaca.trading.client", "alpaca.trading.stream", "alpaca.data.live",
    "alpaca.data.historical", "uvloop", "scipy.stats",
)


class Proc(Protocol):
    """A started daemon: its pid, and its exit status once it has one."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float) -> int | None: ...


class Launcher(Protocol):
    def start(self, argv: list[str], env: Mapping[str, str], cwd: Path, stdout: Path,
              stderr: Path) -> Proc: ...

    def close(self) -> None: ...


# -- the server side ---------------------------------------------------------------------
def _serve() -> dict[str, Any]:
    """Answer spawn requests until stdin closes; return only in a forked child, with the
    request it is to run."""
    import gc
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    assert threading.active_count() == 1, "an import started a thread: forking is unsafe"
    # What is loaded now lives as long as any child: out of the collector's sight, so a
    # child's collections (and the full one at its exit) neither walk it nor write to its
    # pages. Without this a child's exit copies the whole preloaded heap page by page,
    # which with a dozen daemons on two cores made clean exits take seconds.
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    children: set[int] = set()
    buffer = b""
    _send({"ready": os.getpid()})
    while True:
        readable, _, _ = select.select([0, wake_r], [], [], 1.0)
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        _reap(children)
        if 0 not in readable:
            continue
        chunk = os.read(0, 1 << 16)
        if not chunk:  # the harness is gone: so are its daemons
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise SystemExit(0)
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                return request
            children.add(pid)
            _send({"id": request["id"], "pid": pid})


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send({"exit": pid, "status": os.waitstatus_to_exitcode(status)})


def _send(message: dict[str, Any]) -> None:
    os.write(1, json.dumps(message).encode() + b"\n")


def _child(request: dict[str, Any]) -> int:
    """In the forked child: become the daemon process the request describes."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = ["quantshift", *request["argv"]]
    from quantshift.cli import main

    return main(request["argv"])


def main() -> None:
    request = _serve()
    # Out of the server's frames: the child exits the way the console script does.
    sys.exit(_child(request))


# -- the harness side --------------------------------------------------------------------
class _ZygoteProc:
    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid

    def poll(self) -> int | None:
        return self.zygote.status(self.pid)

    def wait(self, timeout: float) -> int | None:
        return self.zygote.wait(self.pid, timeout)


class Zygote:
    """The harness's handle on one zygote process (started on first use)."""

    def __init__(self, python: str = sys.executable) -> None:
        self._proc = subprocess.Popen(
            [python, "-m", "tests.faultsim.zygote"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        self._cond = threading.Condition()
        self._pids: dict[int, int] = {}
        self._exits: dict[int, int] = {}
        self._next = 0
        self._ready = False
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready or self._proc.poll() is not None,
                                       60):
                raise RuntimeError("the zygote did not start within 60s")
        if not self._ready:
            raise RuntimeError(f"the zygote exited with {self._proc.returncode}")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            message = json.loads(line)
            with self._cond:
                if "ready" in message:
                    self._ready = True
                elif "exit" in message:
                    self._exits[message["exit"]] = message["status"]
                else:
                    # The kernel hands out pids again (pid_max is often 32768, and a long
                    # run forks tens of thousands of daemons and threads): an exit kept for
                    # an earlier child with this pid is not this child's.
                    self._exits.pop(message["pid"], None)
                    self._pids[message["id"]] = message["pid"]
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def start(self, argv: list[str], env: Mapping[str, str], cwd: Path, stdout: Path,
              stderr: Path) -> Proc:
        assert self._proc.stdin is not None
        with self._cond:
            self._next += 1
            ident = self._next
        request = {"id": ident, "argv": argv, "env": dict(env), "cwd": str(cwd),
                   "stdout": str(stdout), "stderr": str(stderr)}
        self._proc.stdin.write(json.dumps(request).encode() + b"\n")
        self._proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: ident in self._pids, 30):
                raise RuntimeError("the zygote did not fork within 30s")
            return _ZygoteProc(self, self._pids.pop(ident))

    def status(self, pid: int) -> int | None:
        with self._cond:
            return self._exits.get(pid)

    def wait(self, pid: int, timeout: float) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits, timeout)
            return self._exits.get(pid)

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)


class _PopenProc:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        self.pid = proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while (code := self._proc.poll()) is None and time.monotonic() < deadline:
            time.sleep(0.005)
        return code


class BinaryLauncher:
    """The `quantshift` console script itself, as systemd starts it (no zygote)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def start(self, argv: list[str], env: Mapping[str, str], cwd: Path, stdout: Path,
              stderr: Path) -> Proc:
        with stdout.open("wb") as out, stderr.open("wb") as err:
            return _PopenProc(subprocess.Popen([self.binary, *argv], env=dict(env), cwd=cwd,
                                               stdout=out, stderr=err,
                                               stdin=subprocess.DEVNULL))

    def close(self) -> None:
        return None


if __name__ == "__main__":
    main()
