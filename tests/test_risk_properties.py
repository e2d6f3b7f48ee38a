"""Property tests of the RiskGate: random sequences of bars, signals and fills applied to a
real Portfolio through the gate, with an independent model of the limits.

* active: no approved entry ever breaches a limit of the profile at the moment of approval
  (position notional, exposure with the capital ramp, open positions, trades per day and
  per hour, daily loss, drawdown);
* reducing: no approved order increases |exposure| (gross, or any symbol's net position);
* halted: nothing is approved;
* always: a signal that would change a position either gets its order or a veto reason.

10,000 sequences in all (derandomized: the same ones on every run and in CI).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantshift.control import Halt, Reduce
from quantshift.domain import (
    NS_PER_DAY,
    NS_PER_SECOND,
    Bar,
    Direction,
    Fill,
    Instrument,
    OrderIntent,
    Phase,
    Side,
    Signal,
)
from quantshift.portfolio import Portfolio
from quantshift.risk.gate import ACTIVE, HALTED, REDUCING, Decision, RiskGate
from quantshift.risk.pending import Pending
from quantshift.risk.profiles import PROFILES, RiskLimits
from quantshift.risk.sizing import Sizing

T0 = 1_704_096_000 * NS_PER_SECOND  # 2024-01-01T08:00:00Z
MIN = 60 * NS_PER_SECOND
HOUR = 60 * MIN
SYMBOLS = ("A", "B", "C", "D", "E")
STRATEGIES = ("s1", "s2")
EPS = 1e-9

COMMON = dict(derandomize=True, database=None, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

sizings = st.sampled_from(["fixed:1", "fixed:3", "fixed:0.4", "fraction:0.001",
                           "fraction:0.02", "atr:0.001:2", "atr:0.002:1:3",
                           "kelly:0.5:3:0.05,fixed:2", "kelly:0.5:2:0.02,atr:0.001:2"])


@st.composite
def limits(draw: st.DrawFn) -> RiskLimits:
    base = draw(st.sampled_from([PROFILES[p] for p in Phase]))
    pick = draw
    return RiskLimits(
        max_position_notional=pick(st.sampled_from([0, 50, 100, 400, base.max_position_notional])),
        max_exposure=pick(st.sampled_from([0, 150, 500, 1_500, base.max_exposure])),
        max_open_positions=pick(st.sampled_from([0, 1, 2, 3, base.max_open_positions])),
        max_daily_loss=pick(st.sampled_from([0, 5, 30, base.max_daily_loss])),
        max_trades_per_day=pick(st.sampled_from([0, 1, 3, 6, base.max_trades_per_day])),
        max_trades_per_hour=pick(st.sampled_from([0, 1, 2, 4])),
        max_drawdown=pick(st.sampled_from([0, 10, 40, base.max_drawdown])),
        loss_cooldown_seconds=pick(st.sampled_from([0, 300])),
        min_price=pick(st.sampled_from([0, 1.0, 20.0])),
        min_avg_volume=pick(st.sampled_from([0, 300.0])),
        htf_factor=pick(st.sampled_from([0, 0, 2])),
        htf_sma=pick(st.sampled_from([2, 3])),
        max_position_fraction=pick(st.sampled_from([0, 0.001, 0.25])),
        regime_crisis=pick(st.sampled_from([0, 0.25])),
        ramp_start=pick(st.sampled_from([0, 0, 0.25])),
        ramp_day_2=2, ramp_day_3=3, ramp_day_4=4,
    )


# One step, drawn as one integer (one draw per step keeps generation cheap) and decoded to
# (kind, symbol, strategy, direction, move, minutes, fill now).
KINDS = ("bar", "bar", "signal", "signal", "signal", "fill")
WANTS = (Direction.LONG, Direction.SHORT, Direction.FLAT)
MOVES = (0.0, 0.002, -0.002, 0.01, -0.01, 0.05, -0.05, 0.2, -0.2)
MINUTES = (0, 1, 7, 25, 61, 600)
RADIX = (len(KINDS), len(SYMBOLS), len(STRATEGIES), len(WANTS), len(MOVES), len(MINUTES), 2)
steps = st.lists(st.integers(0, 2**31 - 1), min_size=5, max_size=40)


def decode(x: int) -> tuple:
    out = []
    for r in RADIX:
        x, digit = divmod(x, r)
        out.append(digit)
    kind, si, ki, wi, mi, ti, fill = out
    return KINDS[kind], si, ki, WANTS[wi], MOVES[mi], MINUTES[ti], bool(fill)


@dataclass
class World:
    """A real Portfolio and gate, orders sent but not filled, and the model's counts."""

    gate: RiskGate
    pf: Portfolio = field(default_factory=lambda: Portfolio(10_000))
    pending: Pending = field(default_factory=Pending)  # as the engine keeps it
    orders: list[int] = field(default_factory=list)  # every order's time
    prices: dict[str, float] = field(default_factory=dict)
    ts: int = T0
    seq: int = 0
    first_day: int = -1

    def bar(self, symbol: str, move: float, volume: float) -> None:
        price = max(0.5, self.prices.get(symbol, 50.0) * (1 + move))
        self.prices[symbol] = price
        self.pf.mark(symbol, price, self.ts)
        hi = price * (1 + abs(move) / 4)
        self.gate.on_bar(Bar(symbol, self.ts, price, hi, price * (1 - abs(move) / 4), price,
                             volume))

    def fill_all(self) -> None:
        for (strategy, symbol), qty in list(self.pending.items()):
            self.seq += 1
            fill = Fill(self.seq, f"c{self.seq}", strategy, symbol,
                        Side.BUY if qty > 0 else Side.SELL, abs(qty), self.prices[symbol], 0.0,
                        self.ts)
            trade = self.pf.apply_fill(fill)
            if trade is not None:
                self.gate.on_trade(trade)
        self.pending = Pending()

    def nets(self) -> dict[str, float]:
        nets = dict(self.pf.net)
        for (_, s), q in self.pending.items():
            nets[s] = nets.get(s, 0.0) + q
        return nets

    def gross(self, nets: dict[str, float]) -> float:
        return sum(abs(q) * self.pf.marks[s] for s, q in nets.items())

    def apply(self, intents: tuple[OrderIntent, ...]) -> None:
        for i in intents:
            self.pending.add(i.strategy, i.symbol, i.signed_qty)
            self.orders.append(i.ts)

    def signal(self, strategy: str, symbol: str, want: Direction) -> tuple[Signal, Decision]:
        s = Signal(strategy, symbol, self.ts, want, "prop")
        if self.first_day < 0:
            self.first_day = self.ts // NS_PER_DAY
        return s, self.gate.evaluate(s, self.prices[symbol], self.pf, self.pending)

    def share(self) -> float:
        lim = self.gate.limits
        if not 0 < lim.ramp_start < 1:
            return 1.0
        n = self.ts // NS_PER_DAY - self.first_day + 1
        steps = sum(n >= d for d in (lim.ramp_day_2, lim.ramp_day_3, lim.ramp_day_4))
        return lim.ramp_start + (1 - lim.ramp_start) * steps / 3


