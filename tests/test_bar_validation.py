"""BarValidator.accept and the CSV replay parser."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

import quantshift.feeds.replay as replay_module
from quantshift.domain import NS_PER_SECOND, Bar
from quantshift.feeds.base import BarValidator
from quantshift.feeds.replay import CsvBars, ReplayFeed, ReplayFormatError

T0 = 1_704_067_200 * NS_PER_SECOND
# 2024-01-02T03:04:05Z = 1704067200 + 86400 + 3*3600 + 4*60 + 5
TS_S = 1_704_164_645
TS_NS = TS_S * NS_PER_SECOND
HEADER = "timestamp,open,high,low,close,volume"


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    messages: list[str] = []
    sink_id = logger.add(messages.append, level="WARNING", format="{level}|{message}")
    yield messages
    logger.remove(sink_id)


def good(symbol: str = "X", ts: int = T0, **kw: float) -> Bar:
    fields = {"open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5, "volume": 100.0}
    fields.update(kw)
    return Bar(symbol, ts, fields["open"], fields["high"], fields["low"], fields["close"],
               fields["volume"])


NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(("fields", "reason"), [
    ({"open": NAN}, "NaN value"),
    ({"high": NAN}, "NaN value"),
    ({"low": NAN}, "NaN value"),
    ({"close": NAN}, "NaN value"),
    ({"volume": NAN}, "NaN value"),
    ({"high": INF}, "infinite value"),
    ({"volume": INF}, "infinite value"),
    ({"low": -INF}, "infinite value"),
    ({"open": 0.0, "low": 0.0}, "non-positive price"),
    ({"low": -1.0}, "non-positive price"),
    ({"open": 0.0, "high": 0.0, "low": 0.0, "close": 0.0}, "non-positive price"),
    ({"close": -5.0}, "non-positive price"),
    ({"high": 8.0, "low": 9.0, "open": 8.5, "close": 8.5}, "high < low"),
    ({"open": 12.0}, "open/close outside high-low"),
    ({"open": 8.0}, "open/close outside high-low"),
    ({"close": 11.5}, "open/close outside high-low"),
    ({"close": 8.9}, "open/close outside high-low"),
    ({"volume": -1.0}, "negative volume"),
    ({"open": 5e-324, "low": 5e-324}, "price out of range"),  # equity / price is infinite
    ({"low": 1e-13, "open": 1e-13, "close": 1e-13}, "price out of range"),
    ({"high": 1e16}, "price out of range"),
])
def test_bad_values_are_rejected(fields: dict, reason: str, warnings: list[str]) -> None:
    v = BarValidator("test")
    assert v.accept(good(**fields)) is False
    assert v.rejected == 1
    assert v.accepted == 0
    assert v.reasons == {reason: 1}
    assert len(warnings) == 1
    assert warnings[0].startswith("WARNING|")
    assert f"rejected bar ({reason})" in warnings[0]
    assert "feed test" in warnings[0]


def test_good_bars_pass_including_edges(warnings: list[str]) -> None:
    v = BarValidator("test")
    assert v.accept(good(ts=T0))
    assert v.accept(good(ts=T0 + 1, open=9.0, close=11.0))  # open at low, close at high
    assert v.accept(good(ts=T0 + 2, open=5.0, high=5.0, low=5.0, close=5.0, volume=0.0))
    assert v.accepted == 3
    assert v.rejected == 0
    assert warnings == []


def test_timestamps_per_symbol(warnings: list[str]) -> None:
    v = BarValidator("test")
    assert v.accept(good("X", T0 + 10))
    assert v.accept(good("Y", T0 + 10))  # the same time on another symbol is fine
    assert v.accept(good("Y", T0 + 5)) is False  # earlier than Y's last
    assert v.accept(good("X", T0 + 10)) is False  # the same time again
    assert v.accept(good("X", T0 + 9)) is False
    assert v.accept(good("X", T0 + 11))
    assert v.accepted == 3
    assert v.rejected == 3
    assert v.reasons == {"out-of-order timestamp": 2, "duplicate timestamp": 1}
    assert len(warnings) == 3


def test_rejected_bar_does_not_move_the_clock() -> None:
    v = BarValidator("test")
    assert v.accept(good("X", T0))
    assert v.accept(good("X", T0 + 100, open=NAN)) is False
    assert v.accept(good("X", T0 + 50))  # still after the last accepted one


def test_logging_is_throttled(warnings: list[str]) -> None:
    v = BarValidator("test")
    for _ in range(25):
        v.accept(good(volume=-1.0))
    assert v.rejected == 25
    assert v.reasons["negative volume"] == 25
    assert len(warnings) == 20  # one line each for the first 20


# -- CsvBars ---------------------------------------------------------------------------
def write(tmp_path: Path, text: str, name: str = "AAPL.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def parse(path: Path, symbol: str | None = None) -> tuple[list[Bar], BarValidator]:
    v = BarValidator("replay")
    return list(CsvBars(path, v, symbol)), v


@pytest.mark.parametrize(("stamp", "expected"), [
    ("2024-01-02T03:04:05Z", TS_NS),
    ("2024-01-02T03:04:05.250Z", TS_NS + 250_000_000),
    ("2024-01-02T05:04:05+02:00", TS_NS),
    ("2024-01-01T22:04:05-05:00", TS_NS),
    ("2024-01-02T03:04:05", TS_NS),  # naive = UTC
    ("2024-01-02 03:04:05", TS_NS),
    ("2024-01-02", TS_NS - (3 * 3600 + 4 * 60 + 5) * NS_PER_SECOND),
    (str(TS_S), TS_NS),  # epoch seconds
    (str(TS_S * 1000 + 250), TS_NS + 250_000_000),  # epoch milliseconds
    (str(TS_S * 1_000_000 + 7), TS_NS + 7_000),  # epoch microseconds
    (str(TS_NS + 3), TS_NS + 3),  # epoch nanoseconds
    (f"{TS_S}.5", TS_NS + 500_000_000),  # fractional seconds
])
def test_timestamp_formats(tmp_path: Path, stamp: str, expected: int) -> None:
    path = write(tmp_path, f"{HEADER}\n{stamp},10,11,9,10.5,100\n")
    (b,), v = parse(path)
    assert b.ts == expected
    assert b == Bar("AAPL", expected, 10.0, 11.0, 9.0, 10.5, 100.0)
    assert v.rejected == 0


def test_symbol_from_the_file_stem_or_the_argument(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n{TS_S},10,11,9,10.5,100\n", name="MSFT.csv")
    (b,), _ = parse(path)
    assert b.symbol == "MSFT"
    (b,), _ = parse(path, symbol="SPY")
    assert b.symbol == "SPY"


def test_symbol_column(tmp_path: Path) -> None:
    path = write(tmp_path, "symbol,timestamp,open,high,low,close,volume\n"
                           f"A,{TS_S},10,11,9,10.5,100\n"
                           f"B,{TS_S},20,21,19,20.5,200\n"
                           f"A,{TS_S + 60},10.5,12,10,11,300\n")
    bars, v = parse(path, symbol="IGNORED")
    assert [(b.symbol, b.ts, b.close) for b in bars] == [
        ("A", TS_NS, 10.5), ("B", TS_NS, 20.5), ("A", TS_NS + 60 * NS_PER_SECOND, 11.0)]
    assert v.rejected == 0


def test_header_is_case_and_space_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path, "Timestamp, Open ,HIGH,low,close,Volume\r\n"
                           f"{TS_S},10,11,9,10.5,100\r\n")
    (b,), _ = parse(path)
    assert (b.ts, b.open, b.volume) == (TS_NS, 10.0, 100.0)


def test_unparseable_rows_are_rejected_and_the_rest_parsed(tmp_path: Path,
                                                           warnings: list[str]) -> None:
    path = write(tmp_path, f"{HEADER}\n"
                           "2024-01-02T03:04:05Z,10,11,9,10.5,100\n"
                           "2024-01-02T03:05:05Z,ten,11,9,10.5,100\n"  # bad number
                           "2024-01-02T03:06:05Z,10,11,9,10.5\n"  # a field short
                           "yesterday,10,11,9,10.5,100\n"  # bad time
                           "\n"  # blank: skipped, not rejected
                           "2024-01-02T03:07:05Z,10,11,9,10.5,100\n")
    bars, v = parse(path)
    assert [b.ts for b in bars] == [TS_NS, TS_NS + 180 * NS_PER_SECOND]
    assert v.rejected == 3
    assert v.reasons == {"unparseable row": 3}
    assert len(warnings) == 3
    assert all("unparseable row" in w for w in warnings)
    assert any("AAPL.csv:3" in w for w in warnings)  # names the file and line


def test_unparseable_first_row_in_an_iso_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n"
                           "n/a,10,11,9,10.5,100\n"
                           "2024-01-02T03:04:05Z,10,11,9,10.5,100\n")
    bars, v = parse(path)
    assert [b.ts for b in bars] == [TS_NS]
    assert v.reasons == {"unparseable row": 1}


def test_unparseable_first_row_in_an_epoch_file(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n"
                           "n/a,10,11,9,10.5,100\n"
                           f"{TS_S},10,11,9,10.5,100\n"
                           f"{TS_S + 60},10,11,9,10.5,100\n")
    bars, v = parse(path)
    assert [b.ts for b in bars] == [TS_NS, TS_NS + 60 * NS_PER_SECOND]
    assert v.reasons == {"unparseable row": 1}


@pytest.mark.parametrize("missing", ["timestamp", "open", "high", "low", "close", "volume"])
def test_missing_header_column(tmp_path: Path, missing: str) -> None:
    cols = [c for c in HEADER.split(",") if c != missing]
    path = write(tmp_path, ",".join(cols) + "\n" + ",".join(["1"] * len(cols)) + "\n")
    with pytest.raises(ReplayFormatError, match=rf"lacks {missing}\b"):
        parse(path)


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ReplayFormatError, match="empty"):
        parse(write(tmp_path, ""))


def test_quoted_fields(tmp_path: Path) -> None:
    path = write(tmp_path, '"timestamp","open","high","low","close","volume","symbol"\n'
                           '"2024-01-02T03:04:05Z","10.0","11","9","10.5","100","BRK.B"\n'
                           '2024-01-02T03:05:05Z,"10",11,9,"10.25",100,"A, Inc"\n'
                           '"2024-01-02T03:06:05Z",10,11,9,10.5,100,X\n')
    bars, v = parse(path)
    assert v.rejected == 0
    assert [(b.symbol, b.ts, b.open, b.close) for b in bars] == [
        ("BRK.B", TS_NS, 10.0, 10.5), ("A, Inc", TS_NS + 60 * NS_PER_SECOND, 10.0, 10.25),
        ("X", TS_NS + 120 * NS_PER_SECOND, 10.0, 10.5)]


def test_quoted_field_with_a_comma(tmp_path: Path) -> None:
    path = write(tmp_path, "symbol,timestamp,open,high,low,close,volume\n"
                           f'"A, Inc",{TS_S},10,11,9,10.5,100\n')
    (b,), v = parse(path)
    assert b.symbol == "A, Inc"
    assert b.volume == 100.0
    assert v.rejected == 0


def test_replay_feed_validates_and_delivers(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\n"
                           f"{TS_S},10,11,9,10.5,100\n"
                           f"{TS_S},10,11,9,10.5,100\n"  # duplicate
                           f"{TS_S + 60},10,9,11,10.5,100\n"  # high < low
                           f"{TS_S + 120},10,11,9,10.5,100\n")
    feed = ReplayFeed(path)
    got: list[Bar] = []
    asyncio.run(feed.run(got.append))
    assert [b.ts for b in got] == [TS_NS, TS_NS + 120 * NS_PER_SECOND]
    assert feed.finished
    assert feed.validator.reasons == {"duplicate timestamp": 1, "high < low": 1}
    assert feed.validator.accepted == 2


def test_extreme_but_possible_prices_pass() -> None:
    v = BarValidator("test")
    assert v.accept(good(ts=T0, open=1e-12, high=1e-12, low=1e-12, close=1e-12))
    assert v.accept(good(ts=T0 + 1, open=1e15, high=1e15, low=1e15, close=1e15))


@pytest.mark.parametrize("read", [7, 64, 1 << 20])  # lines across every read boundary
def test_long_rows_are_rejected_without_losing_the_rows_around_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: int) -> None:
    monkeypatch.setattr(replay_module, "MAX_LINE", 100)
    monkeypatch.setattr(replay_module, "_READ", read)
    long_row = f"{TS_S + 60},10,11,9,10.5,1{'0' * 200}"
    path = write(tmp_path, f"{HEADER}\r\n{TS_S},10,11,9,10.5,100\r\n{long_row}\r\n"
                           f"{TS_S + 120},10,11,9,10.5,100\r\n{'9' * 150}")  # no final LF
    bars, v = parse(path)
    assert [b.ts for b in bars] == [TS_NS, TS_NS + 120 * NS_PER_SECOND]
    assert v.reasons == {"row too long": 2}


def test_a_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "AAPL.csv"
    path.write_bytes(f"\ufeff{HEADER}\r\n{TS_S},10,11,9,10.5,100\r\n".encode())
    (b,), v = parse(path)
    assert (b.ts, b.volume, v.rejected) == (TS_NS, 100.0, 0)


@pytest.mark.parametrize(("good_stamp", "stamp"), [
    *((str(TS_S), s) for s in ("1.5e400", "1e30", "1.0e30", "-1e30", "nan", "inf",
                               "99999999999")),
    ("2024-01-02T03:04:05Z", "9999-12-31T00:00:00Z"),
    ("2024-01-02T03:04:05Z", "0001-01-01T00:00:00+05:00"),
])
def test_impossible_timestamps_are_rejected_and_counted(tmp_path: Path, good_stamp: str,
                                                        stamp: str) -> None:
    path = write(tmp_path, f"{HEADER}\n{stamp},10,11,9,10.5,100\n{good_stamp},10,11,9,10.5,100"
                           f"\n{stamp},10,11,9,10.5,100\n")
    (b,), v = parse(path)  # first and after the first: the format is fixed either way
    assert b.ts == TS_NS
    assert v.reasons == {"impossible timestamp": 2}


def test_replay_feed_refuses_a_file_that_is_not_bars_when_made(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(200))
    with pytest.raises(ReplayFormatError, match="binary content"):
        ReplayFeed(path)
