"""Indicators against plain batch computations; the strategies' signals; parameters."""

from __future__ import annotations

import itertools
import random

import pytest

from quantshift.domain import NS_PER_SECOND, Bar, Direction
from quantshift.strategies import factory, names, parse_params
from quantshift.strategies.indicators import EMA, RSI, SMA

T0 = 1_704_067_200 * NS_PER_SECOND
MIN = 60 * NS_PER_SECOND


def prices(n: int = 400, seed: int = 11) -> list[float]:
    rng = random.Random(seed)
    out, p = [], 100.0
    for _ in range(n):
        p = max(1.0, p + rng.gauss(0, 1.5))
        out.append(p)
    # some runs of unchanged prices (zero changes for the RSI)
    out[50:55] = [out[49]] * 5
    return out


# -- batch versions, written the obvious way -------------------------------------------
def batch_sma(xs: list[float], n: int) -> list[float | None]:
    return [None if i + 1 < n else sum(xs[i + 1 - n:i + 1]) / n for i in range(len(xs))]


def batch_ema(xs: list[float], n: int) -> list[float | None]:
    alpha = 2.0 / (n + 1)
    out: list[float | None] = []
    value = None
    for i, x in enumerate(xs):
        if i + 1 < n:
            out.append(None)
            continue
        value = sum(xs[:n]) / n if i + 1 == n else alpha * x + (1 - alpha) * value
        out.append(value)
    return out


def batch_rsi(xs: list[float], n: int) -> list[float | None]:
    """Wilder: the first averages are plain means of n changes, then smoothed by 1/n."""
    changes = [b - a for a, b in itertools.pairwise(xs)]
    out: list[float | None] = [None] * min(len(xs), n)
    if len(changes) < n:
        return out
    gain = sum(max(c, 0.0) for c in changes[:n]) / n
    loss = sum(max(-c, 0.0) for c in changes[:n]) / n

    def rsi(g: float, lo: float) -> float:
        if lo == 0:
            return 100.0 if g > 0 else 50.0
        return 100.0 - 100.0 / (1.0 + g / lo)

    out.append(rsi(gain, loss))
    for c in changes[n:]:
        gain = (gain * (n - 1) + max(c, 0.0)) / n
        loss = (loss * (n - 1) + max(-c, 0.0)) / n
        out.append(rsi(gain, loss))
    return out


def run(indicator, xs: list[float]) -> list[float | None]:
    return [indicator.update(x) for x in xs]


