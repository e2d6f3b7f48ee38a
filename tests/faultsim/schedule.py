"""A schedule: the venue faults, operator commands, kills, restarts, disk and ledger
accidents and hostile requests one simulated session goes through, in order.

``Schedule.generate(venue, seed)`` draws one from ``random.Random(seed)``; its JSON form
(``to_json``) fed back through ``from_json`` is the same schedule, event for event, so a
failing seed is replayed exactly (the daemon's timing may differ; the events, their
triggers and their order do not).

Each event waits for its trigger, then acts:

* triggers: ``time`` (``delay`` seconds after the daemon is ready and the previous event
  is done), ``count`` (``n`` more venue ``bars`` or ``fills``), ``log`` (a pattern of
  ``patterns.PATTERNS`` appears in the daemon's log after the previous event), ``venue``
  (the venue receives a ``request`` of ``venue.REQUESTS``: a fault armed on it applies to
  that request). Every trigger but ``time`` gives up after ``timeout`` seconds and acts
  anyway.
* actions: ``fault``, ``clear``, ``command`` (an operator command), ``kill`` (SIGKILL or
  SIGTERM, then a restart unless ``restart`` is false), ``start``, ``disk`` (fill or free
  the state directory's tmpfs), ``corrupt`` (the ledger, between two runs), ``hostile``
  (a malformed request), ``endpoint`` (a sandbox start against a non-loopback address),
  ``wait``.

Motifs (``_MOTIFS``) are the race-seeking combinations a uniform draw would rarely make,
drawn with random parameters alongside single random events.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quantshift.emulators.faults import FAULTS
from tests.faultsim.api import BODIES, HOSTILE
from tests.faultsim.patterns import TRIGGERS
from tests.faultsim.venue import REQUESTS

VENUES = ("alpaca", "exchange")
BROKER_TIMEOUT = 3.0  # QUANTSHIFT_BROKER_TIMEOUT of the daemons the simulator starts
LIVENESS_SECONDS = 4.0  # a venue fill reaches the journal within this, the venue healthy
CORRUPTIONS = ("zero", "other_app", "random_bytes")


@dataclass(frozen=True)
class Trigger:
    kind: str  # time | count | log | venue
    delay: float = 0.0
    what: str = ""
    n: int = 0
    pattern: str = ""
    request: str = ""
    timeout: float = 6.0

    def as_dict(self) -> dict[str, Any]:
        keep = {"time": ("delay",), "count": ("what", "n", "timeout"),
                "log": ("pattern", "timeout"), "venue": ("request", "timeout")}[self.kind]
        return {"kind": self.kind, **{k: getattr(self, k) for k in keep}}


@dataclass(frozen=True)
class Action:
    kind: str
    args: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.args}


@dataclass(frozen=True)
class Event:
    trigger: Trigger
    action: Action

    def as_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger.as_dict(), "action": self.action.as_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        action = dict(d["action"])
        return cls(Trigger(**d["trigger"]), Action(action.pop("kind"), action))


@dataclass
class Schedule:
    venue: str
    seed: int | None
    events: list[Event]
    final_resume: bool = True
    name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"venue": self.venue, "seed": self.seed, "name": self.name,
                "final_resume": self.final_resume,
                "events": [e.as_dict() for e in self.events]}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        return cls(d["venue"], d.get("seed"), [Event.from_dict(e) for e in d["events"]],
                   d.get("final_resume", True), d.get("name", ""))

    @classmethod
    def from_json(cls, text: str) -> Schedule:
        return cls.from_dict(json.loads(text))

    def kinds(self) -> list[str]:
        """What each event injects, for the counts: ``fault:server_error``, ``command:halt``."""
        out = []
        for e in self.events:
            a = e.action
            sub = a.args.get("name") or a.args.get("command") or a.args.get("signal") \
                or a.args.get("op") or a.args.get("how") or a.args.get("variant") or ""
            out.append(f"{a.kind}:{sub}" if sub else a.kind)
        return out

    @property
    def uses_disk(self) -> bool:
        return any(e.action.kind == "disk" for e in self.events)

    @property
    def uses_endpoint(self) -> bool:
        return any(e.action.kind == "endpoint" for e in self.events)

    @classmethod
    def generate(cls, venue: str, seed: int) -> Schedule:
        if venue not in VENUES:
            raise ValueError(f"venue must be one of {', '.join(VENUES)}")
        rng = random.Random(seed)
        events: list[Event] = []
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.55:
                names = [n for n in _MOTIFS if venue == "exchange" or n != "stall_partial"]
                weights = [_MOTIFS[n][0] for n in names]
                events += _MOTIFS[rng.choices(names, weights)[0]][1](rng, venue)
            else:
                events += [random_event(rng, venue) for _ in range(rng.randint(1, 2))]
        return cls(venue, seed, events[:8], final_resume=rng.random() < 0.7)


# -- building blocks -------------------------------------------------------------------
def at(delay: float) -> Trigger:
    return Trigger("time", delay=round(delay, 3))


def on_log(pattern: str, timeout: float = 5.0) -> Trigger:
    return Trigger("log", pattern=pattern, timeout=timeout)


def on_request(request: str, timeout: float = 6.0) -> Trigger:
    return Trigger("venue", request=request, timeout=timeout)


def fault(name: str, scope: str, count: int = 1, **params: float) -> Action:
    return Action("fault", {"name": name, "scope": scope, "count": count,
                            "params": {k: round(v, 3) for k, v in params.items()}})


def command(name: str) -> Action:
    return Action("command", {"command": name})


def kill(signal: str, restart: bool = True) -> Action:
    return Action("kill", {"signal": signal, "restart": restart})


def random_fault(rng: random.Random, venue: str) -> Action:
    names = [n for n in FAULTS if venue == "exchange" or n != "stall"]
    name = rng.choice(names)
    scope = rng.choice([*FAULTS[name], "any"])
    params: dict[str, float] = {}
    if name == "rate_limit":
        params["retry_after"] = rng.choice([1, 1, 2])
    elif name == "slow":  # mostly below the daemon's broker timeout
        params["delay"] = rng.uniform(0.1, 0.8 * BROKER_TIMEOUT) if rng.random() < 0.85 \
            else rng.uniform(BROKER_TIMEOUT + 0.2, BROKER_TIMEOUT + 1.0)
    elif name == "partial_fill":
        params["fraction"] = rng.uniform(0.2, 0.8)
    count = 1 if name in ("drop_ws", "stall") else rng.randint(1, 3)
    return fault(name, scope, count, **params)


def random_trigger(rng: random.Random, venue: str, action: Action) -> Trigger:
    r = rng.random()
    if action.kind == "fault" and r < 0.15:
        return on_request(rng.choice(sorted(REQUESTS[venue])))
    if r < 0.5:
        return at(rng.uniform(0.0, 2.0))
    if r < 0.7:
        what = rng.choice(["bars", "fills"])
        n = rng.randint(2, 12) if what == "bars" else rng.randint(1, 3)
        return Trigger("count", what=what, n=n, timeout=5.0)
    return on_log(rng.choice(TRIGGERS), timeout=4.0)


def random_event(rng: random.Random, venue: str) -> Event:
    r = rng.random()
    if r < 0.5:
        action = random_fault(rng, venue)
    elif r < 0.8:
        action = command(rng.choice(list(BODIES)))
    elif r < 0.88:
        action = kill(rng.choice(["KILL", "TERM"]))
    elif r < 0.94:
        action = Action("hostile", {"variant": rng.choice(HOSTILE)})
    else:
        action = Action("clear")
    return Event(random_trigger(rng, venue, action), action)


# -- motifs: (weight, maker) -----------------------------------------------------------
def _retry_halt(rng: random.Random, venue: str) -> list[Event]:
    """An order between retries when a halt arrives; maybe a SIGKILL right after it."""
    events = [Event(at(rng.uniform(0.0, 1.0)), fault("server_error", "submit",
                                                     rng.choice([2, 2, 3]))),
              Event(on_log("outcome_unknown", 6.0),
                    command("halt_flatten" if rng.random() < 0.25 else "halt"))]
    if rng.random() < 0.5:
        events.append(Event(at(0.0), kill("KILL")))
    return events


def _partial_kill_lookup(rng: random.Random, venue: str) -> list[Event]:
    """A part-filled order, the daemon killed before the rest fills, and lookups failing
    as the restarted daemon reconciles it."""
    return [Event(at(rng.uniform(0.0, 1.0)), fault("partial_fill", "submit", 1,
                                                   fraction=rng.uniform(0.2, 0.8))),
            Event(on_log("partially_filled", 5.0), Action("wait")),
            # after the part fill is journaled (flushes every 50 ms), before the rest fills
            Event(at(rng.uniform(0.06, 0.2)), kill("KILL")),
            Event(on_request("lookup", 8.0), fault("server_error", "status",
                                                   rng.choice([3, 4, 6, 8])))]


def _reconcile_blip(rng: random.Random, venue: str) -> list[Event]:
    """One 429 or 500 on a call of the periodic reconciliation."""
    name = rng.choice(["server_error", "rate_limit"])
    params = {"retry_after": 1} if name == "rate_limit" else {}
    return [Event(on_request(rng.choice(["open_orders", "positions"]), 6.0),
                  fault(name, "status", 1, **params))]


def _stall_partial(rng: random.Random, venue: str) -> list[Event]:
    """The order stream stalls (open, silent); the rest of a part fill arrives meanwhile."""
    return [Event(at(rng.uniform(0.0, 1.0)), fault("stall", "stream")),
            Event(at(rng.uniform(0.0, 0.5)), fault("partial_fill", "submit", rng.randint(1, 2),
                                                   fraction=rng.uniform(0.2, 0.8))),
            Event(Trigger("count", what="fills", n=2, timeout=5.0), Action("wait")),
            Event(at(LIVENESS_SECONDS + 1.0), Action("wait"))]


def _disk_halt(rng: random.Random, venue: str) -> list[Event]:
    """The disk fills up; a halt is answered; the daemon dies; the disk is freed."""
    return [Event(Trigger("count", what="bars", n=rng.randint(1, 8)),
                  Action("disk", {"op": "fill"})),
            Event(at(rng.uniform(0.0, 0.05)), command(rng.choice(["halt", "halt_flatten"]))),
            Event(at(rng.uniform(0.0, 0.5)), kill(rng.choice(["KILL", "TERM"]), restart=False)),
            Event(at(0.0), Action("disk", {"op": "free"})),
            Event(at(0.0), Action("start"))]


def _corrupt(rng: random.Random, venue: str) -> list[Event]:
    """The ledger corrupted while the daemon is stopped (maybe halted first)."""
    events = [Event(at(rng.uniform(0.2, 1.5)), command("halt"))] if rng.random() < 0.5 else []
    return [*events, Event(at(rng.uniform(0.2, 1.0)),
                           Action("corrupt", {"how": rng.choice(CORRUPTIONS)}))]


def _hostile(rng: random.Random, venue: str) -> list[Event]:
    return [Event(at(rng.uniform(0.0, 1.5)), Action("hostile", {"variant": rng.choice(HOSTILE)}))]


def _endpoint(rng: random.Random, venue: str) -> list[Event]:
    variant = "paper_override" if rng.random() < 0.3 else "bare"
    return [Event(at(rng.uniform(0.0, 1.0)), Action("endpoint", {"variant": variant}))]


def _restart(rng: random.Random, venue: str) -> list[Event]:
    return [Event(at(rng.uniform(0.2, 2.0)), kill(rng.choice(["KILL", "TERM"])))]


Maker = Callable[[random.Random, str], list[Event]]
_MOTIFS: dict[str, tuple[float, Maker]] = {
    "retry_halt": (3.0, _retry_halt),
    "partial_kill_lookup": (2.0, _partial_kill_lookup),
    "reconcile_blip": (2.0, _reconcile_blip),
    "stall_partial": (2.0, _stall_partial),
    "disk_halt": (1.0, _disk_halt),
    "corrupt": (1.0, _corrupt),
    "hostile": (1.0, _hostile),
    "endpoint": (0.6, _endpoint),
    "restart": (1.0, _restart),
}

