"""The daemon's periodic work: what its tasks do between bars, on a timer.

Reconciliation with the venue, the guard's health check (and the demotion a crashed
component brings), the adaptive canary, the feed's staleness check, journal flushes,
snapshots, the status line, the systemd watchdog, and the Telegram alerter's start and
stop alert. The daemon (``quantshift/daemon.py``) keeps the lifecycle: it spawns these
from ``startup`` with :func:`every` and reads the tasks' ends in ``main_loop``; an
exception out of one ends its task, which stops the daemon.

Each is a function of the running :class:`~quantshift.daemon.Daemon`, on its loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from loguru import logger

from quantshift.execution.broker import BrokerExecutor
from quantshift.ops.notify import build_alerter

if TYPE_CHECKING:  # ops is used by the daemon, never the reverse
    from quantshift.daemon import Daemon

Action = Callable[["Daemon"], Awaitable[None]]


async def every(d: Daemon, interval: float, action: Action) -> None:
    """Run ``action(d)`` every ``interval`` seconds, the first time after one interval."""
    while True:
        await asyncio.sleep(interval)
        await action(d)


# -- the broker ------------------------------------------------------------------------
async def reconcile(d: Daemon, at_start: bool = False) -> None:
    """Compare the venue with the journal; a difference that cannot be explained halts."""
    engine = d.engine
    assert engine is not None
    executor = d.real_executor or engine.executor  # a demotion keeps reconciling
    assert isinstance(executor, BrokerExecutor)
    if not at_start and executor.open_orders():
        return  # fills in flight would look like a difference; try again next time
    report = await executor.reconcile(lambda: dict(engine.portfolio.net),
                                      engine.known_ids())
    if report.mismatches and not at_start:  # an update may still be on its way
        await asyncio.sleep(2.0)
        report = await executor.reconcile(lambda: dict(engine.portfolio.net),
                                          engine.known_ids())
    summary = {"at_start": at_start, "looked_up": report.looked_up,
               "fills_applied": report.fills_applied, "resubmitted": report.resubmitted,
               "cancelled": report.cancelled, "adopted": report.adopted,
               "unknown": report.unknown,
               "mismatches": {k: list(v) for k, v in report.mismatches.items()}}
    assert d.journal is not None
    d.journal.set("reconcile_last", summary)
    if report.mismatches:
        sides = "; ".join(f"{sym}: journal {mine:g}, venue {theirs:g}"
                          for sym, (mine, theirs) in report.mismatches.items())
        logger.bind(alert="reconcile").error("reconcile: positions differ from {} ({}); "
                                             "halting", executor.venue.name, sides)
        if d.guard is not None:
            d.guard.mismatch = sides
        if engine.gate.state != "halted":
            engine.halt(f"reconciliation: positions differ ({sides})")
    elif at_start or report.fills_applied or report.unknown or report.adopted:
        logger.info("reconcile with {}: {} orders looked up, {} with fills applied, {} "
                    "resubmitted, {} cancelled, {} unknown at the venue; positions agree",
                    executor.venue.name, report.looked_up, report.fills_applied,
                    report.resubmitted, len(report.cancelled), len(report.unknown))
    await d.commit()


# -- the guard and the canary ----------------------------------------------------------
def demote_on_crash(d: Daemon, name: str) -> None:
    """A crashed component is a rollback trigger: the restart comes back demoted."""
    if d.guard is None or d.engine is None or d.demoted:
        return
    d.guard.crashed = name
    if d.guard.limits.crashed_component:
        try:
            d.guard.demote(f"component {name} crashed")
        except Exception as exc:  # the crash is already being handled; say, don't mask
            logger.error("could not demote after the crash of {}: {}", name, exc)


async def guard_check(d: Daemon) -> None:
    """Read the health and demote on a trigger; never stops the daemon itself."""
    guard, journal = d.guard, d.journal
    if guard is None or journal is None or d.demoted:
        return
    try:
        n = guard.limits.min_samples
        pnls = await asyncio.get_running_loop().run_in_executor(
            d.db_thread, guard.version_trades, 5 * n) \
            if guard.limits.win_rate_drop else None
        guard.check(pnls)
    except Exception as exc:
        logger.opt(exception=exc).error("guard: health check failed: {}", exc)


async def adapt_canary(d: Daemon) -> None:
    """The opt-in adaptive canary; at most one change a day (the sampler's rule)."""
    vc = d.version_control
    if vc is None:
        return
    try:
        vc.adapt(datetime.now(UTC).date())
    except Exception as exc:  # a sampling failure must not stop trading
        logger.opt(exception=exc).error("adaptive canary failed: {}", exc)


# -- the feed --------------------------------------------------------------------------
async def watch_feed(d: Daemon) -> None:
    """A feed silent for ``stale_bars`` bar lengths is stale: entries stop until a bar
    comes (the engine clears it on the next bar)."""
    feed, engine = d.feed, d.engine
    assert feed is not None and engine is not None
    if d.settings.feed == "alpaca" and d.settings.market_hours_only:
        # Equities trade only in market hours: the feed follows the venue's clock.
        engine.gate.market_open = not getattr(feed, "idle", False)
    if getattr(feed, "idle", False) or engine.gate.stale_reason is not None:
        return
    since = feed.last_bar_at or d.started_at
    silent = time.monotonic() - since
    if silent > d.settings.stale_bars * feed.bar_seconds:
        engine.gate.stale_reason = f"no bar from {feed.name} for {silent:.0f}s"
        logger.warning("feed {} is stale: no bar for {:.1f}s; entries stop, exits allowed",
                       feed.name, silent)


# -- the journal and the snapshots -----------------------------------------------------
async def flush(d: Daemon) -> None:
    journal, engine = d.journal, d.engine
    assert journal is not None and engine is not None
    await flush_books(d)  # the version books are a record, not the write-ahead
    if not journal.pending:
        return
    try:
        await asyncio.get_running_loop().run_in_executor(d.db_thread, journal.flush)
    except sqlite3.Error as exc:
        # Intents must be durable before orders go out: without a journal, stop trading.
        logger.error("journal write failed ({}); rows kept in memory", exc)
        if engine.gate.state != "halted":
            engine.halt(f"journal write failed: {exc}")


async def flush_books(d: Daemon) -> None:
    """Write the version books' queued rows (off the loop, on the journal's thread)."""
    books = d.version_control.books if d.version_control else None
    if books is not None and books.pending:  # no thread hop for an idle tick
        await asyncio.get_running_loop().run_in_executor(d.db_thread, books.flush)


async def snapshot(d: Daemon) -> None:
    assert d.engine is not None
    d.engine.snapshot()
    if d.version_control is not None and d.version_control.books is not None:
        d.version_control.books.snapshot()


# -- systemd and the status line -------------------------------------------------------
async def watchdog(d: Daemon) -> None:
    d.notifier.watchdog()


async def report_status(d: Daemon) -> None:
    text = status_text(d)
    d.notifier.status(text)
    logger.info("status: {}", text)


def status_text(d: Daemon) -> str:
    engine = d.engine
    if engine is None:
        return "starting"
    pf, c = engine.portfolio, engine.counts
    stale = "; feed STALE" if engine.gate.stale_reason else ""
    return (f"{engine.gate.state}{stale}; regime {engine.gate.regime}; bars {engine.bars}, "
            f"signals {c['signals']}, orders "
            f"{c['orders']}, fills {c['fills']}, vetoes {c['vetoed']}; equity "
            f"{pf.equity:.2f}, drawdown {pf.drawdown * 100:.2f}%, positions "
            f"{pf.open_symbols()}")


# -- alerts ----------------------------------------------------------------------------
def start_alerts(d: Daemon) -> None:
    """Send alert-bound log lines to Telegram, when it is configured."""
    d.alerter = build_alerter(d.settings)
    if d.alerter is not None:
        d.alerter.install()
        # Not one of the watched components: a failing Telegram never stops trading.
        d.alerter_task = asyncio.create_task(d.alerter.run(), name="alerts")


async def close_alerts(d: Daemon, text: str) -> None:
    """Send the stop alert and end the alerter's task (bounded: shutdown must not wait
    on Telegram)."""
    alerter, d.alerter = d.alerter, None
    if alerter is None:
        return
    logger.info("alerts: sending the stop alert")
    await alerter.close(min(2.0, d.settings.shutdown_timeout / 4), ("stop", text),
                        d.alerter_task)
