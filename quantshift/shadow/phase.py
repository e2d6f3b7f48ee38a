"""The phase transition checklist: is this bot ready for its next phase?

Computed from the ledger of the phase it runs in (decisions, vetoes, orders, the equity
curve, the last snapshot, the last reconciliation) and its log file. Each automated line
is pass or fail with the value measured; the manual sign-offs are listed unticked, for a
human. ``quantshift phase check`` exits 0 only when every automated line passes.

The thresholds are the deployment plan's:

==============================  ==========================================================
line                            passes when
==============================  ==========================================================
hours healthy                   the ledger covers at least the phase's minimum hours
                                (observation 24, dry run 168, micro-capital 336)
ERROR lines                     the log has none
signals generated               more than zero
risk vetoes                     more than zero (the gate was seen to fire)
paper drawdown                  the maximum drawdown stayed under 20 %
decision latency p99            under 100 ms (from the last snapshot's histogram)
P&L                             positive, or explained (``--explained "why"``)
orders executed correctly       live phases: no rejected order, none stuck open > 1 h
positions match the venue       live phases: the last reconciliation found no difference
not demoted                     no automatic rollback trigger holds the bot
==============================  ==========================================================
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from quantshift.domain import Phase
from quantshift.settings import Settings
from quantshift.shadow.guard import KV_KEY as DEMOTION_KEY
from quantshift.shadow.guard import p99_ms

MIN_HOURS = {Phase.OBSERVATION: 24.0, Phase.DRY_RUN: 168.0, Phase.MICRO_CAPITAL: 336.0,
             Phase.PRODUCTION: 0.0}
MAX_DRAWDOWN = 0.20
MAX_LATENCY_P99_MS = 100.0
MANUAL = {
    Phase.DRY_RUN: ["the strategies' signals were reviewed by hand on a sample of days"],
    Phase.MICRO_CAPITAL: ["broker API keys for live trading are set, with trading "
                          "permission only (no withdrawals)",
                          "the micro-capital account is funded with money you can lose",
                          "QUANTSHIFT_LIVE_CONFIRM is set to the bot's name"],
    Phase.PRODUCTION: ["every micro-capital fill was compared with the broker's statement",
                       "the capital ramp (25/50/75/100 %) and its dates are agreed",
                       "alerts reach a phone (Telegram) and were tested"],
}
_ORDER = [Phase.OBSERVATION, Phase.DRY_RUN, Phase.MICRO_CAPITAL, Phase.PRODUCTION]


@dataclass
class Line:
    name: str
    passed: bool | None  # None: a manual sign-off, unticked
    value: str
    threshold: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def next_phase(phase: Phase) -> Phase | None:
    i = _ORDER.index(phase)
    return _ORDER[i + 1] if i + 1 < len(_ORDER) else None


def log_lines(log_dir: Path, bot: str) -> Iterator[str]:
    """Every line of the bot's log file and its rotated copies."""
    for path in sorted(log_dir.glob(f"quantshift-{bot}.log*")):
        with path.open(encoding="utf-8", errors="replace") as fh:
            yield from fh


def is_error_line(line: str) -> bool:
    """An ERROR or CRITICAL record, in the text or the JSON log format."""
    return "| ERROR " in line or "| CRITICAL" in line or '"level":"ERROR"' in line


def count_error_lines(log_dir: Path, bot: str) -> int:
    return sum(1 for line in log_lines(log_dir, bot) if is_error_line(line))


