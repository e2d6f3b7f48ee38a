"""Exits per strategy: stop-loss, take-profit and a trailing stop.

Distances are written ``2atr`` (multiples of the symbol's ATR) or ``1.5%`` (of the entry
price). On every live bar each held position is checked against its levels with the bar's
high and low; a level touched sends the strategy's position to flat, through the RiskGate
like any exit (exits are never blocked by entry limits), filled as a market order. The
trailing stop arms once the position has gained ``trail_activate`` and then follows the
best price by ``trail``; it only ever tightens, across restarts too (its level is part of
the snapshot).

Where the venue can hold them (broker-side brackets), the stop-loss and take-profit go
out with the entry instead: ``attach`` prices them from the decision bar's close, on the
venue's tick, and while the venue's legs for a position are open (``leg_opened`` /
``leg_closed``) the daemon does not check those levels itself. Should the legs go away
with the position still held (expired, cancelled by hand), the daemon checks them again
from the next bar on. The trailing stop is always the daemon's: a venue cannot combine it
with a bracket.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from quantshift.domain import Bar, Direction, OrderIntent, Side, Signal
from quantshift.portfolio import Portfolio
from quantshift.strategies.indicators import ATR

_DISTANCE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(atr|%)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Distance:
    value: float
    unit: str  # "atr" or "%"

    @classmethod
    def parse(cls, text: str) -> Distance:
        m = _DISTANCE.match(text)
        if m is None or float(m.group(1)) <= 0:
            raise ValueError(f"expected a distance like '2atr' or '1.5%', got {text!r}")
        return cls(float(m.group(1)), m.group(2).lower())

    def price(self, entry: float, atr: float | None) -> float | None:
        if self.unit == "%":
            return entry * self.value / 100.0
        return self.value * atr if atr is not None else None  # no ATR yet: not armed


class ExitRule(BaseModel):
    """A strategy's exits (every field optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stop_loss: str | None = None
    take_profit: str | None = None
    trail: str | None = None
    trail_activate: str = "0%"
    atr_period: int = Field(14, ge=2, le=1000)

    @field_validator("stop_loss", "take_profit", "trail")
    @classmethod
    def _distance(cls, v: str | None) -> str | None:
        if v is not None:
            Distance.parse(v)
        return v

    @field_validator("trail_activate")
    @classmethod
    def _activate(cls, v: str) -> str:
        if v.strip() not in ("0", "0%"):
            Distance.parse(v)
        return v

    def distances(self) -> tuple[Distance | None, Distance | None, Distance | None,
                                 Distance | None]:
        act = None if self.trail_activate.strip() in ("0", "0%") else Distance.parse(
            self.trail_activate)
        return (Distance.parse(self.stop_loss) if self.stop_loss else None,
                Distance.parse(self.take_profit) if self.take_profit else None,
                Distance.parse(self.trail) if self.trail else None, act)


class _Held:
    __slots__ = ("best", "entry", "side", "trail_stop")

    def __init__(self, side: int, entry: float) -> None:
        self.side = side
        self.entry = entry
        self.best = entry
        self.trail_stop: float | None = None


