"""`quantshift replay`: the same engine over a CSV file, a summary, determinism."""

from __future__ import annotations

import csv
import math
import random
import subprocess
from pathlib import Path

import orjson
import pytest

from tests.conftest import clean_env, quantshift_bin


def walk(path: Path, n: int, seed: int = 3, bad_rows: bool = False) -> Path:
    rng = random.Random(seed)
    price = 50.0
    lines = ["timestamp,open,high,low,close,volume"]
    for i in range(n):
        o = price
        price = o * math.exp(0.004 * rng.gauss(0, 1))
        hi, lo = max(o, price) * 1.001, min(o, price) * 0.999
        minute = f"2021-03-0{1 + i // 1440}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z"
        lines.append(f"{minute},{o:.4f},{hi:.4f},{lo:.4f},{price:.4f},{rng.randint(1, 900)}")
        if bad_rows and i == 100:
            lines.append(f"{minute},{o:.4f},{hi:.4f},{lo:.4f},{price:.4f},5")  # duplicate ts
            lines.append("2021-03-01T23:59:00Z,nan,1,1,1,1")
            lines.append("garbage,row")
    path.write_text("\n".join(lines) + "\n")
    return path


def replay(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [quantshift_bin(), "replay", *args], env=clean_env(tmp_path, **env), cwd=tmp_path,
        capture_output=True, text=True, timeout=120)


ARGS = ("--strategy", "ma_cross", "--param", "ma=ema", "--param", "fast=5", "--param",
        "slow=20", "--param", "mode=long_short")


def test_summary_json_is_deterministic_and_trades_file_matches(tmp_path: Path) -> None:
    data = walk(tmp_path / "walk.csv", 3000)
    env = {"QUANTSHIFT_PAPER_COMMISSION_BPS": "5", "QUANTSHIFT_RISK_MAX_TRADES_PER_DAY": "0"}
    runs = []
    for i in range(2):
        out = tmp_path / f"trades{i}.csv"
        proc = replay(tmp_path, "--data", str(data), *ARGS, "--json", "--trades-out", str(out),
                      **env)
        assert proc.returncode == 0, proc.stderr
        summary = orjson.loads(proc.stdout)
        runs.append((summary, out.read_text()))
    (a, trades_a), (b, trades_b) = runs
    for timing in ("elapsed_s", "bars_per_s"):
        a.pop(timing)
        b.pop(timing)
    assert a == b
    assert trades_a == trades_b
    assert a["bars"] == 3000 and a["rejected"] == 0
    # long/short reverses on every cross: an exit and an entry per cross after the first
    assert a["orders"] == 2 * a["signals"] - 1
    rows = list(csv.DictReader(trades_a.splitlines()))
    assert len(rows) == a["trades"] > 10
    wins = sum(1 for r in rows if float(r["pnl"]) > 0)
    assert a["win_rate_pct"] == pytest.approx(100 * wins / len(rows), abs=1e-6)
    assert -100 < a["total_return_pct"] < 100 and a["max_drawdown_pct"] >= 0


def test_text_summary_lists_every_figure(tmp_path: Path) -> None:
    data = walk(tmp_path / "walk.csv", 500)
    proc = replay(tmp_path, "--data", str(data), *ARGS)
    assert proc.returncode == 0, proc.stderr
    for label in ("bars", "orders", "trades", "total return", "max drawdown", "Sharpe",
                  "win rate", "elapsed", "bars per second"):
        assert any(line.startswith(label) for line in proc.stdout.splitlines()), label


def test_bad_rows_are_rejected_counted_and_logged(tmp_path: Path) -> None:
    data = walk(tmp_path / "walk.csv", 300, bad_rows=True)
    proc = replay(tmp_path, "--data", str(data), *ARGS, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = orjson.loads(proc.stdout)
    assert summary["bars"] == 300 and summary["rejected"] == 3
    log = (tmp_path / "logs" / "quantshift-equity-replay.log").read_text()
    assert "duplicate timestamp" in log and "NaN value" in log and "unparseable row" in log


def test_replay_uses_the_bots_config_strategies_by_default(tmp_path: Path) -> None:
    data = walk(tmp_path / "walk.csv", 400)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "equity.toml").write_text(
        '[[strategies]]\nname = "rsi_reversion"\nparams = { period = 5 }\n')
    proc = replay(tmp_path, "--data", str(data), "--json")
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["strategies"] == ["rsi_reversion"]


@pytest.mark.parametrize(("args", "setting"), [
    (("--strategy", "nope"), "--strategy"),
    (("--strategy", "ma_cross", "--param", "fast"), "--param"),
    (("--strategy", "ma_cross", "--param", "fast=abc"), "fast"),
    (("--param", "fast=3"), "--param"),
])
def test_bad_replay_arguments_exit_78(tmp_path: Path, args: tuple[str, ...],
                                      setting: str) -> None:
    data = walk(tmp_path / "walk.csv", 50)
    proc = replay(tmp_path, "--data", str(data), *args)
    assert proc.returncode == 78
    assert setting in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_missing_or_malformed_file_exits_78(tmp_path: Path) -> None:
    proc = replay(tmp_path, "--data", str(tmp_path / "none.csv"), *ARGS)
    assert proc.returncode == 78 and "no such file" in proc.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("when,price\n1,2\n")
    proc = replay(tmp_path, "--data", str(bad), *ARGS)
    assert proc.returncode == 78 and "header lacks timestamp" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_progress_bar_on_a_terminal_and_python_dash_m(tmp_path: Path) -> None:
    import os
    import pty
    import sys

    data = walk(tmp_path / "walk.csv", 10_000)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "quantshift", "replay", "--data", str(data), *ARGS, "--json"],
            env=clean_env(tmp_path, COLUMNS="100"), cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=slave, text=True, timeout=120)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert orjson.loads(proc.stdout)["bars"] == 10_000  # stdout stays clean JSON
    assert b"replay walk.csv" in seen  # the progress bar was drawn on the terminal
