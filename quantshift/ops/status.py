"""What the operator sees: the daemon's status, its readiness, its start-up report in the
log, and whether a restart can hurt right now. Read on the loop from the daemon's own
objects; nothing here writes.

The same status shape comes from the state file when the daemon is down
(``quantshift.ops.statefile``), so the CLI prints both the same way.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from datetime import UTC, datetime
from datetime import time as dtime
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from quantshift import __version__
from quantshift.strategies.base import DEFAULT_VERSION

if TYPE_CHECKING:  # ops is used by the daemon, never the reverse
    from quantshift.control import ControlPlane
    from quantshift.engine import Engine
    from quantshift.feeds.base import Feed
    from quantshift.ops.logging import LastError
    from quantshift.risk.profiles import RiskLimits
    from quantshift.settings import Settings
    from quantshift.shadow.guard import Guard
    from quantshift.shadow.runtime import VersionControl
    from quantshift.state.journal import Journal


class DaemonView(Protocol):
    """What the operator's views read of a running daemon (read only)."""

    settings: Settings
    engine: Engine | None
    feed: Feed | None
    journal: Journal | None
    control: ControlPlane | None
    guard: Guard | None
    version_control: VersionControl | None
    last_error: LastError
    should_exit: bool
    reconciled: bool

    @property
    def started_at(self) -> float: ...

    @property
    def needs_reconcile(self) -> bool: ...

    def feed_running(self) -> bool: ...


def strategy_versions(settings: Settings) -> list[dict[str, Any]]:
    """Each strategy's configured active version (the running daemon's registry says more;
    this is what the state file can tell when the daemon is down)."""
    return [{"strategy": spec.key, "name": spec.name, "version": DEFAULT_VERSION,
             "status": "active", "canary_percent": 0} for spec in settings.strategies]


def ready_reasons(d: DaemonView) -> list[str]:
    """Why the daemon is not ready to trade; empty when it is."""
    engine, feed = d.engine, d.feed
    if d.should_exit:
        return ["shutting down"]
    if engine is None:
        return ["starting"]
    reasons: list[str] = []
    if d.needs_reconcile and not d.reconciled:
        reasons.append("reconciliation with the broker not done yet")
    if feed is None:
        reasons.append("feed not started yet")
    elif not d.feed_running():
        reasons.append(f"feed {feed.name} is not running")
    elif engine.control.stale is not None:
        reasons.append(f"feed {feed.name} is stale: {engine.control.stale}")
    elif not feed.last_bar_at and not getattr(feed, "idle", False) and feed.bar_seconds > 0:
        reasons.append(f"feed {feed.name}: no bar yet")
    view = engine.control.view()
    if view.demoted:
        reasons.append(f"demoted: {view.demoted_reason or 'no reason given'}")
    health = d.journal.health if d.journal is not None else None
    if health is not None and not health.healthy:
        reasons.append(f"the journal cannot be written ({health.last_error}); "
                       f"{health.queued} rows wait in memory")
    account = engine.control.account
    if account is not None and not account.up:
        reasons.append(f"shared store {account.where} unreachable ({account.last_error}); "
                       "the account's halts do not reach this instance")
    return reasons


