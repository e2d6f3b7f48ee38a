"""How many units a signal's position should be.

The sizing setting (``QUANTSHIFT_SIZING``, ``sizing`` in the TOML) is one of::

    fixed:QTY                    QTY units per position                       (QTY > 0)
    fraction:F                   F of equity per position, as notional         (0 < F <= 1)
    atr:RISK:MULT[:PERIOD]       volatility sizing: risk RISK of equity per trade with the
                                 stop MULT ATRs away, qty = equity * RISK / (ATR * MULT)
                                 (0 < RISK <= 1, MULT > 0, PERIOD whole bars, default 14)
    kelly:K[:MIN[:CAP]][,BASE]   K times the Kelly fraction of the strategy's own closed
                                 trades, as a share of equity per position, once the
                                 strategy has closed MIN trades (default 30), at most CAP
                                 of equity (default 0.25); before that BASE sizes the
                                 position (fixed, fraction or atr; default fraction:0.02)
                                 (0 < K <= 1, MIN >= 1, 0 < CAP <= 1)

e.g. ``fixed:10``, ``fraction:0.1``, ``atr:0.01:2``, ``kelly:0.5``,
``kelly:0.5:50:0.2,atr:0.01:2``.

The Kelly fraction comes from each closed trade's return on its notional
(``pnl / (entry_price * qty)``): f* = W - (1 - W) / R, with W the share of winning trades
and R the mean winning return over the mean losing return. f* <= 0 means no edge: a veto.

``atr`` and ``kelly`` sizes (and an ``atr`` base) are further capped by the phase's
``max_position_fraction`` of equity and, for longs, by the buying power (cash); ``fixed``
and ``fraction`` are as they always were. The gate then scales every size by the market
regime, and rounds it down to whole units unless fractional quantities are allowed (and
to the venue's increment): a size that rounds to zero is a veto, never "at least one unit".
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

FRACTION_STEP = 1e-6  # finest fractional quantity the paper book deals in
_GRAMMAR = ("expected fixed:QTY (QTY > 0), fraction:F (0 < F <= 1), atr:RISK:MULT[:PERIOD] "
            "or kelly:K[:MIN[:CAP]][,BASE]")


def _number(raw: str, what: str, lo: float, hi: float, *, whole: bool = False,
            lo_open: bool = True) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok or (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        bound = f"{lo:g} < {what}" if lo_open else f"{lo:g} <= {what}"
        raise ValueError(f"{what} must be {kind} with {bound} <= {hi:g} (got {raw!r})")
    return value


class Sizing(BaseModel):
    """One parsed sizing rule (see the module docstring for the grammar)."""

    model_config = ConfigDict(frozen=True)
    kind: Literal["fixed", "fraction", "atr", "kelly"]
    value: float  # QTY, F, RISK or K
    multiplier: float = 0.0  # atr: the stop distance in ATRs
    period: int = 14  # atr: the ATR's length in bars
    min_trades: int = 30  # kelly: closed trades before the Kelly fraction is trusted
    cap: float = 0.25  # kelly: the largest share of equity per position
    base: Sizing | None = None  # kelly: the sizing used before min_trades

    @classmethod
    def parse(cls, text: str) -> Sizing:
        text = text.strip()
        head, comma, rest = text.partition(",")
        parts = head.strip().split(":")
        kind = parts[0].strip()
        if kind not in ("fixed", "fraction", "atr", "kelly") or len(parts) < 2:
            raise ValueError(_GRAMMAR)
        if comma and kind != "kelly":
            raise ValueError(f"only kelly takes a base sizing after a comma; {_GRAMMAR}")
        args = parts[1:]
        if kind == "fixed":
            if len(args) != 1:
                raise ValueError(_GRAMMAR)
            return cls(kind="fixed", value=_number(args[0], "QTY", 0, 1e12))
        if kind == "fraction":
            if len(args) != 1:
                raise ValueError(_GRAMMAR)
            try:
                return cls(kind="fraction", value=_number(args[0], "F", 0, 1))
            except ValueError:
                raise ValueError("fraction:F needs 0 < F <= 1") from None
        if kind == "atr":
            if len(args) not in (2, 3):
                raise ValueError("expected atr:RISK:MULT[:PERIOD], e.g. atr:0.01:2")
            period = _number(args[2], "PERIOD", 1, 1000, whole=True, lo_open=False) \
                if len(args) == 3 else 14
            return cls(kind="atr", value=_number(args[0], "RISK", 0, 1),
                       multiplier=_number(args[1], "MULT", 0, 1000), period=int(period))
        if len(args) > 3:
            raise ValueError("expected kelly:K[:MIN[:CAP]][,BASE], e.g. kelly:0.5")
        k = _number(args[0], "K", 0, 1)
        min_trades = _number(args[1], "MIN", 1, 100_000, whole=True, lo_open=False) \
            if len(args) > 1 else 30
        cap = _number(args[2], "CAP", 0, 1) if len(args) > 2 else 0.25
        base = cls.parse(rest) if comma else cls(kind="fraction", value=0.02)
        if base.kind == "kelly":
            raise ValueError("the base sizing of kelly must be fixed, fraction or atr")
        return cls(kind="kelly", value=k, min_trades=int(min_trades), cap=cap, base=base)

    @property
    def needs_atr(self) -> int:
        """The ATR length this sizing reads (0 if none)."""
        if self.kind == "atr":
            return self.period
        return self.base.needs_atr if self.base is not None else 0

    def __str__(self) -> str:
        if self.kind == "atr":
            tail = f":{self.period}" if self.period != 14 else ""
            return f"atr:{self.value:g}:{self.multiplier:g}{tail}"
        if self.kind == "kelly":
            return (f"kelly:{self.value:g}:{self.min_trades}:{self.cap:g},{self.base}")
        return f"{self.kind}:{self.value:g}"


class KellyStats:
    """Sufficient statistics of one strategy's closed trades for the Kelly fraction.

    ``f`` is kept up to date as trades arrive: the gate reads it on every entry, and
    trades are far rarer than decisions."""

    __slots__ = ("f", "loss_sum", "n", "win_sum", "wins")

    def __init__(self, n: int = 0, wins: int = 0, win_sum: float = 0.0,
                 loss_sum: float = 0.0) -> None:
        self.n, self.wins, self.win_sum, self.loss_sum = n, wins, win_sum, loss_sum
        self.f = self.kelly()

    def add(self, ret: float) -> None:
        self.n += 1
        if ret > 0:
            self.wins += 1
            self.win_sum += ret
        else:
            self.loss_sum -= ret
        self.f = self.kelly()

    def kelly(self) -> float:
        """f* = W - (1 - W) / R; R = mean win / mean loss (returns on notional)."""
        if self.n == 0:
            return 0.0
        w = self.wins / self.n
        losses = self.n - self.wins
        if losses == 0 or self.loss_sum <= 0:
            return w  # never lost: R is infinite
        if self.wins == 0 or self.win_sum <= 0:
            return -1.0
        r = (self.win_sum / self.wins) / (self.loss_sum / losses)
        return w - (1.0 - w) / r

    def to_list(self) -> list[float]:
        return [self.n, self.wins, self.win_sum, self.loss_sum]

    @classmethod
    def from_list(cls, data: list[float]) -> KellyStats:
        n, wins, win_sum, loss_sum = data
        return cls(int(n), int(wins), float(win_sum), float(loss_sum))


def round_qty(raw: float, fractional: bool) -> float:
    """Round down to whole units, or to the finest fractional step when allowed."""
    if not raw > 0:
        return 0.0
    if fractional:
        return math.floor(raw / FRACTION_STEP + 1e-9) * FRACTION_STEP
    return float(math.floor(raw + 1e-9))


def position_size(sizing: Sizing, price: float, equity: float, fractional: bool) -> float:
    """Unsigned target quantity of ``fixed``/``fraction`` sizing; 0 means the size rounded
    to nothing (a veto, never 1 unit). ``atr`` and ``kelly`` need market and trade state:
    the RiskGate sizes them."""
    if sizing.kind == "fixed":
        raw = sizing.value
    elif sizing.kind == "fraction":
        raw = equity * sizing.value / price if price > 0 and equity > 0 else 0.0
    else:
        raise ValueError(f"{sizing.kind} sizing needs the RiskGate's market and trade state")
    return round_qty(raw, fractional)
