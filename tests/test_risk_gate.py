"""RiskGate.evaluate rule by rule, the phase profiles, and client order ids."""

from __future__ import annotations

from hashlib import blake2b

import pytest

from quantshift.control import Halt, Resume
from quantshift.domain import (
    NS_PER_DAY,
    Direction,
    Instrument,
    Phase,
    Side,
    client_order_id,
)
from quantshift.risk.gate import ACTIVE, HALTED, NO_CHANGE
from quantshift.risk.profiles import PROFILES, RiskLimits, limits_for
from quantshift.risk.sizing import Sizing, position_size
from tests.risk_helpers import MIN, OFF, T0, Book, gate, lim, sig


# -- the basics ----------------------------------------------------------------------
def test_entry_from_flat_is_one_sized_intent() -> None:
    g, book = gate(), Book()
    book.mark("X", 100.0)
    d = g.evaluate(sig("X", Direction.LONG), 100.0, book.pf)
    assert d.veto is None
    (i,) = d.intents
    assert (i.symbol, i.side, i.qty, i.reduce_only, i.ref_price) == ("X", Side.BUY, 10, False,
                                                                    100.0)
    assert i.ts == T0 + MIN
    assert i.client_order_id == client_order_id("equity", "s1", "X", T0 + MIN, Side.BUY, False)
    assert g.trades_today == 1


def test_short_entry_sells() -> None:
    g, book = gate(), Book()
    book.mark("X", 100.0)
    (i,) = g.evaluate(sig("X", Direction.SHORT), 100.0, book.pf).intents
    assert (i.side, i.qty, i.reduce_only) == (Side.SELL, 10, False)


def test_repeated_same_direction_signal_is_no_change() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    d = g.evaluate(sig("X", Direction.LONG, T0 + 2 * MIN), 101.0, book.pf)
    assert d.intents == () and d.veto is None
    assert d == NO_CHANGE
    d = g.evaluate(sig("Y", Direction.FLAT), 50.0, book.pf)  # flat and already flat
    assert d.intents == () and d.veto is None


def test_flat_signal_exits_with_a_reduce_only_order() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.SHORT, 100.0)
    d = g.evaluate(sig("X", Direction.FLAT, T0 + 2 * MIN), 95.0, book.pf)
    assert d.veto is None
    (i,) = d.intents
    assert (i.side, i.qty, i.reduce_only) == (Side.BUY, 10, True)


# -- each limit on its own -----------------------------------------------------------
def test_max_position_notional() -> None:
    g, book = gate(lim(max_position_notional=999)), Book()
    book.mark("X", 100.0)
    d = g.evaluate(sig("X", Direction.LONG), 100.0, book.pf)  # 10 * 100 = 1000 > 999
    assert d.intents == ()
    assert "max position notional" in d.veto
    assert "1000.00 > 999" in d.veto
    g2 = gate(lim(max_position_notional=1000))  # exactly at the limit passes
    assert g2.evaluate(sig("X", Direction.LONG), 100.0, book.pf).veto is None


def test_max_exposure() -> None:
    g, book = gate(lim(max_exposure=1500)), Book()
    book.enter(g, "X", Direction.LONG, 100.0)  # exposure 1000
    book.mark("Y", 50.0)
    d = g.evaluate(sig("Y", Direction.LONG), 50.0, book.pf)  # 1000 + 500 = 1500: at the limit
    assert d.veto is None
    book.fill(d.intents, 50.0)
    book.mark("Z", 10.0)
    d = g.evaluate(sig("Z", Direction.SHORT), 10.0, book.pf)  # 1500 + 100 > 1500
    assert d.intents == ()
    assert "max exposure" in d.veto
    assert "1600.00 > 1500" in d.veto


def test_max_exposure_counts_a_reversal_once() -> None:
    g, book = gate(lim(max_exposure=1000)), Book()
    book.enter(g, "X", Direction.LONG, 100.0)  # exposure 1000 = the limit
    d = g.evaluate(sig("X", Direction.SHORT, T0 + 2 * MIN), 100.0, book.pf)
    # the exit takes the long off before the short goes on: still 1000
    assert d.veto is None
    assert [i.reduce_only for i in d.intents] == [True, False]


