"""Which files the journal opens as a ledger, which it refuses untouched, and the edges:
a crash's -wal, a creation cut short (this release's and an earlier one's)."""

from __future__ import annotations

import gzip
import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from quantshift.state import ledger
from quantshift.state.journal import _SCHEMA, SCHEMA_VERSION, Journal, JournalOwnerError
from quantshift.state.ledger import NotALedger
from tests.conftest import FAST, DaemonProcess, clean_env, quantshift_bin, read_db

BOT, EXECUTOR = "equity", "paper"


def other_apps_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO customers (name) VALUES ('Ada')")


def meta_table(rows: dict[str, str], extra: str = "") -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())
            if extra:
                db.execute(extra)
    return make


def empty_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")  # writes the header page, creates no table
    db.close()


def our_schema_with_rows_but_no_meta(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA)
        db.execute("INSERT INTO vetoes (ts, strategy, symbol, target, reason) "
                   "VALUES (1, 's', 'X', 1, 'r')")


OURS = {"schema_version": str(SCHEMA_VERSION), "bot": BOT, "executor": EXECUTOR}

NOT_OURS: dict[str, tuple[Callable[[Path], None], str]] = {
    "an empty file": (lambda p: p.write_bytes(b""), "an empty file"),
    "a text file": (lambda p: p.write_text("timestamp,open\n1,2\n"), "not an SQLite database"),
    "random bytes": (lambda p: p.write_bytes(os.urandom(5000)), "not an SQLite database"),
    "a gzip file": (lambda p: p.write_bytes(gzip.compress(b"x" * 100)),
                    "not an SQLite database"),
    "a truncated SQLite header": (lambda p: p.write_bytes(b"SQLite format 3\x00" + b"\x00" * 30),
                                  "unreadable SQLite database"),
    "another program's database": (other_apps_sqlite, "without QuantShift's meta table"),
    "an SQLite database with no tables": (empty_sqlite, "with no tables"),
    "a meta table of another program": (meta_table({"app": "photos"}), "lacks schema_version"),
    "meta rows without the executor": (meta_table({"schema_version": "1", "bot": BOT}),
                                       "lacks executor"),
    "a newer schema version": (meta_table({**OURS, "schema_version": "99"}),
                               "newer QuantShift: schema version 99"),
    "a schema version that is not a number": (meta_table({**OURS, "schema_version": "x"}),
                                              "is not a number"),
    "an empty meta table beside another program's": (
        meta_table({}, "CREATE TABLE photos (id INTEGER)"), "tables of another program"),
    "our tables with rows but no meta rows": (our_schema_with_rows_but_no_meta,
                                              "rows in its tables"),
    "a directory": (lambda p: p.mkdir(), "not a regular file"),
    "a symbolic link to nothing": (lambda p: p.symlink_to(p.with_name("gone")),
                                   "symbolic link to nothing"),
}


def snapshot_of(directory: Path) -> dict[str, str]:
    """Every entry next to the ledger (the lock file aside) and a digest of its bytes."""
    out = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.endswith(".lock"):
            continue
        if entry.is_symlink() or entry.is_dir():
            out[entry.name] = "link" if entry.is_symlink() else "dir"
        else:
            out[entry.name] = hashlib.sha256(entry.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("kind", list(NOT_OURS))
def test_a_file_that_is_not_ours_is_refused_and_left_untouched(tmp_path: Path,
                                                               kind: str) -> None:
    make, why = NOT_OURS[kind]
    path = tmp_path / "equity-paper.sqlite"
    make(path)
    before = snapshot_of(tmp_path)
    with pytest.raises(NotALedger) as info:
        Journal(path, bot=BOT, executor=EXECUTOR)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path} is not a QuantShift ledger (")
    assert why in message
    assert "move it aside" in message or "run the newer release" in message
    assert snapshot_of(tmp_path) == before  # not a byte changed, no -wal or -shm made
    # The lock went with the refusal: the owner of the file can do what it likes.
    ledger.LedgerLock(path).acquire()


def test_a_missing_file_is_a_new_ledger_with_its_meta_rows_from_the_start(
        tmp_path: Path) -> None:
    path = tmp_path / "equity-paper.sqlite"
    Journal(path, bot=BOT, executor=EXECUTOR).close()
    meta = dict(read_db(path, "SELECT key, value FROM meta"))
    assert {k: meta[k] for k in OURS} == OURS
    assert not list(tmp_path.glob(".*.new*"))  # the temporary file is gone
    Journal(path, bot=BOT, executor=EXECUTOR).close()  # and it opens again


def test_a_write_ahead_log_without_its_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "equity-paper.sqlite"
    Path(f"{path}-wal").write_bytes(b"\x37\x7f\x06\x82" + b"\x00" * 60)
    with pytest.raises(NotALedger, match=r"its write-ahead log equity-paper\.sqlite-wal is "
                                         "there"):
        Journal(path, bot=BOT, executor=EXECUTOR)
    assert not path.exists()


CRASH = """
import os, sys
from pathlib import Path
from quantshift.state.journal import Journal
j = Journal(Path(sys.argv[1]), bot="equity", executor="paper")
j.set("trading_state", {"state": "halted", "reason": "before the crash"})
j.veto(1, "s", "X", 1, "committed, never checkpointed")
j.flush()
os.kill(os.getpid(), 9)
"""


def test_a_ledger_a_crash_left_with_only_its_wal_opens_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "equity-paper.sqlite"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(path)], timeout=60)
    assert proc.returncode == -9
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    assert wal.stat().st_size > 0  # the rows are in the WAL only
    shm.unlink()  # the crash left the -wal alone next to the ledger
    j = Journal(path, bot=BOT, executor=EXECUTOR)
    try:
        assert j.get("trading_state") == {"state": "halted", "reason": "before the crash"}
        assert j.count("vetoes") == 1
    finally:
        j.close()


