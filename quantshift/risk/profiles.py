"""Risk profiles per phase (DESIGN.md section 2); 0 means "no limit"."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from quantshift.domain import Phase


@dataclass(frozen=True, slots=True)
class RiskLimits:
    max_position_notional: float
    max_exposure: float
    max_open_positions: int
    max_daily_loss: float
    max_trades_per_day: int


PROFILES: dict[Phase, RiskLimits] = {
    # Observation sends nothing, but its "would" decisions are judged as dry run's are.
    Phase.OBSERVATION: RiskLimits(25_000, 100_000, 10, 5_000, 100),
    Phase.DRY_RUN: RiskLimits(25_000, 100_000, 10, 5_000, 100),
    Phase.MICRO_CAPITAL: RiskLimits(100, 500, 5, 50, 5),
    Phase.PRODUCTION: RiskLimits(10_000, 50_000, 10, 1_000, 50),
}


def limits_for(phase: Phase, overrides: dict[str, float | int | None]) -> RiskLimits:
    """The phase's profile with the operator's overrides (``QUANTSHIFT_RISK_*``) applied."""
    names = {f.name for f in fields(RiskLimits)}
    return replace(PROFILES[phase], **{k: v for k, v in overrides.items()
                                       if k in names and v is not None})