def test_max_open_positions() -> None:
    g, book = gate(lim(max_open_positions=2)), Book()
    book.enter(g, "A", Direction.LONG, 10.0)
    book.enter(g, "B", Direction.SHORT, 10.0)
    book.mark("C", 10.0)
    d = g.evaluate(sig("C", Direction.LONG), 10.0, book.pf)
    assert d.intents == ()
    assert "max open positions" in d.veto
    assert "3 > 2" in d.veto
    # a reversal of an open symbol opens nothing new
    d = g.evaluate(sig("A", Direction.SHORT, T0 + 2 * MIN), 10.0, book.pf)
    assert d.veto is None
    assert len(d.intents) == 2


def test_max_daily_loss_halts_entries_for_the_rest_of_the_day() -> None:
    g, book = gate(lim(max_daily_loss=50)), Book()
    book.mark("X", 100.0, T0 + MIN)  # the day starts at equity 100000
    book.enter(g, "X", Direction.LONG, 100.0)
    book.mark("X", 94.0, T0 + 2 * MIN)  # 10 * -6 = -60 <= -50
    assert book.pf.day_pnl == pytest.approx(-60)
    book.mark("Y", 20.0, T0 + 2 * MIN)
    d = g.evaluate(sig("Y", Direction.LONG, T0 + 2 * MIN), 20.0, book.pf)
    assert d.intents == ()
    assert "daily loss limit" in d.veto
    assert "-60.00" in d.veto
    assert g.loss_halt_day == T0 // NS_PER_DAY

    # recovered, but still the same day: entries stay halted
    book.mark("X", 110.0, T0 + 3 * MIN)
    assert book.pf.day_pnl == pytest.approx(100)
    d = g.evaluate(sig("Y", Direction.LONG, T0 + 3 * MIN), 20.0, book.pf)
    assert "daily loss limit" in (d.veto or "")
    assert d.intents == ()

    # exits still pass
    d = g.evaluate(sig("X", Direction.FLAT, T0 + 4 * MIN), 110.0, book.pf)
    assert d.veto is None
    assert [i.reduce_only for i in d.intents] == [True]
    book.fill(d.intents, 110.0)

    # the next UTC day: entries allowed again
    next_day = T0 + NS_PER_DAY
    book.mark("Y", 20.0, next_day)
    d = g.evaluate(sig("Y", Direction.LONG, next_day), 20.0, book.pf)
    assert d.veto is None
    assert len(d.intents) == 1


def test_max_daily_loss_exactly_at_the_limit_vetoes() -> None:
    g, book = gate(lim(max_daily_loss=50)), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    book.mark("X", 95.0, T0 + 2 * MIN)  # -50 <= -50
    d = g.evaluate(sig("Y", Direction.LONG, T0 + 2 * MIN), 20.0, book.pf)
    assert "daily loss limit" in (d.veto or "")


def test_max_trades_per_day_resets_the_next_day() -> None:
    g, book = gate(lim(max_trades_per_day=2)), Book()
    book.enter(g, "A", Direction.LONG, 10.0)
    book.enter(g, "B", Direction.LONG, 10.0)
    book.mark("C", 10.0)
    d = g.evaluate(sig("C", Direction.LONG), 10.0, book.pf)
    assert d.intents == ()
    assert "max trades per day" in d.veto
    assert "2 >= 2" in d.veto
    next_day = T0 + NS_PER_DAY + MIN
    book.mark("C", 10.0, next_day)
    d = g.evaluate(sig("C", Direction.LONG, next_day), 10.0, book.pf)
    assert d.veto is None
    assert g.trades_today == 1


def test_zero_means_no_limit() -> None:
    g, book = gate(OFF, sizing="fixed:1000000"), Book(cash=1_000)
    for n, sym in enumerate("ABCDEFGHIJKL"):
        book.enter(g, sym, Direction.LONG, 1_000.0, T0 + (n + 1) * MIN)
    assert book.pf.open_symbols() == 12
    assert g.trades_today == 12