KILLED_CREATING = """
import os, sys
from pathlib import Path
from quantshift.state import ledger
from quantshift.state.journal import Journal
ledger.os.link = lambda *a: os.kill(os.getpid(), 9)  # killed just before the first commit
Journal(Path(sys.argv[1]), bot="equity", executor="paper")
"""


def test_a_start_of_this_release_killed_while_creating_the_ledger_starts_again(
        tmp_path: Path) -> None:
    path = tmp_path / "equity-paper.sqlite"
    proc = subprocess.run([sys.executable, "-c", KILLED_CREATING, str(path)], timeout=60)
    assert proc.returncode == -9
    assert not path.exists() and list(tmp_path.glob(".equity-paper.sqlite.new*"))
    Journal(path, bot=BOT, executor=EXECUTOR).close()
    assert dict(read_db(path, "SELECT key, value FROM meta"))["bot"] == BOT
    assert not list(tmp_path.glob(".equity-paper.sqlite.new*"))


@pytest.mark.parametrize("made", ["the meta table alone", "the whole schema"])
def test_an_earlier_releases_creation_cut_short_before_its_meta_rows_opens(
        tmp_path: Path, made: str) -> None:
    # Earlier releases ran the schema a statement at a time and wrote the meta rows last.
    path = tmp_path / "equity-paper.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        if made == "the whole schema":
            db.executescript(_SCHEMA)
        else:
            db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    j = Journal(path, bot=BOT, executor=EXECUTOR)
    j.veto(1, "s", "X", 1, "first row")
    j.flush()
    j.close()
    assert dict(read_db(path, "SELECT key, value FROM meta"))["executor"] == EXECUTOR
    assert read_db(path, "SELECT reason FROM vetoes") == [("first row",)]


def test_the_owner_is_still_checked(tmp_path: Path) -> None:
    path = tmp_path / "equity-paper.sqlite"
    Journal(path, bot=BOT, executor=EXECUTOR).close()
    with pytest.raises(JournalOwnerError, match="not 'crypto'/'paper'"):
        Journal(path, bot="crypto", executor=EXECUTOR)


# -- the commands ---------------------------------------------------------------------
def test_run_refuses_an_empty_ledger_with_78_and_one_line(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir()
    ledger_file = var / "equity-paper.sqlite"
    ledger_file.write_bytes(b"")
    d = DaemonProcess(tmp_path, clean_env(tmp_path, **FAST)).start()
    code = d.proc.wait(30)  # type: ignore[union-attr]
    _, err = d.communicate()
    assert code == 78
    lines = [line for line in err.splitlines() if line.startswith("quantshift:")]
    assert lines == [f"quantshift: invalid setting QUANTSHIFT_STATE_DIR: {ledger_file} is not a "
                     "QuantShift ledger (an empty file); move it aside to start a new ledger"]
    assert "Traceback" not in err
    assert ledger_file.read_bytes() == b"" and not Path(f"{ledger_file}-wal").exists()


def test_run_refuses_a_version_books_ledger_that_is_not_ours(tmp_path: Path) -> None:
    strategies = [{"name": "ma_cross", "params": {"fast": 2, "slow": 5}, "versions": [
        {"version": "v1", "status": "active"},
        {"version": "v2", "status": "shadow", "params": {"fast": 3}}]}]
    books = tmp_path / "var" / "equity-paper.versions"
    books.mkdir(parents=True)
    book = books / "ma_cross@v2.sqlite"
    book.write_text("not a ledger\n")
    env = clean_env(tmp_path, **{**FAST, "QUANTSHIFT_STRATEGIES": orjson.dumps(strategies)
                                 .decode()})
    d = DaemonProcess(tmp_path, env).start()
    code = d.proc.wait(30)  # type: ignore[union-attr]
    _, err = d.communicate()
    assert code == 78, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("quantshift:")]
    assert lines == [f"quantshift: invalid setting QUANTSHIFT_STATE_DIR: {book} is not a "
                     "QuantShift ledger (not an SQLite database); move it aside to start a new "
                     "ledger"]
    assert book.read_text() == "not a ledger\n"


def test_status_from_a_state_file_that_is_not_ours_says_so_in_one_line(tmp_path: Path) -> None:
    var = tmp_path / "var"
    var.mkdir()
    other_apps_sqlite(var / "equity-paper.sqlite")
    proc = subprocess.run([quantshift_bin(), "status"], env=clean_env(tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    [line] = proc.stderr.strip().splitlines()
    assert f"{var / 'equity-paper.sqlite'} is not a QuantShift ledger (an SQLite database " \
           "without QuantShift's meta table); move it aside" in line
    assert read_db(var / "equity-paper.sqlite", "SELECT name FROM customers") == [("Ada",)]