def build_status(d: DaemonView) -> dict[str, Any]:
    """The daemon's status as a JSON-ready dict (GET /status)."""
    s = d.settings
    engine, feed = d.engine, d.feed
    now = time.monotonic()
    not_ready = ready_reasons(d)
    view = engine.control.view() if engine is not None else None
    out: dict[str, Any] = {
        "source": "daemon", "bot": s.bot, "version": __version__, "phase": s.phase.value,
        "pid": os.getpid(), "uptime_seconds": round(now - d.started_at, 3),
        "ready": not not_ready, "not_ready": not_ready,
        "demoted": bool(view and view.demoted),
        "demoted_reason": view.demoted_reason if view else "",
        "last_error": d.last_error.last,
        "strategies": d.version_control.status() if d.version_control is not None
        else strategy_versions(s),
        # The file and the journal differ here; QUANTSHIFT_VERSIONS_FROM said which won.
        "version_differences": [diff.to_dict() for diff in d.version_control.differences]
        if d.version_control is not None else [],
        "versions_from": s.versions_from,
        "guard": d.guard.last_reasons if d.guard is not None else [],
        "market_hours": s.feed == "alpaca",
    }
    if feed is not None:
        out["feed"] = {
            "name": feed.name, "running": d.feed_running(),
            "staleness_seconds": round(now - feed.last_bar_at, 3) if feed.last_bar_at else None,
            "stale": view.stale if view is not None else None,
            "idle": bool(getattr(feed, "idle", False)),
        }
        if hasattr(feed, "source"):  # shared by the bot's instances (feeds/shared.py)
            out["feed"]["shared"] = {
                "source": bool(feed.source), "holder": getattr(feed, "holder", "") or None,
                "published": getattr(feed, "published", 0), "read": getattr(feed, "read", 0)}
    else:
        out["feed"] = {"name": s.feed, "running": False, "staleness_seconds": None,
                       "stale": None, "idle": False}
    if engine is None or view is None:
        return out
    gate, pf = engine.gate, engine.portfolio
    out["executor"] = {"kind": view.executor, "description": view.description}
    out["trading"] = {"state": view.state.value, "reason": view.reason}
    out["bars"] = engine.bars
    out["portfolio"] = {
        "cash": pf.cash, "equity": pf.equity, "day_pnl": pf.day_pnl,
        "realized_pnl": pf.realized_pnl, "unrealized_pnl": pf.unrealized_pnl(),
        "drawdown": pf.drawdown, "max_drawdown": pf.max_drawdown, "exposure": pf.exposure(),
    }
    out["positions"] = positions(pf.positions.values(), pf.marks)
    broker = engine.control.real_executor
    legs = getattr(broker, "open_legs", None)
    # A bracket's legs rest at the venue on purpose (they protect a position): shown, but
    # not an order in the way of a restart.
    # While demoted the engine's executor is log-only; the broker's orders still count.
    out["orders"] = {"open": len(broker.open_orders()) if broker is not None else 0,
                     "in_flight": engine.in_flight(),
                     "protective_legs": len(legs()) if legs is not None else 0}
    out["risk"] = gate.status()
    if d.journal is not None:
        out["journal"] = asdict(d.journal.health)
    account = engine.control.account
    if account is not None:
        out["account"] = account.view()
        out["instance"] = account.instance
    lease = engine.control.lease
    if lease is not None:
        # primary only once the takeover is done: until then nothing of it goes out
        out["role"] = "primary" if engine.control.lease_refusal() is None else "standby"
        out["lease_epoch"] = lease.epoch
        out["lease"] = {**lease.view(), "role": out["role"],
                        "primary_since_ns": engine.control.leading_since_ns}
    return out


def positions(held: Any, marks: dict[str, float]) -> list[dict[str, Any]]:
    """Open positions with their marks and unrealized P&L, from Position-like objects."""
    rows = []
    for p in held:
        if not p.qty:
            continue
        mark = marks.get(p.symbol, p.avg_price)
        rows.append({"strategy": p.strategy, "symbol": p.symbol, "qty": p.qty,
                     "avg_price": p.avg_price, "mark": mark,
                     "unrealized": p.qty * (mark - p.avg_price)})
    return sorted(rows, key=lambda r: (r["symbol"], r["strategy"]))


# -- the start-up report (the log) ----------------------------------------------------
def log_starting(d: DaemonView, lim: RiskLimits) -> None:
    """What starts: version, bot, phase and executor, and the risk profile in force."""
    s, engine = d.settings, d.engine
    assert engine is not None and engine.executor is not None
    executor = engine.executor
    logger.info("quantshift {} starting: bot={} phase={} executor={}: {}", __version__,
                s.bot, s.phase.value, executor.kind.value, executor.description)
    logger.info("risk profile {}: position <= {:g}, exposure <= {:g}, open positions <= {}, "
                "daily loss <= {:g}, trades/day <= {} (0 = no limit); sizing {}",
                s.phase.value, lim.max_position_notional, lim.max_exposure,
                lim.max_open_positions, lim.max_daily_loss, lim.max_trades_per_day,
                s.sizing)