# -- halts, exits, reversals ---------------------------------------------------------
def test_halted_approves_nothing() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    g.control.apply(Halt(reason="operator said stop"))
    assert g.state == HALTED
    book.mark("Y", 10.0)
    d = g.evaluate(sig("Y", Direction.LONG, T0 + 2 * MIN), 10.0, book.pf)
    assert d.intents == ()
    assert d.veto.startswith("halted")
    assert "operator said stop" in d.veto
    d = g.evaluate(sig("X", Direction.FLAT, T0 + 2 * MIN), 100.0, book.pf)
    assert d.intents == ()
    assert d.veto.startswith("halted")
    d = g.evaluate(sig("X", Direction.SHORT, T0 + 2 * MIN), 100.0, book.pf)
    assert d.intents == ()
    assert d.veto.startswith("halted")
    g.control.apply(Halt(reason=""))
    assert g.evaluate(sig("Y", Direction.LONG, T0 + 3 * MIN), 10.0, book.pf).veto.startswith(
        "halted")
    g.control.apply(Resume())
    assert g.state == ACTIVE
    assert g.evaluate(sig("Y", Direction.LONG, T0 + 3 * MIN), 10.0, book.pf).veto is None


def test_exits_pass_every_entry_limit() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    book.enter(g, "Y", Direction.SHORT, 100.0)
    book.mark("X", 80.0, T0 + 2 * MIN)  # -200 on the day
    g.limits = RiskLimits(max_position_notional=1, max_exposure=1, max_open_positions=1,
                          max_daily_loss=10, max_trades_per_day=1)
    d = g.evaluate(sig("X", Direction.FLAT, T0 + 2 * MIN), 80.0, book.pf)
    assert d.veto is None
    (i,) = d.intents
    assert (i.side, i.qty, i.reduce_only) == (Side.SELL, 10, True)
    d = g.evaluate(sig("Y", Direction.FLAT, T0 + 2 * MIN), 100.0, book.pf)
    assert d.veto is None
    (i,) = d.intents
    assert (i.side, i.qty, i.reduce_only) == (Side.BUY, 10, True)


def test_blocked_reversal_still_sends_the_exit() -> None:
    g, book = gate(lim(max_position_notional=1500)), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    # short 10 @ 200 = 2000 > 1500: the entry is blocked, the exit is not
    book.mark("X", 200.0, T0 + 2 * MIN)
    d = g.evaluate(sig("X", Direction.SHORT, T0 + 2 * MIN), 200.0, book.pf)
    assert "max position notional" in d.veto
    (i,) = d.intents
    assert (i.side, i.qty, i.reduce_only) == (Side.SELL, 10, True)
    assert i.client_order_id == client_order_id("equity", "s1", "X", T0 + 2 * MIN, Side.SELL,
                                                True)


def test_reversal_short_to_long_is_two_legs() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.SHORT, 100.0)
    d = g.evaluate(sig("X", Direction.LONG, T0 + 2 * MIN), 90.0, book.pf)
    assert d.veto is None
    exit_leg, entry = d.intents
    assert (exit_leg.side, exit_leg.qty, exit_leg.reduce_only) == (Side.BUY, 10, True)
    assert (entry.side, entry.qty, entry.reduce_only) == (Side.BUY, 10, False)
    assert exit_leg.client_order_id != entry.client_order_id


# -- sizing --------------------------------------------------------------------------
def test_size_rounding_to_zero_is_a_veto() -> None:
    g, book = gate(sizing="fixed:0.5"), Book()
    book.mark("X", 100.0)
    d = g.evaluate(sig("X", Direction.LONG), 100.0, book.pf)
    assert d.intents == ()
    assert "size rounds to zero" in d.veto
    # fraction: 1000 * 0.1 / 200 = 0.5 units -> 0 whole units
    g, book = gate(sizing="fraction:0.1"), Book(cash=1_000)
    book.mark("X", 200.0)
    d = g.evaluate(sig("X", Direction.LONG), 200.0, book.pf)
    assert d.intents == ()
    assert "size rounds to zero" in d.veto


