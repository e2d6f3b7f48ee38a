"""The status as the operator reads it in a terminal (``quantshift status``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["render_status"]


def _money(value: Any) -> str:
    return f"{value:,.2f}" if isinstance(value, int | float) else "-"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "no bar yet"
    if seconds < 120:
        return f"last bar {seconds:.1f}s ago"
    return f"last bar {seconds / 60:.0f} min ago"


def _uptime(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    d, h = divmod(h, 24)
    return f"{d}d {h}h {m}m" if d else f"{h}h {m}m {s}s" if h else f"{m}m {s}s"


def _rows(st: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    ex = st.get("executor") or {}
    if st.get("phase"):
        rows.append(("phase", str(st["phase"])))
    rows.append(("executor", f"{ex.get('kind') or '-'}"
                 + (f": {ex['description']}" if ex.get("description") else "")))
    trading = st.get("trading") or {}
    state = str(trading.get("state", "-"))
    reason = trading.get("reason")
    rows.append(("trading", state.upper() if state != "active" else state)
                if not reason else ("trading", f"{state.upper()} ({reason})"))
    if st.get("source") == "daemon":
        ready = "yes" if st.get("ready") else "no: " + "; ".join(st.get("not_ready", []))
        rows.append(("ready", ready))
        feed = st.get("feed") or {}
        stale = f"; STALE: {feed['stale']}" if feed.get("stale") else ""
        idle = "; idle (market closed)" if feed.get("idle") else ""
        rows.append(("feed", f"{feed.get('name')}, {_age(feed.get('staleness_seconds'))}"
                             f"{stale}{idle}"))
    elif st.get("snapshot_at"):
        rows.append(("snapshot", f"{st['snapshot_at']}"))
    pf = st.get("portfolio") or {}
    if pf:
        rows += [("cash", _money(pf.get("cash"))), ("equity", _money(pf.get("equity"))),
                 ("day P&L", _money(pf.get("day_pnl"))),
                 ("realized P&L", _money(pf.get("realized_pnl"))),
                 ("drawdown", f"{pf.get('drawdown', 0.0) * 100:.2f}%")]
    orders = st.get("orders") or {}
    rows.append(("orders", f"{orders.get('open', 0)} open, {orders.get('in_flight', 0)} in "
                           "flight"))
    risk = st.get("risk")
    if risk:
        rows.append(("risk", f"regime {risk.get('regime')}, trades today "
                             f"{risk.get('trades_today')}, last hour "
                             f"{risk.get('trades_last_hour')}, capital share "
                             f"{risk.get('capital_share', 1.0):.0%}"))
    for v in st.get("strategies", []):
        rows.append((f"strategy {v['strategy']}", f"{v['version']} {v['status']}, canary "
                                                  f"{v['canary_percent']}%"))
    if st.get("demoted"):
        rows.append(("demoted", st.get("demoted_reason") or "yes"))
    err = st.get("last_error")
    if err:
        rows.append(("last error", f"{err['time']} [{err['component']}] {err['message']}"))
    return rows


def render_status(st: dict[str, Any], console: Console, note: str = "") -> None:
    if st.get("source") == "daemon":
        where = (f"from the running daemon (pid {st.get('pid')}, up "
                 f"{_uptime(st.get('uptime_seconds', 0))}, version {st.get('version')})")
    else:
        where = f"from the state file {st.get('state_file')}"
    # soft_wrap: the source line stays one line, whatever the terminal's width.
    console.print(Text(f"quantshift {st.get('bot')}: {where}"), soft_wrap=True)
    if note:
        console.print(Text(note), soft_wrap=True)
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in _rows(st):
        table.add_row(Text(key), Text(value))  # Text: no markup read from reasons
    console.print(table)
    held = st.get("positions") or []
    if held:
        pos = Table(title="positions", title_justify="left")
        for col in ("symbol", "strategy", "qty", "avg price", "mark", "unrealized"):
            pos.add_column(col, justify="left" if col in ("symbol", "strategy") else "right")
        for p in held:
            pos.add_row(Text(p["symbol"]), Text(p["strategy"]), f"{p['qty']:g}",
                        _money(p["avg_price"]), _money(p["mark"]), _money(p["unrealized"]))
        console.print(pos)
    else:
        console.print(Text("no open positions"))
