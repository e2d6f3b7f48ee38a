"""The fault simulator's two-instance schedules: two daemons of one bot on one account (real
processes), a real redis-server that each reaches through a TCP proxy the schedule can cut,
and the exchange emulator with its faults. A schedule, drawn from ``random.Random(seed)``,
is a row of events: SIGKILL or SIGTERM an instance (restarted as systemd would), freeze
one (SIGSTOP, then SIGCONT), cut one off from Redis (no FIN), kill Redis (it comes back
with its append-only file) or lose its data, hand the lease over, halt (resumed later) on
either instance, and the venue's faults. The invariants are read from the venue's own
order log and the instances' ledgers:

* no client order id reaches the venue twice;
* every order at the venue went out under a lease epoch (journaled as a fencing row), and
  no two instances sent under one epoch;
* no order reaches the venue while a halt the account has is in force;
* at the end the primary's book equals the venue's positions, and both stop with 0.

``python -m tests.faultsim.pair --seed N`` runs one (``--json FILE`` replays a schedule);
its JSON replays event for event.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from quantshift.emulators.orders import OPEN_STATES
from tests.redis_server import RedisServer
from tests.tcp_proxy import TcpProxy
from tests.test_account_process import Bot
from tests.test_broker_process import Emulator
from tests.test_failover_process import fences, lease_env

TTL = 2.0
KINDS = ("kill", "term", "freeze", "partition", "redis_kill", "redis_wipe", "handover", "halt",
         "venue_fault", "wait")
VENUE_FAULTS = ("rate_limit", "server_error", "slow", "lost_ack", "duplicate_id",
                "partial_fill")
FENCE_SLACK_NS = 50_000_000
HALT_SLACK = 1.0  # s for a halt issued on one instance to reach the other through Redis
START_TRIES = 5
RESTART_SEC = 1.0  # the shipped unit's is 5 s; a shorter one keeps schedules short


@dataclass(frozen=True)
class PairEvent:
    kind: str
    who: str = ""  # "a" or "b"
    delay: float = 1.0  # s before it, after the previous event is done
    hold: float = 0.0  # s a freeze, a cut, a Redis outage or a halt lasts
    fault: str = ""
    count: int = 1


def generate(seed: int, n: int = 6) -> list[PairEvent]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(KINDS)
        out.append(PairEvent(kind, rng.choice("ab"), round(rng.uniform(0.2, 2.5), 2),
                             round(rng.uniform(0.5, 2 * TTL + 1.5), 2),
                             rng.choice(VENUE_FAULTS) if kind == "venue_fault" else "",
                             rng.randint(1, 3)))
    return out


def to_json(seed: int | None, events: list[PairEvent]) -> str:
    return json.dumps({"seed": seed, "events": [asdict(e) for e in events]}, indent=1)


def from_json(text: str) -> tuple[int | None, list[PairEvent]]:
    doc = json.loads(text)
    return doc.get("seed"), [PairEvent(**e) for e in doc["events"]]


@dataclass
class PairEvidence:
    seed: int | None
    events: list[dict[str, Any]]
    done: list[dict[str, Any]] = field(default_factory=list)
    halts: list[tuple[float, float, bool]] = field(default_factory=list)  # (from, to, shared)
    venue: dict[str, Any] = field(default_factory=dict)
    fences: dict[str, list[tuple[str, int, str, int]]] = field(default_factory=dict)
    final_primary: str | None = None
    final_positions: dict[str, float] = field(default_factory=dict)
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    crashed: list[str] = field(default_factory=list)
    error: str | None = None


class PairRun:
    def __init__(self, seed: int | None, events: list[PairEvent], root: Path) -> None:
        self.events = events
        self.root = root
        self.ev = PairEvidence(seed, [asdict(e) for e in events])
        root.mkdir(parents=True, exist_ok=True)
        (root / "schedule.json").write_text(to_json(seed, events))
        self.redis = RedisServer(root / "redis")
        self.proxies: dict[str, TcpProxy] = {}
        self.bots: dict[str, Bot] = {}
        self.emu: Emulator | None = None
        self.halted_at: tuple[float, bool] | None = None

    # -- the world ------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        assert self.emu is not None
        return lease_env(self.emu, "exchange", TTL, "long_only",
                         QUANTSHIFT_RECONCILE_INTERVAL="3", QUANTSHIFT_BROKER_TIMEOUT="3",
                         QUANTSHIFT_RISK_MAX_TRADES_PER_DAY="0")

    def _status(self, who: str) -> dict[str, Any] | None:
        try:
            code, st = self.bots[who].call("GET", "/status")
        except OSError:
            return None
        return st if code == 200 and isinstance(st, dict) else None

    def _role(self, who: str) -> str | None:
        st = self._status(who)
        return str(st.get("role")) if st else None

    def _alive(self, who: str) -> bool:
        proc = self.bots[who].proc.proc
        return proc is not None and proc.poll() is None

    def _restart(self, who: str) -> None:
        """Start it again as systemd would: a start that exits (the venue unreachable at
        start-up: 69) is tried again after RestartSec; 78 (a setting) is not."""
        bot = self.bots[who]
        for _ in range(START_TRIES):
            bot.proc = type(bot.proc)(bot.root, bot.env)
            try:
                bot.start()
                return
            except AssertionError:
                proc = bot.proc.proc
                if proc is None or proc.poll() is None or proc.returncode == 78:
                    raise
                self.ev.done.append({"kind": "start", "who": who, "at": time.time(),
                                     "took": 0.0, "note": f"exit {proc.returncode}"})
            time.sleep(RESTART_SEC)
        raise RuntimeError(f"{who} did not start in {START_TRIES} tries")

    def _wait(self, cond: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return True
            time.sleep(0.02)
        return False

    # -- the run --------------------------------------------------------------------------
    def run(self) -> PairEvidence:
        try:
            self.redis.start()
            self.emu = Emulator("exchange", self.root)
            env = self._env()
            for who in "ab":
                self.proxies[who] = TcpProxy(self.redis.port)
                self.bots[who] = Bot(self.root / who, self.proxies[who].url(), who, **env)
            self._restart("a")
            self._wait(lambda: self._role("a") == "primary", 15)
            self._restart("b")
            for event in self.events:
                time.sleep(event.delay)
                self._do(event)
            self._ending()
        except Exception as exc:  # the harness's own failure: reported, never a pass
            self.ev.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._cleanup()
        return self.ev

    def _do(self, e: PairEvent) -> None:
        bot, started = self.bots[e.who], time.time()
        note = ""
        if e.kind in ("kill", "term"):
            if self._alive(e.who):
                bot.proc.signal(signal.SIGKILL if e.kind == "kill" else signal.SIGTERM)
                code = bot.proc.proc.wait(15)  # type: ignore[union-attr]
                note = f"exit {code}"
                if e.kind == "term" and code != 0:
                    self.ev.crashed.append(f"{e.who}: SIGTERM exit {code}")
            time.sleep(0.1)  # RestartSec
            self._restart(e.who)
        elif e.kind == "freeze" and self._alive(e.who):
            bot.proc.signal(signal.SIGSTOP)
            time.sleep(e.hold)
            bot.proc.signal(signal.SIGCONT)
        elif e.kind == "partition":
            self.proxies[e.who].pause()
            time.sleep(e.hold)
            self.proxies[e.who].resume()
        elif e.kind in ("redis_kill", "redis_wipe"):
            self.redis.kill()
            if e.kind == "redis_wipe":
                self.redis.wipe()
            time.sleep(e.hold)
            self.redis.start()
        elif e.kind == "handover":
            primary = next((w for w in "ab" if self._role(w) == "primary"), None)
            if primary is not None:
                other = "b" if primary == "a" else "a"
                code, _ = self.bots[primary].call("POST", "/handover", {"to": other})
                note = f"{primary} -> {other}: {code}"
        elif e.kind == "halt":
            self._halt(e.who)
            time.sleep(e.hold)
            self._resume()
        elif e.kind == "venue_fault":
            assert self.emu is not None
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.emu.port}/_emulator/fault", method="POST",
                data=json.dumps({"name": e.fault, "count": e.count,
                                 **({"delay": 4.0} if e.fault == "slow" else {})}).encode(),
                headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=5) as r:
                note = str(r.status)
        self.ev.done.append({"kind": e.kind, "who": e.who, "at": started,
                             "took": round(time.time() - started, 3), "note": note})

    def _halt(self, who: str) -> None:
        if not self._alive(who):
            return
        try:
            code, answer = self.bots[who].call("POST", "/halt", {"reason": "fault simulator"})
        except OSError:
            return
        if code == 200 and isinstance(answer, dict):
            self.halted_at = (time.time(), bool(answer.get("account_shared")))

    def _resume(self) -> None:
        for who in "ab":
            if not self._alive(who):
                continue
            try:
                code, _ = self.bots[who].call("POST", "/resume", {})
            except OSError:
                continue
            if code == 200:
                break
        if self.halted_at is not None:
            self.ev.halts.append((self.halted_at[0], time.time(), self.halted_at[1]))
            self.halted_at = None

    def _ending(self) -> None:
        """Everything back, a primary trading, then halted (nothing new at the venue) and
        read: the venue, the primary's book, the ledgers; both stopped with SIGTERM."""
        for proxy in self.proxies.values():
            proxy.resume()
        if self.redis.proc is None:
            self.redis.start()
        for who in "ab":
            if not self._alive(who):
                self._restart(who)
        self._resume()  # whatever a restart brought back
        if not self._wait(lambda: "primary" in (self._role("a"), self._role("b")), 20):
            self.ev.error = "no primary within 20 s of the ending"
            return
        primary = "a" if self._role("a") == "primary" else "b"
        time.sleep(2.0)
        self.bots[primary].call("POST", "/halt", {"reason": "the ending"})
        self._wait(lambda: not [o for o in self._venue_state()["orders"]
                                if o["status"] in OPEN_STATES], 8)
        time.sleep(0.5)  # the last fills' updates
        primary = "a" if self._role("a") == "primary" else "b"  # still, or the other
        st = self._status(primary) or {}
        self.ev.final_primary = primary
        self.ev.final_positions = {p["symbol"]: p["qty"] for p in st.get("positions", [])
                                   if abs(p["qty"]) > 1e-9}
        self.ev.venue = self._venue_state()

    def _venue_state(self) -> dict[str, Any]:
        assert self.emu is not None
        return self.emu.state()

    def _cleanup(self) -> None:
        for who, bot in self.bots.items():
            proc = bot.proc.proc
            if proc is None:
                continue
            if proc.poll() is None:
                bot.proc.signal(signal.SIGCONT)
                bot.proc.signal(signal.SIGTERM)
                try:
                    self.ev.exit_codes[who] = proc.wait(15)
                except Exception:
                    proc.kill()
                    self.ev.exit_codes[who] = None
            log = bot.proc.log_path.read_text() if bot.proc.log_path.exists() else ""
            if "crashed; stopping the daemon" in log or "Traceback" in log:
                self.ev.crashed.append(f"{who}: a crash in its log")
            self.ev.fences[who] = [tuple(r) for r in fences(bot)]
        for proxy in self.proxies.values():
            proxy.close()
        if self.emu is not None:
            self.emu.stop()
        self.redis.kill()


