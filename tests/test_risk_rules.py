"""Each RiskGate rule on its own: a scenario where it must veto (the reason asserted) and
one where it lets the entry pass; sizing; regimes; trading states; counters across a
restart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from quantshift.control import ControlPlane, Halt, Reduce, Resume
from quantshift.domain import (
    NS_PER_DAY,
    Bar,
    Direction,
    Instrument,
    Phase,
    Side,
    Trade,
)
from quantshift.risk.gate import ACTIVE, HALTED, REDUCING, RiskGate
from quantshift.risk.pending import Pending
from quantshift.risk.profiles import PROFILES, RiskLimits, limits_for
from quantshift.risk.regime import BEAR, BULL, CHOPPY, CRISIS, UNKNOWN, RegimeDetector
from quantshift.risk.sizing import KellyStats, Sizing, position_size
from quantshift.settings import Settings
from quantshift.state.journal import Journal
from tests.risk_helpers import HOUR, MIN, OFF, T0, Book, gate, lim, sig


def entry_qty(g: RiskGate, book: Book, symbol: str = "X", price: float = 100.0,
              target: Direction = Direction.LONG, ts: int = T0 + MIN,
              strategy: str = "s1") -> float:
    book.pf.mark(symbol, price, ts)
    d = g.evaluate(sig(symbol, target, ts, strategy), price, book.pf)
    assert d.veto is None, d.veto
    (i,) = [i for i in d.intents if not i.reduce_only]
    return i.qty


def veto(g: RiskGate, book: Book, symbol: str = "X", price: float = 100.0,
         target: Direction = Direction.LONG, ts: int = T0 + MIN) -> str:
    book.pf.mark(symbol, price, ts)
    d = g.evaluate(sig(symbol, target, ts), price, book.pf)
    assert d.veto, "expected a veto"
    assert not [i for i in d.intents if not i.reduce_only]
    return d.veto


def trade(pnl: float, symbol: str = "X", strategy: str = "s1", exit_ts: int = T0 + MIN,
          price: float = 100.0, qty: float = 10.0) -> Trade:
    return Trade(strategy, symbol, Direction.LONG, qty, exit_ts - MIN, price, exit_ts,
                 price + pnl / qty, pnl)


# -- sizing ----------------------------------------------------------------------------
def test_fixed_and_fraction_sizing_are_unchanged() -> None:
    book = Book()
    assert entry_qty(gate(sizing="fixed:7"), book) == 7
    assert entry_qty(gate(sizing="fraction:0.1"), book, price=333.0) == 30
    assert position_size(Sizing.parse("fraction:0.5"), 10.0, 1_000.0, False) == 50


def test_atr_sizing_risks_a_share_of_equity_per_atr_stop() -> None:
    g, book = gate(sizing="atr:0.01:2"), Book()
    ts = book.bars(g, "X", [100.0] * 20, spread=2.0)  # every true range is 2: ATR 2
    assert g.symbols["X"].atr.value == pytest.approx(2.0)
    # 100000 * 0.01 / (2 * 2) = 250 units, long or short
    assert entry_qty(g, book, ts=ts) == 250
    assert entry_qty(g, book, target=Direction.SHORT, ts=ts, strategy="s2") == 250


def test_atr_sizing_vetoes_until_the_atr_is_known() -> None:
    g, book = gate(sizing="atr:0.01:2"), Book()
    ts = book.bars(g, "X", [100.0] * 5)
    assert veto(g, book, ts=ts) == "no ATR yet for X: 5/14 bars to size the entry"
    ts = book.bars(g, "X", [100.0] * 9, ts0=ts + MIN)
    assert entry_qty(g, book, ts=ts) > 0


def test_atr_sizing_is_capped_by_the_position_fraction() -> None:
    g, book = gate(lim(max_position_fraction=0.1), sizing="atr:0.01:2"), Book()
    ts = book.bars(g, "X", [100.0] * 20, spread=2.0)
    assert entry_qty(g, book, ts=ts) == 100  # 10 % of 100000 at 100, not 250


def test_atr_sizing_is_capped_by_buying_power_for_longs() -> None:
    g, book = gate(sizing="atr:0.01:2"), Book()
    book.buy("Y", 950, 100.0)  # cash 5000 left
    ts = book.bars(g, "X", [100.0] * 20, spread=2.0)
    assert entry_qty(g, book, ts=ts) == 50
    assert entry_qty(g, book, target=Direction.SHORT, ts=ts, strategy="s2") == 250
    book.buy("Y", 50, 100.0)  # no cash left at all
    assert veto(g, book, ts=ts) == "no buying power: cash available 0.00"


def test_atr_size_rounding_to_zero_is_a_veto_and_fractions_need_permission() -> None:
    g, book = gate(sizing="atr:0.01:2"), Book(cash=1_000)
    ts = book.bars(g, "X", [100.0] * 20, spread=20.0)  # ATR 20: 10 / 40 = 0.25 units
    assert veto(g, book, ts=ts).startswith("size rounds to zero (atr:0.01:2 at 100)")
    g = gate(sizing="atr:0.01:2", fractional=True)
    ts = book.bars(g, "X", [100.0] * 20, spread=20.0)
    assert entry_qty(g, book, ts=ts) == pytest.approx(0.25)
    g.instruments["X"] = Instrument("X", qty_step=0.1)
    assert entry_qty(g, book, ts=ts, strategy="s2") == pytest.approx(0.2)
    g.instruments["X"] = Instrument("X", qty_step=1.0)
    assert veto(g, book, ts=ts).startswith("size rounds to zero")


def test_kelly_falls_back_to_the_base_sizing_before_min_trades() -> None:
    g, book = gate(sizing="kelly:0.5:4:0.5,fixed:7"), Book()
    for pnl in (20, 20, 20):
        g.on_trade(trade(pnl))
    assert entry_qty(g, book) == 7  # 3 trades < 4


def test_kelly_sizes_from_the_strategys_own_trades() -> None:
    g, book = gate(sizing="kelly:0.5:4:0.5,fixed:7"), Book()
    for pnl in (20, 20, 20, -10):  # returns +2 %, +2 %, +2 %, -1 %: W 0.75, R 2
        g.on_trade(trade(pnl))
    assert g.kelly["s1"].kelly() == pytest.approx(0.625)
    # 0.5 * 0.625 = 31.25 % of 100000 at 100 = 312.5 units
    assert entry_qty(g, book) == 312
    assert entry_qty(g, book, strategy="s2") == 7  # another strategy: its own history
    g = gate(replace(OFF, max_position_fraction=0.1), sizing="kelly:0.5:4:0.2,fixed:7")
    for pnl in (20, 20, 20, -10):
        g.on_trade(trade(pnl))
    assert entry_qty(g, book) == 100  # the profile's 10 % beats the sizing's 20 % cap
    g = gate(sizing="kelly:0.5:4:0.2,fixed:7")
    for pnl in (20, 20, 20, -10):
        g.on_trade(trade(pnl))
    assert entry_qty(g, book) == 200  # the sizing's cap: 20 %


def test_kelly_without_an_edge_is_a_veto() -> None:
    g, book = gate(sizing="kelly:0.5:4,fixed:7"), Book()
    for pnl in (-20, -20, 10, -10):  # W 0.25, R 0.6: f* = -1
        g.on_trade(trade(pnl))
    assert veto(g, book) == "kelly: no edge for s1 (f* -1.000 over 4 trades)"


def test_kelly_stats_edge_cases() -> None:
    assert KellyStats().kelly() == 0
    s = KellyStats()
    s.add(0.01)
    assert s.kelly() == 1.0  # never lost
    s = KellyStats()
    s.add(-0.01)
    assert s.kelly() == -1.0
    assert KellyStats.from_list(KellyStats(3, 2, 0.5, 0.1).to_list()).to_list() == [3, 2, 0.5,
                                                                                      0.1]


def test_kelly_fraction_follows_every_trade_and_a_restore() -> None:
    # The gate reads the fraction kept on the statistics: it must move with each trade
    # and come back with the counters after a restart.
    g, book = gate(sizing="kelly:0.5:4:0.5,fixed:7"), Book()
    for pnl in (20, 20, 20, -10):
        g.on_trade(trade(pnl))
    assert g.kelly["s1"].f == pytest.approx(0.625)
    g.on_trade(trade(-10))  # W 0.6, R 2: f* 0.4
    assert g.kelly["s1"].f == pytest.approx(g.kelly["s1"].kelly()) == pytest.approx(0.4)
    assert entry_qty(g, book) == 200  # 0.5 * 0.4 of 100000 at 100
    again = gate(sizing="kelly:0.5:4:0.5,fixed:7")
    again.restore_counters(g.counters())
    assert again.kelly["s1"].f == pytest.approx(0.4)
    assert entry_qty(again, book) == 200


@pytest.mark.parametrize(("text", "expected"), [
    ("atr:0.01:2", Sizing(kind="atr", value=0.01, multiplier=2, period=14)),
    ("atr:0.02:1.5:20", Sizing(kind="atr", value=0.02, multiplier=1.5, period=20)),
    ("kelly:0.5", Sizing(kind="kelly", value=0.5, base=Sizing(kind="fraction", value=0.02))),
    ("kelly:0.25:10:0.1,atr:0.01:2",
     Sizing(kind="kelly", value=0.25, min_trades=10, cap=0.1,
            base=Sizing(kind="atr", value=0.01, multiplier=2))),
])
def test_sizing_grammar(text: str, expected: Sizing) -> None:
    parsed = Sizing.parse(text)
    assert parsed == expected
    assert Sizing.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["atr:0.01", "atr:0:2", "atr:0.01:0", "atr:0.01:2:1.5",
                                  "atr:2:2", "kelly:0", "kelly:1.5", "kelly:0.5:0",
                                  "kelly:0.5:10:2", "kelly:0.5,kelly:0.2", "fixed:1,fixed:2",
                                  "kelly:0.5,lots:3"])
def test_sizing_grammar_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Sizing.parse(text)


def test_settings_take_the_new_sizings_and_refuse_bad_ones() -> None:
    assert str(Settings(sizing="atr:0.01:2").sizing) == "atr:0.01:2"
    with pytest.raises(ValueError, match="K must be"):
        Settings(sizing="kelly:2")


# -- regime ----------------------------------------------------------------------------
def _regime_bars(g: RiskGate, book: Book, closes: list[float], spreads: list[float]) -> int:
    ts = T0
    for c, s in zip(closes, spreads, strict=True):
        book.bar(g, "REF", c, ts, spread=s)
        ts += MIN
    return ts - MIN


UP = [100 + 0.1 * k for k in range(150)]
DOWN = [200 - 0.1 * k for k in range(150)]


@pytest.mark.parametrize(("closes", "spreads", "regime", "qty"), [
    (UP, [1.0] * 150, BULL, 100),
    (DOWN, [1.0] * 150, BEAR, 75),
    ([100.0] * 150, [1.0] * 150, CHOPPY, 50),  # no trend
    (UP, [1.0] * 145 + [3.0] * 5, CHOPPY, 50),  # an up trend in a storm
    (DOWN, [1.0] * 145 + [3.0] * 5, CRISIS, 25),  # a falling market in a storm
    (UP, [1.0] * 145 + [6.0] * 5, CRISIS, 25),  # any market in a tempest
])
def test_regime_scales_the_size(closes: list[float], spreads: list[float], regime: str,
                                qty: float) -> None:
    g, book = gate(sizing="fixed:100"), Book()
    ts = _regime_bars(g, book, closes, spreads)
    assert g.regime == regime
    book.pf.mark("X", 50.0, ts)
    d = g.evaluate(sig("X", Direction.LONG, ts), 50.0, book.pf)
    assert d.veto is None
    assert d.intents[0].qty == qty
    assert d.regime == regime == g.last_regime


def test_regime_unknown_until_warm_and_reference_symbol() -> None:
    g, book = gate(sizing="fixed:100", regime_symbol="REF"), Book()
    book.bars(g, "OTHER", [100.0] * 150)  # not the reference: the regime stays unknown
    assert g.regime == UNKNOWN
    ts = _regime_bars(g, book, DOWN[:100], [1.0] * 100)
    assert g.regime == UNKNOWN  # 100 bars: ATR% has no long average yet
    assert entry_qty(g, book, ts=ts) == 100
    d = RegimeDetector()
    for k, c in enumerate(DOWN):
        d.update(Bar("FIRST", T0 + k * MIN, c, c + 0.5, c - 0.5, c, 1.0))
    assert (d.symbol, d.regime) == (None, BEAR)
    g2 = gate()
    g2.on_bar(Bar("FIRST", T0, 1, 1, 1, 1, 1))
    assert g2.detector.symbol == "FIRST"  # unset: the first symbol seen


def test_regime_multiplier_zero_stops_entries() -> None:
    g, book = gate(lim(regime_crisis=0), sizing="fixed:100"), Book()
    ts = _regime_bars(g, book, DOWN, [1.0] * 145 + [3.0] * 5)
    assert veto(g, book, ts=ts) == "regime crisis: size x0, no entries in this regime"
    g.limits = lim(regime_crisis=0.25)
    assert entry_qty(g, book, ts=ts) == 25


# -- limits ----------------------------------------------------------------------------
def test_max_trades_per_hour() -> None:
    g, book = gate(lim(max_trades_per_hour=2)), Book()
    book.enter(g, "A", Direction.LONG, 10.0, T0)
    book.enter(g, "B", Direction.LONG, 10.0, T0 + 10 * MIN)
    assert veto(g, book, "C", ts=T0 + 59 * MIN) == "max trades per hour: 2 >= 2"
    assert entry_qty(g, book, "C", ts=T0 + 60 * MIN) == 10  # the first left the window


def test_max_trades_per_hour_counts_exits_but_never_blocks_them() -> None:
    g, book = gate(lim(max_trades_per_hour=2)), Book()
    book.enter(g, "A", Direction.LONG, 10.0, T0)
    book.enter(g, "A", Direction.FLAT, 10.0, T0 + MIN)
    nothing = g.evaluate(sig("B", Direction.FLAT, T0 + 2 * MIN), 10.0, book.pf)
    assert nothing.intents == () and nothing.veto is None  # flat already: nothing sent
    assert veto(g, book, "B", ts=T0 + 3 * MIN) == "max trades per hour: 2 >= 2"
    book.enter(g, "C", Direction.LONG, 10.0, T0 + 61 * MIN)
    g.limits = lim(max_trades_per_hour=1)
    book.enter(g, "C", Direction.FLAT, 10.0, T0 + 62 * MIN)  # the exit still goes


def test_max_drawdown_halts_entries_until_resumed() -> None:
    g, book = gate(lim(max_drawdown=100)), Book()
    book.enter(g, "X", Direction.LONG, 100.0, T0 + MIN)
    book.pf.mark("X", 110.0, T0 + 2 * MIN)  # peak 100100
    book.pf.mark("X", 99.0, T0 + 3 * MIN)  # 99990: 110 below the peak
    reason = veto(g, book, "Y", ts=T0 + 3 * MIN)
    assert reason.startswith("max drawdown: equity 99990.00 is 110.00 below its peak "
                             "100100.00 (limit 100)")
    assert g.state == REDUCING
    assert veto(g, book, "Y", ts=T0 + 4 * MIN).startswith("reducing: max drawdown")
    book.enter(g, "X", Direction.FLAT, 99.0, T0 + 5 * MIN)  # the exit passes
    g.control.apply(Resume())
    assert entry_qty(g, book, "Y", ts=T0 + 6 * MIN) == 10  # measured from now on


def test_max_drawdown_passes_within_the_limit() -> None:
    g, book = gate(lim(max_drawdown=100)), Book()
    book.enter(g, "X", Direction.LONG, 100.0, T0 + MIN)
    book.pf.mark("X", 91.0, T0 + 2 * MIN)  # 90 below the peak
    assert entry_qty(g, book, "Y", ts=T0 + 2 * MIN) == 10
    assert g.state == ACTIVE


def test_cooldown_after_a_losing_exit() -> None:
    g, book = gate(lim(loss_cooldown_seconds=600)), Book()
    g.on_trade(trade(-5.0, "X", exit_ts=T0 + MIN))
    g.on_trade(trade(+5.0, "Y", exit_ts=T0 + MIN))  # a winning exit: no cooldown
    assert veto(g, book, "X", ts=T0 + 2 * MIN) == (
        "cooldown after a losing exit in X: 540s of 600s left")
    assert entry_qty(g, book, "Y", ts=T0 + 2 * MIN) == 10
    assert entry_qty(g, book, "X", ts=T0 + 11 * MIN) == 10


def test_min_price() -> None:
    g, book = gate(lim(min_price=5)), Book()
    assert veto(g, book, price=4.99) == "min price: 4.99 < 5"
    assert entry_qty(g, book, price=5.0) == 10


def test_min_average_volume() -> None:
    g, book = gate(lim(min_avg_volume=1_000)), Book()
    assert veto(g, book) == "min average volume: no bars of X seen yet"
    ts = book.bars(g, "X", [100.0] * 5, volume=500)
    assert veto(g, book, ts=ts) == "min average volume: 500 < 1000 over the last 5 bars"
    ts = book.bars(g, "X", [100.0] * 20, ts0=ts + MIN, volume=1_500)
    assert entry_qty(g, book, ts=ts) == 10


def test_market_hours() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    g.control.set_market_open(False)
    assert veto(g, book, "Y") == "market closed: entries wait for the venue's market hours"
    book.enter(g, "X", Direction.FLAT, 100.0, T0 + 2 * MIN)  # exits are not held back
    g.control.set_market_open(True)
    assert entry_qty(g, book, "Y") == 10
    g.control.set_market_open(None)  # unknown (a crypto venue): allowed
    assert entry_qty(g, book, "Z") == 10


def test_higher_timeframe_must_agree() -> None:
    g, book = gate(lim(htf_factor=3, htf_sma=4)), Book()
    ts = book.bars(g, "X", [100.0 + k for k in range(11)])
    assert veto(g, book, ts=ts, price=110.0) == (
        "higher timeframe not ready: 3/4 bars of 3x to confirm the entry")
    ts = book.bars(g, "X", [111.0], ts0=ts + MIN)  # the 12th bar completes the 4th 3x bar
    assert veto(g, book, ts=ts, price=111.0, target=Direction.SHORT) == (
        "higher timeframe disagrees: SHORT but the 3x close 111 is above its 4-bar SMA 106.5")
    assert entry_qty(g, book, ts=ts, price=111.0) == 10
    g2, book2 = gate(lim(htf_factor=3, htf_sma=4)), Book()
    ts = book2.bars(g2, "X", [200.0 - k for k in range(12)])
    assert veto(g2, book2, ts=ts, price=189.0).startswith(
        "higher timeframe disagrees: LONG but the 3x close 189 is below")
    assert entry_qty(g2, book2, ts=ts, price=189.0, target=Direction.SHORT) == 10


def test_pending_orders_count_as_open_positions_and_exposure() -> None:
    g, book = gate(lim(max_open_positions=1)), Book()
    book.pf.mark("A", 10.0, T0)
    pending = Pending()
    pending.add("s1", "A", 10.0)  # sent, not filled yet
    book.pf.mark("B", 10.0, T0 + MIN)
    d = g.evaluate(sig("B", Direction.LONG), 10.0, book.pf, pending)
    assert d.veto == "max open positions: 2 > 1"
    assert g.evaluate(sig("B", Direction.LONG), 10.0, book.pf).veto is None
    g = gate(lim(max_exposure=150))
    d = g.evaluate(sig("B", Direction.LONG), 10.0, book.pf, pending)
    assert d.veto == "max exposure: 200.00 > 150"
    smaller = Pending()
    smaller.add("s1", "A", 5.0)
    d = g.evaluate(sig("B", Direction.LONG), 10.0, book.pf, smaller)
    assert d.veto is None  # 50 + 100 <= 150


def test_capital_ramp_limits_exposure_in_production() -> None:
    limits = lim(max_exposure=10_000, ramp_start=0.25)
    g, book = gate(limits, sizing="fixed:30"), Book()  # 3000 a position
    assert veto(g, book, "A") == "max exposure: 3000.00 > 2500 (capital ramp: 25% on day 1)"
    assert g.phase_start_day == T0 // NS_PER_DAY
    day3 = T0 + 2 * NS_PER_DAY + MIN
    book.enter(g, "A", Direction.LONG, 100.0, day3)  # 50 %: 5000
    assert veto(g, book, "B", ts=day3).startswith("max exposure: 6000.00 > 5000 (capital ramp: "
                                                  "50% on day 3)")
    day7 = T0 + 6 * NS_PER_DAY + MIN
    book.enter(g, "B", Direction.LONG, 100.0, day7)  # 75 %: 7500
    assert veto(g, book, "C", ts=day7).startswith("max exposure: 9000.00 > 7500")
    book.enter(g, "C", Direction.LONG, 100.0, T0 + 13 * NS_PER_DAY)  # 100 % from day 14


def test_capital_ramp_scales_sizing_equity_and_caps_exposure_without_a_limit() -> None:
    g, book = gate(lim(ramp_start=0.25), sizing="fraction:0.1"), Book()
    assert entry_qty(g, book) == 25  # 100000 * 25 % * 10 % / 100
    assert entry_qty(g, book, ts=T0 + 14 * NS_PER_DAY, strategy="s2") == 100
    g = gate(lim(ramp_start=0.25), sizing="fixed:300")  # 30000 > 25 % of 100000
    assert veto(g, book).startswith("max exposure: 30000.00 > 25000 (capital ramp")
    assert gate(lim(), sizing="fixed:300").evaluate(
        sig("X", Direction.LONG), 100.0, book.pf).veto is None


def test_production_profile_ramps_and_the_others_do_not() -> None:
    assert PROFILES[Phase.PRODUCTION].ramp_start == 0.25
    assert (PROFILES[Phase.PRODUCTION].ramp_day_2, PROFILES[Phase.PRODUCTION].ramp_day_3,
            PROFILES[Phase.PRODUCTION].ramp_day_4) == (3, 7, 14)
    assert all(PROFILES[p].ramp_start == 0 for p in Phase if p is not Phase.PRODUCTION)
    micro = PROFILES[Phase.MICRO_CAPITAL]
    assert (micro.max_trades_per_hour, micro.max_trades_per_day) == (2, 5)


def test_new_limits_are_overridable_through_settings() -> None:
    from dataclasses import fields

    s = Settings(phase="micro_capital", risk_max_trades_per_hour=7, risk_htf_factor=3,
                 risk_ramp_start=0.5, risk_regime_symbol="SPY")
    limits = limits_for(s.phase, {f.name: getattr(s, f"risk_{f.name}")
                                  for f in fields(RiskLimits)})
    assert (limits.max_trades_per_hour, limits.htf_factor, limits.ramp_start) == (7, 3, 0.5)
    assert limits.max_drawdown == 150  # the profile's
    assert s.risk_regime_symbol == "SPY"
    with pytest.raises(ValueError):
        Settings(risk_max_position_fraction=1.5)
    with pytest.raises(ValueError):
        Settings(risk_regime_symbol="not a symbol")


# -- trading states --------------------------------------------------------------------
def test_reducing_passes_only_exposure_reducing_orders() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    g.control.apply(Reduce(reason="operator: wind down"))
    assert g.state == REDUCING
    assert veto(g, book, "Y") == ("reducing: operator: wind down; only exposure-reducing "
                                  "orders pass")
    d = g.evaluate(sig("X", Direction.SHORT, T0 + 2 * MIN), 100.0, book.pf)
    assert d.veto.startswith("reducing")  # the reversal's entry is blocked ...
    assert [(i.side, i.reduce_only) for i in d.intents] == [(Side.SELL, True)]  # ... not its exit
    g.control.apply(Resume())
    assert g.state == ACTIVE
    assert entry_qty(g, book, "Y") == 10


def test_reducing_holds_an_exit_that_would_raise_the_net_position() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.LONG, 100.0, strategy="s1")
    book.enter(g, "X", Direction.SHORT, 100.0, strategy="s2")  # the account is flat in X
    g.control.apply(Reduce(reason="wind down"))
    d = g.evaluate(sig("X", Direction.FLAT, T0 + 2 * MIN, "s1"), 100.0, book.pf)
    assert d.intents == ()
    assert d.veto == ("reducing: wind down; this exit would raise the net position in X "
                      "from 0 to -10")
    g.control.apply(Resume())
    d = g.evaluate(sig("X", Direction.FLAT, T0 + 2 * MIN, "s1"), 100.0, book.pf)
    assert d.veto is None and len(d.intents) == 1  # active: exits are never held


def test_halted_passes_nothing_and_states_persist(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "ledger.sqlite", bot="equity", executor="paper")
    g, book = gate(control=ControlPlane(journal)), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    g.control.apply(Halt(reason="kill switch"))
    assert g.evaluate(sig("X", Direction.FLAT, T0 + 2 * MIN), 100.0, book.pf).veto == (
        "halted: kill switch")
    for state, cmd in ((HALTED, Halt(reason="why")), (REDUCING, Reduce(reason="why"))):
        g.control.apply(cmd)
        journal.flush()
        g2 = gate(control=ControlPlane(journal))  # what a restart reads back
        g2.control.restore()
        assert (g2.state, g2.halt_reason) == (state, "why")
    g.control.apply(Resume())
    assert "state" not in g.counters()  # the control plane keeps it, not the gate
    journal.close()


# -- counters across a restart -----------------------------------------------------------
def restarted(g: RiskGate) -> RiskGate:
    g2 = gate(g.limits, str(g.sizing), g.fractional)
    g2.restore_counters(g.counters())
    return g2


def test_restart_keeps_the_hourly_cap() -> None:
    g, book = gate(lim(max_trades_per_hour=2)), Book()
    book.enter(g, "A", Direction.LONG, 10.0, T0 + 10 * HOUR)
    book.enter(g, "B", Direction.LONG, 10.0, T0 + 10 * HOUR + MIN)
    assert veto(g, book, "C", ts=T0 + 10 * HOUR + 30 * MIN).startswith("max trades per hour")
    assert veto(restarted(g), book, "C", ts=T0 + 10 * HOUR + 30 * MIN).startswith(
        "max trades per hour: 2 >= 2")
    assert entry_qty(gate(lim(max_trades_per_hour=2)), book, "C",
                     ts=T0 + 10 * HOUR + 30 * MIN) == 10  # what a reset would have allowed


def test_restart_keeps_the_daily_cap_the_loss_halt_and_the_day_baseline() -> None:
    g, book = gate(lim(max_trades_per_day=1, max_daily_loss=50)), Book()
    book.enter(g, "A", Direction.LONG, 10.0)
    g2 = restarted(g)
    assert veto(g2, book, "B").startswith("max trades per day: 1 >= 1")
    # the day's baseline: a book restarted at a lower equity still counts from the day's start
    g = gate(lim(max_daily_loss=50))
    book.enter(g, "X", Direction.LONG, 100.0, T0 + MIN)
    book.pf.mark("X", 94.0, T0 + 2 * MIN)  # -60
    fresh = Book(cash=book.pf.equity)  # e.g. a ledger restored without its day start
    assert veto(restarted(g), fresh, "Y", ts=T0 + 3 * MIN).startswith(
        "daily loss limit: day P&L -60.00 <= -50")
    assert entry_qty(gate(lim(max_daily_loss=50)), fresh, "Y", ts=T0 + 3 * MIN) == 10


def test_restart_keeps_cooldowns_drawdown_ramp_and_kelly(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "ledger.sqlite", bot="equity", executor="paper")
    g, book = gate(lim(loss_cooldown_seconds=600, max_drawdown=100, ramp_start=0.25),
                   sizing="kelly:0.5:4:0.5,fixed:7", control=ControlPlane(journal)), Book()
    for pnl in (20, 20, 20, -10):
        g.on_trade(trade(pnl, "X", exit_ts=T0 + MIN))
    book.enter(g, "Y", Direction.LONG, 100.0, T0 + MIN)  # 25 % of equity: day 1 of the ramp
    book.pf.mark("Y", 80.0, T0 + 2 * MIN)
    assert veto(g, book, "Z", ts=T0 + 2 * MIN).startswith("max drawdown")
    journal.flush()  # the breaker's trip is the control plane's, persisted by it
    g2 = gate(g.limits, str(g.sizing), g.fractional, control=ControlPlane(journal))
    g2.restore_counters(g.counters())
    g2.control.restore()
    assert g2.state == REDUCING
    assert veto(g2, book, "Z", ts=T0 + 3 * MIN).startswith("reducing: max drawdown")
    g2.control.apply(Resume())
    assert veto(g2, book, "X", ts=T0 + 3 * MIN).startswith("cooldown after a losing exit in X")
    day3 = T0 + 2 * NS_PER_DAY
    assert entry_qty(restarted(g2), book, "Z", ts=day3) == pytest.approx(
        int(book.pf.equity * 0.5 * 0.3125 / 100))  # Kelly on the ramp's 50 % (day 3)


def test_counters_stay_small_when_unused() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    assert set(g.counters()) == {"day", "trades_today", "loss_halt_day"}
    g.restore_counters({})
    assert (g.day, g.trades_today, g.state) == (-1, 0, ACTIVE)


def test_status() -> None:
    g, book = gate(lim(ramp_start=0.25)), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    st = g.status()
    assert (st["state"], st["regime"], st["regime_scale"], st["capital_share"],
            st["trades_today"], st["market_open"]) == (ACTIVE, UNKNOWN, 1.0, 0.25, 1, None)