class ExitManager:
    def __init__(self, rules: dict[str, ExitRule]) -> None:
        self._rules = {sid: (rule, *rule.distances()) for sid, rule in rules.items()}
        periods = {rule.atr_period for rule in rules.values()}
        self._atr_period = max(periods) if periods else 14
        self._atr: dict[str, ATR] = {}
        self._held: dict[tuple[str, str], _Held] = {}
        self._legs: dict[str, OrderIntent] = {}  # the venue's open legs, by client order id
        # Per position, the levels the venue holds ("stop_loss", "take_profit").
        self._at_venue: dict[tuple[str, str], set[str]] = {}

    def on_bar(self, bar: Bar, portfolio: Portfolio) -> list[Signal]:
        atr = self._atr_of(bar)
        exits: list[Signal] = []
        for sid, (_, sl, tp, trail, activate) in self._rules.items():
            key = (sid, bar.symbol)
            held = self._hold(key, portfolio)
            if held is None:
                continue
            venue = self._at_venue.get(key)
            if venue:  # the venue watches these levels: checking them here would exit twice
                sl = None if "stop_loss" in venue else sl
                tp = None if "take_profit" in venue else tp
            reason = self._check(held, bar, atr, sl, tp, trail, activate)
            if reason is not None:
                exits.append(Signal(sid, bar.symbol, bar.ts, Direction.FLAT, reason, 1.0,
                                    {"entry": held.entry, "atr": atr or 0.0,
                                     "trail_stop": held.trail_stop or 0.0}))
        return exits

    def observe(self, bar: Bar, portfolio: Portfolio) -> None:
        """A bar from before a restart (history, or one the feed delivers again): the ATR
        learns from it, and a position held since before it moves its trailing stop, so a
        restart neither disarms the ATR distances for a while nor loosens a trailing stop
        (it only ever tightens, and the snapshot may be older than the last bars). Nothing
        fires on the past: the next live bar checks the levels."""
        atr = self._atr_of(bar)
        for sid, (_, _, _, trail, activate) in self._rules.items():
            pos = portfolio.positions.get((sid, bar.symbol))
            if trail is None or pos is None or bar.ts <= pos.entry_ts:
                continue  # a bar before the entry says nothing of the position's best
            held = self._hold((sid, bar.symbol), portfolio)
            if held is not None:
                self._trail(held, bar, atr, trail, activate)

    def _atr_of(self, bar: Bar) -> float | None:
        atr_ind = self._atr.get(bar.symbol)
        if atr_ind is None:
            atr_ind = self._atr[bar.symbol] = ATR(self._atr_period)
        return atr_ind.update(bar.high, bar.low, bar.close)

    def _hold(self, key: tuple[str, str], portfolio: Portfolio) -> _Held | None:
        """What the daemon tracks of one strategy's position (None, and forgotten, when
        flat); a new side or entry price starts it afresh."""
        pos = portfolio.positions.get(key)
        if pos is None or abs(pos.qty) < 1e-12:
            self._held.pop(key, None)
            return None
        side = 1 if pos.qty > 0 else -1
        held = self._held.get(key)
        if held is None or held.side != side or held.entry != pos.avg_price:
            held = self._held[key] = _Held(side, pos.avg_price)
        return held

    @staticmethod
    def _trail(h: _Held, bar: Bar, atr: float | None, trail: Distance,
               activate: Distance | None) -> None:
        """Move the best price and the trailing stop with the bar (it only ever tightens)."""
        s = h.side
        favour = bar.high if s > 0 else bar.low
        if (favour - h.best) * s > 0:
            h.best = favour
        gain = (h.best - h.entry) * s
        need = activate.price(h.entry, atr) if activate is not None else 0.0
        d = trail.price(h.entry, atr)
        if d is not None and need is not None and gain >= need:
            level = h.best - s * d
            if h.trail_stop is None or (level - h.trail_stop) * s > 0:
                h.trail_stop = level

    @classmethod
    def _check(cls, h: _Held, bar: Bar, atr: float | None, sl: Distance | None,
               tp: Distance | None, trail: Distance | None,
               activate: Distance | None) -> str | None:
        s = h.side
        adverse = bar.low if s > 0 else bar.high  # the worst price of the bar for us
        favour = bar.high if s > 0 else bar.low
        if sl is not None:
            d = sl.price(h.entry, atr)
            if d is not None and (adverse - (h.entry - s * d)) * s <= 0:
                return f"stop-loss {sl.value:g}{sl.unit} at {h.entry - s * d:.4f}"
        if tp is not None:
            d = tp.price(h.entry, atr)
            if d is not None and (favour - (h.entry + s * d)) * s >= 0:
                return f"take-profit {tp.value:g}{tp.unit} at {h.entry + s * d:.4f}"
        if trail is not None:
            cls._trail(h, bar, atr, trail, activate)
            if h.trail_stop is not None and (adverse - h.trail_stop) * s <= 0:
                return f"trailing stop at {h.trail_stop:.4f}"
        return None

    # -- broker-side levels ----------------------------------------------------------------
    def attach(self, intent: OrderIntent,
               tick: Callable[[OrderIntent, float], float | None]) -> bool:
        """Give an entry its stop-loss and take-profit prices for the venue to hold, from
        the decision bar's close, rounded to the venue's ``tick`` (None: this order cannot
        carry them). A level that cannot be priced yet (an ATR distance before the ATR is
        ready) stays with the daemon. Whether anything was attached."""
        rule = self._rules.get(intent.strategy)
        if rule is None or (rule[1] is None and rule[2] is None):
            return False
        _, sl, tp, _, _ = rule
        ind = self._atr.get(intent.symbol)
        atr = ind.value if ind is not None else None
        side = 1 if intent.side is Side.BUY else -1
        entry = intent.ref_price
        levels: list[float | None] = []
        for dist, toward in ((tp, 1), (sl, -1)):
            d = dist.price(entry, atr) if dist is not None else None
            if d is None:
                levels.append(None)
                continue
            raw = entry + side * toward * d
            step = tick(intent, raw)
            if step is None:
                return False
            level = round(round(raw / step) * step, 10)
            if (level - entry) * side * toward < step - 1e-12:  # at least a tick away
                level = round(round(entry / step) * step + side * toward * step, 10)
            levels.append(level if level > 0 else None)
        if levels == [None, None]:
            return False
        intent.take_profit, intent.stop_loss = levels
        return True

    def leg_opened(self, leg: OrderIntent) -> None:
        self._legs[leg.client_order_id] = leg
        self._at_venue.setdefault((leg.strategy, leg.symbol), set()).add(leg.leg)

    def leg_closed(self, client_order_id: str) -> None:
        leg = self._legs.pop(client_order_id, None)
        if leg is None:
            return
        key = (leg.strategy, leg.symbol)
        kinds = {o.leg for o in self._legs.values() if (o.strategy, o.symbol) == key}
        if kinds:
            self._at_venue[key] = kinds
        else:
            self._at_venue.pop(key, None)

    def at_venue(self, strategy: str, symbol: str) -> set[str]:
        """The levels the venue holds for a position (empty: the daemon checks them)."""
        return set(self._at_venue.get((strategy, symbol), ()))

    # -- persistence ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {f"{sid}|{sym}": [h.side, h.entry, h.best, h.trail_stop]
                for (sid, sym), h in self._held.items()}

    def restore(self, data: dict[str, Any]) -> None:
        for key, (side, entry, best, trail_stop) in data.items():
            sid, _, sym = key.partition("|")
            held = _Held(int(side), float(entry))
            held.best, held.trail_stop = float(best), trail_stop
            self._held[(sid, sym)] = held
