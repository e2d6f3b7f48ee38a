"""Champion/challenger statistics and the adaptive canary, against known inputs."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest
from scipy import integrate, stats

from quantshift.domain import NS_PER_SECOND, Direction, Trade, trade_return
from quantshift.shadow.adaptive import AdaptiveCanary, Outcomes, utc_day
from quantshift.shadow.promotion import (
    Decision,
    bootstrap_means,
    compare_versions,
    max_drawdown,
    sharpe,
    trade_returns,
    win_rate_p_lower,
)

QUALITY = ("welch_t", "bootstrap_ci", "sharpe", "win_rate", "max_drawdown")


def normal(seed: int, mean: float, n: int, sd: float = 0.01) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)


# -- promotion decision ---------------------------------------------------------------------

def test_a_clearly_better_challenger_is_approved() -> None:
    result = compare_versions(normal(1, 0.0, 800), normal(2, 0.003, 800))
    assert result.decision is Decision.APPROVED
    assert all(c.passed for c in result.criteria)
    assert [c.name for c in result.criteria] == ["trades", *QUALITY]
    assert 98.0 <= result.score <= 100.0
    assert (result.n_champion, result.n_challenger) == (800, 800)
    assert result.summary().startswith("APPROVED score")


def test_an_identical_challenger_is_rejected() -> None:
    champion = normal(3, 0.001, 600)
    result = compare_versions(champion, champion.copy())
    assert result.decision is Decision.REJECTED
    assert not result.criterion("welch_t").passed
    assert result.criterion("welch_t").value == pytest.approx(0.5)
    assert not result.criterion("bootstrap_ci").passed


def test_a_challenger_from_the_same_distribution_is_almost_never_approved() -> None:
    approved = sum(
        compare_versions(normal(seed, 0.001, 500), normal(seed + 1000, 0.001, 500),
                         n_bootstrap=2_000).decision is Decision.APPROVED
        for seed in range(20))
    assert approved <= 2  # the test's level is 5 %


def test_a_short_history_is_pending_with_every_criterion_shown() -> None:
    result = compare_versions(normal(4, 0.0, 120), normal(5, 0.01, 499))
    assert result.decision is Decision.PENDING
    trades = result.criterion("trades")
    assert (trades.value, trades.threshold, trades.passed) == (120.0, 500.0, False)
    assert all(not np.isnan(result.criterion(n).value) for n in QUALITY)
    assert result.criterion("welch_t").passed  # clearly better, but not enough trades yet
    # The score is scaled by the evidence gathered so far: 120 of 500 trades.
    assert result.score <= 100 * 120 / 500


def test_one_trade_is_pending_and_cannot_be_judged() -> None:
    result = compare_versions([0.01], [0.02, 0.03])
    assert result.decision is Decision.PENDING
    assert all(not result.criterion(n).passed for n in QUALITY) and result.score == 0.0


def test_a_larger_drawdown_is_rejected_on_that_criterion() -> None:
    champion = normal(6, 0.0, 1000)
    challenger = normal(7, 0.004, 1000)
    challenger[400:430] = -0.03  # one losing streak: -0.9 in thirty trades
    result = compare_versions(champion, challenger)
    mdd = result.criterion("max_drawdown")
    assert not mdd.passed
    assert mdd.value == pytest.approx(max_drawdown(challenger))
    assert mdd.threshold == pytest.approx(1.2 * max_drawdown(champion))
    assert mdd.value > mdd.threshold
    assert result.criterion("welch_t").passed and result.criterion("bootstrap_ci").passed
    assert result.decision is Decision.REJECTED
    # A looser tolerance lets the same challenger through.
    loose = compare_versions(champion, challenger, mdd_tolerance=mdd.value / max_drawdown(
        champion) + 0.01)
    assert loose.criterion("max_drawdown").passed


def test_a_significantly_lower_win_rate_is_rejected() -> None:
    rng = np.random.default_rng(8)
    champion = rng.permutation(np.r_[np.full(600, 0.01), np.full(400, -0.01)])
    challenger = rng.permutation(np.r_[np.full(300, 0.04), np.full(700, -0.01)])
    result = compare_versions(champion, challenger)
    assert result.criterion("welch_t").passed  # higher mean: rare large wins
    assert not result.criterion("win_rate").passed
    assert result.stats["win_rate_challenger"] == pytest.approx(0.3)
    assert result.decision is Decision.REJECTED


def test_welch_p_value_is_scipys() -> None:
    champion, challenger = normal(9, 0.0, 700, 0.012), normal(10, 0.0012, 550, 0.02)
    result = compare_versions(champion, challenger, n_bootstrap=500)
    direct = stats.ttest_ind(challenger, champion, equal_var=False, alternative="greater")
    two_sided = stats.ttest_ind(challenger, champion, equal_var=False)
    assert result.criterion("welch_t").value == pytest.approx(direct.pvalue, rel=1e-12)
    assert result.stats["welch_t"] == pytest.approx(two_sided.statistic, rel=1e-12)
    # And the textbook formula: Welch's t with Welch–Satterthwaite degrees of freedom.
    v1, v2 = challenger.var(ddof=1) / challenger.size, champion.var(ddof=1) / champion.size
    t = (challenger.mean() - champion.mean()) / np.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1**2 / (challenger.size - 1) + v2**2 / (champion.size - 1))
    assert result.criterion("welch_t").value == pytest.approx(stats.t.sf(t, df), rel=1e-9)


@pytest.mark.parametrize("n", [1000, 3000])  # the pair-sum path and the plain one
def test_bootstrap_interval_holds_the_true_difference(n: int) -> None:
    true_diff = 0.002
    champion, challenger = normal(11, 0.001, n), normal(12, 0.001 + true_diff, n)
    result = compare_versions(champion, challenger, n_bootstrap=4_000, min_trades=2)
    low, high = result.stats["ci_low"], result.stats["ci_high"]
    assert low < true_diff < high
    # Its width is the normal theory's 2 × 1.96 × standard error, within 10 %.
    se = np.sqrt(champion.var(ddof=1) / n + challenger.var(ddof=1) / n)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.10)


def test_bootstrap_means_have_the_ordinary_bootstrap_distribution() -> None:
    x = np.array([0.3, -1.2, 2.5, 0.0, 4.1, -0.7, 1.9])  # odd length: pairs plus one
    ours = bootstrap_means(x, 200_000, np.random.default_rng(1))
    plain = x[np.random.default_rng(2).integers(0, x.size, size=(200_000, x.size))].mean(1)
    qs = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    np.testing.assert_allclose(np.quantile(ours, qs), np.quantile(plain, qs), atol=0.03)
    assert ours.std() == pytest.approx(x.std() / np.sqrt(x.size), rel=0.01)


def test_same_seed_same_result_other_seed_other_interval() -> None:
    a, b = normal(13, 0.0, 520), normal(14, 0.001, 530)
    first, second = compare_versions(a, b, seed=5), compare_versions(a, b, seed=5)
    assert first == second
    assert compare_versions(a, b, seed=6).stats["ci_low"] != first.stats["ci_low"]


def test_helpers_on_known_series() -> None:
    r = np.array([0.1, -0.05, -0.1, 0.2])
    assert max_drawdown(r) == pytest.approx(0.15)  # peak 0.1 down to -0.05
    assert max_drawdown(np.array([-0.1, 0.05])) == pytest.approx(0.1)  # from the start at 0
    assert sharpe(r) == pytest.approx(r.mean() / r.std(ddof=1))
    assert sharpe(np.array([0.01, 0.01])) == np.inf
    # 60 of 100 against 40 of 100: z = -0.2 / sqrt(0.25 × 0.02) = -2.828...
    assert win_rate_p_lower(40, 100, 60, 100) == pytest.approx(stats.norm.cdf(-2.8284271))


def test_trade_returns_are_pnl_over_entry_notional() -> None:
    trades = [Trade("s", "X", Direction.LONG, 10, 0, 50.0, 1, 55.0, 50.0),
              Trade("s", "X", Direction.SHORT, 4, 2, 25.0, 3, 26.0, -4.0)]
    np.testing.assert_allclose(trade_returns(trades), [0.1, -0.04])
    nothing = Trade("s", "X", Direction.LONG, 0, 4, 25.0, 5, 26.0, 0.0)  # no notional: skipped
    np.testing.assert_allclose(trade_returns([*trades, nothing]), [0.1, -0.04])
    assert trade_return(4, 25.0, -4.0) == -0.04 and trade_return(0, 25.0, 1.0) is None


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        compare_versions([0.1, float("nan")], [0.1, 0.2])
    with pytest.raises(ValueError, match="alpha"):
        compare_versions([0.1], [0.1], alpha=1.5)


# -- adaptive canary ------------------------------------------------------------------------

DAY = date(2024, 3, 4)


def exact_p_better(active: Outcomes, canary: Outcomes) -> float:
    a, c = AdaptiveCanary.posterior(active), AdaptiveCanary.posterior(canary)
    value, _ = integrate.quad(lambda x: stats.beta.pdf(x, *c) * stats.beta.cdf(x, *a), 0, 1)
    return float(value)


def test_the_proposal_stays_within_the_bounds() -> None:
    strong, weak, even = Outcomes(90, 10), Outcomes(10, 90), Outcomes(50, 50)
    assert AdaptiveCanary("s", 10, 40).propose(DAY, 20, weak, strong).new_percent == 40
    assert AdaptiveCanary("s", 10, 40).propose(DAY, 20, strong, weak).new_percent == 10
    wide = AdaptiveCanary("s", 0, 100).propose(DAY, 10, even, Outcomes(60, 40))
    # Unclamped it is Thompson's share: 100 × P(canary better), to Monte Carlo precision.
    assert wide.new_percent == pytest.approx(100 * exact_p_better(even, Outcomes(60, 40)),
                                             abs=2)
    assert 60 < wide.new_percent < 100


def test_the_posterior_estimate_matches_the_exact_probability() -> None:
    active, canary = Outcomes(30, 25), Outcomes(36, 22)
    p = AdaptiveCanary("s", 0, 100, draws=20_000).p_canary_better(DAY, active, canary)
    assert p == pytest.approx(exact_p_better(active, canary), abs=0.015)


def test_the_record_carries_the_posterior() -> None:
    change = AdaptiveCanary("trend", 5, 50, seed=3).propose(DAY, 10, Outcomes(20, 30),
                                                            Outcomes(26, 24))
    assert change is not None
    d = change.to_dict()
    assert (d["strategy"], d["day"], d["old_percent"]) == ("trend", "2024-03-04", 10)
    assert (d["active_alpha"], d["active_beta"], d["canary_alpha"], d["canary_beta"]) == \
        (21.0, 31.0, 27.0, 25.0)
    assert d["new_percent"] == min(50, max(5, math.floor(100 * d["p_canary_better"] + 0.5)))
    assert d["p_canary_better"] == pytest.approx(
        exact_p_better(Outcomes(20, 30), Outcomes(26, 24)), abs=0.015)
    assert (d["draws"], d["seed"]) == (10_000, 3)


def test_at_most_one_change_per_utc_day() -> None:
    canary = AdaptiveCanary("s", 5, 50)
    assert canary.propose(DAY, 10, Outcomes(10, 10), Outcomes(12, 8)) is not None
    # Same day, whatever the evidence: refused; an earlier day too.
    assert canary.propose(DAY, 30, Outcomes(10, 90), Outcomes(90, 10)) is None
    assert canary.propose(DAY - timedelta(days=1), 30, Outcomes(10, 90),
                          Outcomes(90, 10)) is None
    nxt = canary.propose(DAY + timedelta(days=1), 30, Outcomes(10, 90), Outcomes(90, 10))
    assert nxt is not None and nxt.new_percent == 50
    # A restart keeps the day of the last change.
    again = AdaptiveCanary("s", 5, 50)
    again.load(canary.to_dict())
    assert again.propose(DAY + timedelta(days=1), 50, Outcomes(90, 10), Outcomes(10, 90)) is None


def test_no_change_when_the_proposal_equals_the_current_percent() -> None:
    canary = AdaptiveCanary("s", 5, 50)
    assert canary.propose(DAY, 50, Outcomes(10, 90), Outcomes(90, 10)) is None
    assert canary.last_change_day is None  # the day's one change is still available
    assert canary.propose(DAY, 50, Outcomes(90, 10), Outcomes(10, 90)).new_percent == 5


def test_seeded_draws_are_reproducible() -> None:
    active, canary = Outcomes(40, 38), Outcomes(41, 37)
    p = AdaptiveCanary("s", 0, 100, seed=1).p_canary_better(DAY, active, canary)
    assert AdaptiveCanary("s", 0, 100, seed=1).p_canary_better(DAY, active, canary) == p
    assert AdaptiveCanary("s", 0, 100, seed=2).p_canary_better(DAY, active, canary) != p
    assert AdaptiveCanary("s", 0, 100, seed=1).p_canary_better(
        DAY + timedelta(days=1), active, canary) != p


def test_adaptive_helpers() -> None:
    assert Outcomes.of([0.1, -0.2, 0.0, 0.3]) == Outcomes(2, 2)
    assert utc_day(1_709_596_799 * NS_PER_SECOND) == date(2024, 3, 4)  # 23:59:59Z
    assert utc_day(1_709_596_800 * NS_PER_SECOND) == date(2024, 3, 5)
    with pytest.raises(ValueError, match="bounds"):
        AdaptiveCanary("s", 60, 40)
