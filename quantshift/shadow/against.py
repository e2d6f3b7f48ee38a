"""Compare to production: two instances' decisions lined up bar by bar.

Each instance of an account streams its decisions (state/shared.py). A decision is keyed by
(bar time, symbol, strategy, version); two instances that saw the same bars with the same
code decide the same. Only the bars both streams cover are compared (one instance started
later or stopped earlier is no divergence); within them a decision one side has and the
other lacks, or a different signal, outcome or order, is a divergence.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

Key = tuple[int, str, str, str]


@dataclass
class Divergence:
    mine: str
    against: str
    compared: int = 0  # decisions in the common window, either side
    same: int = 0
    differ: list[dict[str, Any]] = field(default_factory=list)
    only_mine: int = 0
    only_theirs: int = 0
    window_ns: tuple[int, int] | None = None
    why: Counter[str] = field(default_factory=Counter)

    @property
    def ratio(self) -> float:
        """The share of the common window's decisions that differ (0 when none to
        compare)."""
        return (self.compared - self.same) / self.compared if self.compared else 0.0

    def as_dict(self, examples: int = 20) -> dict[str, Any]:
        return {"instance": self.mine, "against": self.against, "compared": self.compared,
                "same": self.same, "divergence_ratio": round(self.ratio, 6),
                "only_mine": self.only_mine, "only_theirs": self.only_theirs,
                "differ": len(self.differ), "why": dict(self.why.most_common()),
                "window_ns": list(self.window_ns) if self.window_ns else None,
                "examples": self.differ[:examples]}


def _keyed(rows: list[dict[str, str]]) -> dict[Key, dict[str, str]]:
    out = {}
    for r in rows:
        try:
            out[(int(r["ts"]), r["symbol"], r["strategy"], r.get("version", ""))] = r
        except (KeyError, ValueError):
            continue  # a row this release cannot read is no decision to compare
    return out


def compare_streams(mine: str, mine_rows: list[dict[str, str]], against: str,
                    their_rows: list[dict[str, str]]) -> Divergence:
    a, b = _keyed(mine_rows), _keyed(their_rows)
    out = Divergence(mine, against)
    if not a or not b:
        return out
    lo = max(min(k[0] for k in a), min(k[0] for k in b))
    hi = min(max(k[0] for k in a), max(k[0] for k in b))
    if lo > hi:
        return out
    out.window_ns = (lo, hi)
    keys = {k for k in (*a, *b) if lo <= k[0] <= hi}
    for k in sorted(keys):
        x, y = a.get(k), b.get(k)
        out.compared += 1
        if x is None or y is None:
            if x is None:
                out.only_theirs += 1
            else:
                out.only_mine += 1
            out.why["decided on one side only"] += 1
            out.differ.append(_row(k, x, y))
            continue
        what = [f for f in ("target", "outcome", "orders") if x.get(f) != y.get(f)]
        if not what:
            out.same += 1
            continue
        out.why[f"{'/'.join(what)} differ"] += 1
        out.differ.append(_row(k, x, y))
    return out


def _row(k: Key, x: dict[str, str] | None, y: dict[str, str] | None) -> dict[str, Any]:
    def side(r: dict[str, str] | None) -> dict[str, str] | None:
        if r is None:
            return None
        return {f: r.get(f, "") for f in ("target", "outcome", "reason", "orders")}

    return {"ts": k[0], "symbol": k[1], "strategy": k[2], "version": k[3],
            "mine": side(x), "theirs": side(y)}
