"""Bad replay files, table-driven: each is handled (bad rows counted) or refused with 78
and one line; never a traceback, never an empty ledger left behind. The daemon's replay
feed keeps the same rules."""

from __future__ import annotations

import gzip
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from tests.conftest import FAST, DaemonProcess, clean_env, quantshift_bin

HEADER = "timestamp,open,high,low,close,volume"
T = 1_700_000_000


def rows(n: int = 40, start: int = 0, eol: str = "\n") -> str:
    out = []
    for i in range(start, start + n):
        p = 100 + (i % 7)
        out.append(f"{T + 60 * i},{p},{p + 1},{p - 1},{p},10{eol}")
    return "".join(out)


GOOD = HEADER + "\n" + rows()


def with_row(row: str | bytes) -> bytes:
    """Forty good rows with ``row`` in the middle."""
    raw = row if isinstance(row, bytes) else row.encode()
    return (HEADER + "\n" + rows(20)).encode() + raw + b"\n" + rows(20, 20).encode()


def sqlite_file(directory: Path) -> bytes:
    path = directory / "made.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (x)")
    return path.read_bytes()


# name: (the file's bytes, exit status, what stderr's one line says | {reason: count})
Case = tuple[Callable[[Path], bytes], int, "str | dict[str, int]"]
CASES: dict[str, Case] = {
    "binary": (lambda p: bytes(range(256)) * 40, 78, "binary content"),
    "gzip-compressed CSV": (lambda p: gzip.compress(GOOD.encode()), 78, "binary content"),
    "an SQLite database": (sqlite_file, 78, "binary content"),
    "UTF-16": (lambda p: GOOD.encode("utf-16"), 78, "UTF-16 text; save it as UTF-8"),
    "empty": (lambda p: b"", 78, "empty file"),
    "no line end in 5 MB": (lambda p: b"1" * 5_000_000, 78, "no line end in the first 64 KiB"),
    "CR alone ends lines": (lambda p: GOOD.replace("\n", "\r").encode(), 78, "CR alone"),
    "header lacks columns": (lambda p: b"when,price\n1,2\n", 78, "header lacks timestamp"),
    "only a header": (lambda p: f"{HEADER}\n".encode(), 78, "no bar passed validation (0 rows"),
    "no row parses": (lambda p: f"{HEADER}\n1;2;3\nx,y\n".encode(), 78,
                      "no bar passed validation (2 rows rejected: unparseable row: 2)"),
    "UTF-8 BOM": (lambda p: b"\xef\xbb\xbf" + GOOD.encode(), 0, {}),
    "CRLF": (lambda p: (HEADER + "\r\n" + rows(eol="\r\n")).encode(), 0, {}),
    "BOM and CRLF": (lambda p: b"\xef\xbb\xbf" + (HEADER + "\r\n" + rows(eol="\r\n")).encode(),
                     0, {}),
    "epoch 1.5e400": (lambda p: with_row("1.5e400,100,101,99,100,10"), 0,
                      {"impossible timestamp": 1}),
    "epoch 1e30": (lambda p: with_row("1e30,100,101,99,100,10"), 0,
                   {"impossible timestamp": 1}),
    "epoch 1.0e30": (lambda p: with_row("1.0e30,100,101,99,100,10"), 0,
                     {"impossible timestamp": 1}),
    "epoch past 2262": (lambda p: with_row("99999999999,100,101,99,100,10"), 0,
                        {"impossible timestamp": 1}),
    "a row of 5 MB": (lambda p: with_row("1" * 5_000_000), 0, {"row too long": 1}),
    "a row of binary": (lambda p: with_row(bytes(b for b in range(256) if b != 10)), 0,
                        {"unparseable row": 1}),
    "a quoted row with a NUL": (lambda p: with_row('"1700001300",100,101,99,100,"1\x000"'), 0,
                                {"unparseable row": 1}),
    "a price of 5e-324": (lambda p: with_row("1700001250,5e-324,5e-324,5e-324,5e-324,1"), 0,
                          {"price out of range": 1}),
}


