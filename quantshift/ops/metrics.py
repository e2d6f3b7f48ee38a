"""Prometheus metrics, read from the daemon's own state when /metrics is scraped.

Nothing here runs on the hot path: a custom collector reads the engine's counters, the
portfolio, the risk gate and the feed's validator at scrape time, so a bar pays only for
the plain integer increments the engine keeps (and, with metrics on, two clock reads for
the decision latency histogram). Every ``Metrics`` has its own registry, so several
daemons in one process never share a series.

ERROR log records are counted by a loguru sink, by component (the module below
``quantshift``, e.g. ``execution.broker``); :meth:`Metrics.close` removes it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from quantshift.domain import Phase, TradingState
from quantshift.engine import LATENCY_BOUNDS_NS
from quantshift.strategies.base import DEFAULT_VERSION

if TYPE_CHECKING:  # ops is used by the daemon, never the reverse
    from quantshift.ops.status import DaemonView

__all__ = ["CONTENT_TYPE", "Metrics", "veto_label"]

# The classic text format: every name here is a legacy one, and every Prometheus reads it.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
TRADING_STATES = tuple(s.value for s in TradingState)
_BUCKET_LABELS = tuple(repr(b / 1e9) for b in LATENCY_BOUNDS_NS)
# A veto's text up to its first ':' still names a symbol in a few rules ("cooldown after a
# losing exit in X", "no ATR yet for X") or carries the sizing rule ("size rounds to zero
# (fixed"): the label is the fixed phrase before those, so the series stay few.
_VETO_DETAIL = re.compile(r" (?:\(.*|in \S+|for \S+)$")


def veto_label(text: str) -> str:
    """The fixed phrase a veto starts with: ``max exposure``, ``cooldown after a losing
    exit``, ``halted``..."""
    return _VETO_DETAIL.sub("", text.partition(":")[0]).strip() or "other"


def _counter(name: str, doc: str, value: float | None = None,
             labels: dict[str, str] | None = None) -> Metric:
    if labels is None:
        return CounterMetricFamily(name, doc, value=value)
    m = CounterMetricFamily(name, doc, labels=list(labels))
    m.add_metric(list(labels.values()), value or 0)
    return m


def _gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Metric:
    if labels is None:
        return GaugeMetricFamily(name, doc, value=value)
    m = GaugeMetricFamily(name, doc, labels=list(labels))
    m.add_metric(list(labels.values()), value)
    return m


class _ErrorSink:
    """Counts ERROR (and worse) log records by component."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.ruled = 0  # of them, errors with a rule of their own (``ruled`` bound)

    def __call__(self, message: Any) -> None:
        name = message.record["name"] or "unknown"
        self.counts[name.removeprefix("quantshift.")] += 1
        if message.record["extra"].get("ruled"):
            self.ruled += 1


