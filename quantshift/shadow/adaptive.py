"""Opt-in adaptive canary: Thompson sampling proposes the canary's share of symbols.

Each version's closed trades are wins (return > 0) and losses (return <= 0). With a
Beta(1, 1) prior, a version's win probability has the posterior
``Beta(1 + wins, 1 + losses)``. Each proposal draws ``draws`` pairs from the two posteriors
(a numpy Generator seeded from the configured seed, the UTC day and the strategy, so the
same inputs on the same day give the same answer, also after a restart) and estimates

    p = P(canary's win probability > active's win probability)

the share Thompson sampling would give the canary. The proposed percent is
``round(100 * p)`` clamped into ``[min_percent, max_percent]``: the bounds keep the active
version trading most symbols however lucky the canary's start, and keep the canary
collecting evidence however unlucky.

A change happens at most once per UTC day: a proposal on a day on or before the day of
the last change is refused. Every change comes back as a :class:`CanaryChange` carrying
the posterior it came from, for the journal. The day is passed in; nothing here reads
the clock.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np

from quantshift.domain import NS_PER_SECOND

DEFAULT_DRAWS = 10_000


def utc_day(ts_ns: int) -> date:
    """The UTC calendar day of a timestamp in nanoseconds (a bar's ``ts``)."""
    return datetime.fromtimestamp(ts_ns // NS_PER_SECOND, UTC).date()


@dataclass(slots=True, frozen=True)
class Outcomes:
    """A version's closed trades counted as wins and losses."""

    wins: int
    losses: int

    @classmethod
    def of(cls, returns: Iterable[float]) -> Outcomes:
        """Count per-trade returns (or P&Ls): above 0 is a win, anything else a loss."""
        wins = losses = 0
        for r in returns:
            if r > 0:
                wins += 1
            else:
                losses += 1
        return cls(wins, losses)


@dataclass(slots=True, frozen=True)
class CanaryChange:
    """One change of the canary's share, with the posterior it came from."""

    strategy: str
    day: str  # ISO date (UTC)
    old_percent: int
    new_percent: int
    active_alpha: float  # Beta posterior of the active version's win probability
    active_beta: float
    canary_alpha: float
    canary_beta: float
    p_canary_better: float
    draws: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class AdaptiveCanary:
    """Proposes one strategy's canary percent; see the module docstring."""

    def __init__(self, strategy: str, min_percent: int, max_percent: int, *, seed: int = 0,
                 draws: int = DEFAULT_DRAWS, last_change_day: date | None = None) -> None:
        if not 0 <= min_percent <= max_percent <= 100:
            raise ValueError(f"strategy {strategy!r}: canary bounds must satisfy "
                             f"0 <= min <= max <= 100 (got {min_percent}..{max_percent})")
        if draws < 1:
            raise ValueError(f"strategy {strategy!r}: draws must be at least 1")
        self.strategy = strategy
        self.min_percent = min_percent
        self.max_percent = max_percent
        self.seed = seed
        self.draws = draws
        self.last_change_day = last_change_day

    @staticmethod
    def posterior(outcomes: Outcomes) -> tuple[float, float]:
        """Beta(alpha, beta) of the win probability under a Beta(1, 1) prior."""
        if outcomes.wins < 0 or outcomes.losses < 0:
            raise ValueError(f"negative trade counts: {outcomes}")
        return 1.0 + outcomes.wins, 1.0 + outcomes.losses

    def _rng(self, day: date) -> np.random.Generator:
        # crc32, not hash(): str hashes are salted per process and would not replay.
        return np.random.default_rng(
            [self.seed, day.toordinal(), zlib.crc32(self.strategy.encode("utf-8"))])

    def p_canary_better(self, day: date, active: Outcomes, canary: Outcomes) -> float:
        """Monte Carlo estimate of P(canary's win probability > active's)."""
        rng = self._rng(day)
        a = rng.beta(*self.posterior(active), size=self.draws)
        c = rng.beta(*self.posterior(canary), size=self.draws)
        return float(np.count_nonzero(c > a)) / self.draws

    def target(self, p_better: float) -> int:
        """The percent for a probability: 100 × p rounded half up, within the bounds."""
        percent = math.floor(100.0 * p_better + 0.5)
        return min(self.max_percent, max(self.min_percent, percent))

    def propose(self, day: date, current_percent: int, active: Outcomes,
                canary: Outcomes) -> CanaryChange | None:
        """The change to make today, or None: already changed today (or the day went
        backwards), or the proposal equals the current percent."""
        if self.last_change_day is not None and day <= self.last_change_day:
            return None
        p = self.p_canary_better(day, active, canary)
        new = self.target(p)
        if new == current_percent:
            return None
        self.last_change_day = day
        a_alpha, a_beta = self.posterior(active)
        c_alpha, c_beta = self.posterior(canary)
        return CanaryChange(self.strategy, day.isoformat(), current_percent, new, a_alpha,
                            a_beta, c_alpha, c_beta, p, self.draws, self.seed)

    def to_dict(self) -> dict[str, Any]:
        last = self.last_change_day
        return {"last_change_day": last.isoformat() if last is not None else None}

    def load(self, data: dict[str, Any]) -> None:
        """Take back the persisted day of the last change (so a restart cannot change the
        percent twice in one day)."""
        raw = data.get("last_change_day")
        self.last_change_day = date.fromisoformat(raw) if raw else None
