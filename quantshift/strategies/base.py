"""The strategy interface and the registry of strategies by name.

A strategy instance follows one symbol: the engine makes one per (strategy, symbol)
on the symbol's first bar, so indicators never mix symbols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from quantshift.domain import Bar, Signal

DEFAULT_VERSION = "v1"  # a strategy configured without versions runs as its v1


class Params(BaseModel):
    """Base for a strategy's parameters: typed, validated, unknown names refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(Protocol):
    id: str

    def on_bar(self, bar: Bar) -> Signal | None: ...


class StrategyBase:
    """Shared plumbing: parameters, the strategy id, and the signal it last gave."""

    name: ClassVar[str]
    Params: ClassVar[type[Params]]

    def __init__(self, id: str, symbol: str, params: Params) -> None:
        self.id = id
        self.symbol = symbol
        self.params = params
        # This strategy's own holding in its symbol (signed), kept current by the engine
        # on every fill: a strategy in a position does not enter again, and can exit.
        self.position = 0.0
        # Which of the strategy's versions this instance runs (journaled with each decision).
        self.version = DEFAULT_VERSION


_REGISTRY: dict[str, type[StrategyBase]] = {}


def register(cls: type[StrategyBase]) -> type[StrategyBase]:
    _REGISTRY[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(_REGISTRY)


def parse_params(name: str, params: dict[str, Any]) -> Params:
    """Validate parameters for a strategy; raise ValueError with a one-line reason."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r} (registered: {', '.join(names())})")
    try:
        return cls.Params(**params)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "params"
        allowed = ", ".join(cls.Params.model_fields)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"no such parameter (allowed: {allowed})"
        raise ValueError(f"{name} parameter {where}: {msg}") from None


def validate_spec(name: str, params: dict[str, Any]) -> None:
    parse_params(name, params)


def factory(name: str, id: str, params: dict[str, Any],
            version: str = DEFAULT_VERSION) -> Callable[[str], StrategyBase]:
    """A maker of per-symbol instances of one configured strategy (one of its versions)."""
    cls = _REGISTRY[name]
    parsed = parse_params(name, params)

    def make(symbol: str) -> StrategyBase:
        inst = cls(id, symbol, parsed)
        inst.version = version
        return inst

    return make
