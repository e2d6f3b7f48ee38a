"""How many units a signal's position should be."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

_FRACTION_STEP = 1e-6  # finest fractional quantity the paper book deals in


class Sizing(BaseModel):
    """``fixed:QTY`` (a quantity per position) or ``fraction:F`` (of equity per position)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["fixed", "fraction"]
    value: float

    @classmethod
    def parse(cls, text: str) -> Sizing:
        kind, sep, raw = text.strip().partition(":")
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not sep or kind not in ("fixed", "fraction") or not 0 < value < math.inf:
            raise ValueError("expected fixed:QTY (QTY > 0) or fraction:F (0 < F <= 1)")
        if kind == "fraction" and value > 1:
            raise ValueError("fraction:F needs 0 < F <= 1")
        return cls(kind=kind, value=value)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def position_size(sizing: Sizing, price: float, equity: float, fractional: bool) -> float:
    """Unsigned target quantity; 0 means the size rounded to nothing (a veto, never 1 unit)."""
    if sizing.kind == "fixed":
        raw = sizing.value
    else:
        raw = equity * sizing.value / price if price > 0 and equity > 0 else 0.0
    if fractional:
        return math.floor(raw / _FRACTION_STEP + 1e-9) * _FRACTION_STEP
    return float(math.floor(raw + 1e-9))