def world(lim: RiskLimits, sizing: str, fractional: bool) -> World:
    w = World(RiskGate("prop", lim, Sizing.parse(sizing), fractional))
    if fractional:
        w.gate.instruments["E"] = Instrument("E", qty_step=0.01, min_notional=1.0)
    for k, sym in enumerate(SYMBOLS):
        w.bar(sym, 0.0, 1_000.0)
        w.prices[sym] = [5.0, 25.0, 50.0, 120.0, 400.0][k]
        w.bar(sym, 0.0, 1_000.0)
    return w


Check = Callable[[World, Decision, dict[str, float], Signal, str], None]


def ignore(*_: object) -> None:
    pass


def run(w: World, steps_: list, check: Check) -> None:
    for kind, si, ki, want, move, minutes, fill_now in map(decode, steps_):
        w.ts += minutes * MIN
        symbol, strategy = SYMBOLS[si], STRATEGIES[ki]
        if kind == "bar":
            w.bar(symbol, move, 100.0 + 10_000 * abs(move))
        elif kind == "fill":
            w.fill_all()
        else:
            w.bar(symbol, 0.0, 1_000.0)  # the engine marks the bar before deciding
            before = w.nets()
            state = w.gate.state
            current = w.pf.position_qty(strategy, symbol) + w.pending.get((strategy, symbol), 0)
            sig, d = w.signal(strategy, symbol, want)
            assert d.veto is None or (isinstance(d.veto, str) and d.veto)
            changes = (want is Direction.FLAT and abs(current) > EPS) or (
                want is not Direction.FLAT and not (abs(current) > EPS
                                                    and (current > 0) == (want > 0)))
            if changes:  # an order, or a reason why not
                assert d.intents or d.veto, (sig, d)
            check(w, d, before, sig, state)
            w.apply(d.intents)
            if fill_now:
                w.fill_all()


