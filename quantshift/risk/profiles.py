"""Risk profiles per phase (DESIGN.md section 2); 0 means "no limit" (or "off").

Every field can be overridden with ``QUANTSHIFT_RISK_<NAME>`` (``[risk] name = ...`` in the
TOML); every value is a number. Money is in the account's currency, times in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from quantshift.domain import Phase


def _extra(default: float) -> float:
    # The rules added after the first five limits do not take part in ==: a profile still
    # compares equal to RiskLimits(<the five original limits>), as it always did.
    return field(default=default, compare=False)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class RiskLimits:
    max_position_notional: float  # one strategy's position in one symbol
    max_exposure: float  # gross notional of every net position, pending orders included
    max_open_positions: int  # symbols with a net position
    max_daily_loss: float  # day P&L <= -this: no new entries for the rest of the UTC day
    max_trades_per_day: int  # orders sent per UTC day; entries stop at the cap
    max_trades_per_hour: int = _extra(0)  # orders sent in the last 60 minutes
    max_drawdown: float = _extra(0)  # peak-to-now equity loss: entries stop until resumed
    loss_cooldown_seconds: float = _extra(0)  # no entry in a symbol after a losing exit
    min_price: float = _extra(0)  # no entry below this price
    min_avg_volume: float = _extra(0)  # no entry below this mean volume per bar (20 bars)
    htf_factor: int = _extra(0)  # higher timeframe = this many bars; entries need its trend
    htf_sma: int = _extra(10)  # the higher timeframe's SMA, in higher-timeframe bars
    max_position_fraction: float = _extra(0)  # atr/kelly sizes: at most this share of equity
    regime_bull: float = _extra(1.0)  # size multipliers per market regime
    regime_bear: float = _extra(0.75)
    regime_choppy: float = _extra(0.5)
    regime_crisis: float = _extra(0.25)
    ramp_start: float = _extra(0)  # share of capital on day 1 of the phase; 0 = no ramp
    ramp_day_2: int = _extra(3)  # the share steps up a third of the way to 100 % ...
    ramp_day_3: int = _extra(7)  # ... two thirds ...
    ramp_day_4: int = _extra(14)  # ... and reaches 100 % on these days of the phase


_PAPER = dict(max_trades_per_hour=0, max_drawdown=20_000, max_position_fraction=0.25)

PROFILES: dict[Phase, RiskLimits] = {
    # Observation sends nothing, but its "would" decisions are judged as dry run's are.
    Phase.OBSERVATION: RiskLimits(25_000, 100_000, 10, 5_000, 100, **_PAPER),
    Phase.DRY_RUN: RiskLimits(25_000, 100_000, 10, 5_000, 100, **_PAPER),
    Phase.MICRO_CAPITAL: RiskLimits(
        100, 500, 5, 50, 5, max_trades_per_hour=2, max_drawdown=150,
        loss_cooldown_seconds=1_800, min_price=1.0, max_position_fraction=0.25),
    Phase.PRODUCTION: RiskLimits(
        10_000, 50_000, 10, 1_000, 50, max_trades_per_hour=10, max_drawdown=5_000,
        loss_cooldown_seconds=900, min_price=1.0, htf_factor=5, max_position_fraction=0.2,
        ramp_start=0.25),
}


def limits_for(phase: Phase, overrides: dict[str, float | int | None]) -> RiskLimits:
    """The phase's profile with the operator's overrides (``QUANTSHIFT_RISK_*``) applied."""
    names = {f.name for f in fields(RiskLimits)}
    return replace(PROFILES[phase], **{k: v for k, v in overrides.items()
                                       if k in names and v is not None})
