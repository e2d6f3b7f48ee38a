"""Deterministic canary routing: which symbols a strategy's canary version trades.

A symbol's *bucket* for a strategy is a number from 0 to 99::

    bucket = int.from_bytes(sha256((strategy + symbol).encode("utf-8")).digest(), "big") % 100

that is, the SHA-256 digest of the UTF-8 bytes of the strategy's key immediately followed
by the symbol (no separator), read as one unsigned big-endian 256-bit integer, modulo 100.
The symbol belongs to the canary when ``bucket < canary_percent``.

Consequences the rest of QuantShift relies on:

* the same strategy, symbol and percent always route the same way, on every machine and
  after every restart (no process-local hash seed is involved);
* raising the percent only moves symbols from the active version to the canary, lowering
  it only moves them back: the canary's symbols at 10 % are a subset of those at 20 %;
* over many symbols the canary's share is close to the percent (SHA-256 is uniform and
  2**256 mod 100 is negligible next to 2**256).
"""

from __future__ import annotations

from hashlib import sha256


def canary_bucket(strategy: str, symbol: str) -> int:
    """The symbol's bucket (0-99) for the strategy; see the module docstring."""
    digest = sha256((strategy + symbol).encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % 100


def _check_percent(percent: float) -> None:
    if not 0 <= percent <= 100:
        raise ValueError(f"canary percent must be within 0..100 (got {percent})")


def routes_to_canary(strategy: str, symbol: str, percent: float) -> bool:
    """True when the strategy's canary version trades the symbol at this percent.

    0 routes nothing to the canary, 100 routes everything.
    """
    _check_percent(percent)
    return canary_bucket(strategy, symbol) < percent


class CanaryRouter:
    """``routes_to_canary`` with each (strategy, symbol) bucket computed once.

    Routing is asked on every bar of every symbol; the bucket never changes, so the
    digest is kept rather than recomputed per bar.
    """

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], int] = {}

    def bucket(self, strategy: str, symbol: str) -> int:
        key = (strategy, symbol)
        found = self._buckets.get(key)
        if found is None:
            found = self._buckets[key] = canary_bucket(strategy, symbol)
        return found

    def to_canary(self, strategy: str, symbol: str, percent: float) -> bool:
        _check_percent(percent)
        return self.bucket(strategy, symbol) < percent

    def canary_symbols(self, strategy: str, symbols: list[str], percent: float) -> list[str]:
        """The symbols, in their given order, that the canary trades at this percent."""
        _check_percent(percent)
        return [s for s in symbols if self.bucket(strategy, s) < percent]
