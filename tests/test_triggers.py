"""Automatic rollback triggers: each fires on its own, with the phase defaults."""

from __future__ import annotations

import pytest

from quantshift.domain import Phase
from quantshift.shadow.triggers import Health, TriggerLimits, check, limits_for

MICRO = limits_for(Phase.MICRO_CAPITAL)
DRY = limits_for(Phase.DRY_RUN)


def test_a_healthy_reading_fires_nothing() -> None:
    h = Health(day_pnl=-10, drawdown=0.05, broker_calls=100, broker_errors=2, bars=1000,
               errors=3, latency_p99_ms=4, latency_samples=1000, win_rate=0.5,
               baseline_win_rate=0.55, trades=50)
    for phase in Phase:
        assert check(limits_for(phase), h) == []


@pytest.mark.parametrize(("limits", "health", "words"), [
    (MICRO, Health(day_pnl=-50.01), "daily loss 50.01 over 50"),
    (MICRO, Health(broker_calls=100, broker_errors=6), "broker error rate 6.0% over 5.0%"),
    (MICRO, Health(position_mismatch="AAPL: journal 10, venue 0"), "position mismatch: AAPL"),
    (DRY, Health(paper=True, drawdown=0.26), "paper drawdown 26.0% over 25.0%"),
    (DRY, Health(latency_p99_ms=501, latency_samples=100), "decision latency p99 501.0 ms"),
    (DRY, Health(crashed="feed"), "component crashed: feed"),
    (DRY, Health(bars=1000, errors=11), "error rate 1.1% over 1.0%"),
    (MICRO, Health(drawdown=0.16), "drawdown 16.0% over 15.0%"),
    (DRY, Health(win_rate=0.39, baseline_win_rate=0.5, trades=40, win_rate_of="ma@v2"),
     "win rate of ma@v2 39.0% is 11.0%"),
])
def test_each_trigger_fires_with_its_reason(limits: TriggerLimits, health: Health,
                                            words: str) -> None:
    reasons = check(limits, health)
    assert any(words in r for r in reasons), reasons


def test_phase_scoped_triggers_stay_in_their_phase() -> None:
    assert check(DRY, Health(day_pnl=-500)) == []  # the $50 loss trigger is micro's
    assert check(MICRO, Health(latency_p99_ms=900, latency_samples=100)) == []
    assert check(MICRO, Health(paper=True, drawdown=0.2)) != []  # 15 % applies everywhere
    assert check(DRY, Health(paper=True, drawdown=0.14)) == []


def test_rates_need_enough_samples() -> None:
    assert check(MICRO, Health(broker_calls=5, broker_errors=3)) == []
    assert check(DRY, Health(bars=10, errors=5)) == []
    assert check(DRY, Health(win_rate=0.1, baseline_win_rate=0.6, trades=5)) == []


def test_overrides_and_off_switches() -> None:
    off = limits_for(Phase.MICRO_CAPITAL, {"daily_loss": 0, "drawdown": 0.5})
    assert check(off, Health(day_pnl=-1_000, drawdown=0.3)) == []
    with pytest.raises(ValueError, match="unknown trigger 'daily_los'"):
        limits_for(Phase.DRY_RUN, {"daily_los": 1})
