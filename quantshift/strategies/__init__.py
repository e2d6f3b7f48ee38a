"""Strategies, registered by name."""

from quantshift.strategies import (  # noqa: F401  (registration)
    bollinger_reversion,
    breakout_momentum,
    donchian_breakout,
    ma_cross,
    rsi_reversion,
)
from quantshift.strategies.base import (
    Strategy,
    StrategyBase,
    factory,
    names,
    parse_params,
    validate_spec,
)

__all__ = ["Strategy", "StrategyBase", "factory", "names", "parse_params", "validate_spec"]
