"""Replay a CSV file: ``timestamp,open,high,low,close,volume[,symbol]``.

Timestamps may be ISO 8601 (a missing offset means UTC) or epoch seconds,
milliseconds, microseconds or nanoseconds (told apart by magnitude). A file without a
symbol column is one symbol, named by ``symbol`` or else by the file's stem.

The file is UTF-8 text (a byte-order mark is skipped; LF or CRLF line ends). A file that
is not (binary content, UTF-16, no line end in the first ``MAX_LINE`` bytes, lines ended
by CR alone) or whose header lacks a column is refused whole with ``ReplayFormatError``,
before any bar. A row that cannot be used is rejected, counted and logged like any other
bad bar: ``unparseable row`` (not UTF-8, a wrong number of fields, a number or time that
does not parse), ``impossible timestamp`` (outside the nanosecond clock, 1677 to 2262:
``1e30``, ``1.5e400``) and ``row too long`` (over ``MAX_LINE`` bytes; never held in
memory whole).
"""

from __future__ import annotations

import asyncio
import csv
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from quantshift.aio import within
from quantshift.domain import NS_PER_SECOND, Bar
from quantshift.feeds.base import BarValidator

REQUIRED = ("timestamp", "open", "high", "low", "close", "volume")
MAX_LINE = 64 * 1024  # bytes in a row; a longer header refuses the file
_READ = 1 << 20
# Bar times are int64 nanoseconds everywhere after the feed (the ledger's INTEGER columns).
TS_MIN, TS_MAX = -(2**63), 2**63 - 1
_BOM = b"\xef\xbb\xbf"


class ReplayFormatError(ValueError):
    pass


class _TooLong(bytes):
    """Stands for a line over MAX_LINE; its bytes are not UTF-8, so decoding it fails like
    any binary row's, and the rejection names the length."""


_TOO_LONG = _TooLong(b"\xff")


class _ImpossibleTime(ValueError):
    pass


_fromiso = datetime.fromisoformat


def _iso_to_ns(text: str) -> int:
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * NS_PER_SECOND + dt.microsecond * 1000


def _epoch_to_ns(text: str) -> int:
    if "." not in text:
        try:
            value_i = int(text)
        except ValueError:  # an exponent: 1e9
            pass
        else:
            return value_i * _scale(abs(value_i))
    value = float(text)
    if not math.isfinite(value):  # 1.5e400 is inf; NaN
        raise _ImpossibleTime(text)
    return round(value * _scale(abs(value)))


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


def _lines(fh: BinaryIO) -> Iterator[bytes]:
    """The file's lines without their LF, read a MiB at a time; a line over MAX_LINE
    comes out as ``_TOO_LONG``, and only MAX_LINE bytes of it are ever held."""
    carry = b""
    skipping = False  # inside a line already found too long
    while chunk := fh.read(_READ):
        lines = chunk.split(b"\n")
        tail = lines.pop()  # no LF after it (yet)
        if lines:
            lines[0] = _TOO_LONG if skipping else carry + lines[0]
            skipping = False
            if max(map(len, lines)) > MAX_LINE:
                lines = [_TOO_LONG if len(line) > MAX_LINE else line for line in lines]
            yield from lines
            carry = tail
        elif not skipping:
            carry += tail
        if len(carry) > MAX_LINE:
            skipping, carry = True, b""
    if skipping:
        yield _TOO_LONG
    elif carry:
        yield carry


def _short(text: object, limit: int = 120) -> str:
    s = str(text)
    return s if len(s) <= limit else s[:limit] + "..."


