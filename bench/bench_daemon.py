"""The daemon as a process with 100 symbols: RSS (target <= 150 MB) and SIGTERM -> exit with
the snapshot durable (target <= 1 s).

Each run starts `quantshift run` on the sim feed, lets it trade for a while, samples its
RSS, sends SIGTERM, times the exit and checks that the last snapshot on disk covers every
fill on disk.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import orjson
from _common import percentile, quantshift_bin, rss_mb, save

TARGET_EXIT_S = 1.0
TARGET_RSS_MB = 150.0


def one_run(tmp: Path, seconds: float, symbols: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QUANTSHIFT_", "SHADOW_MODE", "NOTIFY_SOCKET"))}
    env.update(QUANTSHIFT_STATE_DIR=str(tmp / "var"), QUANTSHIFT_LOG_DIR=str(tmp / "logs"),
               QUANTSHIFT_CONFIG_DIR=str(tmp / "none"), QUANTSHIFT_ENV_FILE=str(tmp / "none"),
               QUANTSHIFT_SYMBOLS=",".join(f"S{i:03d}" for i in range(symbols)),
               QUANTSHIFT_SIM_INTERVAL="0.05", QUANTSHIFT_SIZING="fixed:10",
               QUANTSHIFT_RISK_MAX_DAILY_LOSS="0", QUANTSHIFT_RISK_MAX_DRAWDOWN="0",
               QUANTSHIFT_RISK_MAX_TRADES_PER_DAY="0", QUANTSHIFT_RISK_MAX_OPEN_POSITIONS="0",
               QUANTSHIFT_RISK_MAX_EXPOSURE="0", QUANTSHIFT_HTTP_PORT="0",
               QUANTSHIFT_STRATEGIES='[{"name":"ma_cross","params":{"fast":2,"slow":5,'
                                     '"mode":"long_short"}},{"name":"rsi_reversion"}]')
    proc = subprocess.Popen([quantshift_bin(), "run"], env=env, cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp / "logs" / "quantshift-equity.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (log.exists() and "| ready" in log.read_text()):
        time.sleep(0.05)
    time.sleep(seconds)
    rss = rss_mb(proc.pid)
    started = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(30)
    took = time.perf_counter() - started
    db = sqlite3.connect(tmp / "var" / "equity-paper.sqlite")
    fills = db.execute("SELECT count(*) FROM fills").fetchone()[0]
    snap = orjson.loads(db.execute(
        "SELECT state FROM snapshots ORDER BY id DESC LIMIT 1").fetchone()[0])
    db.close()
    return {"exit_status": code, "exit_s": took, "rss_mb": rss, "fills": fills,
            "bars": snap["counts"]["bars"],
            "snapshot_covers_all_fills": snap["portfolio"]["fill_seq"] == fills}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--symbols", type=int, default=100)
    args = ap.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp), args.seconds, args.symbols))
    exits = [r["exit_s"] for r in runs]
    rss = [r["rss_mb"] for r in runs]
    ok = all(r["exit_status"] == 0 and r["snapshot_covers_all_fills"] for r in runs)
    save("shutdown", {"symbols": args.symbols, "runs": runs,
                      "exit_s": {"p50": percentile(exits, 50), "max": max(exits)},
                      "target_exit_s": TARGET_EXIT_S, "clean_and_durable": ok,
                      "meets_target": ok and max(exits) <= TARGET_EXIT_S})
    save("rss", {"symbols": args.symbols, "seconds_running": args.seconds,
                 "rss_mb": {"p50": percentile(rss, 50), "max": max(rss)},
                 "target_rss_mb": TARGET_RSS_MB, "meets_target": max(rss) <= TARGET_RSS_MB})


if __name__ == "__main__":
    main()
