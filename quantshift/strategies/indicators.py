"""Incremental indicators: O(1) work and memory per update, whatever the history length."""

from __future__ import annotations

import math
from collections import deque


class SMA:
    """Simple moving average over ``period`` values (a running sum over a ring)."""

    __slots__ = ("_sum", "_window", "period", "value")

    def __init__(self, period: int) -> None:
        self.period = period
        self._window: deque[float] = deque()
        self._sum = 0.0
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        w = self._window
        w.append(x)
        self._sum += x
        if len(w) > self.period:
            self._sum -= w.popleft()
        if len(w) == self.period:
            self.value = self._sum / self.period
        return self.value


class EMA:
    """Exponential moving average, alpha = 2 / (period + 1), seeded with the first SMA."""

    __slots__ = ("_alpha", "_count", "_seed", "period", "value")

    def __init__(self, period: int) -> None:
        self.period = period
        self._alpha = 2.0 / (period + 1)
        self._count = 0
        self._seed = 0.0
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        v = self.value
        if v is not None:
            v += self._alpha * (x - v)
            self.value = v
            return v
        self._count += 1
        self._seed += x
        if self._count == self.period:
            self.value = self._seed / self.period
        return self.value


class RSI:
    """Wilder's relative strength index over ``period`` changes."""

    __slots__ = ("_avg_gain", "_avg_loss", "_count", "_prev", "period", "value")

    def __init__(self, period: int) -> None:
        self.period = period
        self._prev: float | None = None
        self._avg_gain = 0.0
        self._avg_loss = 0.0
        self._count = 0
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        prev = self._prev
        self._prev = x
        if prev is None:
            return None
        change = x - prev
        gain = change if change > 0 else 0.0
        loss = -change if change < 0 else 0.0
        n = self.period
        if self._count < n:  # the first average is a plain mean of n changes
            self._count += 1
            self._avg_gain += gain / n
            self._avg_loss += loss / n
            if self._count < n:
                return None
        else:
            self._avg_gain = (self._avg_gain * (n - 1) + gain) / n
            self._avg_loss = (self._avg_loss * (n - 1) + loss) / n
        if self._avg_loss == 0.0:
            self.value = 100.0 if self._avg_gain > 0 else 50.0
        else:
            rs = self._avg_gain / self._avg_loss
            self.value = 100.0 - 100.0 / (1.0 + rs)
        return self.value


def is_finite(x: float) -> bool:
    return math.isfinite(x)


# -- bands, ranges and channels ------------------------------------------------------------
class RollingStd:
    """Standard deviation of the last ``period`` values: the population one by default
    (``ddof=0``, divide by ``period``, as Bollinger's bands use), the sample one with
    ``ddof=1`` (divide by ``period - 1``).

    The window's mean and sum of squared deviations are updated in O(1) per value with
    Welford's sliding-window step, which does not suffer the cancellation of a running
    sum of squares; every few thousand updates they are recomputed from the window, so
    rounding cannot drift over a long run (O(period) then, O(1) amortised). A window of
    one repeated value (a quiet market) is recognised by the length of the run of equal
    values, and its deviation is exactly 0, not a rounding residue. ``mean`` is the
    window's mean once it is full.
    """

    __slots__ = ("_last", "_m2", "_mean", "_resync", "_run", "_since", "_window", "ddof",
                 "mean", "period", "value")

    def __init__(self, period: int, ddof: int = 0) -> None:
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 (population) or 1 (sample), got {ddof}")
        if period < 1 + ddof:
            raise ValueError(f"period must be at least {1 + ddof} with ddof={ddof}, got {period}")
        self.period = period
        self.ddof = ddof
        self._window: deque[float] = deque()
        self._mean = 0.0
        self._m2 = 0.0
        self._since = 0
        self._resync = max(8 * period, 4096)
        self._last = math.nan
        self._run = 0
        self.mean: float | None = None
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        w = self._window
        n = self.period
        if x == self._last:
            self._run += 1
        else:
            self._last = x
            self._run = 1
        if len(w) < n:  # filling up: Welford's plain step
            w.append(x)
            count = len(w)
            delta = x - self._mean
            self._mean += delta / count
            self._m2 += delta * (x - self._mean)
            if count < n:
                return None
        else:
            old = w.popleft()
            w.append(x)
            mean = self._mean
            new_mean = mean + (x - old) / n
            self._m2 += (x - old) * (x - new_mean + old - mean)
            self._mean = new_mean
            self._since += 1
            if self._since >= self._resync:
                self._since = 0
                mean = math.fsum(w) / n
                self._mean = mean
                self._m2 = math.fsum((v - mean) * (v - mean) for v in w)
        if self._run >= n:  # the whole window is one value
            self._mean = x
            self._m2 = 0.0
        m2 = self._m2
        if m2 < 0.0:  # rounding around a nearly flat window
            m2 = self._m2 = 0.0
        self.mean = self._mean
        self.value = math.sqrt(m2 / (n - self.ddof))
        return self.value


