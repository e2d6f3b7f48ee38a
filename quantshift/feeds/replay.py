"""Replay a CSV file: ``timestamp,open,high,low,close,volume[,symbol]``.

Timestamps may be ISO 8601 (a missing offset means UTC) or epoch seconds,
milliseconds, microseconds or nanoseconds (told apart by magnitude). A file without a
symbol column is one symbol, named by ``symbol`` or else by the file's stem. Rows that
cannot be parsed are rejected, counted and logged like any other bad bar.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from quantshift.domain import NS_PER_SECOND, Bar
from quantshift.feeds.base import BarValidator

REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")


class ReplayFormatError(ValueError):
    pass


_fromiso = datetime.fromisoformat


def _iso_to_ns(text: str) -> int:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * NS_PER_SECOND + dt.microsecond * 1000


def _epoch_to_ns(text: str) -> int:
    if "." in text:
        value = float(text)
        scale = _scale(abs(value))
        return round(value * scale)
    value_i = int(text)
    return value_i * _scale(abs(value_i))


def _scale(magnitude: float) -> int:
    if magnitude < 1e11:
        return NS_PER_SECOND
    if magnitude < 1e14:
        return 1_000_000
    if magnitude < 1e17:
        return 1_000
    return 1


def _ts_parser(sample: str) -> Callable[[str], int]:
    try:
        float(sample)
    except ValueError:
        return _iso_to_ns
    return _epoch_to_ns


class CsvBars:
    """Iterates a CSV file as Bars; malformed rows go to the validator as rejects."""

    def __init__(self, path: Path, validator: BarValidator, symbol: str | None = None) -> None:
        self.path = path
        self.validator = validator
        self.symbol = symbol or path.stem
        self.rows = 0
        self.first_ts: int | None = None  # the first parsed bar's time

    def __iter__(self) -> Iterator[Bar]:
        with self.path.open(newline="") as fh:
            header_line = fh.readline()
            if not header_line:
                raise ReplayFormatError(f"{self.path}: empty file")
            cols = [h.strip().lower() for h in _split(header_line)]
            missing = [c for c in REQUIRED if c not in cols]
            if missing:
                raise ReplayFormatError(
                    f"{self.path}: header lacks {', '.join(missing)} (expected "
                    f"{','.join(REQUIRED)}[,symbol])")
            it, io, ih, il, ic, iv = (cols.index(c) for c in REQUIRED)
            isym = cols.index("symbol") if "symbol" in cols else -1
            width = len(cols)
            default_symbol = self.symbol
            parse_ts: Callable[[str], int] | None = None
            reject = self.validator.reject
            line_no = 1
            for line in fh:
                line_no += 1
                # Plain rows are split directly; only a row with quotes needs the csv module.
                row = line.rstrip("\r\n").split(",") if '"' not in line else _split(line)
                try:
                    if len(row) != width:
                        if not line.strip():
                            continue
                        raise ValueError(f"{len(row)} fields, expected {width}")
                    if parse_ts is None:
                        # The first timestamp that parses fixes the format for the file.
                        candidate = _ts_parser(row[it].strip())
                        ts = self.first_ts = candidate(row[it])
                        parse_ts = candidate
                    elif parse_ts is _iso_to_ns:  # the common case, without a call
                        dt = _fromiso(row[it])
                        if dt.tzinfo is None:
                            dt = dt.replace(tzinfo=UTC)
                        ts = int(dt.timestamp()) * NS_PER_SECOND + dt.microsecond * 1000
                    else:
                        ts = parse_ts(row[it])
                    bar = Bar(row[isym] if isym >= 0 else default_symbol, ts,
                              float(row[io]), float(row[ih]), float(row[il]), float(row[ic]),
                              float(row[iv]))
                except ValueError as exc:
                    reject("unparseable row", f"{self.path.name}:{line_no}: {exc}")
                    continue
                self.rows += 1
                yield bar


def _split(line: str) -> list[str]:
    return next(csv.reader([line]), [])


class ReplayFeed:
    """The CSV file as a feed for the daemon: as fast as possible, or paced.

    ``pace`` 0 runs flat out (yielding to the loop every few hundred bars); a pace of
    60 plays one minute of bar time per second.
    """

    name = "replay"

    def __init__(self, path: Path, pace: float = 0.0, symbol: str | None = None) -> None:
        self.validator = BarValidator(self.name)
        self.bars = CsvBars(path, self.validator, symbol)
        self.pace = pace
        self.bar_seconds = 0.0  # a file has no cadence to fall behind
        self.last_bar_at = 0.0
        self.finished = False
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def history(self, count: int) -> list[Bar]:
        return []  # the file is its own history

    async def run(self, on_bar: Callable[[Bar], None]) -> None:
        accept = self.validator.accept
        stopping = self._stopping
        prev_ts: int | None = None
        for n, bar in enumerate(self.bars, 1):
            if stopping.is_set():
                return
            if self.pace > 0 and prev_ts is not None and bar.ts > prev_ts:
                try:
                    await asyncio.wait_for(stopping.wait(),
                                           (bar.ts - prev_ts) / NS_PER_SECOND / self.pace)
                    return
                except TimeoutError:
                    pass
            prev_ts = bar.ts
            if accept(bar):
                on_bar(bar)
            if n % 256 == 0:
                await asyncio.sleep(0)
        self.finished = True
