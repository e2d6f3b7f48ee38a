"""What a strategy holds, for deciding whether a signal would change anything.

A strategy never repeats an entry on the side it already holds, and its exits fire
while it holds a position. It decides from ``held()``, the side it holds as far as it
knows:

* whenever the engine sets ``self.position`` (when it makes the strategy, e.g. after a
  restart, with what the ledger holds; and on every fill), its sign becomes the side:
  a strategy made while long can exit; one flattened from outside (a stop, a kill
  switch) is flat and may enter again;
* a signal makes its target the side, before any fill: a fill may come a bar or more
  later (next-open fills, a broker's round trip) or never (a veto), and a strategy fed
  bars without an engine sees no fills at all. So nothing is asked twice while an
  order is on its way; a vetoed entry is not asked again on every bar (it is once the
  position is set again).

On top of that, no entry is ever signalled on the side of a non-zero ``self.position``:
a strategy whose exit has not filled yet never asks to be long again while still long;
it takes that side as held instead (which also brings it back in step after signals
that went nowhere, e.g. those of a warm-up on history, which the engine drops).

Between two settings of the position, decisions depend only on the bars, whatever
happened to the signals (vetoed, dropped, filled late).

Levels a strategy computes (averages, bands) are compared with a tolerance of ``TIE``
(1e-9) of the price: values that close are equal, so a decision never hinges on how
the rounding of a running sum fell (a batch computation, a replay elsewhere or a
restart on history decides the same way).
"""

from __future__ import annotations

from quantshift.domain import Bar, Direction, Signal
from quantshift.strategies.base import StrategyBase

LONG = Direction.LONG
FLAT = Direction.FLAT
SHORT = Direction.SHORT
_EPS = 1e-9
TIE = 1e-9  # relative: levels closer than this to each other count as equal


class PositionAware(StrategyBase):
    """A strategy that decides from the side it holds (see the module's docstring)."""

    _position = 0.0
    _side = FLAT  # held, or asked for while flat

    @property  # type: ignore[override]
    def position(self) -> float:
        """This strategy's signed holding in its symbol, set by the engine."""
        return self._position

    @position.setter
    def position(self, qty: float) -> None:
        self._position = qty
        self._side = LONG if qty > _EPS else SHORT if qty < -_EPS else FLAT

    def held(self) -> Direction:
        """The side held (or asked for, while the order is on its way)."""
        return self._side

    def entry_held(self, target: Direction) -> bool:
        """Whether ``target`` is an entry on the side the position already has."""
        pos = self._position
        return (target is LONG and pos > _EPS) or (target is SHORT and pos < -_EPS)

    def signal(self, bar: Bar, target: Direction, reason: str, confidence: float,
               indicators: dict[str, float]) -> Signal | None:
        """The Signal for ``target``, remembered as the side asked for; None for an entry
        on the side the position already has."""
        if self.entry_held(target):
            self._side = target  # the position has that side already: so it is held
            return None
        self._side = target
        return Signal(self.id, bar.symbol, bar.ts, target, reason, confidence, indicators)
