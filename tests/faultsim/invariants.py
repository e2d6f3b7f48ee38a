"""The invariants, checked after every schedule from the venue's own order log, the
daemon's journal, its log and outputs, and what the harness sent when.

Each violation names its invariant and the evidence. Times are ``time.time()`` on this
machine: the emulator stamps its orders and fills with it, the harness its requests.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.faultsim import ledger
from tests.faultsim.patterns import COMPILED, TRACEBACK, line_time
from tests.faultsim.runner import TERM_GRACE, Evidence, Run
from tests.faultsim.schedule import BROKER_TIMEOUT, LIVENESS_SECONDS
from tests.faultsim.venue import REST_ERRORS
from tests.faultsim.world import Secrets

INVARIANTS = {
    "1": "no order reaches the venue after an acknowledged halt (or a demotion) until a "
         "resume, except that halt's authorized flatten (and exits once a reduce moved the "
         "halt to reduce-only)",
    "1r": "after an acknowledged reduce, only reduce-only orders until a resume or a halt "
          "(within that run)",
    "2": "no client order id twice at the venue; no venue order the journal does not know",
    "3": "after the final reconciliation the journal's positions and fills equal the venue's",
    "4": "a persisted halt or demotion survives every restart, which sends no new entry",
    "5": "no traceback; documented exit statuses (0 within the bound after SIGTERM, 78 for a "
         "refused ledger or endpoint, never 70 from a transient venue error)",
    "6": "no secret (API token, broker key or secret) in any output, log file or ledger",
    "7": "a sandbox pointed at a non-paper, non-loopback endpoint does not start without "
         "confirmation",
    "L": f"liveness: a venue fill reaches the journal within {LIVENESS_SECONDS:g}s while "
         "the daemon runs and the venue's REST side is healthy",
    "H": "the harness itself completed the schedule",
}
EPS = 1e-9
BOUNDARY = BROKER_TIMEOUT + 0.5  # an attempt in flight when a command came has this long


@dataclass
class Violation:
    invariant: str
    code: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"[{self.invariant}:{self.code}] {self.message}"


def check(ev: Evidence, secrets: Secrets) -> list[Violation]:
    if ev.error:
        return [Violation("H", "harness_error", ev.error)]
    final = ledger.read(Path(ev.state_dir))
    kept = [ledger.read(Path(k)) for k in ev.kept]
    log = _read(Path(ev.workdir) / "logs" / "quantshift-equity.log")
    out: list[Violation] = []
    out += halts(ev, final, kept)
    out += reduces(ev, final, kept)
    out += known_orders(ev, final)
    out += books(ev, final)
    out += restarts(ev, final, kept, log)
    out += exits(ev, log)
    out += leaks(ev, secrets)
    out += endpoint(ev)
    out += liveness(ev, final)
    for v in out:  # the evidence names a leak; it never repeats the secret
        for name, value in secrets.items():
            v.message = v.message.replace(value, f"<{name}>")
    return out


# -- 1: nothing after a halt ---------------------------------------------------------------
def _windows(ev: Evidence, journals: list[ledger.Journal]) -> list[tuple[float, float, str]]:
    """(from, until, what) for every acknowledged halt and every journaled demotion."""
    resumes = sorted(c.sent for c in ev.commands if c.action == "resume")
    out = []
    for c in ev.commands:
        if c.action == "halt" and c.acknowledged and c.answered is not None:
            until = next((t for t in resumes if t > c.sent), math.inf)
            out.append((c.answered, until, f"the halt sent at {_t(c.sent)} (200 at "
                                           f"{_t(c.answered)})"))
    for t in sorted({t for j in journals for t in j.demotions}):
        until = next((r for r in resumes if r > t), math.inf)
        out.append((t, until, f"the demotion journaled at {_t(t)}"))
    return out


def _flattens(ev: Evidence) -> list[float]:
    return sorted(c.sent for c in ev.commands
                  if c.action == "flatten" or (c.action == "halt" and c.body.get("flatten")))


def halts(ev: Evidence, final: ledger.Journal, kept: list[ledger.Journal]) -> list[Violation]:
    intents = _intents(final, kept)
    flattens = _flattens(ev)
    # An acknowledged reduce after a halt moves it to reduce-only: exits pass from then on
    # (the entries are the reduce invariant's to check).
    reduced = sorted(c.sent for c in ev.commands if c.action == "reduce" and c.acknowledged)
    out = []
    seen: set[str] = set()
    for start, until, what in _windows(ev, [final, *kept]):
        asked = _sent_of(ev, start)  # a flatten with the halt itself was sent with it
        for o in _orders(ev):
            t = o["created_at"]
            if not start <= t < until or o["client_order_id"] in seen:
                continue
            intent = intents.get(o["client_order_id"])
            if intent is not None and intent["reduce_only"] and (
                    any(asked <= f <= t for f in flattens)
                    or ("halt" in what and any(start < r <= t for r in reduced))):
                continue
            seen.add(o["client_order_id"])
            why = "a client order id the journal does not have" if intent is None else \
                "an entry" if not intent["reduce_only"] else \
                "reduce-only, but no flatten was requested"
            out.append(Violation("1", "order_after_halt" if "halt" in what
                                 else "order_after_demotion",
                                 f"venue order {_order(o)} created {t - start:.3f}s after "
                                 f"{what}, before any resume: {why}"))
    return out


def reduces(ev: Evidence, final: ledger.Journal, kept: list[ledger.Journal]) -> list[Violation]:
    """An entry decided after the reduce was acknowledged, or sent well after it (a retry
    or a resubmission: an attempt in flight at the boundary has its broker timeout)."""
    intents = _intents(final, kept)
    ends = sorted(c.sent for c in ev.commands if c.action in ("resume", "halt"))
    out = []
    for c in ev.commands:
        if c.action != "reduce" or not c.acknowledged or c.answered is None:
            continue
        run = ev.runs[c.run]
        until = min(next((t for t in ends if t > c.sent), math.inf),
                    run.signalled or run.exited or math.inf)
        for o in _orders(ev):
            if not c.answered <= o["created_at"] < until:
                continue
            intent = intents.get(o["client_order_id"])
            if intent is not None and intent["reduce_only"]:
                continue
            decided = intent["created_ns"] / 1e9 if intent else math.inf
            if decided > c.answered or o["created_at"] > c.answered + BOUNDARY:
                out.append(Violation("1r", "entry_after_reduce",
                                     f"venue order {_order(o)} created "
                                     f"{o['created_at'] - c.answered:.3f}s after the reduce "
                                     f"was acknowledged: not a reduce-only intent"))
    return out


# -- 2: ids -----------------------------------------------------------------------------------
def known_orders(ev: Evidence, final: ledger.Journal) -> list[Violation]:
    orders = _orders(ev)
    out = [Violation("2", "id_twice", f"client order id {coid} reached the venue {n} times")
           for coid, n in Counter(o["client_order_id"] for o in orders).items() if n > 1]
    if final.error:
        return out
    unknown = [o for o in orders if o["client_order_id"] not in final.intents]
    if unknown:
        out.append(Violation("2", "unknown_order",
                             f"{len(unknown)} venue order(s) under client order ids the final "
                             f"journal does not have, e.g. {_order(unknown[0])}"))
    return out


# -- 3: the books after the final reconciliation ----------------------------------------------
def books(ev: Evidence, final: ledger.Journal) -> list[Violation]:
    if final.error:
        return [Violation("3", "ledger_unreadable", f"{final.path}: {final.error}")]
    if any(s.startswith("ending:") for s in ev.skipped):
        return [Violation("3", "no_final_reconcile",
                          "the daemon could not be brought up for the final reconciliation")]
    until = (ev.runs[-1].exited or math.inf) if ev.runs else math.inf
    venue_fills = [f for f in ev.venue_state.get("fills", []) if f["time"] <= until]
    theirs: dict[str, float] = defaultdict(float)
    held: dict[str, float] = defaultdict(float)
    for f in venue_fills:
        theirs[f["client_order_id"]] += f["qty"]
        held[f["symbol"]] += f["qty"] if f["side"] == "buy" else -f["qty"]
    mine = final.filled()
    out = []
    for coid in sorted(set(theirs) | set(mine)):
        a, b = mine.get(coid, 0.0), theirs.get(coid, 0.0)
        if abs(a - b) > EPS:
            out.append(Violation("3", "fill_mismatch",
                                 f"{coid}: venue filled {b:g}, journal {a:g} (journal state "
                                 f"{final.last_state.get(coid, 'none')})"))
    positions = final.positions()
    for symbol in sorted(set(positions) | {s for s, q in held.items() if abs(q) > EPS}):
        a, b = positions.get(symbol, 0.0), held.get(symbol, 0.0)
        if abs(a - b) > EPS:
            out.append(Violation("3", "position_mismatch",
                                 f"{symbol}: venue {round(b, 12):g}, journal {round(a, 12):g}"))
    return out


# -- 4: halts survive restarts ----------------------------------------------------------------
def restarts(ev: Evidence, final: ledger.Journal, kept: list[ledger.Journal],
             log: str) -> list[Violation]:
    intents = _intents(final, kept)
    out = []
    for start, until, what in _windows(ev, [final, *kept]):
        pattern = "halted_at_start" if "halt" in what else "demoted_at_start"
        for run in ev.runs:
            if run.kind != "main" or not start < run.started < until:
                continue
            text = log[run.log_offset:run.log_end]
            if not COMPILED["restored"].search(text):
                continue  # it never got as far as reading its state (e.g. refused it)
            if pattern == "demoted_at_start" and run.ready is None:
                continue  # a demotion is restored, and said, once the start is through
            if not COMPILED[pattern].search(text):
                out.append(Violation("4", "halt_lost" if "halt" in what else "demotion_lost",
                                     f"run {run.n} started {run.started - start:.2f}s after "
                                     f"{what} (no resume since) and is not "
                                     f"{'halted' if 'halt' in what else 'demoted'}"
                                     f"{' (' + run.note + ')' if run.note else ''}"))
            end = min(run.exited or math.inf, until)
            entries = [o for o in _orders(ev) if run.started <= o["created_at"] < end
                       and not (intents.get(o["client_order_id"]) or {}).get("reduce_only")]
            if entries:
                out.append(Violation("4", "entry_after_restart",
                                     f"run {run.n}, started after {what} (no resume since), "
                                     f"sent {len(entries)} entry order(s), e.g. "
                                     f"{_order(entries[0])}"))
    return out


# -- 5: tracebacks and exit statuses ----------------------------------------------------------
def exits(ev: Evidence, log: str) -> list[Violation]:
    out = []
    for run in ev.runs:
        err = _read(Path(run.stderr))
        for where, text in (("stderr", err), ("log file", log[run.log_offset:run.log_end])):
            if TRACEBACK in text:
                out.append(Violation("5", "traceback",
                                     f"run {run.n}: {text.count(TRACEBACK)} traceback(s) in its "
                                     f"{where}, e.g. {_exception_line(text)}"))
        out += _exit_status(ev, run, err, log[run.log_offset:run.log_end])
    return out


def _exit_status(ev: Evidence, run: Run, err: str, text: str) -> list[Violation]:
    code = run.code
    out = []
    crash = COMPILED["crashed"].search(text)
    if code == 70 or crash:  # whatever the harness did meanwhile: it had crashed
        out.append(Violation("5", "crashed", f"run {run.n} exited with status {code}: "
                             f"{crash.group(0) if crash else 'no crash line in the log'}"))
    if run.note.startswith("corrupt:") and run.ready is not None:
        out.append(Violation("5", "damaged_ledger_adopted",
                             f"run {run.n} started on a damaged ledger ({run.note}) instead "
                             "of refusing it with exit 78"))
    if out or run.signal == "KILL":
        return out
    if run.signal == "TERM":
        took = (run.exited or math.inf) - (run.signalled or 0.0)
        if took > TERM_GRACE:
            done = COMPILED["shutdown_complete"].search(text)
            at = line_time(text, done.start()) if done else None
            said = f"; its log said 'shutdown complete' {at - run.signalled:.2f}s after the " \
                   "signal" if at is not None and run.signalled else ""
            out.append(Violation("5", "sigterm_slow", f"run {run.n}: SIGTERM -> exit took "
                                 f"{took:.2f}s (bound {TERM_GRACE:g}s = shutdown timeout + 1)"
                                 f"{said}{'; ' + run.note if run.note else ''}"))
        # With the disk full the last snapshot may fail: a non-zero status tells the truth.
        if code != 0 and not _disk_full_at(ev, run.signalled or 0.0):
            out.append(Violation("5", "sigterm_status", f"run {run.n}: exit status {code} "
                                 "after SIGTERM (documented: 0)"))
        return out
    last = err.strip().splitlines()[-1] if err.strip() else ""
    one_line = last.startswith("quantshift: ") and TRACEBACK not in err
    if run.note.startswith("corrupt:"):
        if code == 78 and one_line:
            return []
        return [Violation("5", "damaged_ledger_status",
                          f"run {run.n} ({run.note}): exit {code}, last line {last!r} "
                          "(documented: 78 and one line)")]
    if code == 78 and one_line and run.expect_refusal:
        return []
    if code == 74 and one_line and _disk_full_during(ev, run.started, run.exited):
        return []  # the journal cannot be written at start-up: documented, systemd retries
    if code == 69 and run.ready is None and one_line:
        return []  # broker unreachable at start-up: documented, systemd retries
    return [Violation("5", "unexpected_exit",
                      f"run {run.n} exited on its own with status {code}"
                      f"{' after ready' if run.ready else ' before ready'}; last stderr line "
                      f"{last!r}")]


def _disk_full_at(ev: Evidence, t: float) -> bool:
    return any(a is not None and a <= t <= (b or math.inf) for a, b in ev.disk)


def _disk_full_during(ev: Evidence, start: float, end: float | None) -> bool:
    """Whether the disk was full at some moment of [start, end]."""
    return any(a is not None and a <= (end or math.inf) and start <= (b or math.inf)
               for a, b in ev.disk)


# -- 6: secrets -------------------------------------------------------------------------------
def leaks(ev: Evidence, secrets: Secrets) -> list[Violation]:
    root = Path(ev.workdir)
    places = [root / "logs", root / "runs", Path(ev.state_dir), root / "keep"]
    out = []
    for place in places:
        for path in sorted(p for p in place.rglob("*") if p.is_file()) if place.exists() else []:
            data = path.read_bytes()
            for name, value in secrets.items():
                at = data.find(value.encode())
                if at >= 0:
                    line_start = data.rfind(b"\n", 0, at) + 1
                    snippet = data[line_start:at].decode("utf-8", "replace")[-80:]
                    out.append(Violation("6", "secret_leak",
                                         f"the {name} is in {path.relative_to(root)} "
                                         f"({data.count(value.encode())}x), after "
                                         f"{snippet!r}"))
    return out


# -- 7: the endpoint --------------------------------------------------------------------------
def endpoint(ev: Evidence) -> list[Violation]:
    out = []
    for run in ev.runs:
        if run.kind != "endpoint":
            continue
        sent = [o for o in _orders(ev)
                if run.started <= o["created_at"] <= (run.exited or math.inf)]
        if run.note == "endpoint:bare" and run.ready is not None:
            out.append(Violation("7", "unconfirmed_endpoint",
                                 f"run {run.n}: sandbox started against http://{ev.endpoint} "
                                 "(neither a known paper endpoint nor loopback) without "
                                 "QUANTSHIFT_LIVE_CONFIRM or QUANTSHIFT_ENDPOINT_IS_PAPER; "
                                 f"{len(sent)} order(s) reached it"))
        # Refused as live is exit 78; a venue fault still armed may make the start fail
        # otherwise (69: the broker answered 5xx), which is no refusal.
        if run.note == "endpoint:paper_override" and run.ready is None and run.code == 78:
            out.append(Violation("7", "paper_override_refused",
                                 f"run {run.n}: with QUANTSHIFT_ENDPOINT_IS_PAPER naming the "
                                 f"host it did not start (exit {run.code})"))
    return out


# -- L: fills reach the journal ---------------------------------------------------------------
def liveness(ev: Evidence, final: ledger.Journal) -> list[Violation]:
    if final.error:
        return []
    bound = LIVENESS_SECONDS
    rest = [(f["armed"], f["done"] or math.inf) for f in ev.faults
            if f["name"] in REST_ERRORS and f["scope"] != "stream"]
    out = []
    for f in ev.venue_state.get("fills", []):
        t, coid = f["time"], f["client_order_id"]
        if coid not in final.intents or not _running(ev, t, t + bound):
            continue
        if any(a <= t + bound and b >= t - 1.0 for a, b in rest) or any(
                a is not None and a <= t + bound and (b or math.inf) >= t for a, b in ev.disk):
            continue
        booked = final.booked_at(coid, f["cum_qty"])
        if booked is not None and booked - t > bound:
            out.append(Violation("L", "fill_late",
                                 f"venue fill of {coid} ({f['qty']:g} {f['symbol']} at "
                                 f"{_t(t)}) reached the journal {booked - t:.2f}s later"))
    return out


def _running(ev: Evidence, a: float, b: float) -> bool:
    return any(r.kind == "main" and r.ready is not None and r.ready <= a
               and (r.signalled or r.exited or math.inf) >= b for r in ev.runs)


# -- helpers ------------------------------------------------------------------------------
def _orders(ev: Evidence) -> list[dict[str, Any]]:
    return [o for o in ev.venue_state.get("orders", []) if not o.get("parent_id")]


def _intents(final: ledger.Journal, kept: list[ledger.Journal]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for j in [*kept, final]:
        out.update(j.intents)
    return out


def _sent_of(ev: Evidence, answered: float) -> float:
    """When the halt answered at ``answered`` was sent (a demotion: its own time)."""
    return next((c.sent for c in ev.commands if c.answered == answered), answered)


def _order(o: dict[str, Any]) -> str:
    return (f"{o['client_order_id']} ({o['side']} {o['qty']:g} {o['symbol']}, venue status "
            f"{o['status']}, filled {o['filled_qty']:g})")


def _t(t: float) -> str:
    return f"{t:.3f}"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


_EXC = re.compile(r"^[A-Za-z_][\w.]*: .*$|^[A-Za-z_][\w.]*$", re.M)


def _exception_line(text: str) -> str:
    """The exception a traceback ends with: its first unindented line after the frames."""
    m = _EXC.search(text, text.find(TRACEBACK) + len(TRACEBACK))
    return repr(m.group(0)[:160]) if m else "(no exception line)"
