"""Compare to production: two instances' decisions lined up bar by bar.

Each instance of an account streams its decisions (state/shared.py). A decision is keyed by
(bar time, symbol, strategy, version); two instances that saw the same bars with the same
code decide the same. Only the bars both streams cover are compared (one instance started
later or stopped earlier is no divergence); within them a decision one side has and the
other lacks, or a different signal, outcome or order, is a divergence.

Over the same window, what the decisions came to in money: each side's *paper* P&L (every
order of a decision filled at that bar's close, all marked at the window's last closes),
and each side's P&L from its real fills (its executor's, for the orders decided in the
window), with their slippage against the decision's close. A shadow has no fills; its
paper P&L beside the primary's fills is "what the new code would have made".
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

Key = tuple[int, str, str, str]
# The same code on the same bars decides the same: beyond this share something else differs.
MAX_DIVERGENCE = 0.05


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
    money: dict[str, Any] = field(default_factory=dict)  # see ``money``
    rows: tuple[list[dict[str, str]], list[dict[str, str]]] = ([], [])  # what was read

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
                "money": self.money, "examples": self.differ[:examples]}


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


# -- money --------------------------------------------------------------------------------
class _Book:
    def __init__(self) -> None:
        self.qty: dict[str, float] = {}
        self.cash = 0.0
        self.orders = 0

    def trade(self, symbol: str, side: str, qty: float, price: float, fee: float = 0.0) -> None:
        signed = qty if side == "buy" else -qty
        self.qty[symbol] = self.qty.get(symbol, 0.0) + signed
        self.cash -= signed * price + fee
        self.orders += 1

    def pnl(self, marks: dict[str, float]) -> float:
        return self.cash + sum(q * marks.get(s, 0.0) for s, q in self.qty.items())


def _paper(rows: list[dict[str, str]], lo: int, hi: int, marks: dict[str, float]) -> _Book:
    book = _Book()
    for r in rows:
        try:
            ts, price = int(r["ts"]), float(r.get("price") or "nan")
        except (KeyError, ValueError):
            continue
        if not lo <= ts <= hi or price != price:  # outside, or a row without a price
            continue
        marks[r["symbol"]] = price
        for order in filter(None, (r.get("orders") or "").split(",")):
            side, _, qty = order.strip().partition(" ")
            try:
                book.trade(r["symbol"], side, float(qty), price)
            except ValueError:
                continue
    return book


def _fills(rows: list[dict[str, str]], lo: int, hi: int,
           closes: dict[tuple[int, str, str], float]) -> tuple[_Book, list[float]]:
    book, slips = _Book(), []
    for r in rows:
        try:
            ts, qty, price = int(r["ts"]), float(r["qty"]), float(r["price"])
            fee = float(r.get("commission") or 0.0)
        except (KeyError, ValueError):
            continue
        if not lo <= ts <= hi:
            continue
        book.trade(r["symbol"], r["side"], qty, price, fee)
        close = closes.get((ts, r["symbol"], r["strategy"]))
        if close:  # positive: the fill cost more than the decision's close
            sign = 1.0 if r["side"] == "buy" else -1.0
            slips.append(sign * (price - close) / close * 10_000)
    return book, slips


def money(d: Divergence, mine_rows: list[dict[str, str]], their_rows: list[dict[str, str]],
          mine_fills: list[dict[str, str]], their_fills: list[dict[str, str]]) -> dict[str, Any]:
    """Paper P&L of each side's decisions and real P&L of each side's fills, in the window
    ``d`` compared (set on ``d.money``, and returned)."""
    if d.window_ns is None:
        return {}
    lo, hi = d.window_ns
    marks: dict[str, float] = {}
    rows_of = {d.mine: (mine_rows, mine_fills), d.against: (their_rows, their_fills)}
    papers = {name: _paper(rows, lo, hi, marks) for name, (rows, _) in rows_of.items()}
    out: dict[str, Any] = {}
    for name, (rows, fills) in rows_of.items():
        closes = {}
        for r in rows:
            with contextlib.suppress(KeyError, ValueError):
                closes[(int(r["ts"]), r["symbol"], r["strategy"])] = float(r["price"])
        real, slips = _fills(fills, lo, hi, closes)
        out[name] = {"paper_pnl": round(papers[name].pnl(marks), 2),
                     "paper_orders": papers[name].orders, "fills": real.orders,
                     "fills_pnl": round(real.pnl(marks), 2) if real.orders else None,
                     "slippage_bps": round(sum(slips) / len(slips), 2) if slips else None}
    d.money = out
    return out


def read_comparison(settings: Any, mine: str, against: str) -> Divergence:
    """This instance's decisions and fills against another's, read from the account's
    streams in Redis (``compare --against``, the daily report, the phase check). Raises
    ConfigError for a Redis setting that cannot work, OSError when Redis does not answer."""
    import asyncio

    from quantshift.app import open_account

    async def read() -> list[list[dict[str, str]]]:
        store = open_account(settings, None)
        try:
            await store.open(lambda doc, live: None)
            if not store.up:
                raise OSError(f"shared store {store.where} unreachable ({store.last_error})")
            return [await store.decisions(name, stream=stream) for stream in
                    ("decisions", "fills") for name in (mine, against)]
        finally:
            await store.close()

    a, b, fills_a, fills_b = asyncio.run(read())
    d = compare_streams(mine, a, against, b)
    money(d, a, b, fills_a, fills_b)
    d.rows = (a, b)
    return d


def production_line(settings: Any) -> tuple[bool, str]:
    """The "comparison to production" of the report and the phase check, with
    ``QUANTSHIFT_COMPARE_AGAINST``: (whether the divergence is within MAX_DIVERGENCE, False
    when it cannot be told: no evidence is no pass; what it is, in words)."""
    against = settings.compare_against
    if not against or settings.redis_url is None:
        return False, "no production instance to compare with (QUANTSHIFT_COMPARE_AGAINST)"
    try:
        d = read_comparison(settings, settings.instance_name, against)
    except Exception as exc:  # the report and the check go on; the line says why
        return False, f"cannot compare with {against}: {exc}"
    if not d.compared:
        return False, f"no bars in common with {against} yet"
    mine, theirs = d.money.get(d.mine, {}), d.money.get(against, {})
    text = (f"{d.ratio:.1%} of {d.compared} decisions differ from {against}; paper P&L "
            f"{mine.get('paper_pnl', 0):,.2f} against {against}'s "
            f"{theirs.get('paper_pnl', 0):,.2f}")
    if theirs.get("fills"):
        text += f" (its real fills: {theirs['fills_pnl']:,.2f})"
    return d.ratio <= MAX_DIVERGENCE, text
