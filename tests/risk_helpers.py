"""What the RiskGate's tests share: a gate with no limits but those a test names, signals,
and a book that marks prices and applies approved intents as fills."""

from __future__ import annotations

from dataclasses import replace

from quantshift.domain import NS_PER_SECOND, Bar, Direction, Fill, OrderIntent, Side, Signal
from quantshift.portfolio import Portfolio
from quantshift.risk.gate import RiskGate
from quantshift.risk.profiles import RiskLimits
from quantshift.risk.sizing import Sizing

T0 = 1_704_067_200 * NS_PER_SECOND  # 2024-01-01T00:00:00Z, a UTC day boundary
MIN = 60 * NS_PER_SECOND
HOUR = 60 * MIN
OFF = RiskLimits(0, 0, 0, 0, 0)  # every limit off


def lim(**kw: float) -> RiskLimits:
    """No limits but the ones named."""
    return replace(OFF, **kw)


def gate(limits: RiskLimits = OFF, sizing: str = "fixed:10", fractional: bool = False,
         **kw: object) -> RiskGate:
    return RiskGate("equity", limits, Sizing.parse(sizing), fractional, **kw)  # type: ignore[arg-type]


def sig(symbol: str, target: Direction, ts: int = T0 + MIN, strategy: str = "s1") -> Signal:
    return Signal(strategy, symbol, ts, target, "test")


class Book:
    """A portfolio plus a fill counter: applies approved intents at a given price."""

    def __init__(self, cash: float = 100_000) -> None:
        self.pf = Portfolio(cash)
        self.seq = 0

    def mark(self, symbol: str, price: float, ts: int = T0 + MIN) -> None:
        self.pf.mark(symbol, price, ts)

    def bar(self, g: RiskGate, symbol: str, close: float, ts: int, spread: float = 1.0,
            volume: float = 1_000.0) -> None:
        self.pf.mark(symbol, close, ts)
        g.on_bar(Bar(symbol, ts, close, close + spread / 2, close - spread / 2, close, volume))

    def bars(self, g: RiskGate, symbol: str, closes: list[float], ts0: int = T0,
             spread: float = 1.0, volume: float = 1_000.0) -> int:
        ts = ts0
        for c in closes:
            self.bar(g, symbol, c, ts, spread, volume)
            ts += MIN
        return ts - MIN  # the last bar's time

    def fill(self, intents: tuple[OrderIntent, ...], price: float) -> None:
        for i in intents:
            self.seq += 1
            self.pf.apply_fill(Fill(self.seq, i.client_order_id, i.strategy, i.symbol, i.side,
                                    i.qty, price, 0.0, i.ts))

    def buy(self, symbol: str, qty: float, price: float, ts: int = T0) -> None:
        """A position another strategy holds."""
        self.seq += 1
        self.pf.mark(symbol, price, ts)
        self.pf.apply_fill(Fill(self.seq, f"c{self.seq}", "other", symbol, Side.BUY, qty, price,
                                0.0, ts))

    def enter(self, g: RiskGate, symbol: str, target: Direction, price: float,
              ts: int = T0 + MIN, strategy: str = "s1") -> None:
        """Take the position through the gate (it must approve) and fill it."""
        self.mark(symbol, price, ts)
        d = g.evaluate(sig(symbol, target, ts, strategy), price, self.pf)
        assert d.veto is None, d.veto
        assert d.intents
        self.fill(d.intents, price)
