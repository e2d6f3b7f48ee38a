"""Automatic rollback triggers: the conditions that demote a running daemon to LogOnly.

The defaults are the deployment plan's, per phase: in ``micro_capital`` a daily loss over
$50, a broker error rate over 5 % or a position mismatch; in ``dry_run`` a paper drawdown
over 25 % or a decision latency p99 over 500 ms; in every phase a crashed component, an
error rate over 1 %, a drawdown over 15 % or a win rate more than 10 points below the
trailing baseline. Every limit can be overridden per bot with
``QUANTSHIFT_TRIGGER_<NAME>`` (``[triggers]`` in the TOML); 0 turns a limit off.

This module only judges a :class:`Health` reading; the daemon takes the reading and acts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from quantshift.domain import Phase


@dataclass(frozen=True, slots=True)
class TriggerLimits:
    daily_loss: float = 0.0  # money lost today (realized + unrealized) above this
    broker_error_rate: float = 0.0  # failed broker calls / broker calls
    position_mismatch: bool = False  # reconciliation found a difference
    paper_drawdown: float = 0.0  # fraction below the equity peak, paper executor only
    latency_p99_ms: float = 0.0  # decision latency p99 over the window
    error_rate: float = 0.01  # ERROR log lines / bars handled
    drawdown: float = 0.15  # fraction below the equity peak, any executor
    win_rate_drop: float = 0.10  # points below the trailing baseline win rate
    crashed_component: bool = True
    min_samples: int = 20  # rates are judged only over at least this many events


DEFAULTS: dict[Phase, TriggerLimits] = {
    Phase.OBSERVATION: TriggerLimits(),
    Phase.DRY_RUN: TriggerLimits(paper_drawdown=0.25, latency_p99_ms=500.0),
    Phase.MICRO_CAPITAL: TriggerLimits(daily_loss=50.0, broker_error_rate=0.05,
                                       position_mismatch=True),
    Phase.PRODUCTION: TriggerLimits(position_mismatch=True),
}
NAMES = tuple(f.name for f in fields(TriggerLimits))


def limits_for(phase: Phase, overrides: dict[str, Any] | None = None) -> TriggerLimits:
    """The phase's defaults with the bot's overrides applied (names as in TriggerLimits)."""
    base = DEFAULTS[phase]
    if not overrides:
        return base
    unknown = sorted(set(overrides) - set(NAMES))
    if unknown:
        raise ValueError(f"unknown trigger {unknown[0]!r}; expected one of {', '.join(NAMES)}")
    return replace(base, **overrides)


@dataclass(slots=True)
class Health:
    """One reading of the daemon's health, taken by the daemon from its own counters."""

    paper: bool = False  # the executor is Paper (its drawdown is the paper drawdown)
    day_pnl: float = 0.0
    drawdown: float = 0.0  # fraction below the equity peak
    broker_calls: int = 0
    broker_errors: int = 0
    position_mismatch: str | None = None
    latency_p99_ms: float = 0.0
    latency_samples: int = 0
    bars: int = 0
    errors: int = 0  # ERROR log lines
    crashed: str | None = None  # the component that crashed
    win_rate: float | None = None  # the active versions' recent closed trades
    baseline_win_rate: float | None = None  # their trailing baseline
    trades: int = 0  # closed trades behind win_rate
    win_rate_of: str = ""  # the strategy version the win rate belongs to


def check(limits: TriggerLimits, h: Health) -> list[str]:
    """Every trigger that fires, as a reason a human can act on (empty: healthy)."""
    out: list[str] = []
    n = limits.min_samples
    if limits.crashed_component and h.crashed:
        out.append(f"component crashed: {h.crashed}")
    if limits.position_mismatch and h.position_mismatch:
        out.append(f"position mismatch: {h.position_mismatch}")
    if limits.daily_loss and h.day_pnl < -limits.daily_loss:
        out.append(f"daily loss {-h.day_pnl:.2f} over {limits.daily_loss:g}")
    if limits.broker_error_rate and h.broker_calls >= n:
        rate = h.broker_errors / h.broker_calls
        if rate > limits.broker_error_rate:
            out.append(f"broker error rate {rate:.1%} over {limits.broker_error_rate:.1%} "
                       f"({h.broker_errors} of {h.broker_calls} calls)")
    if limits.error_rate and h.bars >= n:
        rate = h.errors / h.bars
        if rate > limits.error_rate:
            out.append(f"error rate {rate:.1%} over {limits.error_rate:.1%} "
                       f"({h.errors} ERROR lines in {h.bars} bars)")
    if limits.paper_drawdown and h.paper and h.drawdown > limits.paper_drawdown:
        out.append(f"paper drawdown {h.drawdown:.1%} over {limits.paper_drawdown:.1%}")
    if limits.drawdown and h.drawdown > limits.drawdown:
        out.append(f"drawdown {h.drawdown:.1%} over {limits.drawdown:.1%}")
    if limits.latency_p99_ms and h.latency_samples >= n \
            and h.latency_p99_ms > limits.latency_p99_ms:
        out.append(f"decision latency p99 {h.latency_p99_ms:.1f} ms over "
                   f"{limits.latency_p99_ms:g} ms")
    if (limits.win_rate_drop and h.win_rate is not None and h.baseline_win_rate is not None
            and h.trades >= n and h.win_rate < h.baseline_win_rate - limits.win_rate_drop):
        of = f" of {h.win_rate_of}" if h.win_rate_of else ""
        out.append(f"win rate{of} {h.win_rate:.1%} is {h.baseline_win_rate - h.win_rate:.1%} "
                   f"below its baseline {h.baseline_win_rate:.1%} (limit "
                   f"{limits.win_rate_drop:.0%})")
    return out