class CsvBars:
    """Iterates a CSV file as Bars; malformed rows go to the validator as rejects."""

    def __init__(self, path: Path, validator: BarValidator, symbol: str | None = None) -> None:
        self.path = path
        self.validator = validator
        self.symbol = symbol or path.stem
        self.rows = 0
        self.first_ts: int | None = None  # the first parsed bar's time

    def check(self) -> None:
        """Refuse (ReplayFormatError) a file that is not a CSV of bars, before any bar."""
        with self._open() as fh:
            self._columns(_lines(fh))

    def _open(self) -> BinaryIO:
        try:
            return self.path.open("rb")
        except OSError as exc:
            raise ReplayFormatError(f"{self.path}: cannot be read "
                                    f"({exc.strerror or exc})") from None

    def _columns(self, lines: Iterator[bytes]) -> list[str]:
        raw = next(lines, None)
        if raw is None:
            raise ReplayFormatError(f"{self.path}: empty file")
        if raw is _TOO_LONG:
            raise ReplayFormatError(f"{self.path}: no line end in the first {MAX_LINE // 1024}"
                                    " KiB: not a CSV file")
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            raise ReplayFormatError(f"{self.path}: UTF-16 text; save it as UTF-8")
        try:
            header = raw.removeprefix(_BOM).decode().rstrip("\r")
        except UnicodeDecodeError:
            raise ReplayFormatError(f"{self.path}: binary content, not UTF-8 CSV text"
                                    ) from None
        if "\r" in header:
            raise ReplayFormatError(f"{self.path}: lines end in CR alone; convert them to LF")
        if any(c < " " and c != "\t" for c in header):
            raise ReplayFormatError(f"{self.path}: binary content (control characters), not "
                                    "CSV text")
        if not header.strip():
            raise ReplayFormatError(f"{self.path}: the first line is blank, not a header")
        try:
            cols = [h.strip().lower() for h in _split(header)]
        except csv.Error as exc:
            raise ReplayFormatError(f"{self.path}: the header is not CSV ({exc})") from None
        missing = [c for c in REQUIRED if c not in cols]
        if missing:
            raise ReplayFormatError(
                f"{self.path}: header lacks {', '.join(missing)} (expected "
                f"{','.join(REQUIRED)}[,symbol])")
        return cols

    def __iter__(self) -> Iterator[Bar]:
        with self._open() as fh:
            lines = _lines(fh)
            cols = self._columns(lines)
            it, io, ih, il, ic, iv = (cols.index(c) for c in REQUIRED)
            isym = cols.index("symbol") if "symbol" in cols else -1
            width = len(cols)
            default_symbol = self.symbol
            name = self.path.name
            parse_ts: Callable[[str], int] | None = None
            candidate: Callable[[str], int] = _iso_to_ns
            reject = self.validator.reject
            for line_no, raw in enumerate(lines, 2):
                try:
                    line = raw.decode()
                    # Plain rows are split directly; only a row with quotes needs the csv module.
                    row = line.rstrip("\r").split(",") if '"' not in line else _split(line)
                    if len(row) != width:
                        if not line.strip():
                            continue
                        raise ValueError(f"{len(row)} fields, expected {width}")
                    if parse_ts is None:
                        candidate = _ts_parser(row[it].strip())
                        ts = candidate(row[it])
                    elif parse_ts is _iso_to_ns:  # the common case, without a call
                        dt = _fromiso(row[it])
                        if dt.tzinfo is None:
                            dt = dt.replace(tzinfo=UTC)
                        ts = int(dt.timestamp()) * NS_PER_SECOND + dt.microsecond * 1000
                    else:
                        ts = parse_ts(row[it])
                    if not TS_MIN <= ts <= TS_MAX:
                        raise _ImpossibleTime(row[it])
                    bar = Bar(row[isym] if isym >= 0 else default_symbol, ts,
                              float(row[io]), float(row[ih]), float(row[il]), float(row[ic]),
                              float(row[iv]))
                except (_ImpossibleTime, OverflowError) as exc:
                    reject("impossible timestamp", f"{name}:{line_no}: {_short(exc)!r} is "
                           "outside the nanosecond clock (1677 to 2262)")
                    continue
                except (ValueError, csv.Error) as exc:
                    if raw is _TOO_LONG:
                        reject("row too long", f"{name}:{line_no}: over {MAX_LINE} bytes")
                    else:
                        reject("unparseable row", f"{name}:{line_no}: {_short(exc, 200)}")
                    continue
                if parse_ts is None:  # the first row that parses fixes the file's format
                    parse_ts, self.first_ts = candidate, ts
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
        self.bars.check()  # a file that is not bars stops the start, not the running feed
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
                    await within(stopping.wait(),
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
