"""Strategies, registered by name."""

from quantshift.strategies import ma_cross, rsi_reversion  # noqa: F401  (registration)
from quantshift.strategies.base import (
    Strategy,
    StrategyBase,
    factory,
    names,
    parse_params,
    validate_spec,
)

__all__ = ["Strategy", "StrategyBase", "factory", "names", "parse_params", "validate_spec"]