def test_fraction_sizing_whole_and_fractional_units() -> None:
    book = Book(cash=100_000)
    book.mark("X", 333.0)
    # 100000 * 0.1 / 333 = 30.03003003... units
    (i,) = gate(sizing="fraction:0.1").evaluate(sig("X", Direction.LONG), 333.0, book.pf).intents
    assert i.qty == 30
    (i,) = gate(sizing="fraction:0.1", fractional=True).evaluate(
        sig("X", Direction.LONG), 333.0, book.pf).intents
    assert i.qty == pytest.approx(30.03003, abs=1e-9)  # floored to 1e-6
    (i,) = gate(sizing="fixed:0.5", fractional=True).evaluate(
        sig("X", Direction.LONG), 100.0, book.pf).intents
    assert i.qty == pytest.approx(0.5)


def test_position_size_function() -> None:
    assert position_size(Sizing.parse("fixed:7"), 123.0, 1.0, False) == 7
    assert position_size(Sizing.parse("fixed:7.9"), 123.0, 1.0, False) == 7
    assert position_size(Sizing.parse("fraction:0.25"), 50.0, 1_000.0, False) == 5
    assert position_size(Sizing.parse("fraction:0.25"), 0.0, 1_000.0, False) == 0
    assert position_size(Sizing.parse("fraction:0.25"), 50.0, -5.0, False) == 0
    assert position_size(Sizing.parse("fraction:1"), 3.0, 10.0, True) == pytest.approx(
        3.333333, abs=1e-9)


@pytest.mark.parametrize("text", ["fixed", "fixed:0", "fixed:-1", "fraction:1.5", "lots:3",
                                  "fixed:abc", "fraction:nan"])
def test_sizing_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        Sizing.parse(text)


def test_sizing_parse_refuses_infinity() -> None:
    with pytest.raises(ValueError):
        Sizing.parse("fixed:inf")


def test_sizing_parse_and_str() -> None:
    assert Sizing.parse(" fraction:0.1 ") == Sizing(kind="fraction", value=0.1)
    assert str(Sizing.parse("fixed:10")) == "fixed:10"


