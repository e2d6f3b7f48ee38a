"""Run one schedule: the emulator, the daemon as a process (restarted as systemd would),
every event in order, the common ending, and the evidence the invariants read.

The ending is the same for every schedule: clear every fault (and free the disk), make
sure the daemon runs, resume it if the schedule says so, let it settle and reconcile,
SIGTERM it, then take the venue's order log and the daemon's journal.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.faultsim import api
from tests.faultsim.patterns import COMPILED, line_time
from tests.faultsim.schedule import Action, Event, Schedule, Trigger
from tests.faultsim.venue import Loop, Venue
from tests.faultsim.world import RECONCILE_INTERVAL, SHUTDOWN_TIMEOUT, World, outside_address
from tests.faultsim.zygote import Launcher, Proc

READY_TIMEOUT = 15.0
TERM_GRACE = SHUTDOWN_TIMEOUT + 1.0  # the documented bound, measured from outside
TERM_MEASURE = 8.0  # how much longer a late exit is waited for (and timed) before SIGKILL
MAX_UNEXPECTED_EXITS = 4
RESTART_DELAY = 0.1  # systemd's RestartSec default
SETTLE = 3.0  # at most this long for the last faults armed to be used up
POLL = 0.005


@dataclass
class Run:
    n: int
    kind: str  # main | endpoint
    pid: int
    started: float
    log_offset: int
    stdout: str
    stderr: str
    note: str = ""
    expect_refusal: bool = False
    ready: float | None = None
    signal: str | None = None
    signalled: float | None = None
    exited: float | None = None
    code: int | None = None
    log_end: int | None = None


@dataclass
class Evidence:
    venue: str
    seed: int | None
    schedule: dict[str, Any]
    workdir: str
    runs: list[Run] = field(default_factory=list)
    commands: list[api.Command] = field(default_factory=list)
    hostile: list[dict[str, Any]] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[float, str, str]] = field(default_factory=list)  # the venue's
    disk: list[list[float | None]] = field(default_factory=list)
    corruptions: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    venue_state: dict[str, Any] = field(default_factory=dict)
    state_dir: str = ""
    kept: list[str] = field(default_factory=list)
    endpoint: str | None = None
    error: str | None = None  # the harness itself failed (not the daemon)
    elapsed: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["commands"] = [c.as_dict() for c in self.commands]
        return out


class ScheduleRunner:
    def __init__(self, schedule: Schedule, workdir: Path, launcher: Launcher, loop: Loop,
                 address: str | None = None) -> None:
        self.schedule = schedule
        self.world = World(workdir, schedule.venue)
        self.launcher = launcher
        self.loop = loop
        self.address = address if address is not None or not schedule.uses_endpoint \
            else outside_address()
        self.ev = Evidence(schedule.venue, schedule.seed, schedule.as_dict(), str(workdir))
        self.rng = random.Random(f"{schedule.seed}:{schedule.name}:harness")
        self.procs: dict[int, Proc] = {}  # by run number (a pid comes again)
        self.current: Run | None = None
        self.venue: Venue | None = None
        self._log_cache = ""
        self._log_bytes = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._unexpected = 0
        self._corrupted: Path | None = None
        (workdir / "schedule.json").write_text(schedule.to_json())

    # -- the whole schedule -----------------------------------------------------------------
    def run(self) -> Evidence:
        started = time.monotonic()
        host = "0.0.0.0" if self.address else "127.0.0.1"
        if self.schedule.uses_endpoint and not self.address:
            self.ev.skipped.append("endpoint event: this machine has no non-loopback address")
        if self.schedule.uses_disk:
            why = self.world.mount_tmpfs()
            if why:
                self.ev.skipped.append(f"disk full: {why}")
        try:
            self.venue = Venue(self.schedule.venue, self.loop, self.schedule.seed or 1, host)
            # The schedule starts once the daemon is ready (later events may meet restarts).
            if not self._ensure_running():
                self.ev.skipped.append("start: the daemon did not become ready")
            for i, event in enumerate(self.schedule.events):
                self._event(i, event)
            self._ending()
        except Exception as exc:  # the harness's own failure: reported, never a pass
            self.ev.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._cleanup()
        self.ev.elapsed = time.monotonic() - started
        return self.ev

    def _cleanup(self) -> None:
        for run in self.ev.runs:
            if run.code is None:
                self._signal(run, "KILL")
                self._exited(run, self.procs[run.n].wait(10))
        if self.venue is not None:
            if not self.ev.venue_state:
                self.ev.venue_state = self.venue.state()
            self.ev.faults = [f.as_dict() for f in self.venue.faults]
            self.ev.requests = list(self.venue.requests)
            self.venue.stop()
        self.ev.state_dir = str(self.world.unmount())
        self.ev.kept = [str(p) for p in sorted(self.world.keep.iterdir())]

    # -- events -----------------------------------------------------------------------------
    def _event(self, i: int, event: Event) -> None:
        outcome = self._wait(event.trigger, event.action)
        record: dict[str, Any] = {"i": i, "trigger": outcome, "at": time.time()}
        if outcome != "request":  # a fault on a venue trigger is armed by the trigger
            note = self._act(event.action)
            if note:
                record["note"] = note
        self.ev.events.append(record)

    def _wait(self, trig: Trigger, action: Action) -> str:
        assert self.venue is not None
        if trig.kind == "time":
            run = self.current
            base = time.time()
            if run is not None and run.code is None and self._wait_ready(run):
                base = max(base, run.ready or base)
            self._sleep_until(base + trig.delay)
            return "time"
        if trig.kind == "venue" and action.kind == "fault":
            a = action.args
            hit = self.venue.arm_on_request(trig.request, a["name"], a["scope"], a["count"],
                                            a.get("params", {}))
            deadline = time.monotonic() + trig.timeout
            while not hit.wait(0.05) and time.monotonic() < deadline:
                self._supervise()
            if hit.is_set():
                return "request"
            self.venue.unwatch()
            return "timeout"
        bars0, fills0 = self.venue.counts()
        log0 = len(self._log())
        rx = COMPILED[trig.pattern] if trig.kind == "log" else None
        deadline = time.monotonic() + trig.timeout
        while time.monotonic() < deadline:
            if rx is not None and rx.search(self._log(), log0):
                return "log"
            if trig.kind == "count":
                bars, fills = self.venue.counts()
                if (bars - bars0 if trig.what == "bars" else fills - fills0) >= trig.n:
                    return "count"
            self._supervise()
            time.sleep(POLL)
        return "timeout"

    def _act(self, action: Action) -> str:
        assert self.venue is not None
        a, kind = action.args, action.kind
        if kind == "fault":
            why = self.venue.arm(a["name"], a["scope"], a["count"], a.get("params", {}))
            return f"refused by the emulator: {why}" if why else ""
        if kind == "clear":
            self.venue.clear()
        elif kind == "command":
            if not self._ensure_running():
                return "daemon not running"
            assert self.current is not None
            self.ev.commands.append(api.command(self.world.http_port,
                                                self.world.secrets.api_token, a["command"],
                                                self.current.n))
        elif kind == "kill":
            run = self.current
            if run is not None and run.code is None:
                if a["signal"] == "TERM":  # its signal handlers are set once it is up
                    self._wait_ready(run)
                self._stop(run, a["signal"])
            if a.get("restart", True):
                self._launch()
        elif kind == "start":
            if self.current is None or self.current.code is not None:
                self._launch()
        elif kind == "disk":
            return self._disk(a["op"])
        elif kind == "corrupt":
            return self._corrupt(a["how"])
        elif kind == "hostile":
            if not self._ensure_running():
                return "daemon not running"
            self.ev.hostile.append(api.hostile(self.world.http_port,
                                               self.world.secrets.api_token, a["variant"],
                                               self.rng))
        elif kind == "endpoint":
            return self._endpoint(a["variant"])
        return ""

    def _disk(self, op: str) -> str:
        if not self.world.tmpfs:
            return "skipped: no tmpfs"
        if op == "fill":
            self.world.fill_disk()
            self.ev.disk.append([time.time(), None])
        else:
            self.world.free_disk()
            if self.ev.disk and self.ev.disk[-1][1] is None:
                self.ev.disk[-1][1] = time.time()
        return ""

    def _corrupt(self, how: str) -> str:
        if self.current is not None and self.current.code is None:
            self._wait_ready(self.current)
            self._stop(self.current, "TERM")
        keep = self.world.corrupt(how, self.rng, len(self.ev.corruptions))
        self.ev.corruptions.append({"how": how, "at": time.time(), "kept": str(keep)})
        self._corrupted = keep
        run = self._launch(note=f"corrupt:{how}", expect_refusal=True)
        if self._wait_ready(run):
            self._corrupted = None
            return "the daemon started on the damaged ledger"
        if run.code is None:
            self._stop(run, "KILL")
        self.world.restore(keep)
        self._corrupted = None
        self._launch()
        return f"refused with exit {run.code}; the kept ledger put back"

    def _endpoint(self, variant: str) -> str:
        if not self.address:
            return "skipped: no non-loopback address"
        assert self.venue is not None
        if self.current is not None and self.current.code is None:
            self._wait_ready(self.current)
            self._stop(self.current, "TERM")
        extra = {"QUANTSHIFT_ENDPOINT_IS_PAPER": self.address} if variant == "paper_override" \
            else {}
        self.ev.endpoint = f"{self.address}:{self.venue.port}"
        run = self._launch(kind="endpoint", exports=self.venue.exports(self.address),
                           extra=extra, note=f"endpoint:{variant}",
                           expect_refusal=variant == "bare")
        if self._wait_ready(run, 10.0):
            time.sleep(1.5)  # long enough for its first signals to reach the venue
            self._stop(run, "TERM")
        elif run.code is None:
            self._stop(run, "KILL")
        self._launch()
        return f"exit {run.code}"

    # -- the ending -------------------------------------------------------------------------
    def _ending(self) -> None:
        assert self.venue is not None
        deadline = time.monotonic() + SETTLE  # let the faults still armed play out
        while self.venue.pending() and time.monotonic() < deadline:
            self._supervise()
            time.sleep(0.05)
        self.venue.clear()
        if self.world.tmpfs:
            self._disk("free")
        self._unexpected = 0  # the venue is healthy again: restarts get a fresh budget
        for _ in range(3):  # again if the daemon dies on the way
            if not self._ensure_running():
                self.ev.skipped.append("ending: the daemon could not be started")
                return
            run = self.current
            assert run is not None
            st = api.status(self.world.http_port) or {}
            halted = (st.get("trading") or {}).get("state") == "halted" or st.get("demoted")
            if self.schedule.final_resume and halted:
                self.ev.commands.append(api.command(self.world.http_port,
                                                    self.world.secrets.api_token, "resume",
                                                    run.n))
            self._settle()
            code = self.procs[run.n].poll()
            if code is None:
                self._stop(run, "TERM")
                break
            self._exited(run, code)
            self._unexpected += 1
        self.ev.venue_state = self.venue.state()

    def _settle(self) -> None:
        """No order in flight, then one reconciliation with the venue."""
        assert self.venue is not None
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            orders = (api.status(self.world.http_port) or {}).get("orders") or {}
            if not orders.get("open") and not orders.get("in_flight"):
                break
            time.sleep(0.1)
        # A reconciliation ends by reading the venue's positions: wait for that request.
        quiet = time.time()
        deadline = time.monotonic() + RECONCILE_INTERVAL + 1.5
        while time.monotonic() < deadline and not self.venue.asked("positions", quiet):
            time.sleep(0.02)
        time.sleep(0.2)  # its answer compared and journaled

    # -- the daemon as a process ------------------------------------------------------------
    def _launch(self, *, kind: str = "main", exports: dict[str, str] | None = None,
                extra: dict[str, str] | None = None, note: str = "",
                expect_refusal: bool = False) -> Run:
        assert self.venue is not None
        n = len(self.ev.runs)
        env = self.world.env(exports or self.venue.exports(), extra)
        out, err = self.world.runs / f"daemon-{n}.out", self.world.runs / f"daemon-{n}.err"
        offset = len(self._log())
        started = time.time()
        proc = self.launcher.start(["run", "--bot", "equity"], env, self.world.root, out, err)
        self.procs[n] = proc
        run = Run(n, kind, proc.pid, started, offset, str(out), str(err), note, expect_refusal)
        self.ev.runs.append(run)
        self.current = run
        return run

    def _wait_ready(self, run: Run, timeout: float = READY_TIMEOUT) -> bool:
        if run.ready is not None:
            return True
        rx = COMPILED["ready"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = rx.search(self._log(), run.log_offset)
            if m:
                run.ready = line_time(self._log(), m.start()) or time.time()
                return True
            code = self.procs[run.n].poll()
            if code is not None:
                self._exited(run, code)
                return False
            time.sleep(POLL)
        return False

    def _ensure_running(self) -> bool:
        """The daemon up and ready: restarted (as systemd would) after an exit of its own."""
        for _ in range(3):
            run = self.current
            if run is not None and run.code is None:
                if self._wait_ready(run):
                    return True
                if run.code is None:  # alive but never ready: stuck at start-up
                    self._stop(run, "KILL")
            if self._unexpected > MAX_UNEXPECTED_EXITS:
                return False
            self._launch()
        return False

    def _supervise(self) -> None:
        """An exit the harness did not cause: note it and restart, as systemd would."""
        run = self.current
        if run is None or run.code is not None or run.kind != "main" \
                or self._corrupted is not None:
            return
        code = self.procs[run.n].poll()
        if code is None:
            return
        self._exited(run, code)
        self._unexpected += 1
        if self._unexpected <= MAX_UNEXPECTED_EXITS:
            time.sleep(RESTART_DELAY)
            self._launch()

    def _signal(self, run: Run, sig: str) -> None:
        run.signal, run.signalled = sig, time.time()
        with contextlib.suppress(ProcessLookupError):
            os.kill(run.pid, signal.SIGKILL if sig == "KILL" else signal.SIGTERM)

    def _stop(self, run: Run, sig: str) -> None:
        proc = self.procs[run.n]
        code = proc.poll()
        if code is None:
            self._signal(run, sig)
            code = proc.wait(10.0 if sig == "KILL" else TERM_GRACE + TERM_MEASURE)
        if code is None:  # a SIGTERM not honoured within reason
            run.note = (run.note + "; SIGKILLed after SIGTERM").lstrip("; ")
            os.kill(run.pid, signal.SIGKILL)
            code = proc.wait(10.0)
        self._exited(run, code)

    def _exited(self, run: Run, code: int | None) -> None:
        if run.code is not None:
            return
        run.code, run.exited = code, time.time()
        run.log_end = len(self._log())

    def _log(self) -> str:
        """The daemon's log file so far (every run appends to it)."""
        path = self.world.log_file
        if path.exists() and path.stat().st_size > self._log_bytes:
            with path.open("rb") as fh:
                fh.seek(self._log_bytes)
                chunk = fh.read()
            self._log_bytes += len(chunk)
            self._log_cache += self._decoder.decode(chunk)
        return self._log_cache

    def _sleep_until(self, when: float) -> None:
        while (left := when - time.time()) > 0:
            self._supervise()
            time.sleep(min(left, 0.05))

