"""The guard: reads the daemon's health on a timer and demotes it when a trigger fires.

A demotion takes the daemon out of trading on its own evidence: open orders are
cancelled, positions are kept (or flattened, with ``QUANTSHIFT_TRIGGER_FLATTEN``), and
every later order only goes to the log ("would execute"), as in LogOnly. The guard only
judges; the demotion is a command of the control plane (quantshift/control.py), which
persists it (a restart, systemd's after a crash, comes back demoted), alerts, journals it,
and shows it in /status and /readyz. ``quantshift resume`` lifts it.

Rates are judged over a sliding window of the last ``WINDOW`` readings (five minutes at
the default 10 s interval), so one bad minute long ago does not demote today.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quantshift.control import DEMOTION_KEY, ControlPlane, Demote, Source
from quantshift.domain import ExecutorKind, TradingState
from quantshift.engine import LATENCY_BOUNDS_NS, Engine
from quantshift.shadow.triggers import Health, TriggerLimits, check, limits_for

if TYPE_CHECKING:
    from quantshift.settings import Settings
    from quantshift.shadow.runtime import VersionControl

KV_KEY = DEMOTION_KEY
WINDOW = 30


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
    def __init__(self, settings: Settings, engine: Engine, control: ControlPlane,
                 versions: VersionControl | None = None,
                 errors: Callable[[], int] = lambda: 0) -> None:
        self.settings = settings
        self.engine = engine
        self.control = control
        self.versions = versions
        self._errors = errors  # ERROR log lines so far (the metrics' count)
        self.limits = trigger_limits(settings)
        self._window: deque[_Tally] = deque(maxlen=WINDOW)
        self.crashed: str | None = None
        self.mismatch: str | None = None
        self.last_reasons: list[str] = []
        control.on_change(self._state_changed)

    def _state_changed(self, old: TradingState, new: TradingState) -> None:
        if new is TradingState.ACTIVE and not self.control.demoted:
            # Lifted or resumed: the evidence before it was acted on; judge afresh.
            self._window.clear()
            self.crashed = self.mismatch = None

    # -- reading ------------------------------------------------------------------------
    def _tally(self) -> _Tally:
        engine = self.engine
        executor = self.control.real_executor  # the broker's calls count while demoted too
        return _Tally(engine.bars, self._errors(), getattr(executor, "calls", 0),
                      getattr(executor, "errors", 0), tuple(engine.latency_counts))

    def version_trades(self, limit: int) -> dict[str, list[float]]:
        """Per strategy, the P&L of its active version's last closed trades, newest first:
        from the version's own book when the strategy has several versions, else from the
        real book. Reads SQLite: call it off the loop."""
        engine = self.engine
        vc = self.versions
        out: dict[str, list[float]] = {}
        for spec in self.settings.strategies:
            key = spec.key
            book = vc.books.get(key, vc.registry.active(key)) \
                if vc is not None and vc.books is not None else None
            journal = book.journal if book is not None else engine.journal
            out[f"{key}@{vc.registry.active(key)}" if vc is not None else key] = \
                journal.recent_trade_pnls(limit, None if book is not None else key)
        return out

    def health(self, pnls: dict[str, list[float]] | None = None) -> Health:
        engine = self.engine
        now = self._tally()
        self._window.append(now)
        old = self._window[0]
        pf = engine.portfolio
        latency = [a - b for a, b in zip(now.latency, old.latency, strict=True)]
        h = Health(paper=self.settings.executor is ExecutorKind.PAPER, day_pnl=pf.day_pnl,
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
        if self.control.demoted:
            return []
        reasons = self.last_reasons = check(self.limits, self.health(pnls))
        if reasons:
            self.demote("; ".join(reasons))
        return reasons

    def note_mismatch(self, sides: str) -> None:
        """Reconciliation found positions that differ from the venue's (a trigger)."""
        self.mismatch = sides

    # -- acting (through the control plane) ---------------------------------------------
    def demote(self, reason: str) -> None:
        """Ask the control plane to take the daemon out of trading."""
        self.control.apply(Demote(reason=reason, by="guard", source=Source.RULE,
                                  flatten=self.settings.trigger_flatten))

    def crash(self, component: str) -> None:
        """A crashed component is a trigger: the restart comes back demoted."""
        self.crashed = component
        if self.limits.crashed_component and not self.control.demoted:
            self.control.apply(Demote(reason=f"component {component} crashed", by="daemon",
                                      source=Source.RULE))
