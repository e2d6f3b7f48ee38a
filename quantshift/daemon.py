"""The daemon's lifecycle: startup, main loop, shutdown.

Signal handlers only set flags; everything they lead to happens in ``shutdown``:
stop the feeds, let the bar in hand finish, cancel open orders (if configured),
flatten (if configured), flush the journal and write the snapshot, close the broker
sessions and the HTTP server, exit 0, all inside ``shutdown_timeout``. A second signal skips to the
snapshot and exits at once.

Whether an order may go out is the control plane's (``quantshift/control.py``): the
operator's HTTP surface (``ops/http.py``), the guard and the periodic tasks send it
commands; the daemon only wires them up and reads a status from them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

from loguru import logger

from quantshift.aio import waiting_at, within
from quantshift.app import build_engine, build_feed, open_account, open_journal, risk_limits
from quantshift.control import ControlPlane, Flatten, Source
from quantshift.engine import Engine
from quantshift.errors import EX_SOFTWARE, ConfigError
from quantshift.execution.broker import BrokerExecutor
from quantshift.feeds.base import Feed
from quantshift.ops import periodic, status
from quantshift.ops.http import Heartbeat, HttpLimits, HttpServer
from quantshift.ops.logging import LastError
from quantshift.ops.metrics import Metrics
from quantshift.ops.notify import TelegramAlerter
from quantshift.ops.process import run_bounded
from quantshift.ops.systemd import Notifier
from quantshift.settings import Settings
from quantshift.shadow.guard import Guard
from quantshift.shadow.runtime import VersionControl
from quantshift.shadow.versions import VersionRegistry
from quantshift.state.journal import Journal

if TYPE_CHECKING:
    from quantshift.state.lease import Lease
    from quantshift.state.shared import AccountStore


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.should_exit = False
        self.force_exit = False
        self.exit_code = 0
        self.exit_reason = ""
        self.notifier = Notifier()
        self.journal: Journal | None = None
        self.engine: Engine | None = None
        self.control: ControlPlane | None = None
        self.feed: Feed | None = None
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self._exit_event: asyncio.Event | None = None
        self._force_event: asyncio.Event | None = None
        self.db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._persisted = False
        self._unwritable = False  # the final flush failed: no second try, no second line
        self._started_at = time.monotonic()
        self.heartbeat = Heartbeat()
        self.http: HttpServer | None = None
        self.metrics: Metrics | None = None
        self.last_error = LastError(settings.secret_values())
        self.reconciled = False  # the start-up reconciliation with the broker is done
        self.guard: Guard | None = None
        self.account: AccountStore | None = None
        self.lease: Lease | None = None  # which instance of the bot trades (several share one)
        self.version_control: VersionControl | None = None
        self.versions: VersionRegistry | None = None
        self.alerter: TelegramAlerter | None = None
        self.alerter_task: asyncio.Task[None] | None = None

    @property
    def started_at(self) -> float:
        """time.monotonic() when the daemon was made."""
        return self._started_at

    @property
    def needs_reconcile(self) -> bool:
        """Whether orders go to a broker, whose state is reconciled at start."""
        return self.control is not None and isinstance(self.control.real_executor,
                                                       BrokerExecutor)

    @property
    def demoted(self) -> bool:
        return self.control is not None and self.control.demoted

    @property
    def demoted_reason(self) -> str:
        return self.control.view().demoted_reason if self.control is not None else ""

    def _feed_fresh(self) -> bool:
        """Bars are coming (the last one at most two bar lengths ago): a standby may take
        over now. A process that was frozen finds its last bar old here before the feed
        watch marks it stale."""
        feed, control = self.feed, self.control
        if feed is None or control is None or not feed.last_bar_at or control.stale:
            return False
        age = time.monotonic() - feed.last_bar_at
        return self.feed_running() and (feed.bar_seconds <= 0 or age <= 2 * feed.bar_seconds)

    def feed_running(self) -> bool:
        return any(name == "feed" and not task.done() for task, name in self._tasks.items())

    # -- the read-only view the HTTP API serves (ops/http.py StatusSource) ---------------
    def status(self) -> dict[str, Any]:
        return status.build_status(self)

    def ready_reasons(self) -> list[str]:
        return status.ready_reasons(self)

    def metrics_text(self) -> tuple[bytes, str] | None:
        return self.metrics.render() if self.metrics is not None else None

    # -- signals: flags only -----------------------------------------------------------
    def handle_exit(self, sig: int) -> None:
        if self.should_exit:
            self.force_exit = True
            if self._force_event is not None:
                self._force_event.set()
            return
        self.should_exit = True
        self.exit_reason = signal.Signals(sig).name
        if self.control is not None:
            self.control.accepting(False)  # a flag too: no operator's command from now on
        if self._exit_event is not None:
            self._exit_event.set()

    # -- lifecycle ---------------------------------------------------------------------
    async def serve(self) -> int:
        self._exit_event = asyncio.Event()
        self._force_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.handle_exit, sig)
        try:
            await self.startup()
        except BaseException:
            await self._abort_startup()
            raise
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return self.exit_code

    async def startup(self) -> None:
        s = self.settings
        self.last_error.attach()
        self.journal = journal = open_journal(s)
        self.engine = engine = build_engine(s, journal, durable=self.commit)
        self.control = control = engine.control
        control.accepting(False)  # no operator's command until the start is done
        control.attach_durable(self.make_durable)
        self.alerter, self.alerter_task = periodic.start_alerts(s)
        self.version_control = vc = VersionControl(s, engine, journal,
                                                   flush=self._flush_books)
        control.attach_versions(vc)
        self.versions = vc.registry
        status.log_starting(self, risk_limits(s))
        # The trading state (a halt, a demotion) comes back here, before any order of the
        # last run is looked at or sent again.
        status.log_restored(self, engine.restore())
        if s.redis_url is not None:
            # The account's state next, so that a halt issued on another instance holds
            # here before anything is sent.
            self.account = account = open_account(s, journal)
            control.attach_account(account)
            await account.open(control.adopt)
            engine.decision_tap, engine.fill_tap = account.tap, account.tap_fill
            self._spawn(account.run(), "shared store")
            self._every("account", 1.0, partial(periodic.report_account, engine, account))
            if s.compare_against:
                self._every("compare", 30.0, partial(periodic.compare_against, account,
                                                     s.compare_against))
        self.metrics = Metrics(self)
        self.guard = guard = Guard(s, engine, control, vc, self.metrics.errors_total)
        self._spawn(self.heartbeat.run(), "heartbeat")
        if s.http_port:
            # Before the broker: a port in use fails the start before any session opens.
            limits = HttpLimits(s.http_max_connections, s.http_head_timeout,
                                s.http_keepalive_timeout, s.http_status_ttl)
            self.http = HttpServer(control, StatusView(self), s.http_host, s.http_port,
                                   s.api_token, self.heartbeat, bot=s.bot, limits=limits)
            try:
                await self.http.start()
            except ConfigError as exc:  # the CLI prints it too; the log file should say why
                logger.error("start-up failed: invalid setting {}: {}", exc.setting,
                             exc.message)
                raise
        executor = control.real_executor
        if isinstance(executor, BrokerExecutor):
            await executor.start()
            engine.gate.set_instruments(await executor.venue.instruments(s.symbols))
            start_reconcile = partial(periodic.reconcile, control, engine, guard, self.commit,
                                      at_start=True)
            if self.account is not None:  # several instances: the lease's holder trades
                from quantshift.ops import leadership  # redis only where it is used

                self.lease = lease = leadership.attach(s, self.account, engine)
                await leadership.first_turn(lease)
                if lease.primary:
                    await leadership.take_over(lease, control, engine, start_reconcile,
                                               retry=False)
                leadership.on_acquire(lease, control, engine, start_reconcile)
                self._spawn(lease.run(), "lease")
                self._every("lease-state", 1.0, partial(leadership.save, lease, engine,
                                                        self._feed_fresh))
            else:
                await start_reconcile()
            self.reconciled = True
            if s.reconcile_interval > 0:
                self._every("reconcile", s.reconcile_interval,
                            partial(periodic.reconcile, control, engine, guard, self.commit))
        if vc.books is not None:
            logger.info("strategy versions: {} version books beside the real one ({})",
                        len(vc.books), ", ".join(f"{k[0]}@{k[1]}" for k in vc.books.books))
        if s.trigger_interval > 0:
            self._every("guard", s.trigger_interval,
                        partial(periodic.guard_check, guard, self.db_thread))
        if any(spec.canary_adaptive for spec in s.strategies):
            self._every("canary", s.canary_check_interval, partial(periodic.adapt_canary, vc))
        self.feed = feed = build_feed(s, dict(engine.portfolio.marks), self.account)
        status.log_feed(self)
        history = await feed.history(s.warmup_bars)
        for bar in history:
            engine.warm_up(bar)
            vc.recent.add(bar)
        if history:
            logger.info("strategies warmed up on {} history bars", len(history))
        if feed.bar_seconds > 0 and s.late_bars > 0:  # a live cadence: no entry on the past
            control.set_late_limit(s.late_bars * feed.bar_seconds + 2.0)
        self._spawn(feed.run(vc.on_bar), "feed")
        self._every("journal", s.flush_interval,
                    lambda: periodic.flush(journal, self._books(), self.db_thread, control))
        self._every("snapshots", s.snapshot_interval,
                    lambda: periodic.snapshot(engine, self._books()))  # books added later too
        self._every("status", s.status_interval,
                    partial(periodic.report_status, engine, self.notifier))
        if feed.bar_seconds > 0:
            self._every("feed-watch", max(feed.bar_seconds / 2, 0.2),
                        partial(periodic.watch_feed, s, feed, control, self._started_at))
        if self.notifier.watchdog_interval:
            self._every("watchdog", self.notifier.watchdog_interval, self._watchdog)
        control.accepting(True)
        self.notifier.ready(periodic.status_text(engine))
        logger.info("ready")
        status.log_started(self)

    async def _watchdog(self) -> None:
        self.notifier.watchdog()

    async def _abort_startup(self) -> None:
        """Start-up failed: close what was opened (broker sessions, the journal), no more."""
        for task in self._tasks:
            task.cancel()
        for executor in self.control.executors() if self.control is not None else ():
            with contextlib.suppress(Exception):
                await executor.close()
        await self._close_ops()
        if self.journal is not None:
            with contextlib.suppress(Exception):
                self.journal.flush()
            self.journal.close()
        self.db_thread.shutdown(wait=False, cancel_futures=True)

    async def main_loop(self) -> None:
        assert self._exit_event is not None
        waiter = asyncio.create_task(self._exit_event.wait(), name="exit-signal")
        try:
            done, _ = await asyncio.wait([*self._tasks, waiter],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        for task in done:
            name = self._tasks.get(task)
            if name is None or task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                logger.opt(exception=exc).error("component {} crashed; stopping the daemon", name)
                self.exit_code, self.exit_reason = EX_SOFTWARE, f"{name} crashed"
                self._demote_on_crash(name)
            elif name == "feed":
                logger.info("feed {} finished: no more bars", self.feed.name)  # type: ignore[union-attr]
                self.exit_reason = "feed finished"
            else:
                logger.error("component {} stopped unexpectedly; stopping the daemon", name)
                self.exit_code, self.exit_reason = EX_SOFTWARE, f"{name} stopped"

    def _demote_on_crash(self, name: str) -> None:
        """A crashed component is a rollback trigger: the restart comes back demoted."""
        if self.guard is None:
            return
        try:
            self.guard.crash(name)
        except Exception as exc:  # the crash is already being handled; say, don't mask
            logger.error("could not demote after the crash of {}: {}", name, exc)

    async def shutdown(self) -> None:
        started = time.monotonic()
        reason = self.exit_reason or "stop"
        if self.control is not None:
            self.control.accepting(False)
        if self.feed is not None:
            self.feed.stop()  # first, on every path: no bar may arrive after the snapshot
        self.notifier.stopping(f"stopping ({reason})")
        logger.info("shutdown: begin ({}), bound {:g}s", reason, self.settings.shutdown_timeout)
        assert self._force_event is not None
        graceful = asyncio.create_task(self._graceful(), name="shutdown")
        forced = asyncio.create_task(self._force_event.wait(), name="force")
        done, _ = await asyncio.wait([graceful, forced], timeout=self.settings.shutdown_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        forced.cancel()
        if graceful not in done:
            graceful.cancel()
            for task in self._tasks:
                task.cancel()
            if self.force_exit:
                logger.warning("shutdown: second signal, exiting at once after the snapshot")
            else:
                logger.error("shutdown: not finished within {:g}s; writing the snapshot and "
                             "exiting", self.settings.shutdown_timeout)
                self.exit_code = self.exit_code or 1
        elif graceful.exception() is not None:
            logger.opt(exception=graceful.exception()).error("shutdown: step failed")
            self.exit_code = self.exit_code or 1
        self._persist_now()
        await self._close_ops()  # when the graceful steps were cut short
        self.db_thread.shutdown(wait=False, cancel_futures=True)
        if self.journal is not None:
            self.journal.close()
        books = self._books()
        if books is not None:
            books.close()
        self.notifier.close()
        logger.info("shutdown complete in {:.3f}s, exit status {}", time.monotonic() - started,
                    self.exit_code)

    async def _graceful(self) -> None:
        engine, journal, control = self.engine, self.journal, self.control
        assert engine is not None and journal is not None and control is not None
        logger.info("shutdown: stopping feeds")
        feed_task = next((t for t, n in self._tasks.items() if n == "feed"), None)
        if feed_task is not None and not feed_task.done():
            await asyncio.wait([feed_task], timeout=2.0)
            feed_task.cancel()
        # on_bar is synchronous, so the bar in hand is always finished by now.
        logger.info("shutdown: feeds stopped after {} bars; no bar in flight",
                    engine.bars)
        # The lease is renewed until it is handed off below: a flatten's exits still go.
        lease_task = next((t for t, n in self._tasks.items() if n == "lease"), None) \
            if self.lease is not None and self.lease.primary else None  # a standby's stops
        for task, name in self._tasks.items():
            if name != "feed" and task is not lease_task:
                task.cancel()
        others = [t for t in self._tasks if t is not lease_task]
        _, slow = await asyncio.wait(others, timeout=2.0) if others else (set(), set())
        if slow:  # the bound cuts them; the log says which, and where each waits
            logger.warning("shutdown: still stopping after 2s: {}", ", ".join(
                f"{self._tasks[t]} (at {waiting_at(t)})" for t in slow))
            await asyncio.wait(slow)
        if self.settings.cancel_on_shutdown:
            n = 0
            for executor in control.executors():  # a flatten to come counts on the exits
                n += executor.cancel_all("shutdown", keep_exits=self.settings.flatten_on_shutdown)
                await executor.drain(self.settings.shutdown_timeout / 2)
            logger.info("shutdown: cancelled {} open orders", n)
        else:
            logger.info("shutdown: leaving {} open orders in place", len(engine.open_orders()))
        if self.settings.flatten_on_shutdown:
            sent = control.apply(Flatten(by="shutdown", reason="shutdown",
                                         source=Source.LOCAL))["orders"]
            logger.info("shutdown: flattening, {} orders sent", sent)
            for executor in control.executors():
                await executor.drain(self.settings.shutdown_timeout / 2)
        if self.lease is not None:  # the standby takes over now, with the orders left open
            from quantshift.ops import leadership

            await leadership.hand_off(self.lease, engine)
        if lease_task is not None:
            lease_task.cancel()
            await asyncio.wait([lease_task], timeout=2.0)
        await periodic.snapshot(engine, self._books())  # the engine's and the version books'
        await self._flush_books()
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self.db_thread,
                                                                    journal.flush)
        except Exception as exc:  # a full disk: said once, nothing claimed, exit 1
            logger.error("shutdown: the journal cannot be written ({}); {} rows are not on "
                         "disk and the exit status says so", exc, journal.pending)
            self.exit_code = self.exit_code or 1
            self._unwritable = True
        else:
            self._persisted = True
            pf = engine.portfolio
            logger.info("shutdown: journal flushed ({} rows) and snapshot written: cash "
                        "{:.2f}, equity {:.2f}, realized P&L {:.2f}, {} open positions", rows,
                        pf.cash, pf.equity, pf.realized_pnl, pf.open_symbols())
        for executor in control.executors():
            await executor.close()
        logger.info("shutdown: broker sessions closed")
        await periodic.close_alerts(self.alerter, self.alerter_task,
                                    f"stopped ({self.exit_reason or 'stop'})",
                                    min(2.0, self.settings.shutdown_timeout / 4))
        self.alerter = None
        if self.http is not None:
            await self._close_ops()
            logger.info("shutdown: HTTP server closed")

    def _books(self) -> Any:
        return self.version_control.books if self.version_control is not None else None

    async def _flush_books(self) -> None:
        await periodic.flush_books(self._books(), self.db_thread)

    async def _close_ops(self) -> None:
        """Close the HTTP server (bounded: an open connection cannot hold the exit up) and
        remove the log sinks this daemon added."""
        http, self.http = self.http, None
        if http is not None:
            try:
                await within(http.close(), 2.0)
            except (TimeoutError, OSError) as exc:
                logger.warning("shutdown: HTTP server did not close cleanly: {}", exc)
        if self.metrics is not None:
            self.metrics.close()
        lease, self.lease = self.lease, None
        if lease is not None and self.engine is not None:  # the standby takes over at once
            from quantshift.ops import leadership

            await leadership.hand_off(lease, self.engine)
        account, self.account = self.account, None
        if account is not None:
            await account.close()
        self.last_error.detach()

    def _persist_now(self) -> None:
        if self._persisted or self._unwritable or self.engine is None or self.journal is None:
            return
        try:
            self.engine.snapshot()
            self.journal.flush()
            self._persisted = True
            logger.info("shutdown: snapshot written (fill seq {})",
                        self.engine.portfolio.fill_seq)
        except Exception as exc:  # a full disk: say so, exit non-zero; nothing is claimed
            logger.error("shutdown: could not write the snapshot: {}", exc)
            self.exit_code = self.exit_code or 1

    # -- tasks (what they do: ops/periodic.py) ------------------------------------------
    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks[asyncio.create_task(coro, name=name)] = name

    def _every(self, name: str, interval: float, action: periodic.Action) -> None:
        self._spawn(periodic.every(interval, action), name)

    async def commit(self) -> None:
        """Make everything journaled so far durable (the write-ahead before an order)."""
        assert self.journal is not None
        await asyncio.get_running_loop().run_in_executor(self.db_thread, self.journal.flush)

    async def make_durable(self) -> bool:
        """Commit what is journaled so far; False when the journal cannot be written."""
        try:
            await self.commit()
        except (sqlite3.Error, RuntimeError, OSError) as exc:  # RuntimeError: writer stopped
            logger.error("journal write failed ({}); rows kept in memory", exc)
            return False
        return True

    def run(self) -> int:
        """Serve until stopped, then exit within the shutdown bound counted from the signal
        (ops/process.py: what the event loop still holds is closed, a thread stuck in a
        blocking call is not waited for)."""
        return run_bounded(self.serve, lambda: self._exit_event, self.settings.shutdown_timeout,
                           self.db_thread)


class StatusView:
    """The daemon as the HTTP API reads it (ops/http.py StatusSource): reads only."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def status(self) -> dict[str, Any]:
        return self._daemon.status()

    def ready_reasons(self) -> list[str]:
        return self._daemon.ready_reasons()

    def metrics(self) -> tuple[bytes, str] | None:
        return self._daemon.metrics_text()