def replay(tmp_path: Path, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [quantshift_bin(), "replay", "--data", str(data), "--strategy", "ma_cross", "--param",
         "fast=2", "--param", "slow=5", "--json"], env=clean_env(tmp_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_replay_files(tmp_path: Path, kind: str) -> None:
    make, status, expect = CASES[kind]
    data = tmp_path / "bars.csv"
    data.write_bytes(make(tmp_path))
    proc = replay(tmp_path, data)
    assert "Traceback" not in proc.stderr
    assert proc.returncode == status, proc.stderr[-2000:]
    ledgers = [p for p in (tmp_path / "var" / "replay").glob("*.sqlite*")
               if p.suffix != ".lock"]
    if isinstance(expect, str):
        # one line; before it only the log's warnings of the rows rejected, if any
        lines = [line for line in proc.stderr.splitlines() if "| WARNING |" not in line]
        assert len(lines) == 1 and lines[0].startswith(
            f"quantshift: invalid setting --data: {data}: ")
        assert expect in lines[0]
        assert ledgers == []  # a failed replay leaves no ledger behind
        return
    summary = orjson.loads(proc.stdout)
    assert summary["rejected"] == sum(expect.values())
    assert summary["bars"] == 40
    log = (tmp_path / "logs" / "quantshift-equity-replay.log").read_text()
    for reason in expect:
        assert f"rejected bar ({reason})" in log
    assert [p.name for p in ledgers if p.suffix == ".sqlite"] == ["equity-bars.sqlite"]


def test_a_directory_as_data_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = replay(tmp_path, tmp_path)
    assert proc.returncode == 78
    assert proc.stderr.strip() == f"quantshift: invalid setting --data: not a regular file: " \
                                  f"{tmp_path}"


def test_a_failed_replay_replaces_no_ledger_by_an_empty_one(tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    data.write_text(GOOD)
    assert replay(tmp_path, data).returncode == 0
    ledger = tmp_path / "var" / "replay" / "equity-bars.sqlite"
    assert ledger.stat().st_size > 0
    data.write_text(f"{HEADER}\nbad,row\n")  # the next run of the same file has no bar
    proc = replay(tmp_path, data)
    assert proc.returncode == 78 and "no bar passed validation" in proc.stderr
    assert not ledger.exists()


def test_replay_refuses_to_replace_a_file_that_is_not_a_ledger(tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    data.write_text(GOOD)
    precious = tmp_path / "notes.txt"
    precious.write_text("mine\n")
    proc = subprocess.run([quantshift_bin(), "replay", "--data", str(data), "--journal",
                           str(precious)], env=clean_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 78
    assert proc.stderr.strip() == (f"quantshift: invalid setting --journal: {precious} is not a "
                                   "QuantShift ledger (not an SQLite database); move it aside "
                                   "to start a new ledger")
    assert precious.read_text() == "mine\n"


# -- the daemon's replay feed ---------------------------------------------------------
def run_daemon(tmp_path: Path, data: Path) -> tuple[int, str, str]:
    d = DaemonProcess(tmp_path, clean_env(tmp_path, **{
        **FAST, "QUANTSHIFT_FEED": "replay", "QUANTSHIFT_REPLAY_FILE": str(data)})).start()
    try:
        code = d.proc.wait(30)  # type: ignore[union-attr]
        _, err = d.communicate()
    finally:
        d.kill()
    return code, err, d.log()


@pytest.mark.process
def test_the_daemon_refuses_a_replay_file_that_is_not_bars(tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    data.write_bytes(gzip.compress(GOOD.encode()))
    code, err, _ = run_daemon(tmp_path, data)
    assert code == 78
    lines = [line for line in err.splitlines() if line.startswith("quantshift:")]
    assert lines == [f"quantshift: invalid setting QUANTSHIFT_REPLAY_FILE: {data}: binary "
                     "content, not UTF-8 CSV text"]
    assert "Traceback" not in err


@pytest.mark.process
def test_the_daemon_counts_bad_rows_of_a_replay_file_and_goes_on(tmp_path: Path) -> None:
    data = tmp_path / "bars.csv"
    data.write_bytes(b"\xef\xbb\xbf" + with_row("1e30,100,101,99,100,10").replace(b"\n",
                                                                                   b"\r\n"))
    code, err, log = run_daemon(tmp_path, data)
    assert code == 0, err[-2000:]
    assert "rejected bar (impossible timestamp)" in log
    assert "feed replay finished" in log
    assert "Traceback" not in log + err