def assert_series(got: list[float | None], want: list[float | None]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if w is None:
            assert g is None, i
        else:
            assert g is not None, i
            assert g == pytest.approx(w, abs=1e-9), i


@pytest.mark.parametrize("n", [1, 2, 5, 14, 50])
def test_sma_matches_batch(n: int) -> None:
    xs = prices()
    assert_series(run(SMA(n), xs), batch_sma(xs, n))


@pytest.mark.parametrize("n", [1, 2, 5, 14, 50])
def test_ema_matches_batch(n: int) -> None:
    xs = prices()
    assert_series(run(EMA(n), xs), batch_ema(xs, n))


@pytest.mark.parametrize("n", [2, 5, 14, 30])
def test_rsi_matches_batch(n: int) -> None:
    xs = prices()
    got = run(RSI(n), xs)
    assert_series(got, batch_rsi(xs, n))
    assert all(0.0 <= v <= 100.0 for v in got if v is not None)


def test_small_cases_by_hand() -> None:
    assert run(SMA(3), [1, 2, 3, 4]) == [None, None, 2.0, 3.0]
    # alpha = 0.5: seed (1+2+3)/3 = 2, then 2 + 0.5 * (6 - 2) = 4
    assert run(EMA(3), [1, 2, 3, 6]) == [None, None, 2.0, 4.0]
    # changes +1, -1 over 2: gain 0.5, loss 0.5 -> 50; then +2: gain 1.25, loss 0.25 -> 83.33
    assert run(RSI(2), [10, 11, 10])[:2] == [None, None]
    r = run(RSI(2), [10, 11, 10, 12])
    assert r[2] == pytest.approx(50.0)
    assert r[3] == pytest.approx(100 - 100 / (1 + 5))
    assert run(RSI(2), [5, 5, 5]) == [None, None, 50.0]  # no movement at all
    assert run(RSI(2), [5, 6, 7]) == [None, None, 100.0]
    assert run(RSI(2), [7, 6, 5]) == [None, None, 0.0]


# -- strategies ------------------------------------------------------------------------
def feed(name: str, params: dict, closes: list[float], symbol: str = "X") -> list:
    strat = factory(name, "sid", params)(symbol)
    out = []
    for k, c in enumerate(closes):
        b = Bar(symbol, T0 + k * MIN, c, c + 1, c - 1, c, 100.0)
        out.append(strat.on_bar(b))
    return out


# fast 2 / slow 3 SMA on 10,10,10,13,13,7:
#   bar 3: fast 10 = slow 10 (not above: the first comparison, no signal)
#   bar 4: fast 11.5 > slow 11 -> cross up;  bar 5: 13 > 12, no change
#   bar 6: fast 10 < slow 11 -> cross down
CROSS = [10.0, 10.0, 10.0, 13.0, 13.0, 7.0]


@pytest.mark.parametrize("ma", ["sma", "ema"])
def test_ma_cross_long_only(ma: str) -> None:
    sigs = feed("ma_cross", {"ma": ma, "fast": 2, "slow": 3}, CROSS)
    assert sigs[:3] == [None, None, None]
    assert sigs[3] is not None and sigs[3].target is Direction.LONG
    assert sigs[3].ts == T0 + 3 * MIN
    assert sigs[3].strategy == "sid" and sigs[3].symbol == "X"
    assert sigs[4] is None
    assert sigs[5] is not None and sigs[5].target is Direction.FLAT
    assert "below" in sigs[5].reason


def test_ma_cross_sma_indicator_values() -> None:
    sigs = feed("ma_cross", {"fast": 2, "slow": 3}, CROSS)
    assert sigs[3].indicators == {"fast": 11.5, "slow": 11.0}
    assert sigs[5].indicators == {"fast": 10.0, "slow": 11.0}


def test_ma_cross_ema_indicator_values() -> None:
    # fast alpha 2/3, slow alpha 1/2, both seeded at 10:
    #   bar 4: fast 10 + 2/3 * 3 = 12, slow 10 + 1/2 * 3 = 11.5
    #   bar 6: fast 38/3 + 2/3 * (7 - 38/3) = 80/9, slow 12.25 + 1/2 * (7 - 12.25) = 9.625
    sigs = feed("ma_cross", {"ma": "ema", "fast": 2, "slow": 3}, CROSS)
    assert sigs[3].indicators["fast"] == pytest.approx(12.0)
    assert sigs[3].indicators["slow"] == pytest.approx(11.5)
    assert sigs[5].indicators["fast"] == pytest.approx(80 / 9)
    assert sigs[5].indicators["slow"] == pytest.approx(9.625)


@pytest.mark.parametrize("ma", ["sma", "ema"])
def test_ma_cross_long_short(ma: str) -> None:
    sigs = feed("ma_cross", {"ma": ma, "fast": 2, "slow": 3, "mode": "long_short"},
                [*CROSS, 20.0])
    targets = [s.target if s else None for s in sigs]
    assert targets == [None, None, None, Direction.LONG, None, Direction.SHORT, Direction.LONG]


def test_ma_cross_no_signal_in_warm_up_or_without_a_cross() -> None:
    # rising from the start: fast is above slow at the first comparison, never crosses
    assert feed("ma_cross", {"fast": 3, "slow": 5}, [float(p) for p in range(1, 40)]) == \
        [None] * 39
    sigs = feed("ma_cross", {"fast": 3, "slow": 5}, prices(200))
    assert sigs[:5] == [None] * 5  # slow needs 5 bars; the 5th is the first comparison
    assert any(s is not None for s in sigs)


def test_ma_cross_instances_do_not_share_state() -> None:
    make = factory("ma_cross", "sid", {"fast": 2, "slow": 3})
    a, b = make("A"), make("B")
    for k, c in enumerate(CROSS[:3]):
        a.on_bar(Bar("A", T0 + k * MIN, c, c + 1, c - 1, c, 1.0))
    assert b.on_bar(Bar("B", T0 + 3 * MIN, 13.0, 14.0, 12.0, 13.0, 1.0)) is None
    assert a.on_bar(Bar("A", T0 + 3 * MIN, 13.0, 14.0, 12.0, 13.0, 1.0)).target is \
        Direction.LONG


def test_rsi_reversion_long_on_oversold_then_flat_at_exit() -> None:
    # period 3 on 100, 99, 98, 97: three losses -> RSI 0 < 30: long
    # 98: gain (0*2+1)/3 = 1/3, loss (1*2)/3 = 2/3 -> RSI 33.3: hold
    # 99: gain (2/3+1)/3 = 5/9, loss (4/3)/3 = 4/9 -> RSI 55.6 >= 50: flat
    sigs = feed("rsi_reversion", {"period": 3}, [100.0, 99.0, 98.0, 97.0, 98.0, 99.0, 100.0])
    assert sigs[:3] == [None, None, None]
    assert sigs[3].target is Direction.LONG
    assert sigs[3].reason == "oversold"
    assert sigs[3].indicators["rsi"] == pytest.approx(0.0)
    assert sigs[4] is None
    assert sigs[5].target is Direction.FLAT
    assert sigs[5].reason == "reverted to exit level"
    assert sigs[5].indicators["rsi"] == pytest.approx(100 - 100 / (1 + 1.25))
    assert sigs[6] is None  # flat already


def test_rsi_reversion_short_only_in_long_short() -> None:
    up = [100.0, 101.0, 102.0, 103.0, 102.0, 101.0]
    assert feed("rsi_reversion", {"period": 3}, up) == [None] * 6
    sigs = feed("rsi_reversion", {"period": 3, "mode": "long_short"}, up)
    assert sigs[3].target is Direction.SHORT  # RSI 100 > 70
    assert sigs[3].reason == "overbought"
    assert sigs[4] is None  # RSI 100 - 100/(1 + (2/3)/(1/3)) = 66.7: hold
    assert sigs[5].target is Direction.FLAT  # gain 4/9, loss 5/9 -> 44.4 <= 50


# -- parameters ------------------------------------------------------------------------
def test_registered_names() -> None:
    assert {"ma_cross", "rsi_reversion"} <= set(names())


def test_fast_must_be_below_slow() -> None:
    with pytest.raises(ValueError) as exc:
        parse_params("ma_cross", {"fast": 30, "slow": 10})
    msg = str(exc.value)
    assert "fast" in msg and "slow" in msg
    with pytest.raises(ValueError):
        parse_params("ma_cross", {"fast": 10, "slow": 10})


def test_unknown_parameter_lists_the_allowed_names() -> None:
    with pytest.raises(ValueError) as exc:
        parse_params("ma_cross", {"fats": 5})
    msg = str(exc.value)
    assert "fats" in msg
    for allowed in ("ma", "fast", "slow", "mode"):
        assert allowed in msg
    with pytest.raises(ValueError, match="period"):
        parse_params("rsi_reversion", {"length": 5})


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown strategy 'nope'"):
        parse_params("nope", {})


def test_string_values_are_coerced() -> None:
    p = parse_params("ma_cross", {"fast": "10", "slow": "20"})
    assert p.fast == 10 and isinstance(p.fast, int)
    assert p.slow == 20 and isinstance(p.slow, int)
    r = parse_params("rsi_reversion", {"period": "7", "lower": "25"})
    assert r.period == 7 and r.lower == 25.0


@pytest.mark.parametrize(("name", "params"), [
    ("ma_cross", {"fast": "ten"}),
    ("ma_cross", {"ma": "wma"}),
    ("ma_cross", {"fast": 0}),
    ("ma_cross", {"mode": "short_only"}),
    ("rsi_reversion", {"lower": 60, "exit": 50}),
    ("rsi_reversion", {"period": 1}),
])
def test_invalid_values(name: str, params: dict) -> None:
    with pytest.raises(ValueError, match=name):
        parse_params(name, params)


def test_defaults() -> None:
    p = parse_params("ma_cross", {})
    assert (p.ma, p.fast, p.slow, p.mode) == ("sma", 10, 30, "long_only")
    r = parse_params("rsi_reversion", {})
    assert (r.period, r.lower, r.upper, r.exit) == (14, 30.0, 70.0, 50.0)