class Bollinger:
    """Bollinger bands: ``mid`` = the mean of the last ``period`` closes, ``upper``/``lower``
    = mid ± ``k`` population standard deviations of the same window.

    ``update`` returns the indicator itself once the window is full (read ``mid``,
    ``upper``, ``lower``, ``sd``), None while warming up.
    """

    __slots__ = ("_std", "k", "lower", "mid", "period", "sd", "upper")

    def __init__(self, period: int, k: float, ddof: int = 0) -> None:
        if not k > 0:
            raise ValueError(f"k must be > 0, got {k}")
        self.period = period
        self.k = k
        self._std = RollingStd(period, ddof)
        self.mid = self.upper = self.lower = self.sd = math.nan

    def update(self, x: float) -> Bollinger | None:
        std = self._std
        sd = std.update(x)
        if sd is None:
            return None
        mid: float = std.mean  # type: ignore[assignment]  # set with the deviation
        width = self.k * sd
        self.sd = sd
        self.mid = mid
        self.upper = mid + width
        self.lower = mid - width
        return self


class ATR:
    """Wilder's average true range over ``period`` bars.

    True range = max(high - low, |high - previous close|, |low - previous close|); the
    first bar has no previous close, so its true range is high - low. The first ATR is
    the plain mean of the first ``period`` true ranges (ready on the ``period``-th bar),
    then ATR = (ATR * (period - 1) + TR) / period.
    """

    __slots__ = ("_count", "_prev", "_sum", "period", "tr", "value")

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self._prev: float | None = None
        self._count = 0
        self._sum = 0.0
        self.tr = math.nan
        self.value: float | None = None

    def update(self, high: float, low: float, close: float) -> float | None:
        prev = self._prev
        self._prev = close
        tr = high - low
        if prev is not None:
            up = high - prev if high > prev else prev - high
            down = low - prev if low > prev else prev - low
            if up > tr:
                tr = up
            if down > tr:
                tr = down
        self.tr = tr
        n = self.period
        v = self.value
        if v is not None:
            v = (v * (n - 1) + tr) / n
            self.value = v
            return v
        self._count += 1
        self._sum += tr
        if self._count == n:
            self.value = self._sum / n
        return self.value


class _RollingExtreme:
    """The largest of the last ``period`` values of ``sign * x``, O(1) amortised: a deque
    of candidates kept in decreasing order (values and their bar numbers in two parallel
    deques, so an update allocates no tuple). None until ``period`` values were seen.
    With ``sign`` -1 the largest of ``-x`` is the smallest of ``x``: one algorithm for both
    ends of a channel."""

    __slots__ = ("_i", "_idx", "_sign", "_val", "period", "value")
    _SIGN = 1.0

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self._sign = self._SIGN
        self._i = 0
        self._idx: deque[int] = deque()
        self._val: deque[float] = deque()
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        i = self._i
        self._i = i + 1
        sign = self._sign
        y = x * sign
        vals = self._val
        idx = self._idx
        while vals and vals[-1] <= y:  # dominated: older and not larger
            vals.pop()
            idx.pop()
        vals.append(y)
        idx.append(i)
        if idx[0] <= i - self.period:  # one value leaves the window per update
            idx.popleft()
            vals.popleft()
        if i + 1 >= self.period:
            self.value = vals[0] * sign
        return self.value


class RollingMax(_RollingExtreme):
    """The largest of the last ``period`` values (None until ``period`` were seen)."""

    __slots__ = ()


class RollingMin(_RollingExtreme):
    """The smallest of the last ``period`` values (None until ``period`` were seen)."""

    __slots__ = ()
    _SIGN = -1.0


class Donchian:
    """Donchian channel over the ``period`` bars BEFORE the current one: ``upper`` = their
    highest high, ``lower`` = their lowest low, ``mid`` = halfway. The current bar is
    left out so that its close can break out of the channel.

    ``update(high, low)`` returns the channel as it stood before this bar (the indicator
    itself: read ``upper``/``lower``/``mid``), None until ``period`` earlier bars exist;
    then the bar joins the window for the next call. The monotonic deques of
    :class:`RollingMax` and :class:`RollingMin` are inlined (one call per bar, not three).
    """

    __slots__ = ("_hi", "_hv", "_i", "_li", "_lv", "lower", "mid", "period", "upper")

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self._i = 0
        self._hi: deque[int] = deque()  # bar numbers and highs, highs decreasing
        self._hv: deque[float] = deque()
        self._li: deque[int] = deque()  # bar numbers and lows, lows increasing
        self._lv: deque[float] = deque()
        self.upper = self.lower = self.mid = math.nan

    def update(self, high: float, low: float) -> Donchian | None:
        i = self._i
        self._i = i + 1
        hv = self._hv
        lv = self._lv
        ready = i >= self.period
        if ready:  # the window holds exactly the bars i - period .. i - 1
            upper = hv[0]
            lower = lv[0]
        hi = self._hi
        while hv and hv[-1] <= high:
            hv.pop()
            hi.pop()
        hv.append(high)
        hi.append(i)
        li = self._li
        while lv and lv[-1] >= low:
            lv.pop()
            li.pop()
        lv.append(low)
        li.append(i)
        gone = i - self.period
        if hi[0] <= gone:
            hi.popleft()
            hv.popleft()
        if li[0] <= gone:
            li.popleft()
            lv.popleft()
        if not ready:
            return None
        self.upper = upper
        self.lower = lower
        self.mid = (upper + lower) * 0.5
        return self


class VolumeSMA:
    """Mean volume of the ``period`` bars BEFORE the current one, the yardstick a bar's own
    volume is compared with (a spike does not raise its own bar's average). None until
    ``period`` earlier bars exist."""

    __slots__ = ("_sma", "period", "value")

    def __init__(self, period: int) -> None:
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        self.period = period
        self._sma = SMA(period)
        self.value: float | None = None

    def update(self, volume: float) -> float | None:
        sma = self._sma
        before = sma.value
        sma.update(volume)
        self.value = before
        return before
