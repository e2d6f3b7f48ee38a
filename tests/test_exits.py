"""Exits managed by the daemon: stop-loss, take-profit, trailing stop; exits pass limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quantshift.app import build_engine, open_journal
from quantshift.control import Flatten, Halt
from quantshift.domain import NS_PER_SECOND, Bar, Direction, Signal
from quantshift.exits import Distance, ExitRule
from quantshift.settings import Settings, StrategySpec

T0 = 1_700_000_000 * NS_PER_SECOND


@pytest.fixture
def make_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith(("QUANTSHIFT_", "SHADOW_MODE")):
            monkeypatch.delenv(key)
    journals = []

    def make(exits: dict, **kw):  # type: ignore[no-untyped-def]
        spec = StrategySpec(name="ma_cross", id="s", params={"fast": 50, "slow": 100},
                            exits=exits)
        settings = Settings(state_dir=tmp_path / "var", strategies=[spec], sizing="fixed:10",
                            paper_slippage_bps=0, risk_max_trades_per_day=0, **kw)
        journal = open_journal(settings)
        journals.append(journal)
        return build_engine(settings, journal, log_decisions=False)

    yield make
    for j in journals:
        j.close()


def bar(i: int, close: float, high: float | None = None, low: float | None = None) -> Bar:
    high = close if high is None else high
    low = close if low is None else low
    return Bar("X", T0 + i * 60 * NS_PER_SECOND, close, high, low, close, 100.0)


def enter(engine, direction: Direction = Direction.LONG) -> None:  # type: ignore[no-untyped-def]
    engine.on_bar(bar(0, 100.0))
    assert engine.decide(Signal("s", "X", T0, direction, "entry"), 100.0)
    assert engine.portfolio.position_qty("s", "X") == 10 * int(direction)


def test_distances_parse_and_refuse_nonsense() -> None:
    assert Distance.parse("2atr").price(100, 1.5) == 3.0
    assert Distance.parse("1.5%").price(200, None) == 3.0
    assert Distance.parse("2atr").price(100, None) is None  # not armed before the ATR
    for bad in ("2", "-1%", "x", "0atr"):
        with pytest.raises(ValueError):
            Distance.parse(bad)
    with pytest.raises(ValueError):
        ExitRule(stop_loss="lots")


def test_stop_loss_exits_long_when_the_low_touches(make_engine) -> None:
    e = make_engine({"stop_loss": "2%"})
    enter(e)
    e.on_bar(bar(1, 99.0, low=98.5))  # above 98: nothing
    assert e.portfolio.position_qty("s", "X") == 10
    e.on_bar(bar(2, 98.4, low=97.9))  # touches 98
    assert e.portfolio.position_qty("s", "X") == 0
    e.journal.flush()
    reason, version = e.journal._db.execute(
        "SELECT reason, version FROM decisions WHERE outcome = 'approved' ORDER BY id DESC"
    ).fetchone()
    assert reason.startswith("stop-loss 2% at 98.0000")
    assert version == "v1"  # the version whose position it closed, as its entry
    assert e.signal_counts[("s", "v1")] == 1  # the exit (the test's own entry had none)


def test_take_profit_on_a_short(make_engine) -> None:
    e = make_engine({"take_profit": "3%"})
    enter(e, Direction.SHORT)
    e.on_bar(bar(1, 98.0, low=97.5))
    assert e.portfolio.position_qty("s", "X") == -10
    e.on_bar(bar(2, 97.2, low=96.9))  # 97 reached
    assert e.portfolio.position_qty("s", "X") == 0
    assert e.portfolio.realized_pnl == pytest.approx(10 * (100 - 97.2))


def test_trailing_stop_arms_after_the_gain_and_never_loosens(make_engine) -> None:
    e = make_engine({"trail": "2%", "trail_activate": "3%"})
    enter(e)
    e.on_bar(bar(1, 102.0, high=102.5, low=97.0))  # gain 2.5 < 3: not armed, no exit
    assert e.portfolio.position_qty("s", "X") == 10
    e.on_bar(bar(2, 105.0, high=106.0, low=104.5))  # armed at 106 - 2 = 104
    held = e.exits._held[("s", "X")]
    assert held.trail_stop == pytest.approx(104.0)
    e.on_bar(bar(3, 104.8, high=105.0, low=104.2))  # lower high: the stop stays at 104
    assert held.trail_stop == pytest.approx(104.0)
    state = e.state()["exits"]
    assert state["s|X"][3] == pytest.approx(104.0)  # it goes into the snapshot
    e.on_bar(bar(4, 103.9, high=104.5, low=103.8))  # touches 104
    assert e.portfolio.position_qty("s", "X") == 0


def test_a_restart_keeps_the_trailing_stop_and_the_atr_from_the_history_bars(
        make_engine) -> None:
    # The last snapshot predates the bars that armed the trailing stop; after the restart
    # those bars come back as history: the stop must not come back looser, and the ATR
    # distances must not wait for fresh bars to be armed again.
    rule = {"trail": "2%", "trail_activate": "3%", "stop_loss": "1atr", "atr_period": 3}
    e1 = make_engine(rule)
    history = [bar(0, 100.0, high=120.0, low=99.0)]  # the entry's bar: its high is no best
    e1.on_bar(history[0])
    assert e1.decide(Signal("s", "X", T0, Direction.LONG, "entry"), 100.0)
    e1.snapshot()
    for i, (c, h, lo) in enumerate([(102.0, 102.5, 101.5), (105.0, 106.0, 104.5),
                                    (104.8, 105.0, 104.2)], start=1):
        history.append(bar(i, c, high=h, low=lo))
        e1.on_bar(history[-1])
    assert e1.exits._held[("s", "X")].trail_stop == pytest.approx(104.0)
    assert e1.portfolio.position_qty("s", "X") == 10
    e1.journal.flush()  # then the daemon dies: no snapshot after the entry's bar
    e1.journal.close()  # and its ledger lock goes with it

    e2 = make_engine(rule)
    e2.restore()
    for b in history:
        e2.warm_up(b)
    assert e2.exits._held[("s", "X")].trail_stop == pytest.approx(104.0)
    assert e2.exits._atr["X"].value is not None  # the 1atr stop is armed at once
    assert e2.portfolio.position_qty("s", "X") == 10  # nothing fired on the past
    e2.on_bar(bar(4, 103.9, high=104.5, low=103.8))  # touches 104
    assert e2.portfolio.position_qty("s", "X") == 0


def test_atr_stop_needs_the_atr_and_exits_pass_a_halt_on_entries(make_engine) -> None:
    e = make_engine({"stop_loss": "1atr", "atr_period": 3}, risk_max_daily_loss=1)
    for i in range(4):  # ATR warms up on bars with a range of 2
        e.on_bar(bar(i, 100.0, high=101.0, low=99.0))
    assert e.decide(Signal("s", "X", T0 + 4, Direction.LONG, "entry"), 100.0)
    e.on_bar(bar(5, 99.5, high=100.0, low=99.0))  # day P&L -5: entries now halted
    assert e.portfolio.position_qty("s", "X") == 10
    e.on_bar(bar(6, 97.5, high=98.0, low=97.0))  # 100 - ATR(~2) = ~98 touched
    assert e.portfolio.position_qty("s", "X") == 0  # the exit passed the daily-loss halt
    assert e.decide(Signal("s", "X", T0 + 7, Direction.LONG, "entry"), 97.5) == []


def test_bad_exit_config_is_a_config_error(tmp_path: Path, monkeypatch) -> None:
    import subprocess

    from tests.conftest import clean_env, quantshift_bin

    env = clean_env(tmp_path, QUANTSHIFT_STRATEGIES='[{"name":"ma_cross","exits":'
                                                    '{"stop_loss":"lots"}}]')
    proc = subprocess.run([quantshift_bin(), "config"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert "QUANTSHIFT_STRATEGIES[0]" in proc.stderr and "2atr" in proc.stderr


def test_kill_switch_halts_cancels_and_flattens_long_and_short(make_engine) -> None:
    e = make_engine({}, paper_fill="next_open")
    e.on_bar(bar(0, 100.0))
    e.on_bar(Bar("Y", T0, 50.0, 50.0, 50.0, 50.0, 10.0))
    e.decide(Signal("s", "X", T0, Direction.LONG, "entry"), 100.0)
    e.on_bar(bar(1, 101.0))  # the long fills at this open
    e.decide(Signal("s", "Y", T0 + 1, Direction.SHORT, "entry"), 50.0)
    e.on_bar(Bar("Y", T0 + 60 * NS_PER_SECOND, 49.0, 49.0, 49.0, 49.0, 10.0))  # short fills
    (exit_x,) = e.decide(Signal("s", "X", T0 + 2, Direction.FLAT, "exit"), 101.0)  # rests
    (entry_z,) = e.decide(Signal("s", "Z", T0 + 2, Direction.LONG, "entry"), 20.0)  # rests
    assert len(e.open_orders()) == 2
    sent = e.control.apply(Halt(reason="kill switch: operator", flatten=True))["flatten_orders"]
    assert e.gate.state == "halted" and "kill switch: operator" in e.gate.halt_reason
    # The entry is cancelled; the exit in flight is left to finish (cancelling it would
    # leave X with no exit, as the flatten counts it); Y gets its buy-back.
    assert sent == 1
    orders = {i.symbol: i for i in e.open_orders()}
    assert set(orders) == {"X", "Y"}
    assert orders["X"] == exit_x and orders["Y"].side.value == "buy"
    # not closed until the venue (here the paper book, at the next open) confirms
    assert e.portfolio.position_qty("s", "X") == 10
    e.on_bar(bar(2, 102.0))
    e.on_bar(Bar("Y", T0 + 120 * NS_PER_SECOND, 48.0, 48.0, 48.0, 48.0, 10.0))
    e.on_bar(Bar("Z", T0 + 120 * NS_PER_SECOND, 21.0, 21.0, 21.0, 21.0, 10.0))
    assert e.portfolio.position_qty("s", "X") == 0 and e.portfolio.position_qty("s", "Y") == 0
    assert e.portfolio.position_qty("s", "Z") == 0  # the cancelled entry never filled
    assert e.decide(Signal("s", "X", T0 + 3, Direction.LONG, "entry"), 102.0) == []
    e.journal.flush()
    assert e.journal.get("trading_state")["state"] == "halted"
    cancelled = dict(e.journal._db.execute("SELECT client_order_id, detail FROM order_events "
                                           "WHERE state = 'cancelled'").fetchall())
    assert set(cancelled) == {entry_z.client_order_id}
    assert "kill switch" in cancelled[entry_z.client_order_id]


def test_a_flatten_after_a_refused_exit_on_the_same_bar_still_goes_out(make_engine) -> None:
    # The strategy's exit on the last bar ended without a fill (here: cancelled by a halt
    # without flatten). A flatten afterwards must not reuse that exit's client order id,
    # or it would be refused as already sent and the position would stay open.
    e = make_engine({}, paper_fill="next_open")
    e.on_bar(bar(0, 100.0))
    e.decide(Signal("s", "X", T0, Direction.LONG, "entry"), 100.0)
    e.on_bar(bar(1, 101.0))  # the long fills at this open
    assert e.portfolio.position_qty("s", "X") == 10
    (exit_x,) = e.decide(Signal("s", "X", T0 + 60 * NS_PER_SECOND, Direction.FLAT, "exit"),
                         101.0)  # on the last bar's time, resting
    e.control.apply(Halt(reason="operator"))  # cancels it
    assert e.open_orders() == []
    assert e.control.apply(Flatten(reason="operator"))["orders"] == 1
    (flat,) = e.open_orders()
    assert flat.client_order_id != exit_x.client_order_id and flat.ts > exit_x.ts
    assert e.control.apply(Flatten(reason="again"))["orders"] == 0  # in flight: not twice
    e.on_bar(bar(2, 102.0))
    assert e.portfolio.position_qty("s", "X") == 0