def checklist(settings: Settings, target: Phase | None = None,
              explained: str | None = None) -> tuple[Phase | None, list[Line]]:
    phase = settings.phase
    target = target or next_phase(phase)
    path = settings.ledger_path()
    facts = ledger_facts(path)
    lines: list[Line] = []
    want = MIN_HOURS[phase]
    lines.append(Line("hours healthy", facts["hours"] >= want and not facts["demoted"],
                      f"{facts['hours']:.1f} h", f">= {want:g} h in {phase.value}"))
    errors = count_error_lines(settings.log_dir, settings.bot)
    lines.append(Line("ERROR lines", errors == 0, str(errors), "0"))
    lines.append(Line("signals generated", facts["signals"] > 0, str(facts["signals"]), "> 0"))
    lines.append(Line("risk vetoes", facts["vetoes"] > 0, str(facts["vetoes"]), "> 0"))
    dd = facts["max_drawdown"]
    lines.append(Line("paper drawdown", dd < MAX_DRAWDOWN, f"{dd:.1%}",
                      f"< {MAX_DRAWDOWN:.0%}"))
    p99 = facts["latency_p99_ms"]
    lines.append(Line("decision latency p99", p99 is not None and p99 < MAX_LATENCY_P99_MS,
                      "no decisions timed" if p99 is None else f"{p99:g} ms",
                      f"< {MAX_LATENCY_P99_MS:g} ms"))
    pnl = facts["pnl"]
    lines.append(Line("P&L positive or explained", pnl > 0 or bool(explained),
                      f"{pnl:.2f}" + (f" (explained: {explained})" if explained else ""),
                      "> 0, or --explained"))
    if phase in (Phase.MICRO_CAPITAL, Phase.PRODUCTION):
        bad = facts["rejected"] + facts["unfinished"]
        lines.append(Line("orders executed correctly", bad == 0,
                          f"{facts['rejected']} rejected, {facts['unfinished']} unfinished "
                          f"of {facts['orders']}", "0 rejected, 0 unfinished"))
        mism = facts["mismatches"]
        lines.append(Line("positions match the venue", facts["reconciled"] and not mism,
                          "never reconciled" if not facts["reconciled"]
                          else (", ".join(mism) or "match"), "match"))
    lines.append(Line("not demoted", not facts["demoted"], facts["demoted"] or "no", "no"))
    if settings.compare_against:
        from quantshift.shadow.against import MAX_DIVERGENCE, production_line

        ok, text = production_line(settings)
        lines.append(Line("comparison to production", ok, text,
                          f"<= {MAX_DIVERGENCE:.0%} of decisions differ"))
    for text in MANUAL.get(target, []) if target else []:
        lines.append(Line(text, None, "manual sign-off", "a human ticks it"))
    return target, lines


def ledger_facts(path: Path) -> dict[str, Any]:
    """What the checklist (and the daily report) read from a ledger, read-only."""
    facts: dict[str, Any] = {"hours": 0.0, "signals": 0, "vetoes": 0, "max_drawdown": 0.0,
                             "latency_p99_ms": None, "pnl": 0.0, "orders": 0, "rejected": 0,
                             "unfinished": 0, "mismatches": [], "reconciled": False,
                             "demoted": ""}
    if not path.is_file():
        return facts
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        one = lambda sql: db.execute(sql).fetchone()  # noqa: E731
        first = one("SELECT min(ts_ns) FROM equity")[0] or one("SELECT value FROM meta "
                                                              "WHERE key = 'created_ns'")[0]
        last = one("SELECT max(ts_ns) FROM equity")[0]
        if first and last:
            facts["hours"] = (int(last) - int(first)) / 3.6e12
        facts["signals"] = one("SELECT count(*) FROM decisions")[0]
        facts["vetoes"] = one("SELECT count(*) FROM vetoes")[0]
        facts["max_drawdown"] = one("SELECT coalesce(max(drawdown), 0) FROM equity")[0]
        facts["orders"] = one("SELECT count(*) FROM intents")[0]
        facts["rejected"] = one("SELECT count(*) FROM orders WHERE state = 'rejected'")[0]
        # Open for more than an hour before the ledger's last word: stuck, not resting.
        cutoff = int(last or 0) - 3_600 * 10**9
        facts["unfinished"] = db.execute(
            "SELECT count(*) FROM orders WHERE state IN ('new', 'submitted', "
            "'partially_filled') AND updated_ns < ?", (cutoff,)).fetchone()[0]
        snap = one("SELECT state FROM snapshots ORDER BY id DESC LIMIT 1")
        kv = dict(db.execute("SELECT key, value FROM kv WHERE key IN ('reconcile_last', ?)",
                             (DEMOTION_KEY,)).fetchall())
    finally:
        db.close()
    if snap is not None:
        state = orjson.loads(snap[0])
        pf = state["portfolio"]
        facts["pnl"] = float(pf.get("equity", 0.0)) - float(pf.get("initial_cash", 0.0))
        facts["max_drawdown"] = max(facts["max_drawdown"], float(pf.get("max_drawdown", 0)))
        counts = state.get("latency_counts")
        if counts and sum(counts):
            facts["latency_p99_ms"] = p99_ms(counts)
    if "reconcile_last" in kv:
        facts["reconciled"] = True
        facts["mismatches"] = sorted(orjson.loads(kv["reconcile_last"]).get("mismatches", {}))
    demotion = orjson.loads(kv[DEMOTION_KEY]) if DEMOTION_KEY in kv else None
    facts["demoted"] = demotion.get("reason", "yes") if demotion else ""
    return facts
