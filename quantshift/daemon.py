"""The daemon's lifecycle: startup, main loop, shutdown.

Signal handlers only set flags; everything they lead to happens in ``shutdown``:
stop the feeds, let the bar in hand finish, cancel open orders (if configured),
flatten (if configured), flush the journal and write the snapshot, close the broker
sessions and the HTTP server, exit 0, all inside ``shutdown_timeout``. A second signal skips to the
snapshot and exits at once.

The operator's HTTP surface (``ops/http.py``) runs in the same loop; its control
actions come through :meth:`Daemon.apply_control`, between bars.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from quantshift import __version__
from quantshift.app import build_engine, build_feed, open_journal, risk_limits
from quantshift.engine import Engine
from quantshift.errors import EX_SOFTWARE, ConfigError
from quantshift.execution.broker import BrokerExecutor
from quantshift.feeds.base import Feed
from quantshift.ops.actions import apply_control
from quantshift.ops.http import Heartbeat, HttpServer
from quantshift.ops.logging import LastError
from quantshift.ops.metrics import Metrics
from quantshift.ops.notify import TelegramAlerter, build_alerter
from quantshift.ops.systemd import Notifier
from quantshift.settings import Settings
from quantshift.shadow.guard import KV_KEY as DEMOTION_KEY
from quantshift.shadow.guard import Guard
from quantshift.shadow.runtime import VersionControl
from quantshift.shadow.versions import VersionRegistry
from quantshift.state.journal import Journal


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
        self.feed: Feed | None = None
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self._exit_event: asyncio.Event | None = None
        self._force_event: asyncio.Event | None = None
        self._db_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._persisted = False
        self._started_at = time.monotonic()
        self.heartbeat = Heartbeat()
        self.http: HttpServer | None = None
        self.metrics: Metrics | None = None
        self.last_error = LastError(settings.secret_values())
        self.reconciled = False  # the start-up reconciliation with the broker is done
        # Set when the guard takes the daemon out of trading on its own evidence (an
        # automatic rollback trigger); /readyz and /status report it.
        self.demoted = False
        self.demoted_reason = ""
        self.real_executor: Any = None  # the executor a demotion set aside
        self.guard: Guard | None = None
        self.version_control: VersionControl | None = None
        self.versions: VersionRegistry | None = None
        self.alerter: TelegramAlerter | None = None
        self._alerter_task: asyncio.Task[None] | None = None

    @property
    def started_at(self) -> float:
        """time.monotonic() when the daemon was made."""
        return self._started_at

    @property
    def needs_reconcile(self) -> bool:
        """Whether orders go to a broker, whose state is reconciled at start."""
        return self.engine is not None and isinstance(self.engine.executor, BrokerExecutor)

    def feed_running(self) -> bool:
        return any(name == "feed" and not task.done() for task, name in self._tasks.items())

    # -- signals: flags only -----------------------------------------------------------
    def handle_exit(self, sig: int) -> None:
        if self.should_exit:
            self.force_exit = True
            if self._force_event is not None:
                self._force_event.set()
            return
        self.should_exit = True
        self.exit_reason = signal.Signals(sig).name
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
        self.engine = engine = build_engine(s, journal, durable=self._commit)
        executor = engine.executor
        assert executor is not None
        self.alerter = build_alerter(s)
        if self.alerter is not None:
            self.alerter.install()
            # Not one of the watched components: a failing Telegram never stops trading.
            self._alerter_task = asyncio.create_task(self.alerter.run(), name="alerts")
        self.version_control = vc = VersionControl(s, engine, journal)
        self.versions = vc.registry
        self.guard = Guard(self)
        logger.info("quantshift {} starting: bot={} phase={} executor={}: {}", __version__,
                    s.bot, s.phase.value, executor.kind.value, executor.description)
        lim = risk_limits(s)
        logger.info("risk profile {}: position <= {:g}, exposure <= {:g}, open positions <= {}, "
                    "daily loss <= {:g}, trades/day <= {} (0 = no limit); sizing {}",
                    s.phase.value, lim.max_position_notional, lim.max_exposure,
                    lim.max_open_positions, lim.max_daily_loss, lim.max_trades_per_day,
                    s.sizing)
        restored = engine.restore()
        pf = engine.portfolio
        logger.info("state {}: {}; cash {:.2f}, equity {:.2f}, realized P&L {:.2f}, "
                    "{} open positions, {} fills replayed after it, {} open orders, trading {}",
                    journal.path, "restored from snapshot" if restored["snapshot"] else "new",
                    pf.cash, pf.equity, pf.realized_pnl, pf.open_symbols(),
                    restored["fills_replayed"], restored["open_orders"], engine.gate.state)
        if restored["halted"]:
            logger.warning("trading stays HALTED ({}): no new orders until resumed",
                           engine.gate.halt_reason)
        self.metrics = Metrics(self)
        self._spawn(self.heartbeat.run(), "heartbeat")
        if s.http_port:
            # Before the broker: a port in use fails the start before any session opens.
            self.http = HttpServer(self, s.http_host, s.http_port, s.api_token, self.heartbeat)
            try:
                await self.http.start()
            except ConfigError as exc:  # the CLI prints it too; the log file should say why
                logger.error("start-up failed: invalid setting {}: {}", exc.setting,
                             exc.message)
                raise
        if isinstance(executor, BrokerExecutor):
            await executor.start()
            engine.gate.instruments = await executor.venue.instruments(s.symbols)
            await self._reconcile(at_start=True)
            self.reconciled = True
            if s.reconcile_interval > 0:
                self._spawn(self._every(s.reconcile_interval, self._reconcile), "reconcile")
        demotion = journal.get(DEMOTION_KEY)
        if demotion:
            self.guard.demote(str(demotion.get("reason", "demoted before the restart")),
                              restored=True)
        if vc.books is not None:
            logger.info("strategy versions: {} version books beside the real one ({})",
                        len(vc.books), ", ".join(f"{k[0]}@{k[1]}" for k in vc.books.books))
        if s.trigger_interval > 0:
            self._spawn(self._every(s.trigger_interval, self._guard_check), "guard")
        if any(spec.canary_adaptive for spec in s.strategies):
            self._spawn(self._every(s.canary_check_interval, self._adapt_canary), "canary")
        self.feed = feed = build_feed(s, dict(pf.marks))
        where = s.replay_file if s.feed == "replay" else f"bars every {feed.bar_seconds:g}s"
        logger.info("feed {} ({}), symbols {}, strategies {}", feed.name, where,
                    "from the file" if s.feed == "replay" else ",".join(s.symbols),
                    ",".join(spec.key for spec in s.strategies))
        history = await feed.history(s.warmup_bars)
        for bar in history:
            engine.warm_up(bar)
        if history:
            logger.info("strategies warmed up on {} history bars", len(history))
        self._spawn(feed.run(engine.on_bar), "feed")
        self._spawn(self._every(s.flush_interval, self._flush), "journal")
        self._spawn(self._every(s.snapshot_interval, self._snapshot), "snapshots")
        self._spawn(self._every(s.status_interval, self._status), "status")
        if feed.bar_seconds > 0:
            self._spawn(self._every(max(feed.bar_seconds / 2, 0.2), self._watch_feed),
                        "feed-watch")
        if self.notifier.watchdog_interval:
            self._spawn(self._every(self.notifier.watchdog_interval, self._watchdog), "watchdog")
        self.notifier.ready(self._status_text())
        logger.info("ready")
        logger.bind(alert="start").info("started: {} executor ({}), feed {}, {} symbols{}",
                                        engine.executor.kind.value, s.phase.value, feed.name,
                                        len(s.symbols),
                                        "; DEMOTED: " + self.demoted_reason
                                        if self.demoted else "")

    async def _abort_startup(self) -> None:
        """Start-up failed: close what was opened (broker sessions, the journal), no more."""
        for task in self._tasks:
            task.cancel()
        engine = self.engine
        if engine is not None and engine.executor is not None:
            with contextlib.suppress(Exception):
                await engine.executor.close()
        await self._close_ops()
        if self.journal is not None:
            with contextlib.suppress(Exception):
                self.journal.flush()
            self.journal.close()
        self._db_thread.shutdown(wait=False, cancel_futures=True)

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

    async def shutdown(self) -> None:
        started = time.monotonic()
        reason = self.exit_reason or "stop"
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
        self._db_thread.shutdown(wait=False, cancel_futures=True)
        if self.journal is not None:
            self.journal.close()
        self.notifier.close()
        logger.info("shutdown complete in {:.3f}s, exit status {}", time.monotonic() - started,
                    self.exit_code)

    async def _graceful(self) -> None:
        engine, journal = self.engine, self.journal
        assert engine is not None and journal is not None
        logger.info("shutdown: stopping feeds")
        feed_task = next((t for t, n in self._tasks.items() if n == "feed"), None)
        if feed_task is not None and not feed_task.done():
            await asyncio.wait([feed_task], timeout=2.0)
            feed_task.cancel()
        # on_bar is synchronous, so the bar in hand is always finished by now.
        logger.info("shutdown: feeds stopped after {} bars; no bar in flight",
                    engine.bars)
        for task, name in self._tasks.items():
            if name != "feed":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.settings.cancel_on_shutdown:
            n = 0
            for executor in self._executors():
                n += executor.cancel_all("shutdown")
                await executor.drain(self.settings.shutdown_timeout / 2)
            logger.info("shutdown: cancelled {} open orders", n)
        else:
            logger.info("shutdown: leaving {} open orders in place", len(engine.open_orders()))
        if self.settings.flatten_on_shutdown:
            logger.info("shutdown: flattening, {} orders sent", engine.flatten("shutdown"))
            if engine.executor is not None:
                await engine.executor.drain(self.settings.shutdown_timeout / 2)
        engine.snapshot()
        books = self.version_control.books if self.version_control else None
        if books is not None:
            books.snapshot()
            await asyncio.get_running_loop().run_in_executor(self._db_thread, books.flush)
        rows = await asyncio.get_running_loop().run_in_executor(self._db_thread, journal.flush)
        self._persisted = True
        pf = engine.portfolio
        logger.info("shutdown: journal flushed ({} rows) and snapshot written: cash {:.2f}, "
                    "equity {:.2f}, realized P&L {:.2f}, {} open positions", rows, pf.cash,
                    pf.equity, pf.realized_pnl, pf.open_symbols())
        for executor in self._executors():
            await executor.close()
        logger.info("shutdown: broker sessions closed")
        await self._close_alerts(f"stopped ({self.exit_reason or 'stop'})")
        if self.http is not None:
            await self._close_ops()
            logger.info("shutdown: HTTP server closed")

    def _executors(self) -> list[Any]:
        """The engine's executor and, while demoted, the real one set aside."""
        engine = self.engine
        found = [engine.executor] if engine is not None and engine.executor else []
        if self.real_executor is not None and self.real_executor not in found:
            found.append(self.real_executor)
        return found

    def _demote_on_crash(self, name: str) -> None:
        """A crashed component is a rollback trigger: the restart comes back demoted."""
        if self.guard is None or self.engine is None or self.demoted:
            return
        self.guard.crashed = name
        if self.guard.limits.crashed_component:
            try:
                self.guard.demote(f"component {name} crashed")
            except Exception as exc:  # the crash is already being handled; say, don't mask
                logger.error("could not demote after the crash of {}: {}", name, exc)

    async def _guard_check(self) -> None:
        """Read the health and demote on a trigger; never stops the daemon itself."""
        guard, journal = self.guard, self.journal
        if guard is None or journal is None or self.demoted:
            return
        try:
            n = guard.limits.min_samples
            pnls = await asyncio.get_running_loop().run_in_executor(
                self._db_thread, guard.version_trades, 5 * n) \
                if guard.limits.win_rate_drop else None
            guard.check(pnls)
        except Exception as exc:
            logger.opt(exception=exc).error("guard: health check failed: {}", exc)

    async def _adapt_canary(self) -> None:
        """The opt-in adaptive canary; at most one change a day (the sampler's rule)."""
        vc = self.version_control
        if vc is None:
            return
        try:
            vc.adapt(datetime.now(UTC).date())
        except Exception as exc:  # a sampling failure must not stop trading
            logger.opt(exception=exc).error("adaptive canary failed: {}", exc)

    async def _close_alerts(self, text: str) -> None:
        alerter, self.alerter = self.alerter, None
        if alerter is None:
            return
        logger.info("alerts: sending the stop alert")
        await alerter.close(min(2.0, self.settings.shutdown_timeout / 4), ("stop", text),
                            self._alerter_task)

    async def _close_ops(self) -> None:
        """Close the HTTP server (bounded: an open connection cannot hold the exit up) and
        remove the log sinks this daemon added."""
        http, self.http = self.http, None
        if http is not None:
            try:
                await asyncio.wait_for(http.close(), 2.0)
            except (TimeoutError, OSError) as exc:
                logger.warning("shutdown: HTTP server did not close cleanly: {}", exc)
        if self.metrics is not None:
            self.metrics.close()
        self.last_error.detach()

    def _persist_now(self) -> None:
        if self._persisted or self.engine is None or self.journal is None:
            return
        try:
            self.engine.snapshot()
            self.journal.flush()
            self._persisted = True
            logger.info("shutdown: snapshot written (fill seq {})",
                        self.engine.portfolio.fill_seq)
        except sqlite3.Error as exc:
            logger.error("shutdown: could not write the snapshot: {}", exc)
            self.exit_code = self.exit_code or 1

    # -- periodic work -------------------------------------------------------------------
    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks[asyncio.create_task(coro, name=name)] = name

    @staticmethod
    async def _every(interval: float, action: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            await action()

    async def _flush(self) -> None:
        journal, engine = self.journal, self.engine
        assert journal is not None and engine is not None
        await self.flush_books()  # the version books are a record, not the write-ahead
        if not journal.pending:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._db_thread, journal.flush)
        except sqlite3.Error as exc:
            # Intents must be durable before orders go out: without a journal, stop trading.
            logger.error("journal write failed ({}); rows kept in memory", exc)
            if engine.gate.state != "halted":
                engine.halt(f"journal write failed: {exc}")

    async def flush_books(self) -> None:
        """Write the version books' queued rows (off the loop, on the journal's thread)."""
        books = self.version_control.books if self.version_control else None
        if books is not None and books.pending:  # no thread hop for an idle tick
            await asyncio.get_running_loop().run_in_executor(self._db_thread, books.flush)

    async def _commit(self) -> None:
        """Make everything journaled so far durable (the write-ahead before an order)."""
        assert self.journal is not None
        await asyncio.get_running_loop().run_in_executor(self._db_thread, self.journal.flush)

    async def _reconcile(self, at_start: bool = False) -> None:
        """Compare the venue with the journal; a difference that cannot be explained halts."""
        engine = self.engine
        assert engine is not None
        executor = self.real_executor or engine.executor  # a demotion keeps reconciling
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
        assert self.journal is not None
        self.journal.set("reconcile_last", summary)
        if report.mismatches:
            sides = "; ".join(f"{sym}: journal {mine:g}, venue {theirs:g}"
                              for sym, (mine, theirs) in report.mismatches.items())
            logger.bind(alert="reconcile").error("reconcile: positions differ from {} ({}); "
                                                 "halting", executor.venue.name, sides)
            if self.guard is not None:
                self.guard.mismatch = sides
            if engine.gate.state != "halted":
                engine.halt(f"reconciliation: positions differ ({sides})")
        elif at_start or report.fills_applied or report.unknown or report.adopted:
            logger.info("reconcile with {}: {} orders looked up, {} with fills applied, {} "
                        "resubmitted, {} cancelled, {} unknown at the venue; positions agree",
                        executor.venue.name, report.looked_up, report.fills_applied,
                        report.resubmitted, len(report.cancelled), len(report.unknown))
        await self._commit()

    async def _watch_feed(self) -> None:
        """A feed silent for ``stale_bars`` bar lengths is stale: entries stop until a bar
        comes (the engine clears it on the next bar)."""
        feed, engine = self.feed, self.engine
        assert feed is not None and engine is not None
        if self.settings.feed == "alpaca" and self.settings.market_hours_only:
            # Equities trade only in market hours: the feed follows the venue's clock.
            engine.gate.market_open = not getattr(feed, "idle", False)
        if getattr(feed, "idle", False) or engine.gate.stale_reason is not None:
            return
        since = feed.last_bar_at or self._started_at
        silent = time.monotonic() - since
        if silent > self.settings.stale_bars * feed.bar_seconds:
            engine.gate.stale_reason = f"no bar from {feed.name} for {silent:.0f}s"
            logger.warning("feed {} is stale: no bar for {:.1f}s; entries stop, exits allowed",
                           feed.name, silent)

    async def _snapshot(self) -> None:
        assert self.engine is not None
        self.engine.snapshot()
        if self.version_control is not None and self.version_control.books is not None:
            self.version_control.books.snapshot()

    async def _watchdog(self) -> None:
        self.notifier.watchdog()

    async def _status(self) -> None:
        text = self._status_text()
        self.notifier.status(text)
        logger.info("status: {}", text)

    def _status_text(self) -> str:
        engine = self.engine
        if engine is None:
            return "starting"
        pf, c = engine.portfolio, engine.counts
        stale = "; feed STALE" if engine.gate.stale_reason else ""
        return (f"{engine.gate.state}{stale}; regime {engine.gate.regime}; bars {engine.bars}, "
                f"signals {c['signals']}, orders "
                f"{c['orders']}, fills {c['fills']}, vetoes {c['vetoed']}; equity "
                f"{pf.equity:.2f}, drawdown {pf.drawdown * 100:.2f}%, positions "
                f"{pf.open_symbols()}")

    # -- operator control (the HTTP API calls this on the loop, between bars) ------------
    def apply_control(self, action: str, body: Any) -> Any:
        """Do one operator action (ops/actions.py): what came of it, a coroutine for a
        promotion, or ControlRefused."""
        return apply_control(self, action, body)

    async def make_durable(self) -> bool:
        """Commit what is journaled so far; False when the journal cannot be written."""
        try:
            await self._commit()
        except (sqlite3.Error, RuntimeError) as exc:  # RuntimeError: the writer has stopped
            logger.error("journal write failed ({}); rows kept in memory", exc)
            return False
        return True

    def run(self) -> int:
        try:
            import uvloop
            factory = uvloop.new_event_loop
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(self.serve())
