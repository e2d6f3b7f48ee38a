"""The paper fill model and the portfolio arithmetic, against numbers worked out by hand.

Unless a test says otherwise: slippage 5 bps (a buy pays close * 1.0005, a sell receives
close * 0.9995), commission 10 bps of the filled notional, sizing fixed:10, cash 100,000.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from quantshift.app import build_engine, open_journal
from quantshift.domain import (
    NS_PER_SECOND,
    Bar,
    Direction,
    Fill,
    OrderIntent,
    OrderState,
    Side,
    Signal,
    client_order_id,
)
from quantshift.engine import Engine
from quantshift.execution.paper import PaperExecutor
from quantshift.portfolio import Portfolio
from quantshift.settings import Settings

T0 = 1_704_067_200 * NS_PER_SECOND  # 2024-01-01T00:00:00Z
MIN = 60 * NS_PER_SECOND


# -- helpers ---------------------------------------------------------------------------
def bar(symbol: str, ts: int, close: float, open: float | None = None) -> Bar:
    o = close if open is None else open
    return Bar(symbol, ts, o, max(o, close) + 1.0, min(o, close) - 1.0, close, 1_000.0)


def intent(symbol: str, side: Side, qty: float, ref_price: float, ts: int = T0,
           reduce_only: bool = False) -> OrderIntent:
    coid = client_order_id("equity", "s1", symbol, ts, side, reduce_only)
    return OrderIntent(coid, "s1", symbol, side, qty, ts, ref_price, reduce_only, "test")


class RecordingSink:
    def __init__(self) -> None:
        self.states: list[tuple[str, OrderState, str]] = []
        self.fills: list[tuple[str, float, float, float, int]] = []

    def on_order_state(self, intent: OrderIntent, state: OrderState, detail: str = "") -> None:
        self.states.append((intent.client_order_id, state, detail))

    def on_fill(self, intent: OrderIntent, qty: float, price: float, commission: float,
                ts: int) -> None:
        self.fills.append((intent.client_order_id, qty, price, commission, ts))


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("QUANTSHIFT_", "APCA_", "CCXT_")) or key == "SHADOW_MODE":
            monkeypatch.delenv(key)
    return tmp_path


@pytest.fixture
def make_engine(clean_env: Path) -> Iterator:
    journals = []

    def make(**overrides) -> Engine:
        kw = {"state_dir": clean_env / "state", "paper_slippage_bps": 5,
              "paper_commission_bps": 10, "sizing": "fixed:10", "paper_cash": 100_000,
              # slow=30: the handful of bars a test feeds never makes the strategy speak.
              "strategies": [{"name": "ma_cross", "params": {"fast": 10, "slow": 30}}]}
        kw.update(overrides)
        settings = Settings(**kw)
        journal = open_journal(settings)
        journals.append(journal)
        return build_engine(settings, journal, log_decisions=False, keep_trades=True)

    yield make
    for journal in journals:
        journal.close()


def signal(symbol: str, ts: int, target: Direction, strategy: str = "ma_cross") -> Signal:
    return Signal(strategy, symbol, ts, target, "test")


# -- the fill model on its own ---------------------------------------------------------
def test_buy_at_close_pays_slippage_and_commission() -> None:
    sink = RecordingSink()
    paper = PaperExecutor(sink, "close", slippage_bps=5, commission_bps=10)
    i = intent("X", Side.BUY, 10, 100.0)
    paper.submit(i)
    # 100 * 1.0005 = 100.05; commission 100.05 * 10 * 10 / 1e4 = 1.0005
    assert len(sink.fills) == 1
    coid, qty, price, commission, ts = sink.fills[0]
    assert (coid, qty, ts) == (i.client_order_id, 10, T0)
    assert price == pytest.approx(100.05, abs=1e-12)
    assert commission == pytest.approx(1.0005, abs=1e-12)
    assert paper.open_orders() == []


def test_sell_at_close_receives_less_by_the_slippage() -> None:
    sink = RecordingSink()
    paper = PaperExecutor(sink, "close", slippage_bps=5, commission_bps=10)
    paper.submit(intent("X", Side.SELL, 4, 250.0))
    # 250 * 0.9995 = 249.875; commission 249.875 * 4 * 10 / 1e4 = 0.9995
    _, qty, price, commission, _ = sink.fills[0]
    assert qty == 4
    assert price == pytest.approx(249.875, abs=1e-12)
    assert commission == pytest.approx(0.9995, abs=1e-12)


def test_fill_price_helper_and_zero_costs() -> None:
    paper = PaperExecutor(RecordingSink(), "close", slippage_bps=0, commission_bps=0)
    assert paper.fill_price(Side.BUY, 123.0) == 123.0
    assert paper.fill_price(Side.SELL, 123.0) == 123.0
    paper = PaperExecutor(RecordingSink(), "close", slippage_bps=20, commission_bps=0)
    assert paper.fill_price(Side.BUY, 50.0) == pytest.approx(50.1)  # 50 * 1.002
    assert paper.fill_price(Side.SELL, 50.0) == pytest.approx(49.9)  # 50 * 0.998


def test_unknown_fill_model_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown paper fill model"):
        PaperExecutor(RecordingSink(), "vwap", 0, 0)


def test_next_open_fills_on_the_next_bar_of_the_same_symbol_only() -> None:
    sink = RecordingSink()
    paper = PaperExecutor(sink, "next_open", slippage_bps=5, commission_bps=10)
    assert paper.wants_bars
    i = intent("X", Side.BUY, 10, 100.0, ts=T0)
    paper.submit(i)
    assert sink.fills == []
    assert sink.states == [(i.client_order_id, OrderState.SUBMITTED, "")]
    assert paper.open_orders() == [i]

    paper.on_bar(bar("Y", T0 + MIN, 50.0, open=49.0))  # another symbol: nothing happens
    assert sink.fills == []
    assert paper.open_orders() == [i]

    paper.on_bar(bar("X", T0 + MIN, 103.0, open=102.0))
    # 102 * 1.0005 = 102.051; commission 102.051 * 10 * 10 / 1e4 = 1.02051
    assert len(sink.fills) == 1
    _, qty, price, commission, ts = sink.fills[0]
    assert (qty, ts) == (10, T0 + MIN)
    assert price == pytest.approx(102.051, abs=1e-12)
    assert commission == pytest.approx(1.02051, abs=1e-12)
    assert paper.open_orders() == []

    paper.on_bar(bar("X", T0 + 2 * MIN, 104.0))  # filled once only
    assert len(sink.fills) == 1


def test_cancel_all_cancels_resting_orders() -> None:
    sink = RecordingSink()
    paper = PaperExecutor(sink, "next_open", 0, 0)
    a, b = intent("X", Side.BUY, 1, 10.0), intent("Y", Side.SELL, 2, 20.0)
    paper.submit(a)
    paper.submit(b)
    assert paper.cancel_all("shutdown") == 2
    assert paper.open_orders() == []
    assert (a.client_order_id, OrderState.CANCELLED, "shutdown") in sink.states
    assert (b.client_order_id, OrderState.CANCELLED, "shutdown") in sink.states
    paper.on_bar(bar("X", T0 + MIN, 11.0))
    assert sink.fills == []


# -- through the real engine -----------------------------------------------------------
def test_next_open_through_the_engine(make_engine) -> None:
    engine = make_engine(paper_fill="next_open")
    engine.on_bar(bar("X", T0, 100.0))
    engine.decide(signal("X", T0, Direction.LONG), 100.0)
    assert engine.counts["orders"] == 1
    assert engine.counts["fills"] == 0
    assert engine.portfolio.position_qty("ma_cross", "X") == 0
    assert engine.portfolio.cash == 100_000

    engine.on_bar(bar("Y", T0 + MIN, 50.0, open=51.0))  # same time, other symbol
    assert engine.counts["fills"] == 0

    engine.on_bar(bar("X", T0 + MIN, 102.0, open=101.0))
    # fill at 101 * 1.0005 = 101.0505; commission 101.0505 * 10 * 0.001 = 1.010505
    # cash = 100000 - 1010.505 - 1.010505 = 98988.484495
    assert engine.counts["fills"] == 1
    engine.journal.flush()
    (fill,) = engine.journal.fills_after(0)
    assert fill.ts == T0 + MIN
    assert fill.price == pytest.approx(101.0505, abs=1e-12)
    assert fill.commission == pytest.approx(1.010505, abs=1e-12)
    pf = engine.portfolio
    assert pf.position_qty("ma_cross", "X") == 10
    assert pf.cash == pytest.approx(98_988.484495, abs=1e-6)
    # marked at the bar's close 102: equity = 98988.484495 + 1020 = 100008.484495
    assert pf.equity == pytest.approx(100_008.484495, abs=1e-6)
    assert pf.unrealized_pnl() == pytest.approx(10 * (102 - 101.0505), abs=1e-9)


def test_long_round_trip(make_engine) -> None:
    engine = make_engine()
    pf = engine.portfolio
    engine.on_bar(bar("X", T0, 100.0))
    engine.decide(signal("X", T0, Direction.LONG), 100.0)
    # buy 10 @ 100.05, commission 1.0005: cash = 100000 - 1000.5 - 1.0005 = 98998.4995
    assert pf.cash == pytest.approx(98_998.4995, abs=1e-6)
    assert pf.position_qty("ma_cross", "X") == 10
    assert pf.positions[("ma_cross", "X")].avg_price == pytest.approx(100.05)
    assert pf.unrealized_pnl() == pytest.approx(-0.5, abs=1e-9)  # 10 * (100 - 100.05)
    assert pf.equity == pytest.approx(99_998.4995, abs=1e-6)  # cash + 10 * 100
    assert pf.commission == pytest.approx(1.0005, abs=1e-12)

    engine.on_bar(bar("X", T0 + MIN, 110.0))
    assert pf.unrealized_pnl() == pytest.approx(99.5, abs=1e-9)  # 10 * (110 - 100.05)
    assert pf.equity == pytest.approx(100_098.4995, abs=1e-6)

    engine.decide(signal("X", T0 + MIN, Direction.FLAT), 110.0)
    # sell 10 @ 110 * 0.9995 = 109.945, commission 1.09945
    # cash = 98998.4995 + 1099.45 - 1.09945 = 100096.85005
    # realized = 10 * (109.945 - 100.05) = 98.95; trade pnl = 98.95 - 1.0005 - 1.09945
    assert pf.cash == pytest.approx(100_096.85005, abs=1e-6)
    assert pf.realized_pnl == pytest.approx(98.95, abs=1e-9)
    assert pf.unrealized_pnl() == 0
    assert pf.equity == pytest.approx(100_096.85005, abs=1e-6)
    assert pf.commission == pytest.approx(2.09995, abs=1e-9)
    assert pf.position_qty("ma_cross", "X") == 0
    assert pf.open_symbols() == 0
    (trade,) = engine.trades
    assert trade.direction is Direction.LONG
    assert trade.qty == 10
    assert trade.entry_price == pytest.approx(100.05)
    assert trade.exit_price == pytest.approx(109.945)
    assert (trade.entry_ts, trade.exit_ts) == (T0, T0 + MIN)
    assert trade.pnl == pytest.approx(96.85005, abs=1e-9)


def test_short_round_trip(make_engine) -> None:
    engine = make_engine(strategies=[{"name": "ma_cross", "params": {
        "fast": 10, "slow": 30, "mode": "long_short"}}])
    pf = engine.portfolio
    engine.on_bar(bar("X", T0, 100.0))
    engine.decide(signal("X", T0, Direction.SHORT), 100.0)
    # sell 10 @ 99.95, commission 0.9995: cash = 100000 + 999.5 - 0.9995 = 100998.5005
    assert pf.position_qty("ma_cross", "X") == -10
    assert pf.cash == pytest.approx(100_998.5005, abs=1e-6)
    assert pf.equity == pytest.approx(99_998.5005, abs=1e-6)  # cash - 10 * 100
    assert pf.unrealized_pnl() == pytest.approx(-0.5, abs=1e-9)  # -10 * (100 - 99.95)

    engine.on_bar(bar("X", T0 + MIN, 90.0))
    assert pf.unrealized_pnl() == pytest.approx(99.5, abs=1e-9)  # -10 * (90 - 99.95)
    assert pf.equity == pytest.approx(100_098.5005, abs=1e-6)

    engine.decide(signal("X", T0 + MIN, Direction.FLAT), 90.0)
    # buy 10 @ 90 * 1.0005 = 90.045, commission 0.90045
    # cash = 100998.5005 - 900.45 - 0.90045 = 100097.15005
    # short P&L = (99.95 - 90.045) * 10 = 99.05; trade = 99.05 - 0.9995 - 0.90045 = 97.15005
    assert pf.cash == pytest.approx(100_097.15005, abs=1e-6)
    assert pf.realized_pnl == pytest.approx(99.05, abs=1e-9)
    assert pf.unrealized_pnl() == 0
    assert pf.equity == pytest.approx(100_097.15005, abs=1e-6)
    (trade,) = engine.trades
    assert trade.direction is Direction.SHORT
    assert trade.qty == 10
    assert trade.entry_price == pytest.approx(99.95)
    assert trade.exit_price == pytest.approx(90.045)
    assert trade.pnl == pytest.approx(97.15005, abs=1e-9)


def test_reversal_long_to_short_is_exit_then_entry(make_engine) -> None:
    engine = make_engine(strategies=[{"name": "ma_cross", "params": {
        "fast": 10, "slow": 30, "mode": "long_short"}}])
    pf = engine.portfolio
    engine.on_bar(bar("X", T0, 100.0))
    engine.decide(signal("X", T0, Direction.LONG), 100.0)
    engine.on_bar(bar("X", T0 + MIN, 110.0))
    sent = engine.decide(signal("X", T0 + MIN, Direction.SHORT), 110.0)

    assert len(sent) == 2
    exit_leg, entry = sent
    assert (exit_leg.side, exit_leg.qty, exit_leg.reduce_only) == (Side.SELL, 10, True)
    assert (entry.side, entry.qty, entry.reduce_only) == (Side.SELL, 10, False)
    assert exit_leg.client_order_id != entry.client_order_id
    assert engine.counts["orders"] == 3  # the first buy, then the two legs

    (trade,) = engine.trades  # only the long round trip is closed
    assert trade.direction is Direction.LONG
    assert trade.pnl == pytest.approx(96.85005, abs=1e-9)  # as in the long round trip
    pos = pf.positions[("ma_cross", "X")]
    assert pos.qty == -10
    assert pos.avg_price == pytest.approx(109.945)
    assert pos.entry_ts == T0 + MIN
    assert pos.trade_pnl == pytest.approx(-1.09945, abs=1e-12)  # the entry's commission
    # cash = 98998.4995 + 2 * (1099.45 - 1.09945) = 101195.2006
    assert pf.cash == pytest.approx(101_195.2006, abs=1e-6)
    assert pf.realized_pnl == pytest.approx(98.95, abs=1e-9)
    # equity = cash - 10 * 110 = 100095.2006
    assert pf.equity == pytest.approx(100_095.2006, abs=1e-6)
    assert pf.unrealized_pnl() == pytest.approx(-0.55, abs=1e-9)  # -10 * (110 - 109.945)

    engine.journal.flush()
    assert engine.journal.count("intents") == 3
    assert engine.journal.count("fills") == 3
    assert engine.journal.count("trades") == 1


def test_drawdown_after_a_loss(make_engine) -> None:
    engine = make_engine(paper_slippage_bps=0, paper_commission_bps=0)
    pf = engine.portfolio
    engine.on_bar(bar("X", T0, 100.0))
    engine.decide(signal("X", T0, Direction.LONG), 100.0)  # 10 @ 100, no costs
    assert pf.equity == 100_000
    assert pf.drawdown == 0 and pf.max_drawdown == 0

    engine.on_bar(bar("X", T0 + MIN, 120.0))  # equity 100200: a new peak
    assert pf.peak_equity == pytest.approx(100_200)
    assert pf.drawdown == 0

    engine.on_bar(bar("X", T0 + 2 * MIN, 90.0))  # equity 99900
    assert pf.equity == pytest.approx(99_900)
    assert pf.drawdown == pytest.approx(300 / 100_200, abs=1e-12)
    assert pf.max_drawdown == pytest.approx(300 / 100_200, abs=1e-12)

    engine.on_bar(bar("X", T0 + 3 * MIN, 100.0))  # equity 100000: drawdown eases, max stays
    assert pf.drawdown == pytest.approx(200 / 100_200, abs=1e-12)
    assert pf.max_drawdown == pytest.approx(300 / 100_200, abs=1e-12)

    engine.decide(signal("X", T0 + 3 * MIN, Direction.FLAT), 100.0)
    assert pf.realized_pnl == pytest.approx(0.0, abs=1e-9)
    assert pf.max_drawdown == pytest.approx(300 / 100_200, abs=1e-12)


def test_day_pnl_rolls_with_the_utc_day(make_engine) -> None:
    engine = make_engine(paper_slippage_bps=0, paper_commission_bps=0)
    pf = engine.portfolio
    engine.on_bar(bar("X", T0 + MIN, 100.0))
    engine.decide(signal("X", T0 + MIN, Direction.LONG), 100.0)
    engine.on_bar(bar("X", T0 + 2 * MIN, 95.0))
    assert pf.day_pnl == pytest.approx(-50)  # 10 * (95 - 100)
    next_day = T0 + 86_400 * NS_PER_SECOND
    engine.on_bar(bar("X", next_day, 96.0))
    # the day starts at the equity before the first bar of the day: 99950; then +10
    assert pf.day_start_equity == pytest.approx(99_950)
    assert pf.day_pnl == pytest.approx(10)


# -- the portfolio directly ------------------------------------------------------------
def _fill(seq: int, symbol: str, side: Side, qty: float, price: float, commission: float,
          ts: int, strategy: str = "s1") -> Fill:
    return Fill(seq, f"coid-{seq}", strategy, symbol, side, qty, price, commission, ts)


def test_averaging_in_and_partial_exit() -> None:
    pf = Portfolio(10_000)
    pf.mark("X", 10.0, T0)
    assert pf.apply_fill(_fill(1, "X", Side.BUY, 10, 10.0, 0.0, T0)) is None
    assert pf.apply_fill(_fill(2, "X", Side.BUY, 10, 12.0, 0.0, T0 + MIN)) is None
    pos = pf.positions[("s1", "X")]
    assert pos.qty == 20
    assert pos.avg_price == pytest.approx(11.0)  # (10*10 + 10*12) / 20
    # half out at 15: realized 10 * (15 - 11) = 40, no trade closed yet
    assert pf.apply_fill(_fill(3, "X", Side.SELL, 10, 15.0, 0.0, T0 + 2 * MIN)) is None
    assert pos.qty == 10
    assert pf.realized_pnl == pytest.approx(40)
    assert pf.cash == pytest.approx(10_000 - 100 - 120 + 150)
    trade = pf.apply_fill(_fill(4, "X", Side.SELL, 10, 9.0, 0.0, T0 + 3 * MIN))
    assert trade is not None
    # the rest out at 9: 10 * (9 - 11) = -20; the whole round trip: 40 - 20 = 20
    assert trade.qty == 20
    assert trade.pnl == pytest.approx(20)
    assert pf.realized_pnl == pytest.approx(20)
    assert pf.fill_seq == 4


def test_snapshot_restore_round_trip() -> None:
    pf = Portfolio(50_000)
    pf.mark("X", 100.0, T0)
    pf.mark("Y", 20.0, T0)
    pf.apply_fill(_fill(1, "X", Side.BUY, 10, 100.05, 1.0005, T0))
    pf.apply_fill(_fill(2, "Y", Side.SELL, 50, 19.99, 0.5, T0, strategy="s2"))
    pf.apply_fill(_fill(3, "X", Side.BUY, 5, 101.0, 0.5, T0 + MIN, strategy="s2"))
    pf.mark("X", 104.0, T0 + 2 * MIN)
    pf.mark("Y", 22.0, T0 + 2 * MIN)  # a loss on the short: drawdown > 0
    pf.apply_fill(_fill(4, "X", Side.SELL, 4, 103.9, 0.4, T0 + 3 * MIN))
    assert pf.max_drawdown > 0

    snap = orjson.loads(orjson.dumps(pf.snapshot()))  # as the journal stores it
    back = Portfolio.restore(snap)
    assert back.cash == pf.cash
    assert back.positions == pf.positions
    assert back.net == pf.net
    assert back.marks == pf.marks
    assert back.equity == pytest.approx(pf.equity, rel=1e-12)
    assert back.unrealized_pnl() == pytest.approx(pf.unrealized_pnl(), rel=1e-12)
    assert back.exposure() == pytest.approx(pf.exposure(), rel=1e-12)
    assert back.realized_pnl == pf.realized_pnl
    assert back.commission == pf.commission
    assert back.fill_seq == 4
    assert back.peak_equity == pf.peak_equity
    assert back.max_drawdown == pf.max_drawdown
    assert back.drawdown == pytest.approx(pf.drawdown, rel=1e-9)
    assert back.day == pf.day
    assert back.day_pnl == pytest.approx(pf.day_pnl, abs=1e-9)
    again = back.snapshot()
    assert again["positions"] == snap["positions"]
    assert again["cash"] == snap["cash"]
    # and it keeps working: the same fill on both gives the same books
    f = _fill(5, "X", Side.SELL, 6, 105.0, 0.6, T0 + 4 * MIN)
    assert pf.apply_fill(f) == back.apply_fill(f)
    assert back.cash == pf.cash
    assert back.positions == pf.positions


def test_next_open_resting_orders_count_against_the_exposure_limit(make_engine) -> None:
    engine = make_engine(paper_fill="next_open", paper_slippage_bps=0,
                         paper_commission_bps=0, risk_max_exposure=1_500)
    engine.on_bar(bar("X", T0, 100.0))
    engine.on_bar(bar("Y", T0, 100.0))
    assert len(engine.decide(signal("X", T0, Direction.LONG), 100.0)) == 1  # 1000 resting
    # another 1000 would make 2000 > 1500 once both fill on the next bars
    assert engine.decide(signal("Y", T0, Direction.LONG), 100.0) == []
    assert engine.counts["vetoed"] == 1


def test_open_net_and_gross_follow_every_fill_and_mark() -> None:
    """The exposure limits read ``open_net`` and ``gross``: both must follow every fill,
    every mark and a restore."""
    import random

    rnd = random.Random(5)
    pf = Portfolio(100_000)
    for seq in range(1, 400):
        symbol = rnd.choice(["A", "B", "C", "D"])
        side = rnd.choice([Side.BUY, Side.SELL])
        pf.apply_fill(Fill(seq, f"c{seq}", rnd.choice(["s1", "s2"]), symbol, side,
                           rnd.choice([1, 2, 5]), 100.0 + rnd.random(), 0.0, T0 + seq))
        assert pf.open_net == {s: q for s, q in pf.net.items() if abs(q) > 1e-9}
        pf.mark(rnd.choice(["A", "B", "C", "D"]), 100.0 + 5 * rnd.random(), T0 + seq)
        # The running gross notional is the exposure, summed afresh, to rounding.
        assert pf.gross == pytest.approx(pf.exposure(), rel=1e-12, abs=1e-9)
    back = Portfolio.restore(pf.snapshot())
    assert back.open_net == pf.open_net
    assert back.gross == pytest.approx(pf.gross, rel=1e-12)