def violations(ev: PairEvidence) -> list[str]:
    out = []
    if ev.error:
        out.append(f"harness: {ev.error}")
    out += ev.crashed
    orders = ev.venue.get("orders", [])
    coids = [o["client_order_id"] for o in orders]
    twice = {c for c in coids if coids.count(c) > 1}
    if twice:
        out.append(f"client order ids at the venue twice: {sorted(twice)[:5]}")
    fenced: dict[str, tuple[int, str]] = {}
    by_epoch: dict[int, set[str]] = {}
    for rows in ev.fences.values():
        for coid, epoch, instance, _ in rows:
            fenced[coid] = (epoch, instance)
            by_epoch.setdefault(epoch, set()).add(instance)
    unfenced = [c for c in coids if c not in fenced]
    if unfenced:
        out.append(f"orders at the venue under no lease epoch: {unfenced[:5]}")
    shared = {e: names for e, names in by_epoch.items() if len(names) > 1}
    if shared:
        out.append(f"two instances sent in one lease epoch: {shared}")
    # Redis clears an order only under the epoch it holds, so the epochs of the orders that
    # reached the venue rise with time: none cleared under an epoch after one under a later
    # epoch (the row's time is taken just after the answer: a few ms of slack). A row of an
    # order refused after its clearance (the lease lapsed before its attempt) sent nothing.
    at_venue = set(coids)
    spans: dict[int, tuple[int, int]] = {}
    for rows in ev.fences.values():
        for coid, epoch, _, ts in rows:
            if coid not in at_venue:
                continue
            lo, hi = spans.get(epoch, (ts, ts))
            spans[epoch] = (min(lo, ts), max(hi, ts))
    epochs = sorted(spans)
    for e1, e2 in pairwise(epochs):
        if spans[e1][1] > spans[e2][0] + FENCE_SLACK_NS:
            out.append(f"an order cleared under epoch {e1} after one under epoch {e2}")
    for start, end, account in ev.halts:
        if not account:
            continue  # Redis away when it was issued: it reaches the other on reconnect
        late = [o["client_order_id"] for o in orders
                if start + HALT_SLACK < o["created_at"] < end]
        if late:
            out.append(f"orders reached the venue during a halt: {late[:5]}")
    theirs = {s: p["qty"] for s, p in ev.venue.get("positions", {}).items()
              if abs(p["qty"]) > 1e-9}
    mine = ev.final_positions
    if ev.venue and (set(theirs) != set(mine)
                     or any(abs(theirs[s] - mine[s]) > 1e-9 for s in theirs)):
        out.append(f"the primary's book {mine} is not the venue's {theirs}")
    bad_exit = {w: c for w, c in ev.exit_codes.items() if c != 0}
    if bad_exit:
        out.append(f"exit status at the last stop: {bad_exit}")
    return out


def run_seed(seed: int, root: Path | None = None, n: int = 6) -> tuple[PairEvidence, list[str]]:
    root = root or Path(tempfile.mkdtemp(prefix=f"faultsim-pair-{seed}-"))
    ev = PairRun(seed, generate(seed, n), root).run()
    (root / "evidence.json").write_text(json.dumps(asdict(ev), indent=1, default=str))
    return ev, violations(ev)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--events", type=int, default=6)
    parser.add_argument("--json", type=Path, help="replay this schedule.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="faultsim-pair-"))
    if args.json:
        seed, events = from_json(args.json.read_text())
    else:
        seed, events = args.seed, generate(args.seed, args.events)
    ev = PairRun(seed, events, root).run()
    (root / "evidence.json").write_text(json.dumps(asdict(ev), indent=1, default=str))
    bad = violations(ev)
    print(f"seed {seed}: {len(events)} events, {'; '.join(bad) or 'no violation'} "
          f"(evidence in {root})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
