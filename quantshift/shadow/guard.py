"""The guard: reads the daemon's health on a timer and demotes it when a trigger fires.

A demotion takes the daemon out of trading on its own evidence: open orders are
cancelled, positions are kept (or flattened, with ``QUANTSHIFT_TRIGGER_FLATTEN``), and
every later order only goes to the log ("would execute"), as in LogOnly. It is
persisted, so a restart (systemd's, after a crash) comes back demoted; it is alerted,
journaled, and shown by /status and /readyz. ``quantshift resume`` lifts it.

Rates are judged over a sliding window of the last ``WINDOW`` readings (five minutes at
the default 10 s interval), so one bad minute long ago does not demote today.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from loguru import logger

from quantshift.domain import ExecutorKind
from quantshift.engine import LATENCY_BOUNDS_NS
from quantshift.execution.log_only import LogOnlyExecutor
from quantshift.shadow.triggers import Health, TriggerLimits, check, limits_for

if TYPE_CHECKING:
    from quantshift.daemon import Daemon

KV_KEY = "demotion"
WINDOW = 30
_ALERT_DEMOTION = logger.bind(alert="demotion")


@dataclass(frozen=True, slots=True)
class _Tally:
    bars: int
    errors: int
    calls: int
    broker_errors: int
    latency: tuple[int, ...]


def trigger_limits(settings: Any) -> TriggerLimits:
    overrides = {name: getattr(settings, f"trigger_{name}")
                 for name in TriggerLimits.__dataclass_fields__
                 if getattr(settings, f"trigger_{name}", None) is not None}
    return limits_for(settings.phase, overrides)


def p99_ms(counts: list[int] | tuple[int, ...]) -> float:
    """The upper bound of the bucket holding the 99th percentile, in ms."""
    total = sum(counts)
    if total <= 0:
        return 0.0
    rank, seen = 0.99 * total, 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            bound = LATENCY_BOUNDS_NS[i] if i < len(LATENCY_BOUNDS_NS) else \
                LATENCY_BOUNDS_NS[-1] * 2
            return bound / 1e6
    return LATENCY_BOUNDS_NS[-1] / 1e6


class Guard:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.limits = trigger_limits(daemon.settings)
        self._window: deque[_Tally] = deque(maxlen=WINDOW)
        self.crashed: str | None = None
        self.mismatch: str | None = None
        self.last_reasons: list[str] = []

    # -- reading ------------------------------------------------------------------------
    def _tally(self) -> _Tally:
        d = self.daemon
        engine = d.engine
        assert engine is not None
        executor = d.real_executor or engine.executor
        errors = d.metrics.errors_total() if d.metrics is not None else 0
        return _Tally(engine.bars, errors, getattr(executor, "calls", 0),
                      getattr(executor, "errors", 0), tuple(engine.latency_counts))

    def version_trades(self, limit: int) -> dict[str, list[float]]:
        """Per strategy, the P&L of its active version's last closed trades, newest first:
        from the version's own book when the strategy has several versions, else from the
        real book. Reads SQLite: call it off the loop."""
        d = self.daemon
        engine = d.engine
        assert engine is not None
        vc = d.version_control
        out: dict[str, list[float]] = {}
        for spec in d.settings.strategies:
            key = spec.key
            book = vc.books.get(key, vc.registry.active(key)) \
                if vc is not None and vc.books is not None else None
            journal = book.journal if book is not None else engine.journal
            out[f"{key}@{vc.registry.active(key)}" if vc is not None else key] = \
                journal.recent_trade_pnls(limit, None if book is not None else key)
        return out

    def health(self, pnls: dict[str, list[float]] | None = None) -> Health:
        d = self.daemon
        engine = d.engine
        assert engine is not None
        now = self._tally()
        self._window.append(now)
        old = self._window[0]
        pf = engine.portfolio
        latency = [a - b for a, b in zip(now.latency, old.latency, strict=True)]
        h = Health(paper=d.settings.executor is ExecutorKind.PAPER, day_pnl=pf.day_pnl,
                   drawdown=pf.drawdown, broker_calls=now.calls - old.calls,
                   broker_errors=now.broker_errors - old.broker_errors,
                   position_mismatch=self.mismatch, latency_p99_ms=p99_ms(latency),
                   latency_samples=sum(latency), bars=now.bars - old.bars,
                   errors=now.errors - old.errors, crashed=self.crashed)
        n = self.limits.min_samples
        worst = 0.0
        for version, trades in (pnls or {}).items():
            # Newest first: the version's recent window against its trades before it.
            recent, before = trades[:n], trades[n:]
            if len(recent) < n or len(before) < n:
                continue
            rate = sum(p > 0 for p in recent) / len(recent)
            base = sum(p > 0 for p in before) / len(before)
            if h.win_rate is None or base - rate > worst:
                worst = base - rate
                h.trades, h.win_rate, h.baseline_win_rate = len(recent), rate, base
                h.win_rate_of = version
        return h

    def check(self, pnls: dict[str, list[float]] | None = None) -> list[str]:
        """Take a reading; demote when a trigger fires. Returns the reasons (may be [])."""
        if self.daemon.demoted:
            return []
        reasons = self.last_reasons = check(self.limits, self.health(pnls))
        if reasons:
            self.demote("; ".join(reasons))
        return reasons

    # -- acting -------------------------------------------------------------------------
    def demote(self, reason: str, *, restored: bool = False) -> None:
        """Take the daemon out of trading: cancel, optionally flatten, then log-only."""
        d = self.daemon
        engine = d.engine
        assert engine is not None and engine.executor is not None
        if d.demoted:
            return
        d.demoted, d.demoted_reason = True, reason
        flatten = d.settings.trigger_flatten and not restored
        cancelled = engine.executor.cancel_all(f"demoted: {reason}", keep_exits=flatten)
        flattened = engine.flatten(f"demoted: {reason}") if flatten else 0
        if not isinstance(engine.executor, LogOnlyExecutor):
            # Kept, not closed: fills of orders already at the venue still come back.
            d.real_executor = engine.executor
            engine.executor = LogOnlyExecutor(engine)
        if not restored:
            engine.journal.set(KV_KEY, {"reason": reason, "at_ns": time.time_ns(),
                                        "flattened": flattened})
            engine.journal.control("demote", {"reason": reason}, "daemon",
                                   f'{{"cancelled": {cancelled}, "flattened": {flattened}}}')
        _ALERT_DEMOTION.error("DEMOTED to log-only{}: {}; {} open orders cancelled, {} "
                              "flatten orders; positions {}; `quantshift resume` lifts it",
                              " (still, after a restart)" if restored else "", reason,
                              cancelled, flattened,
                              "being flattened" if flattened else "kept")

    def lift(self) -> bool:
        """Back to the real executor (the operator's resume). False when not demoted."""
        d = self.daemon
        engine = d.engine
        if not d.demoted or engine is None:
            return False
        if d.real_executor is not None:
            engine.executor = d.real_executor
            d.real_executor = None
        d.demoted, d.demoted_reason = False, ""
        self._window.clear()
        self.crashed = self.mismatch = None
        engine.journal.set(KV_KEY, None)
        logger.warning("demotion lifted by the operator: orders go to the {} executor again",
                       engine.executor.kind.value)
        return True
