"""The daemon's periodic work: what its tasks do between bars, on a timer.

Reconciliation with the venue, the guard's health check, the adaptive canary, the feed's
staleness check, journal flushes, snapshots, the status line, the systemd watchdog, and the
Telegram alerter's start and stop. The daemon (``quantshift/daemon.py``) keeps the
lifecycle: it spawns these from ``startup`` with :func:`every` and reads the tasks' ends in
``main_loop``; an exception out of one ends its task, which stops the daemon, so each
catches what is transient (a venue's hiccup, a journal that cannot be written) itself.

Each takes what it works on; a change of the trading state is a command to the control
plane, never an attribute set here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor as ThreadPool
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from loguru import logger

from quantshift.control import ControlPlane, Halt, MarkStale, Source
from quantshift.domain import TradingState
from quantshift.execution.broker import BrokerExecutor
from quantshift.execution.venues.base import VenueError
from quantshift.ops.notify import TelegramAlerter, build_alerter

if TYPE_CHECKING:  # ops is used by the daemon, never the reverse
    from quantshift.engine import Engine
    from quantshift.feeds.base import Feed
    from quantshift.settings import Settings
    from quantshift.shadow.books import VersionBooks
    from quantshift.shadow.guard import Guard
    from quantshift.shadow.runtime import VersionControl
    from quantshift.state.journal import Journal
    from quantshift.state.shared import AccountStore

Action = Callable[[], Awaitable[None]]


async def every(interval: float, action: Action) -> None:
    """Run ``action()`` every ``interval`` seconds, the first time after one interval."""
    while True:
        await asyncio.sleep(interval)
        await action()
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise asyncio.CancelledError  # one a library's await swallowed (aio.py)


# -- the broker ------------------------------------------------------------------------
async def reconcile(control: ControlPlane, engine: Engine, guard: Guard | None,
                    commit: Action, at_start: bool = False) -> None:
    """Compare the venue with the journal; a difference that cannot be explained halts. A
    venue that does not answer (429, 5xx, timeouts, after retries) ends the round: counted,
    logged, tried again next time; at start-up it is the caller's to decide."""
    executor = control.real_executor  # a demotion keeps reconciling
    assert isinstance(executor, BrokerExecutor)
    if not at_start and executor.open_orders():
        return  # fills in flight would look like a difference; try again next time
    if not at_start and not control.leading():
        return  # a standby: the positions at the venue are the primary's
    try:
        report = await executor.reconcile(lambda: dict(engine.portfolio.net),
                                          engine.known_ids())
        if report.mismatches and not at_start:  # an update may still be on its way
            await asyncio.sleep(2.0)
            report = await executor.reconcile(lambda: dict(engine.portfolio.net),
                                              engine.known_ids())
    except VenueError as exc:
        if at_start:
            raise
        logger.warning("reconcile with {} incomplete ({}); trying again in the next round",
                       executor.venue.name, exc)
        return
    summary = {"at_start": at_start, "looked_up": report.looked_up,
               "fills_applied": report.fills_applied, "resubmitted": report.resubmitted,
               "cancelled": report.cancelled, "held": report.held,
               "unresolved": report.unresolved, "adopted": report.adopted,
               "unknown": report.unknown,
               "mismatches": {k: list(v) for k, v in report.mismatches.items()}}
    engine.journal.set("reconcile_last", summary)
    if report.mismatches:
        sides = "; ".join(f"{sym}: journal {mine:g}, venue {theirs:g}"
                          for sym, (mine, theirs) in report.mismatches.items())
        logger.bind(alert="reconcile").error("reconcile: positions differ from {} ({}); "
                                             "halting", executor.venue.name, sides)
        if guard is not None:
            guard.note_mismatch(sides)
        if control.state is not TradingState.HALTED:
            control.apply(Halt(reason=f"reconciliation: positions differ ({sides})",
                               by="reconcile", source=Source.RULE))
    elif at_start or report.fills_applied or report.unknown or report.adopted:
        logger.info("reconcile with {}: {} orders looked up, {} with fills applied, {} "
                    "resubmitted, {} held back, {} cancelled, {} unresolved, {} unknown at "
                    "the venue; positions agree", executor.venue.name, report.looked_up,
                    report.fills_applied, report.resubmitted, len(report.held),
                    len(report.cancelled), len(report.unresolved), len(report.unknown))
    try:
        await commit()
    except Exception as exc:
        if at_start:
            raise
        # The rows stay queued; the journal's own flush halts trading on the same error.
        logger.error("reconcile: journal write failed ({}); rows kept in memory", exc)


# -- the guard and the canary ----------------------------------------------------------
async def guard_check(guard: Guard, db_thread: ThreadPool) -> None:
    """Read the health and demote on a trigger; never stops the daemon itself."""
    if guard.control.demoted:
        return
    try:
        n = guard.limits.min_samples
        pnls = await asyncio.get_running_loop().run_in_executor(
            db_thread, guard.version_trades, 5 * n) if guard.limits.win_rate_drop else None
        guard.check(pnls)
    except Exception as exc:
        logger.opt(exception=exc).error("guard: health check failed: {}", exc)


async def adapt_canary(versions: VersionControl) -> None:
    """The opt-in adaptive canary; at most one change a day (the sampler's rule)."""
    try:
        versions.adapt(datetime.now(UTC).date())
    except Exception as exc:  # a sampling failure must not stop trading
        logger.opt(exception=exc).error("adaptive canary failed: {}", exc)