def check_limits(w: World, d: Decision, before: dict[str, float], sig: Signal,
                 state: str) -> None:
    if state != ACTIVE:  # the drawdown limit moved the gate to reducing
        check_reducing(w, d, before, sig, state)
        return
    entries = [i for i in d.intents if not i.reduce_only]
    lim = w.gate.limits
    after = dict(before)
    for i in d.intents:
        after[i.symbol] = after.get(i.symbol, 0.0) + i.signed_qty
    for i in entries:
        price = i.ref_price
        if lim.max_position_notional:
            assert i.qty * price <= lim.max_position_notional + EPS
        cap = lim.max_exposure
        share = w.share()
        if share < 1:
            cap = cap * share if cap else w.pf.equity * share
        if cap:
            assert w.gross(after) <= cap * (1 + 1e-9) + 1e-6, (w.gross(after), cap)
        opened = lambda nets: sum(1 for q in nets.values() if abs(q) > EPS)  # noqa: E731
        if lim.max_open_positions and opened(after) > opened(before):
            assert opened(after) <= lim.max_open_positions
        orders = w.orders + [x.ts for x in d.intents]
        if lim.max_trades_per_day:
            day = sig.ts // NS_PER_DAY
            assert sum(1 for t in orders if t // NS_PER_DAY == day) <= lim.max_trades_per_day
        if lim.max_trades_per_hour:
            assert sum(1 for t in orders if t > sig.ts - HOUR) <= lim.max_trades_per_hour
        if lim.max_daily_loss and w.pf.day == sig.ts // NS_PER_DAY:
            assert w.pf.day_pnl > -lim.max_daily_loss
        if lim.max_drawdown:
            assert w.pf.peak_equity - w.pf.equity < lim.max_drawdown
        assert w.gate.state == ACTIVE


def check_reducing(w: World, d: Decision, before: dict[str, float], sig: Signal,
                   state: str) -> None:
    after = dict(before)
    for i in d.intents:
        assert i.reduce_only
        after[i.symbol] = after.get(i.symbol, 0.0) + i.signed_qty
    for s, q in after.items():
        assert abs(q) <= abs(before.get(s, 0.0)) + EPS
    assert w.gross(after) <= w.gross(before) + 1e-6
    assert w.gate.state == REDUCING


def check_halted(w: World, d: Decision, before: dict[str, float], sig: Signal,
                 state: str) -> None:
    assert d.intents == ()
    assert d.veto is None or d.veto.startswith("halted")  # None: nothing to change


@settings(max_examples=5_000, **COMMON)
@given(limits(), sizings, st.booleans(), steps)
def test_no_approved_entry_breaches_a_limit(lim: RiskLimits, sizing: str, fractional: bool,
                                            steps_: list) -> None:
    run(world(lim, sizing, fractional), steps_, check_limits)


@settings(max_examples=3_000, **COMMON)
@given(limits(), sizings, st.booleans(), steps, steps)
def test_reducing_never_increases_exposure(lim: RiskLimits, sizing: str, fractional: bool,
                                           warm: list, steps_: list) -> None:
    w = world(lim, sizing, fractional)
    run(w, warm, ignore)  # build up positions (and pending orders) first
    w.gate.control.apply(Reduce(reason="property"))
    run(w, steps_, check_reducing)


@settings(max_examples=2_000, **COMMON)
@given(limits(), sizings, st.booleans(), steps, steps)
def test_halted_approves_nothing(lim: RiskLimits, sizing: str, fractional: bool, warm: list,
                                 steps_: list) -> None:
    w = world(lim, sizing, fractional)
    run(w, warm, ignore)
    w.gate.control.apply(Halt(reason="property"))
    run(w, steps_, check_halted)
    assert w.gate.state == HALTED
