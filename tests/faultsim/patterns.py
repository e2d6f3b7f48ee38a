"""Every line of the daemon's log the simulator relies on, in one place.

The engineers changing the daemon keep these lines (or change them here too): the race
triggers fire on them, and invariant 4 reads the restarts' trading state from them.
"""

from __future__ import annotations

import re
import time

PATTERNS: dict[str, str] = {
    # start-up and shutdown
    "ready": r"\| ready$",
    "http_serving": r"\| http: serving ",
    "restored": r"\| state .*: (new|restored from snapshot);",
    "halted_at_start": r"trading stays HALTED",
    "demoted_at_start": r"\| started: .*; DEMOTED: ",
    "shutdown_complete": r"\| shutdown complete in ",
    # the order path (race-seeking triggers)
    "signal": r"\| signal \S+ \S+ (LONG|SHORT|FLAT)",
    "outcome_unknown": r"outcome unknown",
    "looking_up": r"looking it up",
    "resubmitted": r"\b[1-9]\d* resubmitted",
    "rate_limited": r"rate limited by ",
    "reconcile": r"\breconcile\b",
    "fill": r"\| fill (buy|sell) ",
    "partially_filled": r"\| order \S+ partially_filled",
    "cancelled": r"\| order \S+ cancelled",
    "stream_interrupted": r"order updates from \S+ interrupted",
    "halt_logged": r"trading halted: ",
    "demoted": r"DEMOTED to log-only",
    "crashed": r"component \S+ crashed; stopping the daemon",
}

# The patterns a generated schedule may wait for (the others are read, not waited on).
TRIGGERS = ("signal", "outcome_unknown", "looking_up", "resubmitted", "rate_limited",
            "reconcile", "fill", "partially_filled", "cancelled", "stream_interrupted",
            "halt_logged")

TRACEBACK = "Traceback (most recent call last)"

COMPILED: dict[str, re.Pattern[str]] = {name: re.compile(rx, re.M)
                                        for name, rx in PATTERNS.items()}


def found(name: str, text: str) -> bool:
    return COMPILED[name].search(text) is not None


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(\.\d{3})", re.M)


def line_time(text: str, pos: int) -> float | None:
    """The time stamp (epoch seconds) of the log line at ``pos``: the daemon logs local
    time to the millisecond."""
    m = _STAMP.match(text, text.rfind("\n", 0, pos) + 1)
    if not m:
        return None
    return time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + float(m.group(2))
