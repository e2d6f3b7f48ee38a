"""Named regression schedules: every fault found once, replayed by CI on every run.

Each is a deterministic schedule of the kind ``Schedule.generate`` draws (the same
triggers and actions; its motifs are in ``schedule.py``), fixed here with the parameters
that showed the finding on the daemon as of the simulator's first run.
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.faultsim.api import HOSTILE
from tests.faultsim.schedule import (
    LIVENESS_SECONDS,
    Action,
    Event,
    Schedule,
    Trigger,
    at,
    command,
    fault,
    kill,
    on_log,
    on_request,
)


@dataclass(frozen=True)
class Regression:
    venue: str
    finding: str   # the finding's tag in the report
    why: str       # what it shows, in a line
    events: tuple[Event, ...]
    final_resume: bool = True

    def schedule(self) -> Schedule:
        name = next(k for k, v in NAMED.items() if v is self)
        return Schedule(self.venue, None, list(self.events), self.final_resume, name)


def _h1(venue: str) -> Regression:
    return Regression(venue, "H1", "a halt while an order is between retries: the retry "
                                   "still goes out, its fill is dropped",
                      (Event(at(0.3), fault("server_error", "submit", 2)),
                       Event(on_log("outcome_unknown", 8.0), command("halt"))),
                      final_resume=False)


def _h2(venue: str) -> Regression:
    return Regression(venue, "H2", "SIGKILL right after a halt's 200 while an order is between "
                                   "retries: the restart stays halted, then resubmits it",
                      (Event(at(0.3), fault("server_error", "submit", 3)),
                       Event(on_log("outcome_unknown", 8.0), command("halt")),
                       Event(at(0.0), kill("KILL"))),
                      final_resume=False)


def _m1() -> Regression:
    return Regression("exchange", "M1", "a stalled order websocket is never redialled: the rest "
                                        "of a part fill reaches the journal only by the 10 s poll",
                      (Event(at(0.5), fault("stall", "stream")),
                       Event(at(0.2), fault("partial_fill", "submit", 2, fraction=0.5)),
                       Event(Trigger("count", what="fills", n=3, timeout=8.0), Action("wait")),
                       Event(at(LIVENESS_SECONDS + 2.0), Action("wait"))))


def _m2(venue: str) -> Regression:
    return Regression(venue, "M2", "three transient lookup errors at the restart's reconciliation "
                                   "are taken as 'the venue has no such order'",
                      (Event(at(0.3), fault("partial_fill", "submit", 1, fraction=0.5)),
                       Event(on_log("partially_filled", 8.0), Action("wait")),
                       Event(at(0.12), kill("KILL")),
                       Event(on_request("lookup", 10.0), fault("server_error", "status", 8))))


def _h3(venue: str, name: str) -> Regression:
    return Regression(venue, "H3", f"one {name} on the periodic reconciliation's open-orders "
                                   "call crashes the daemon (exit 70, demoted)",
                      (Event(on_request("open_orders", 8.0),
                             fault(name, "status", 1, **({"retry_after": 1}
                                                         if name == "rate_limit" else {}))),))


def _h4(venue: str) -> Regression:
    return Regression(venue, "H4", "sandbox against a non-paper, non-loopback endpoint starts "
                                   "without confirmation",
                      (Event(at(0.3), Action("endpoint", {"variant": "bare"})),))


def _m3(venue: str) -> Regression:
    return Regression(venue, "M3", "malformed requests: the token on stderr, tracebacks",
                      tuple(Event(at(0.1), Action("hostile", {"variant": v})) for v in HOSTILE))


def _m4(venue: str, how: str) -> Regression:
    return Regression(venue, "M4", f"a halted daemon's ledger replaced ({how}) is adopted as "
                                   "new: flat and not halted",
                      (Event(at(1.5), command("halt")),
                       Event(at(0.3), Action("corrupt", {"how": how}))),
                      final_resume=False)


def _m5() -> Regression:
    return Regression("alpaca", "M5", "SIGTERM with the Alpaca broker: the process exits seconds "
                                      "after its shutdown completed",
                      (Event(at(1.0), kill("TERM")),))


def _m6(venue: str) -> Regression:
    return Regression(venue, "M6", "disk full: the halt answered 200 is lost at the restart",
                      # right after a bar: the halt comes before the next flush of bar rows
                      (Event(Trigger("count", what="bars", n=4), Action("disk", {"op": "fill"})),
                       Event(at(0.0), command("halt")),
                       Event(at(0.2), kill("KILL", restart=False)),
                       Event(at(0.0), Action("disk", {"op": "free"})),
                       Event(at(0.0), Action("start"))),
                      final_resume=False)


def _disk_full_start(venue: str) -> Regression:
    return Regression(venue, "D1", "a start on a full disk: a traceback and exit 1, not one "
                                   "line and exit 74",
                      (Event(Trigger("count", what="bars", n=3), Action("disk", {"op": "fill"})),
                       Event(at(0.0), kill("KILL", restart=False)),
                       Event(at(0.0), Action("start")),
                       Event(at(0.5), Action("disk", {"op": "free"})),
                       Event(at(0.0), Action("start"))))


def _disk_full_stop(venue: str) -> Regression:
    return Regression(venue, "D2", "a SIGTERM on a full disk: the final flush's traceback",
                      (Event(Trigger("count", what="bars", n=3), Action("disk", {"op": "fill"})),
                       Event(at(0.3), kill("TERM", restart=False)),
                       Event(at(0.0), Action("disk", {"op": "free"})),
                       Event(at(0.0), Action("start"))))


NAMED: dict[str, Regression] = {
    "h1_halt_between_retries_alpaca": _h1("alpaca"),
    "h1_halt_between_retries_exchange": _h1("exchange"),
    "h2_restart_halted_resubmits_alpaca": _h2("alpaca"),
    "h2_restart_halted_resubmits_exchange": _h2("exchange"),
    "h3_reconcile_500_crashes_alpaca": _h3("alpaca", "server_error"),
    "h3_reconcile_429_crashes_exchange": _h3("exchange", "rate_limit"),
    "h4_unconfirmed_endpoint_alpaca": _h4("alpaca"),
    "h4_unconfirmed_endpoint_exchange": _h4("exchange"),
    "m1_stalled_order_stream_exchange": _m1(),
    "m2_lookup_errors_cancel_alpaca": _m2("alpaca"),
    "m2_lookup_errors_cancel_exchange": _m2("exchange"),
    "m3_hostile_requests_alpaca": _m3("alpaca"),
    "m3_hostile_requests_exchange": _m3("exchange"),
    "m4_zero_byte_ledger_alpaca": _m4("alpaca", "zero"),
    "m4_other_app_ledger_exchange": _m4("exchange", "other_app"),
    "m5_slow_sigterm_exit_alpaca": _m5(),
    "m6_disk_full_halt_lost_exchange": _m6("exchange"),
    "m6_disk_full_halt_lost_alpaca": _m6("alpaca"),
    "d1_disk_full_at_start_alpaca": _disk_full_start("alpaca"),
    "d1_disk_full_at_start_exchange": _disk_full_start("exchange"),
    "d2_disk_full_at_sigterm_exchange": _disk_full_stop("exchange"),
}