class _DaemonCollector(Collector):
    def __init__(self, daemon: DaemonView, errors: _ErrorSink) -> None:
        self.daemon = daemon
        self.errors = errors

    def describe(self) -> list[Metric]:
        return []  # nothing is read at registration: the daemon may not have started yet

    def collect(self) -> Iterator[Metric]:
        d = self.daemon
        engine = d.engine
        yield from self._state(engine)
        if engine is not None:
            engine.time_decisions()  # in case the engine came after this Metrics
            yield from self._engine(engine)
            yield from self._latency(engine)
            yield from self._portfolio(engine.portfolio)
            yield from self._versions(engine)
        yield from self._feed(engine)
        errors = CounterMetricFamily("quantshift_errors", "ERROR log records by component",
                                     labels=["component"])
        # list() copies in one step: the journal's thread may log an error meanwhile.
        for component, n in sorted(list(self.errors.counts.items())):
            errors.add_metric([component], n)
        yield errors

    # -- the parts ---------------------------------------------------------------------
    def _state(self, engine: Any) -> Iterator[Metric]:
        settings = self.daemon.settings
        phase = GaugeMetricFamily("quantshift_phase", "The running phase (1 for the current "
                                  "one)", labels=["phase"])
        for p in Phase:
            phase.add_metric([p.value], 1.0 if settings.phase is p else 0.0)
        yield phase
        state = engine.control.state.value if engine is not None else ""
        trading = GaugeMetricFamily("quantshift_trading_state", "Trading state (1 for the "
                                    "current one)", labels=["state"])
        for s in TRADING_STATES:
            trading.add_metric([s], 1.0 if state == s else 0.0)
        yield trading
        executor = engine.executor if engine is not None else None
        yield _gauge("quantshift_info", "The bot and where its orders go", 1.0,
                     {"bot": settings.bot, "executor": executor.kind.value if executor else ""})
        yield _gauge("quantshift_uptime_seconds", "Seconds since the daemon started",
                     time.monotonic() - self.daemon.started_at)

    def _engine(self, engine: Any) -> Iterator[Metric]:
        c = engine.counts
        yield _counter("quantshift_bars", "Bars handled by the engine", engine.bars)
        sig = CounterMetricFamily("quantshift_signals", "Signals by strategy and version",
                                  labels=["strategy", "version"])
        by_version: Counter[tuple[str, str]] = Counter()
        for (strategy, version), n in engine.signal_counts.items():
            by_version[(strategy, version or DEFAULT_VERSION)] += n
        spoke = {strategy for strategy, _ in by_version}
        for spec in self.daemon.settings.strategies:  # a series from the start, at 0
            if spec.key not in spoke:
                by_version[(spec.key, DEFAULT_VERSION)] = 0
        for (strategy, version), n in sorted(by_version.items()):
            sig.add_metric([strategy, version], n)
        yield sig
        dec = CounterMetricFamily("quantshift_risk_decisions", "Risk gate decisions by outcome "
                                  "(an exit passed with its entry vetoed counts in both)",
                                  labels=["outcome"])
        dec.add_metric(["approved"], c["approved"])
        dec.add_metric(["vetoed"], c["vetoed"])
        yield dec
        veto = CounterMetricFamily("quantshift_risk_vetoes", "Vetoes by reason (the fixed "
                                   "phrase a veto starts with)", labels=["reason"])
        reasons: Counter[str] = Counter()
        for text, n in list(engine.veto_counts.items()):
            reasons[veto_label(text)] += n
        for reason, n in sorted(reasons.items()):
            veto.add_metric([reason], n)
        yield veto
        kind = engine.executor.kind.value if engine.executor is not None else ""
        yield _counter("quantshift_orders", "Orders sent to the executor", c["orders"],
                       {"executor": kind})
        final = CounterMetricFamily("quantshift_orders_final", "Orders by final state",
                                    labels=["executor", "state"])
        for state, n in sorted(engine.final_counts.items()):
            final.add_metric([kind, str(state)], n)
        yield final
        yield _counter("quantshift_fills", "Fills booked", c["fills"])
        yield _counter("quantshift_trades", "Round trips closed", c["trades"])
        account = engine.control.account
        if account is not None:  # QUANTSHIFT_REDIS_URL: the account's shared store
            yield _gauge("quantshift_store_up", "Whether the account's shared store (Redis) "
                         "answers", 1.0 if account.up else 0.0,
                         {"account": account.account, "instance": account.instance})
            div = GaugeMetricFamily("quantshift_divergence_ratio", "Share of the latest "
                                    "decisions that differ from another instance's",
                                    labels=["against"])
            for against, ratio in sorted(account.divergence.items()):
                div.add_metric([against], ratio)
            yield div
        broker = engine.control.real_executor
        if hasattr(broker, "reconcile_errors"):  # a broker executor: its venue's hiccups
            yield _counter("quantshift_reconcile_errors", "Reconciliations a transient venue "
                           "error cut short (each is tried again)", broker.reconcile_errors)

    @staticmethod
    def _latency(engine: Any) -> Iterator[Metric]:
        counts = list(engine.latency_counts)
        buckets: list[tuple[str, float]] = []
        acc = 0
        for label, n in zip(_BUCKET_LABELS, counts, strict=False):
            acc += n
            buckets.append((label, acc))
        buckets.append(("+Inf", acc + counts[-1]))
        yield HistogramMetricFamily(
            "quantshift_decision_latency_seconds",
            "Engine.on_bar time per bar: bar in, decisions and intents out",
            buckets=buckets, sum_value=engine.latency_sum_ns / 1e9)

    @staticmethod
    def _portfolio(pf: Any) -> Iterator[Metric]:
        yield _gauge("quantshift_equity", "Equity: cash plus marked positions", pf.equity)
        yield _gauge("quantshift_cash", "Cash", pf.cash)
        yield _gauge("quantshift_drawdown_ratio", "Drawdown from the equity peak (0.05 = 5 %)",
                     pf.drawdown)
        yield _gauge("quantshift_max_drawdown_ratio", "Largest drawdown seen", pf.max_drawdown)
        pnl = GaugeMetricFamily("quantshift_pnl", "Profit and loss by kind", labels=["kind"])
        pnl.add_metric(["realized"], pf.realized_pnl)
        pnl.add_metric(["unrealized"], pf.unrealized_pnl())
        pnl.add_metric(["day"], pf.day_pnl)
        yield pnl
        yield _gauge("quantshift_exposure", "Gross notional of the net positions",
                     pf.exposure())
        pos = GaugeMetricFamily("quantshift_position_quantity", "Net position by symbol "
                                "(negative = short)", labels=["symbol"])
        for symbol, qty in sorted(pf.net.items()):
            pos.add_metric([symbol], qty)
        yield pos

    def _versions(self, engine: Any) -> Iterator[Metric]:
        """From the daemon's version registry when it has one, else one active v1 per
        strategy: the series exist either way, so dashboards and alerts work before any
        canary or shadow runs."""
        holder = getattr(self.daemon, "versions", None)
        registry = getattr(holder, "registry", holder)
        rows: list[tuple[str, str, str]] = []  # strategy, version, status
        canary: dict[str, float] = {}
        if registry is not None:
            for strategy in registry.strategies():
                rows.extend((strategy, v.version, str(v.status))
                            for v in registry.versions(strategy))
                has_canary = registry.canary(strategy) is not None
                canary[strategy] = registry.canary_percent(strategy) if has_canary else 0.0
        else:
            for spec in self.daemon.settings.strategies:
                rows.append((spec.key, DEFAULT_VERSION, "active"))
                canary[spec.key] = 0.0
        # Counted by the registry as they happen (two changes between scrapes are two).
        activations = registry.activations if registry is not None else Counter(
            (strategy, version) for strategy, version, status in rows if status == "active")
        books = getattr(getattr(engine, "books", None), "books", None) or {}
        status_g = GaugeMetricFamily("quantshift_strategy_version", "Strategy versions by "
                                     "status (1 for the current one)",
                                     labels=["strategy", "version", "status"])
        shadow = CounterMetricFamily("quantshift_shadow_decisions", "Signals each version "
                                     "decided on in its own paper book (what it would have "
                                     "done)", labels=["strategy", "version"])
        for strategy, version, status in rows:
            status_g.add_metric([strategy, version, status], 1.0)
            book = books.get((strategy, version))
            shadow.add_metric([strategy, version],
                              book.engine.counts["signals"] if book is not None else 0)
        pct = GaugeMetricFamily("quantshift_canary_percent", "Share of symbols the canary "
                                "version trades (0 without a canary)", labels=["strategy"])
        for strategy, value in sorted(canary.items()):
            pct.add_metric([strategy], value)
        act = CounterMetricFamily("quantshift_version_activations", "Strategy versions made "
                                  "active (at start, by promotion or rollback)",
                                  labels=["strategy", "version"])
        for (strategy, version), n in sorted(activations.items()):
            if n > 0:
                act.add_metric([strategy, version], n)
        yield from (status_g, shadow, pct, act)

    def _feed(self, engine: Any) -> Iterator[Metric]:
        d = self.daemon
        feed = d.feed
        if feed is None:
            return
        name = {"feed": feed.name}
        validator = feed.validator
        yield _counter("quantshift_feed_bars_accepted", "Bars the feed validated",
                       validator.accepted, name)
        rejected = CounterMetricFamily("quantshift_bars_rejected", "Bars rejected by "
                                       "validation, by reason", labels=["feed", "reason"])
        for reason, n in sorted(validator.reasons.items()):
            rejected.add_metric([feed.name, reason], n)
        yield rejected
        since = feed.last_bar_at or d.started_at
        yield _gauge("quantshift_feed_staleness_seconds", "Seconds since the feed's last bar",
                     time.monotonic() - since, name)
        stale = engine is not None and engine.control.stale is not None
        yield _gauge("quantshift_feed_stale", "1 while the feed is stale (entries stop)",
                     1.0 if stale else 0.0, name)


class Metrics:
    """The daemon's Prometheus exposition: ``render()`` answers GET /metrics."""

    def __init__(self, daemon: DaemonView) -> None:
        self.daemon = daemon
        if daemon.engine is not None:
            daemon.engine.time_decisions()  # the decision latency histogram counts every bar
        self.registry = CollectorRegistry(auto_describe=False)
        self._errors = _ErrorSink()
        self._sink_id: int | None = logger.add(self._errors, level="ERROR", format="{message}",
                                               catch=True)
        self.registry.register(_DaemonCollector(daemon, self._errors))

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE

    def errors_total(self) -> int:
        """ERROR (and worse) log records since this Metrics began counting, but those of a
        condition with a rule of its own (the error-rate trigger's count: a Redis outage
        holds entries back by its own rule and must not demote the bot besides)."""
        return sum(self._errors.counts.values()) - self._errors.ruled

    def close(self) -> None:
        """Stop counting error records (the loguru sink is process-wide)."""
        sink, self._sink_id = self._sink_id, None
        if sink is not None:
            with contextlib.suppress(ValueError):  # already gone: logging was set up again
                logger.remove(sink)
