"""Bars for the emulators: a seeded random walk or a CSV replay, and aggregation.

Stand-alone on purpose: nothing here imports the rest of QuantShift.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")

# Start prices for well-known bases; anything else gets a seeded price in [20, 500).
KNOWN_PRICES = {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0, "BNB": 550.0, "XRP": 0.6}


@dataclass(slots=True)
class Bar:
    """One bar; ``time`` is the bar's opening time in epoch seconds (UTC)."""

    symbol: str
    time: float
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int = 0
    vwap: float = 0.0

    def as_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def round_step(value: float, step: float) -> float:
    """``value`` rounded to the nearest multiple of ``step`` (without float dust)."""
    if step <= 0:
        return value
    places = decimals(step)
    return round(round(value / step) * step, places)


def floor_step(value: float, step: float) -> float:
    if step <= 0:
        return value
    q = value / step
    return round(math.floor(q + max(1e-9, abs(q) * 1e-12)) * step, decimals(step))


def on_step(value: float, step: float) -> bool:
    if step <= 0:
        return True
    return abs(round(value / step) * step - value) <= max(abs(value), 1.0) * 1e-9


def decimals(step: float) -> int:
    text = f"{step:.12f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def parse_time(text: str) -> float:
    """ISO 8601 (no offset = UTC) or epoch s/ms/us/ns told apart by magnitude."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    if not math.isfinite(value):
        raise ValueError(f"bad timestamp {text!r}")
    magnitude = abs(value)
    if magnitude < 1e11:
        return value
    if magnitude < 1e14:
        return value / 1e3
    if magnitude < 1e17:
        return value / 1e6
    return value / 1e9


def start_price(symbol: str, seed: int = 1) -> float:
    """The random walk's first price for ``symbol`` (known bases, else seeded)."""
    base = symbol.split("/")[0].split("-")[0].upper()
    known = KNOWN_PRICES.get(base)
    if known is not None:
        return known
    return random.Random(f"{seed}:{symbol}").uniform(20.0, 500.0)


class RandomWalk:
    """A seeded geometric random walk per symbol; prices continue from bar to bar."""

    def __init__(self, symbols: Sequence[str], seed: int = 1, volatility: float = 0.002,
                 price_steps: dict[str, float] | None = None,
                 start_prices: dict[str, float] | None = None) -> None:
        self.volatility = volatility
        self.steps = dict(price_steps or {})
        self.rngs = {s: random.Random(f"{seed}:{s}") for s in symbols}
        self.last: dict[str, float] = {}
        for s in symbols:
            price = (start_prices or {}).get(s) or start_price(s, seed)
            self.last[s] = round_step(price, self.steps.get(s, 0.01))

    def next_bar(self, symbol: str, t: float) -> Bar:
        rng = self.rngs[symbol]
        step = self.steps.get(symbol, 0.01)
        sigma = self.volatility
        opn = self.last[symbol]
        close = opn * math.exp(rng.gauss(0.0, sigma))
        high = max(opn, close) * math.exp(abs(rng.gauss(0.0, sigma)) / 2)
        low = min(opn, close) * math.exp(-abs(rng.gauss(0.0, sigma)) / 2)
        close = max(round_step(close, step), step)
        high = max(round_step(high, step), opn, close)
        low = max(min(round_step(low, step), opn, close), step)
        volume = float(rng.randint(100, 10_000))
        vwap = round_step((high + low + close) / 3, step)
        self.last[symbol] = close
        return Bar(symbol, t, opn, high, low, close, volume, rng.randint(10, 200), vwap)


def read_csv(path: str | Path, symbols: Sequence[str] | None = None) -> list[list[Bar]]:
    """A CSV ``timestamp,open,high,low,close,volume[,symbol]`` as rounds of bars.

    Each round holds the bars of one timestamp, in file order. A file without a symbol
    column feeds every symbol of ``symbols``. Unparseable rows are skipped.
    """
    rounds: dict[float, list[Bar]] = {}
    with Path(path).open(newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        cols = [h.strip().lower() for h in header]
        missing = [c for c in REQUIRED if c not in cols]
        if missing:
            raise ValueError(f"{path}: header lacks {', '.join(missing)}")
        idx = {c: cols.index(c) for c in (*REQUIRED, "symbol") if c in cols}
        wanted = set(symbols or ())
        for row in reader:
            try:
                t = parse_time(row[idx["timestamp"]])
                o, h, lo, c, v = (float(row[idx[k]])
                                  for k in ("open", "high", "low", "close", "volume"))
            except (ValueError, IndexError):
                continue
            if not all(math.isfinite(x) for x in (o, h, lo, c, v)) or min(o, h, lo, c) <= 0:
                continue
            if "symbol" in idx:
                names: Iterable[str] = [row[idx["symbol"]].strip()]
            else:
                names = symbols or ["DATA"]
            for name in names:
                if wanted and name not in wanted:
                    continue
                bar = Bar(name, t, o, max(h, o, c), min(lo, o, c), c, v, 0, (h + lo + c) / 3)
                rounds.setdefault(t, []).append(bar)
    return [rounds[t] for t in sorted(rounds)]


def csv_symbols(path: str | Path) -> list[str]:
    """The symbols named in a CSV's symbol column, in first-seen order ([] if none)."""
    with Path(path).open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if "symbol" not in header:
            return []
        i = header.index("symbol")
        seen: dict[str, None] = {}
        for row in reader:
            if len(row) > i and row[i].strip():
                seen.setdefault(row[i].strip(), None)
        return list(seen)


def aggregate(bars: Iterable[Bar], seconds: float) -> list[Bar]:
    """Bars merged into buckets of ``seconds`` aligned to the epoch (time = bucket start)."""
    out: list[Bar] = []
    for bar in bars:
        bucket = math.floor(bar.time / seconds + 1e-9) * seconds if seconds > 0 else bar.time
        last = out[-1] if out else None
        if last is not None and last.time == bucket:
            notional = last.vwap * last.volume + bar.vwap * bar.volume
            last.high = max(last.high, bar.high)
            last.low = min(last.low, bar.low)
            last.close = bar.close
            last.volume += bar.volume
            last.trades += bar.trades
            last.vwap = notional / last.volume if last.volume else bar.close
        else:
            out.append(Bar(bar.symbol, bucket, bar.open, bar.high, bar.low, bar.close,
                           bar.volume, bar.trades, bar.vwap))
    return out
