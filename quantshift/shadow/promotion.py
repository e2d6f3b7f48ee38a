"""Champion/challenger statistics: may a challenger version replace the active one?

:func:`compare_versions` takes each version's per-trade returns (closed trades, in the
order they closed) and checks six criteria, each reported with its value, its threshold
and whether it passed:

=================  ====================================================  =====================
criterion          value                                                 passes when
=================  ====================================================  =====================
``trades``         the smaller of the two trade counts                   >= ``min_trades``
``welch_t``        one-sided Welch t-test p-value, H1: challenger's      < ``alpha``
                   mean return > champion's
``bootstrap_ci``   lower bound of the two-sided (1 - alpha) percentile   > 0
                   bootstrap interval of mean(challenger) - mean(champion)
``sharpe``         per-trade Sharpe (mean / sample std, not annualised)  >= 0
                   of the challenger minus the champion's
``win_rate``       one-sided two-proportion z-test p-value, H1:          >= ``alpha``
                   challenger's win rate (return > 0) < champion's
``max_drawdown``   the challenger's maximum drawdown of its cumulative   <= ``mdd_tolerance`` ×
                   per-trade return curve (running sum from 0)           the champion's
=================  ====================================================  =====================

Decision: **PENDING** while either side has fewer than ``min_trades`` trades (the other
criteria are still computed and shown); otherwise **APPROVED** when all five others pass
(the challenger is significantly better by both the t-test and the bootstrap, its Sharpe
is not lower, its win rate is not significantly lower, its drawdown is within tolerance);
otherwise **REJECTED**.

Score, in [0, 100]: ``evidence × quality`` where ``evidence = min(1, smaller count /
min_trades)`` and ``quality = 30 × (1 - Welch p) + 20 × (share of bootstrap differences
above 0) + 20 × [Sharpe passed] + 15 × [win rate passed] + 15 × [drawdown passed]``; a
criterion that cannot be computed (fewer than two trades) contributes 0. An approved
challenger scores at least 98.

The bootstrap resamples each side independently (the two versions' trades are not paired),
``n_bootstrap`` times, with index matrices drawn in chunks from one seeded numpy Generator:
the same inputs and seed always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from quantshift.domain import Trade, trade_return

DEFAULT_N_BOOTSTRAP = 10_000  # SHADOW_N_BOOTSTRAP
DEFAULT_ALPHA = 0.05  # SHADOW_ALPHA
DEFAULT_MIN_TRADES = 500  # SHADOW_MIN_TRADES
DEFAULT_MDD_TOLERANCE = 1.20  # SHADOW_MDD_TOLERANCE
# Indices per bootstrap chunk: 1 MB of them and 1 MB of gathered sums at a time stay in
# cache; 10,000 × 250 in one piece would be 20 MB of each (and measured slower).
_CHUNK_ELEMENTS = 131_072
# Largest pair-sum table (8 MB, up to 1,024 trades per side); see bootstrap_means.
_PAIR_TABLE_MAX = 1 << 20
_WEIGHTS = {"welch_t": 30.0, "bootstrap_ci": 20.0, "sharpe": 20.0, "win_rate": 15.0,
            "max_drawdown": 15.0}


class Decision(StrEnum):
    APPROVED = "APPROVED"
    PENDING = "PENDING"
    REJECTED = "REJECTED"


@dataclass(slots=True, frozen=True)
class Criterion:
    name: str
    value: float
    threshold: float
    passed: bool
    detail: str


@dataclass(slots=True, frozen=True)
class PromotionResult:
    decision: Decision
    score: float
    criteria: tuple[Criterion, ...]
    n_champion: int
    n_challenger: int
    # Every figure behind the criteria (means, Sharpes, win rates, drawdowns, interval).
    stats: dict[str, float] = field(default_factory=dict)

    def criterion(self, name: str) -> Criterion:
        for c in self.criteria:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        parts = [f"{c.name} {'ok' if c.passed else 'FAIL'} ({c.detail})" for c in self.criteria]
        return f"{self.decision.value} score {self.score:.1f}: " + "; ".join(parts)


def trade_returns(trades: Iterable[Trade]) -> np.ndarray:
    """Per-trade returns: P&L over the entry notional (trades with no notional skipped)."""
    out = (trade_return(t.qty, t.entry_price, t.pnl) for t in trades)
    return np.asarray([r for r in out if r is not None], dtype=np.float64)


def sharpe(returns: np.ndarray) -> float:
    """Mean over sample standard deviation; ±inf for a constant non-zero series."""
    if returns.size < 2:
        return math.nan
    mean, std = float(returns.mean()), float(returns.std(ddof=1))
    if std == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / std


def max_drawdown(returns: np.ndarray) -> float:
    """Largest fall from a peak of the running sum of returns, the curve starting at 0."""
    curve = np.concatenate(([0.0], np.cumsum(returns)))
    return float(np.max(np.maximum.accumulate(curve) - curve))


def bootstrap_means(returns: np.ndarray, n_bootstrap: int,
                    rng: np.random.Generator) -> np.ndarray:
    """The means of ``n_bootstrap`` resamples (with replacement) of ``returns``.

    A resample of n trades is drawn as n // 2 uniform indices into the table of all n²
    ordered pair sums ``returns[i] + returns[j]`` (plus one single index when n is odd):
    a uniform index into n² pairs is exactly two independent uniform indices, so the
    distribution is the ordinary bootstrap's, for half the random numbers and half the
    gathers. Past ``_PAIR_TABLE_MAX`` elements the table would not stay in cache and the
    draw falls back to single indices.
    """
    n = returns.size
    if n * n <= _PAIR_TABLE_MAX:
        table, cols, single = (returns[:, None] + returns[None, :]).ravel(), n // 2, n % 2
    else:
        table, cols, single = returns, n, 0
    out = np.zeros(n_bootstrap)
    rows = max(1, _CHUNK_ELEMENTS // cols) if cols else n_bootstrap
    for start in range(0, n_bootstrap, rows):
        m = min(rows, n_bootstrap - start)
        if cols:
            idx = rng.integers(0, table.size, size=(m, cols))
            # mode="clip" skips the bounds check: the indices are in range by construction.
            out[start:start + m] = np.take(table, idx, mode="clip").sum(axis=1)
        if single:
            out[start:start + m] += np.take(returns, rng.integers(0, n, size=m), mode="clip")
    out /= n
    return out


def welch_greater(chal: np.ndarray, champ: np.ndarray) -> tuple[float, float]:
    """Welch's t statistic and one-sided p-value, H1: mean(chal) > mean(champ); the same
    figures as ``scipy.stats.ttest_ind(chal, champ, equal_var=False,
    alternative="greater")``. NaN when both series are constant."""
    # scipy.special, imported here: scipy.stats alone would add ~75 MB to the daemon's RSS.
    from scipy.special import stdtr

    v1, v2 = chal.var(ddof=1) / chal.size, champ.var(ddof=1) / champ.size
    se2 = v1 + v2
    if se2 == 0.0:
        return math.nan, math.nan
    t = float((chal.mean() - champ.mean()) / math.sqrt(se2))
    df = se2 * se2 / (v1 * v1 / (chal.size - 1) + v2 * v2 / (champ.size - 1))
    return t, float(stdtr(df, -t))


def win_rate_p_lower(wins_chal: int, n_chal: int, wins_champ: int, n_champ: int) -> float:
    """One-sided pooled two-proportion z-test, H1: challenger's win rate < champion's."""
    from scipy.special import ndtr

    pooled = (wins_chal + wins_champ) / (n_chal + n_champ)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_chal + 1.0 / n_champ))
    if se == 0.0:  # both all wins or both all losses: no difference at all
        return 0.5
    z = (wins_chal / n_chal - wins_champ / n_champ) / se
    return float(ndtr(z))


def _as_returns(values: Sequence[float] | np.ndarray, side: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{side} returns must be one-dimensional")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{side} returns contain NaN or infinity")
    return arr


def compare_versions(
    champion_returns: Sequence[float] | np.ndarray,
    challenger_returns: Sequence[float] | np.ndarray, *,
    n_bootstrap: int = DEFAULT_N_BOOTSTRAP, alpha: float = DEFAULT_ALPHA,
    min_trades: int = DEFAULT_MIN_TRADES, mdd_tolerance: float = DEFAULT_MDD_TOLERANCE,
    seed: int | np.random.Generator = 0,
) -> PromotionResult:
    """Compare a challenger with the champion; see the module docstring for the rules."""
    if n_bootstrap < 1:
        raise ValueError("n_bootstrap must be at least 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be within (0, 1)")
    if min_trades < 2:
        raise ValueError("min_trades must be at least 2")
    if mdd_tolerance <= 0:
        raise ValueError("mdd_tolerance must be above 0")
    champ = _as_returns(champion_returns, "champion")
    chal = _as_returns(challenger_returns, "challenger")
    n_chal, n_champ = chal.size, champ.size
    fewer = min(n_chal, n_champ)
    enough = fewer >= min_trades
    criteria = [Criterion("trades", float(fewer), float(min_trades), enough,
                          f"challenger {n_chal} vs champion {n_champ}, need {min_trades} each")]
    figures: dict[str, float] = {}
    strength = dict.fromkeys(_WEIGHTS, 0.0)
    if fewer >= 2:
        criteria += _quality(champ, chal, n_bootstrap, alpha, mdd_tolerance, seed, figures,
                             strength)
    else:
        criteria += [Criterion(name, math.nan, math.nan, False, "needs two trades each side")
                     for name in _WEIGHTS]
    if not enough:
        decision = Decision.PENDING
    elif all(c.passed for c in criteria):
        decision = Decision.APPROVED
    else:
        decision = Decision.REJECTED
    evidence = min(1.0, fewer / min_trades)
    score = evidence * sum(_WEIGHTS[k] * strength[k] for k in _WEIGHTS)
    return PromotionResult(decision, round(score, 2), tuple(criteria), n_champ, n_chal,
                           figures)


def _quality(champ: np.ndarray, chal: np.ndarray, n_bootstrap: int, alpha: float,
             mdd_tolerance: float, seed: int | np.random.Generator, figures: dict[str, float],
             strength: dict[str, float]) -> list[Criterion]:
    """The five criteria beyond the trade count; fills ``figures`` and ``strength``."""
    out: list[Criterion] = []
    t, p = welch_greater(chal, champ)
    figures.update(mean_champion=float(champ.mean()), mean_challenger=float(chal.mean()),
                   welch_t=t, welch_p=p)
    out.append(Criterion("welch_t", p, alpha, p < alpha,
                         f"mean {chal.mean():.6g} vs {champ.mean():.6g}, p={p:.4g}"))
    strength["welch_t"] = 0.0 if math.isnan(p) else 1.0 - p

    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    diff = bootstrap_means(chal, n_bootstrap, rng) - bootstrap_means(champ, n_bootstrap, rng)
    low, high = (float(q) for q in np.quantile(diff, [alpha / 2.0, 1.0 - alpha / 2.0]))
    above = float(np.count_nonzero(diff > 0.0)) / n_bootstrap
    figures.update(ci_low=low, ci_high=high, bootstrap_share_above_zero=above,
                   mean_difference=float(chal.mean() - champ.mean()))
    out.append(Criterion("bootstrap_ci", low, 0.0, low > 0.0,
                         f"{100 * (1 - alpha):g}% CI of the mean difference "
                         f"[{low:.6g}, {high:.6g}]"))
    strength["bootstrap_ci"] = above

    s_chal, s_champ = sharpe(chal), sharpe(champ)
    with np.errstate(invalid="ignore"):
        s_diff = float(np.subtract(s_chal, s_champ))
    ok = s_chal >= s_champ
    figures.update(sharpe_champion=s_champ, sharpe_challenger=s_chal)
    out.append(Criterion("sharpe", s_diff, 0.0, ok,
                         f"per-trade Sharpe {s_chal:.4g} vs {s_champ:.4g}"))
    strength["sharpe"] = float(ok)

    w_chal, w_champ = int(np.count_nonzero(chal > 0)), int(np.count_nonzero(champ > 0))
    p_low = win_rate_p_lower(w_chal, chal.size, w_champ, champ.size)
    ok = p_low >= alpha
    figures.update(win_rate_champion=w_champ / champ.size, win_rate_challenger=w_chal / chal.size,
                   win_rate_p_lower=p_low)
    out.append(Criterion("win_rate", p_low, alpha, ok,
                         f"win rate {w_chal / chal.size:.3f} vs {w_champ / champ.size:.3f}, "
                         f"p(lower)={p_low:.4g}"))
    strength["win_rate"] = float(ok)

    mdd_chal, mdd_champ = max_drawdown(chal), max_drawdown(champ)
    limit = mdd_tolerance * mdd_champ
    ok = mdd_chal <= limit
    figures.update(max_drawdown_champion=mdd_champ, max_drawdown_challenger=mdd_chal)
    out.append(Criterion("max_drawdown", mdd_chal, limit, ok,
                         f"{mdd_chal:.6g} vs champion {mdd_champ:.6g} × {mdd_tolerance:g}"))
    strength["max_drawdown"] = float(ok)
    return out
