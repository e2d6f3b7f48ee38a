"""Orders sent but not yet filled, as the risk gate counts them.

A mapping of (strategy, symbol) to the signed quantity still open, which the limits
count as if filled. It also keeps the same quantities summed per symbol, because the
exposure and open-position limits need that view on every entry: keeping it as orders
come and go costs one addition per order instead of a pass over every pending order
per decision.
"""

from __future__ import annotations

_EPS = 1e-9


class Pending(dict[tuple[str, str], float]):
    __slots__ = ("by_symbol",)

    def __init__(self) -> None:
        super().__init__()
        self.by_symbol: dict[str, float] = {}

    def add(self, strategy: str, symbol: str, qty: float) -> None:
        """Add ``qty`` (signed) to the open quantity of one strategy in one symbol."""
        key = (strategy, symbol)
        left = self.get(key, 0.0) + qty
        if -_EPS < left < _EPS:
            self.pop(key, None)
        else:
            self[key] = left
        net = self.by_symbol.get(symbol, 0.0) + qty
        if -_EPS < net < _EPS or not any(s == symbol for _, s in self):
            self.by_symbol.pop(symbol, None)  # nothing left open in it: no rounding leftovers
        else:
            self.by_symbol[symbol] = net