# -- counters ------------------------------------------------------------------------
def test_counters_round_trip() -> None:
    g, book = gate(), Book()
    book.enter(g, "X", Direction.LONG, 100.0)
    saved = g.counters()
    assert saved == {"day": T0 // NS_PER_DAY, "trades_today": 1, "loss_halt_day": -1}
    g2 = gate()
    g2.restore_counters(saved)
    assert g2.counters() == saved


# -- profiles ------------------------------------------------------------------------
def test_micro_capital_profile() -> None:
    lim = limits_for(Phase.MICRO_CAPITAL, {})
    assert lim == RiskLimits(max_position_notional=100, max_exposure=500, max_open_positions=5,
                             max_daily_loss=50, max_trades_per_day=5)


def test_every_phase_has_a_profile() -> None:
    assert set(PROFILES) == set(Phase)


def test_overrides_apply_and_none_keeps_the_profile() -> None:
    lim = limits_for(Phase.MICRO_CAPITAL, {"max_trades_per_day": 10, "max_exposure": None,
                                           "max_daily_loss": 0, "not_a_limit": 3})
    assert lim.max_trades_per_day == 10
    assert lim.max_exposure == 500
    assert lim.max_daily_loss == 0
    assert lim.max_position_notional == 100


def test_override_zero_means_no_limit_in_the_gate() -> None:
    lim = limits_for(Phase.MICRO_CAPITAL, {"max_position_notional": 0, "max_exposure": 0})
    g, book = gate(lim), Book()
    book.mark("X", 1_000.0)
    d = g.evaluate(sig("X", Direction.LONG), 1_000.0, book.pf)  # 10000 notional
    assert d.veto is None
    assert len(d.intents) == 1
    g = gate(limits_for(Phase.MICRO_CAPITAL, {}))
    d = g.evaluate(sig("X", Direction.LONG), 1_000.0, book.pf)
    assert "max position notional" in d.veto


# -- client order ids ----------------------------------------------------------------
def test_client_order_ids() -> None:
    a = client_order_id("equity", "ma_cross", "AAPL", T0, Side.BUY)
    assert a == client_order_id("equity", "ma_cross", "AAPL", T0, Side.BUY, False)
    assert a.startswith("qs-")
    assert len(a) <= 36
    others = {
        client_order_id("equity", "ma_cross", "AAPL", T0, Side.SELL),
        client_order_id("equity", "ma_cross", "AAPL", T0, Side.BUY, True),
        client_order_id("equity", "ma_cross", "AAPL", T0 + 1, Side.BUY),
        client_order_id("equity", "ma_cross", "MSFT", T0, Side.BUY),
        client_order_id("equity", "rsi", "AAPL", T0, Side.BUY),
        client_order_id("crypto", "ma_cross", "AAPL", T0, Side.BUY),
    }
    assert a not in others
    assert len(others) == 6
    assert all(len(c) <= 36 for c in others)
    long_id = client_order_id("b" * 32, "s" * 64, "S" * 32, 2**62, Side.SELL, True)
    assert len(long_id) <= 36


def test_client_order_ids_keep_their_documented_key() -> None:
    # A restart after an upgrade must recompute the ids the journal holds for the same
    # bar: the id is the 14-byte blake2b of "bot|strategy|symbol|ts|side|leg", whatever
    # the code that computes it caches along the way.
    for bot, strategy, symbol in (("equity", "ma_cross", "AAPL"), ("crypto", "rsi", "BTC/USDT")):
        for ts in (T0, T0 + 1):
            for side in Side:
                for reduce_only, leg in ((False, "e"), (True, "x")):
                    key = f"{bot}|{strategy}|{symbol}|{ts}|{side.value}|{leg}".encode()
                    want = "qs-" + blake2b(key, digest_size=14).hexdigest()
                    assert client_order_id(bot, strategy, symbol, ts, side, reduce_only) == want
    # Pinned, so a change of the key's layout cannot pass by changing both sides.
    assert client_order_id("equity", "ma_cross", "AAPL", 1_704_207_600_000_000_000,
                           Side.BUY) == "qs-" + blake2b(
        b"equity|ma_cross|AAPL|1704207600000000000|buy|e", digest_size=14).hexdigest()


def test_instrument_floor_qty_on_whole_and_fractional_steps() -> None:
    whole = Instrument("X", qty_step=1.0)
    assert whole.floor_qty(7.9) == 7.0
    assert whole.floor_qty(2.9999999999) == 3.0  # binary noise just under a unit
    assert whole.floor_qty(0.4) == 0.0
    assert isinstance(whole.floor_qty(5), float)
    tenth = Instrument("X", qty_step=0.1)
    assert tenth.floor_qty(0.29) == pytest.approx(0.2)
    assert tenth.floor_qty(0.3) == pytest.approx(0.3)  # 0.3 / 0.1 is 2.9999999999999996
    assert Instrument("X", qty_step=0.001).floor_qty(1.23456) == 1.234
    assert Instrument("X", qty_step=0.0).floor_qty(1.23456) == 1.23456  # no step: as is


def test_pending_keeps_its_per_symbol_view_in_step() -> None:
    """The exposure limits read ``Pending.by_symbol``: it must equal the per-symbol sums
    of the (strategy, symbol) entries after any sequence of orders sent and filled."""
    import random

    from quantshift.risk.pending import Pending

    rnd = random.Random(3)
    pending = Pending()
    for _ in range(2_000):
        pending.add(rnd.choice(["s1", "s2"]), rnd.choice(["A", "B", "C"]),
                    rnd.choice([-5.0, -2.5, 1.0, 2.5, 5.0]))
        sums: dict[str, float] = {}
        for (_, symbol), q in pending.items():
            sums[symbol] = sums.get(symbol, 0.0) + q
        assert set(pending.by_symbol) <= set(sums)
        for symbol, q in sums.items():
            assert pending.by_symbol.get(symbol, 0.0) == pytest.approx(q, abs=1e-9)
