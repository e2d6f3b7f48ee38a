"""The journal on a full disk: nothing lost while failing, memory bounded, the backlog
drains in order as space comes back; poison rows; errors that are not SQLite's."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

import quantshift.state.journal as journal_module
import quantshift.state.writer as writer_module
from quantshift.domain import NS_PER_SECOND, Direction, OrderState, Trade
from tests.test_journal import fill, intent

T0 = 1_704_067_200 * NS_PER_SECOND
Journal = journal_module.Journal


# -- ways to fill a disk ------------------------------------------------------------------
class Tmpfs:
    """A small tmpfs of its own (root only), filled with a ballast file."""

    name = "tmpfs"

    def __init__(self, root: Path) -> None:
        self.dir = root / "fs"
        self.dir.mkdir()
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root (the max_page_count case still runs)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(self.dir)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.ballast = self.dir / "ballast"

    def fill(self, journal: Journal) -> None:
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self, journal: Journal) -> None:  # some: 256 KiB
        os.truncate(self.ballast, max(0, self.ballast.stat().st_size - 256 * 1024))

    def free_all(self, journal: Journal) -> None:
        self.ballast.unlink()

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.dir)], check=False)


class PageLimit:
    """SQLite's own limit on the database's size, in pages."""

    name = "max_page_count"

    def __init__(self, root: Path) -> None:
        self.dir = root

    def _limit(self, journal: Journal, pages: int) -> None:
        got = journal._db.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0]
        if got != pages:
            pytest.skip(f"this SQLite ignores max_page_count (asked {pages}, got {got})")

    def fill(self, journal: Journal) -> None:
        self._limit(journal, journal._db.execute("PRAGMA page_count").fetchone()[0])

    def free(self, journal: Journal) -> None:  # some: 64 pages
        self._limit(journal, journal._db.execute("PRAGMA max_page_count").fetchone()[0] + 64)

    def free_all(self, journal: Journal) -> None:
        self._limit(journal, 1 << 30)

    def close(self) -> None:
        pass


@pytest.fixture(params=[Tmpfs, PageLimit], ids=["tmpfs", "max_page_count"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    d = request.param(tmp_path)
    yield d
    d.close()


@pytest.fixture
def errors() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", format="{message}")
    yield lines
    logger.remove(sink)


def on_disk(path: Path, sql: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def queue_round(j: Journal, n: int) -> None:
    """One bar's worth of everything, numbered ``n``."""
    i = intent(ts=T0 + n * NS_PER_SECOND, qty=n + 1)
    j.decision(i.ts, "s1", "X", 1, "approved", f"d{n:05d}", 0.5, {"fast": 1.0},
               i.client_order_id)
    j.veto(i.ts, "s1", "Y", 1, f"v{n:05d}")
    j.intent(i)
    j.order_state(i.client_order_id, OrderState.SUBMITTED, f"o{n:05d}")
    trade = Trade("s1", "X", Direction.LONG, 1, i.ts, 1.0, i.ts, 2.0, 1.0) if n % 2 else None
    j.fill(fill(n + 1, i), trade)
    j.control("halt" if n % 2 else "resume", {"n": n}, "test", "ok")
    j.equity_point(100_000.0 + n, 0.0)
    j.set("trading_state", {"state": "active", "n": n})
    j.set(f"key{n % 3}", n)
    j.snapshot({"portfolio": {"fill_seq": n + 1}, "n": n, "pad": "x" * 1500})


ITEMS_PER_ROUND = 10  # queue items: a fill and the round trip it closed are one