# -- the feed --------------------------------------------------------------------------
async def watch_feed(settings: Settings, feed: Feed, control: ControlPlane,
                     started_at: float) -> None:
    """A feed silent for ``stale_bars`` bar lengths is stale: entries stop until a bar
    comes (the engine tells the control plane on the next bar)."""
    idle = bool(getattr(feed, "idle", False))
    if settings.feed == "alpaca" and settings.market_hours_only:
        # Equities trade only in market hours: the feed follows the venue's clock.
        control.set_market_open(not idle)
    if idle or control.stale is not None:
        return
    since = feed.last_bar_at or started_at
    silent = time.monotonic() - since
    if silent > settings.stale_bars * feed.bar_seconds:
        control.apply(MarkStale(reason=f"no bar from {feed.name} for {silent:.0f}s",
                                by="feed watch"))
        logger.warning("feed {} is stale: no bar for {:.1f}s; entries stop, exits allowed",
                       feed.name, silent)


# -- the journal and the snapshots -----------------------------------------------------
async def flush(journal: Journal, books: VersionBooks | None, db_thread: ThreadPool,
                control: ControlPlane) -> None:
    await flush_books(books, db_thread)  # the version books are a record, not the write-ahead
    if not journal.pending:
        return
    try:
        await asyncio.get_running_loop().run_in_executor(db_thread, journal.flush)
    except Exception as exc:  # the journal keeps the rows and tries again next time
        # Intents must be durable before orders go out: without a journal, stop trading.
        logger.error("journal write failed ({}); rows kept in memory", exc)
        if control.state is not TradingState.HALTED:
            control.apply(Halt(reason=f"journal write failed: {exc}", by="journal",
                               source=Source.LOCAL))


async def flush_books(books: VersionBooks | None, db_thread: ThreadPool) -> None:
    """Write the version books' queued rows (off the loop, on the journal's thread). They
    are a record, not the write-ahead: a failure is logged and the rows wait for the next
    flush; it never stops the daemon."""
    if books is None or not books.pending:  # no thread hop for an idle tick
        return
    try:
        await asyncio.get_running_loop().run_in_executor(db_thread, books.flush)
    except Exception as exc:
        logger.warning("version books: write failed ({}); their rows wait for the next "
                       "flush", exc)


async def snapshot(engine: Engine, books: VersionBooks | None) -> None:
    engine.snapshot()
    if books is not None:
        books.snapshot()


# -- systemd and the status line -------------------------------------------------------
def status_text(engine: Engine | None) -> str:
    if engine is None:
        return "starting"
    pf, c = engine.portfolio, engine.counts
    control = engine.control
    stale = "; feed STALE" if control.stale else ""
    return (f"{control.state.value}{stale}; regime {engine.gate.regime}; bars {engine.bars}, "
            f"signals {c['signals']}, orders "
            f"{c['orders']}, fills {c['fills']}, vetoes {c['vetoed']}; equity "
            f"{pf.equity:.2f}, drawdown {pf.drawdown * 100:.2f}%, positions "
            f"{pf.open_symbols()}")


async def report_account(engine: Engine, account: AccountStore) -> None:
    """This instance's part of the account: its P&L of the day and its gross exposure,
    orders sent and not yet filled included (the caps' script adds each entry at once)."""
    pf = engine.portfolio
    marks = pf.marks
    pending = sum(abs(q) * marks.get(sym, 0.0) for sym, q in engine.pending_by_symbol().items())
    account.report(pf.day, pf.day_pnl, pf.exposure() + pending)


async def compare_against(account: AccountStore, against: str, last: int = 5_000) -> None:
    """The share of the latest decisions that differ from another instance's
    (``quantshift_divergence_ratio``); ``quantshift compare --against`` says where."""
    from quantshift.shadow.against import compare_streams

    try:
        mine = await account.decisions(account.instance, count=last)
        theirs = await account.decisions(against, count=last)
    except Exception as exc:  # Redis away: the link says so; the ratio waits
        logger.debug("compare with {}: {}", against, exc)
        return
    account.divergence[against] = compare_streams(account.instance, mine, against,
                                                  theirs).ratio


async def report_status(engine: Engine, notifier: Any) -> None:
    text = status_text(engine)
    notifier.status(text)
    logger.info("status: {}", text)


# -- alerts ----------------------------------------------------------------------------
def start_alerts(settings: Settings) -> tuple[TelegramAlerter | None, asyncio.Task[None] | None]:
    """Send alert-bound log lines to Telegram, when it is configured: the alerter and its
    sender task (not one of the watched components: a failing Telegram never stops
    trading)."""
    alerter = build_alerter(settings)
    if alerter is None:
        return None, None
    alerter.install()
    return alerter, asyncio.create_task(alerter.run(), name="alerts")


async def close_alerts(alerter: TelegramAlerter | None, task: asyncio.Task[None] | None,
                       text: str, timeout: float) -> None:
    """Send the stop alert and end the alerter's task (bounded: shutdown must not wait
    on Telegram)."""
    if alerter is None:
        return
    logger.info("alerts: sending the stop alert")
    await alerter.close(timeout, ("stop", text), task)