def log_restored(d: DaemonView, restored: dict[str, Any]) -> None:
    """What the journal gave back; a halt that outlives the restart is said loudly."""
    engine, journal = d.engine, d.journal
    assert engine is not None and journal is not None
    pf = engine.portfolio
    logger.info("state {}: {}; cash {:.2f}, equity {:.2f}, realized P&L {:.2f}, "
                "{} open positions, {} fills replayed after it, {} open orders, trading {}",
                journal.path, "restored from snapshot" if restored["snapshot"] else "new",
                pf.cash, pf.equity, pf.realized_pnl, pf.open_symbols(),
                restored["fills_replayed"], restored["open_orders"], engine.control.state.value)
    if restored["halted"]:
        logger.warning("trading stays HALTED ({}): no new orders until resumed",
                       engine.control.reason)


def log_feed(d: DaemonView) -> None:
    s, feed = d.settings, d.feed
    assert feed is not None
    where = s.replay_file if s.feed == "replay" else f"bars every {feed.bar_seconds:g}s"
    logger.info("feed {} ({}), symbols {}, strategies {}", feed.name, where,
                "from the file" if s.feed == "replay" else ",".join(s.symbols),
                ",".join(spec.key for spec in s.strategies))


def log_started(d: DaemonView) -> None:
    """The start alert: what runs, and a demotion the restart came back with."""
    s, engine, feed = d.settings, d.engine, d.feed
    assert engine is not None and engine.executor is not None and feed is not None
    view = engine.control.view()
    logger.bind(alert="start").info("started: {} executor ({}), feed {}, {} symbols{}",
                                    engine.executor.kind.value, s.phase.value, feed.name,
                                    len(s.symbols),
                                    "; DEMOTED: " + view.demoted_reason if view.demoted else "")


# -- restarts -------------------------------------------------------------------------
def parse_window(window: str) -> tuple[dtime, dtime]:
    start, _, end = window.partition("-")
    return dtime.fromisoformat(start), dtime.fromisoformat(end)


def in_quiet_window(window: str | None, now: datetime) -> bool:
    """Whether ``now`` (UTC) lies in the HH:MM-HH:MM window; it may wrap past midnight."""
    if not window:
        return False
    start, end = parse_window(window)
    t = now.astimezone(UTC).time().replace(tzinfo=None)
    return start <= t < end if start < end else (t >= start or t < end)


def restart_blockers(status: dict[str, Any], quiet_window: str | None,
                     now: datetime | None = None) -> list[str]:
    """What makes a restart harmful now; empty when it cannot hurt.

    Orders a restart would interrupt always count. For equities a running daemon also
    needs the market closed (or the quiet window), since a restart in session misses
    bars; a stopped daemon has no session to interrupt.
    """
    now = now or datetime.now(UTC)
    orders = status.get("orders") or {}
    reasons: list[str] = []
    if orders.get("open"):
        reasons.append(f"{orders['open']} open order(s)")
    if orders.get("in_flight"):
        reasons.append(f"{orders['in_flight']} intent(s) in flight (not acknowledged yet)")
    if status.get("source") == "daemon" and status.get("market_hours") \
            and not in_quiet_window(quiet_window, now):
        market_open = (status.get("risk") or {}).get("market_open")
        if market_open is not False:
            where = "the market is open" if market_open else \
                "the market may be open (the venue's clock is not known yet)"
            window = f"outside the quiet window {quiet_window} UTC" if quiet_window else \
                "and no QUANTSHIFT_QUIET_WINDOW is set"
            reasons.append(f"{where}, {window}")
    return reasons