def test_a_full_disk_loses_nothing_and_the_backlog_drains_in_order(disk: Any) -> None:
    path = disk.dir / "equity-paper.sqlite"
    j = Journal(path, bot="equity", executor="paper")
    try:
        j.veto(T0, "s1", "Y", 1, "before")
        j.flush()
        assert j.health.healthy and j.health.last_error is None
        disk.fill(j)

        rounds = 600
        for n in range(rounds // 2):
            queue_round(j, n)
        with pytest.raises(sqlite3.OperationalError, match="full"):
            j.flush()
        h = j.health
        assert not h.healthy and "full" in (h.last_error or "") and h.failing_since
        for n in range(rounds // 2, rounds):  # the bars go on while the disk is full
            queue_round(j, n)
        with pytest.raises(sqlite3.OperationalError):
            j.flush()

        # Nothing lost but what a newer row supersedes: one snapshot, the kv per key.
        h = j.health
        assert h.coalesced == (rounds - 1) + (2 * rounds - 4)
        kv_on_disk = on_disk(path, "SELECT count(*) FROM kv")[0][0]  # written first
        assert h.queued == j.pending == ITEMS_PER_ROUND * rounds - h.coalesced - kv_on_disk
        assert h.dropped == 0 and h.shed == 0
        assert on_disk(path, "SELECT count(*) FROM vetoes") == [(1,)]

        # Some space back: the backlog drains as far as it goes, a chunk at a time.
        disk.free(j)
        with contextlib.suppress(sqlite3.OperationalError):
            j.flush()
        drained = on_disk(path, "SELECT count(*) FROM vetoes")[0][0] - 1
        assert drained > 0
        assert j.pending < h.queued

        disk.free_all(j)
        j.flush()
        h = j.health
        assert h.healthy and h.last_error is None and h.queued == 0 and j.pending == 0
    finally:
        j.close()

    # Every row on disk, in the order it was queued; the newest snapshot and kv values.
    expect = [f"{n:05d}" for n in range(rounds)]
    assert [r[0][1:] for r in on_disk(path, "SELECT reason FROM vetoes ORDER BY id")[1:]] \
        == expect
    assert [r[0][1:] for r in on_disk(path, "SELECT reason FROM decisions ORDER BY id")] \
        == expect
    assert [r[0][1:] for r in on_disk(path, "SELECT detail FROM order_events ORDER BY id")] \
        == expect
    assert [r[0] for r in on_disk(path, "SELECT qty FROM intents ORDER BY created_ns")] == [
        float(n + 1) for n in range(rounds)]
    assert [r[0] for r in on_disk(path, "SELECT seq FROM fills ORDER BY seq")] == list(
        range(1, rounds + 1))
    assert on_disk(path, "SELECT count(*) FROM trades") == [(rounds // 2,)]
    assert on_disk(path, "SELECT count(*) FROM control") == [(rounds,)]
    assert on_disk(path, "SELECT count(*) FROM equity") == [(rounds,)]
    j = Journal(path, bot="equity", executor="paper")
    try:
        assert j.latest_snapshot()["n"] == rounds - 1  # type: ignore[index]
        assert j.get("trading_state") == {"state": "active", "n": rounds - 1}
        assert [j.get(f"key{k}") for k in range(3)] == [597, 598, 599]
    finally:
        j.close()


# -- without a full disk --------------------------------------------------------------
@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(tmp_path / "j.sqlite", bot="equity", executor="paper", durable=False)
    yield j
    j.close()


def test_poison_rows_are_dropped_alone_logged_once_and_counted(journal: Journal,
                                                              errors: list[str]) -> None:
    good = intent("A")
    journal.veto(T0, "s1", "X", 1, "first")
    journal.decision(10**30, "s1", "X", 1, "approved", "ts past 64 bits", 0.5, None, None)
    journal.veto(T0 + 1, "s1", "X", 1, None)  # type: ignore[arg-type]  # NOT NULL
    journal.veto(T0 + 2, "s1", "X", 1, object())  # type: ignore[arg-type]  # cannot bind
    journal.intent(good)
    poisoned_trade = Trade("s1", "A", Direction.LONG, 10, T0, 100.0, T0 + 1, 101.0, 10**30)
    journal.fill(fill(1, good), poisoned_trade)  # the fill is good, its round trip is not
    journal.veto(T0 + 3, "s1", "X", 1, "last")
    assert journal.flush() == 4  # no error: the good rows are written
    assert journal.health.healthy and journal.health.dropped == 4
    assert [r[0] for r in on_disk(journal.path, "SELECT reason FROM vetoes ORDER BY id")] == [
        "first", "last"]
    assert journal.client_order_ids() == {good.client_order_id}
    assert journal.fills_after(0) == [fill(1, good)]
    assert journal.count("trades") == 0 and journal.count("decisions") == 0
    dropped = [e for e in errors if "dropped a" in e]
    assert len(dropped) == 4
    assert sum("OverflowError" in e for e in dropped) == 2
    assert any("IntegrityError" in e and "NOT NULL" in e for e in dropped)
    # Later rows are not held back, and nothing is logged twice.
    journal.veto(T0 + 4, "s1", "X", 1, "after")
    assert journal.flush() == 1
    assert len([e for e in errors if "dropped a" in e]) == 4


class _Failing:
    """The journal's connection, its next ``times`` executemany failing in Python (as a
    MemoryError would), not in SQLite."""

    def __init__(self, db: sqlite3.Connection, times: int) -> None:
        self._db = db
        self.times = times

    def executemany(self, sql: str, rows: Any) -> Any:
        if self.times:
            self.times -= 1
            raise RuntimeError("not SQLite's error")
        return self._db.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._db, name)


def test_an_error_that_is_not_sqlites_keeps_every_row(journal: Journal) -> None:
    for n in range(5):
        journal.veto(T0 + n, "s1", "X", 1, f"v{n}")
    # twice: the one transaction, then the first chunk of the retry
    journal._writer.db = _Failing(journal._db, 2)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="not SQLite's"):
        journal.flush()
    assert journal.pending == 5 and not journal.health.healthy
    assert journal.count("vetoes") == 0
    assert journal.flush() == 5
    assert [r[0] for r in on_disk(journal.path, "SELECT reason FROM vetoes ORDER BY id")] == [
        f"v{n}" for n in range(5)]


def test_while_failing_records_past_the_cap_are_not_kept_and_orders_always_are(
        journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "RECORD_CAP", 5)
    with monkeypatch.context() as m:
        m.setitem(journal_module._INSERT, "intent", "INSERT INTO gone VALUES (?)")
        for n in range(12):
            journal.veto(T0 + n, "s1", "X", 1, f"v{n}")
            journal.intent(intent(ts=T0 + n))
        with pytest.raises(sqlite3.OperationalError):
            journal.flush()
        for n in range(12, 20):
            journal.veto(T0 + n, "s1", "X", 1, f"v{n}")
        with pytest.raises(sqlite3.OperationalError):
            journal.flush()
        assert journal.health.shed == 15
    assert journal.flush() == 17
    assert [r[0] for r in on_disk(journal.path, "SELECT reason FROM vetoes ORDER BY id")] == [
        f"v{n}" for n in range(5)]  # the oldest are kept: the newest were never held
    assert journal.count("intents") == 12


def test_close_with_rows_the_disk_refused_says_how_many(journal: Journal,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         errors: list[str]) -> None:
    monkeypatch.setitem(journal_module._INSERT, "fill", "INSERT INTO gone VALUES (?)")
    journal.fill(fill(1, intent()))
    journal.intent(intent())
    with pytest.raises(sqlite3.OperationalError):
        journal.flush()
    journal.veto(T0, "s1", "X", 1, "queued after")
    journal.close()
    [line] = [e for e in errors if "closed with" in e]
    assert "3 rows not written" in line and "'fill': 1" in line and "no such table" in line



@pytest.mark.process
def test_a_daemon_that_cannot_write_its_journal_at_start_exits_74_in_one_line(
        tmp_path: Path, daemon: Any) -> None:
    disk = Tmpfs(tmp_path)
    try:
        d = daemon(QUANTSHIFT_STATE_DIR=str(disk.dir / "var"))
        (disk.dir / "var").mkdir()
        first = d.start()
        first.wait_for(r"\| ready$")
        assert first.stop()[0] == 0
        disk.fill(None)  # type: ignore[arg-type]
        again = daemon(QUANTSHIFT_STATE_DIR=str(disk.dir / "var")).start()
        code = again.proc.wait(60)  # type: ignore[union-attr]
        _, err = again.communicate()
        assert code == 74, err[-2000:]
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("quantshift: the journal cannot be written at start-up")
    finally:
        disk.close()
