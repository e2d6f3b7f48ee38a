"""SIGTERM -> exit of the daemon trading in sandbox against each emulator (target: within
QUANTSHIFT_SHUTDOWN_TIMEOUT, about a second in practice), healthy and with a ``slow``
fault on the status scope (every REST call but the order submission answered after 8 s)
armed while it trades, so that reconciliations are in flight when the signal comes.

The emulators run as their own processes (`quantshift emulate`), as a broker would. Each
run waits for the first fill, sends SIGTERM and times the exit from outside; the log's own
figures (``shutdown complete in``, ``process exiting ... after the signal``) are kept
beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import percentile, quantshift_bin, save

VENUES = {
    "alpaca": {"symbols": "AAA,BBB", "mode": "long_short",
               "env": {"QUANTSHIFT_SIZING": "fixed:2"}},
    "exchange": {"symbols": "BTC/USDT,ETH/USDT", "mode": "long_only",
                 "env": {"QUANTSHIFT_SIZING": "fraction:0.01", "QUANTSHIFT_FRACTIONAL": "true"}},
}
TARGET_EXIT_S = 1.5  # "about a second"; the hard bound is the shutdown timeout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QUANTSHIFT_", "SHADOW_MODE", "NOTIFY_SOCKET", "APCA_",
                                "CCXT_"))}
    env.update(QUANTSHIFT_STATE_DIR=str(tmp / "var"), QUANTSHIFT_LOG_DIR=str(tmp / "logs"),
               QUANTSHIFT_CONFIG_DIR=str(tmp / "none"), QUANTSHIFT_ENV_FILE=str(tmp / "none"),
               QUANTSHIFT_HTTP_PORT="0")
    return env


def start_emulator(venue: str, tmp: Path) -> tuple[subprocess.Popen[str], int, dict[str, str]]:
    port = free_port()
    proc = subprocess.Popen([quantshift_bin(), "emulate", venue, "--port", str(port),
                             "--interval", "0.25", "--symbols", VENUES[venue]["symbols"]],
                            env=clean_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    exports: dict[str, str] = {}
    assert proc.stdout is not None
    while "QUANTSHIFT_SYMBOLS" not in exports:
        key, _, value = proc.stdout.readline().removeprefix("export ").strip().partition("=")
        exports[key] = value
    return proc, port, exports


def arm_slow(port: int) -> None:
    body = json.dumps({"name": "slow", "scope": "status", "count": 100_000, "delay": 8})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/_emulator/fault",
                                     data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=5).close()


def one_run(venue: str, slow: bool, bound: float) -> dict:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        emu, port, exports = start_emulator(venue, tmp)
        spec = VENUES[venue]
        env = {**clean_env(tmp), **exports, **spec["env"], "QUANTSHIFT_BAR_SECONDS": "1",
               "QUANTSHIFT_RISK_MAX_TRADES_PER_DAY": "0",
               "QUANTSHIFT_SHUTDOWN_TIMEOUT": f"{bound:g}",
               "QUANTSHIFT_RECONCILE_INTERVAL": "0.5" if slow else "0",
               "QUANTSHIFT_STRATEGIES": json.dumps([{"name": "ma_cross", "params": {
                   "fast": 2, "slow": 4, "mode": spec["mode"]}}])}
        daemon = subprocess.Popen([quantshift_bin(), "run"], env=env, cwd=tmp,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = tmp / "logs" / "quantshift-equity.log"
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    log.exists() and re.search(r"\| fill (buy|sell) ", log.read_text())):
                time.sleep(0.05)
            if slow:
                arm_slow(port)
                time.sleep(1.5)
            started = time.perf_counter()
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(60)
            took = time.perf_counter() - started
        finally:
            if daemon.poll() is None:
                daemon.kill()
            emu.send_signal(signal.SIGTERM)
            emu.wait(10)
        text = log.read_text()
        logged = re.findall(r"shutdown complete in ([0-9.]+)s", text)
        exiting = re.findall(r"process exiting ([0-9.]+)s after", text)
        return {"exit_status": code, "exit_s": round(took, 3),
                "logged_shutdown_s": float(logged[-1]) if logged else None,
                "logged_process_exit_s": float(exiting[-1]) if exiting else None,
                "left_behind": "without what did not finish" in text}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=10.0, help="QUANTSHIFT_SHUTDOWN_TIMEOUT")
    args = ap.parse_args()
    cases = {}
    ok = True
    for venue in VENUES:
        for slow in (False, True):
            runs = [one_run(venue, slow, args.timeout) for _ in range(args.runs)]
            exits = [r["exit_s"] for r in runs]
            within = all(r["exit_status"] == 0 for r in runs) and max(exits) <= args.timeout
            ok = ok and within
            cases[f"{venue}{'-slow-status' if slow else ''}"] = {
                "runs": runs, "exit_s": {"p50": percentile(exits, 50), "max": max(exits)},
                "within_bound": within}
    save("broker_shutdown", {"shutdown_timeout_s": args.timeout, "cases": cases,
                             "target_exit_s": TARGET_EXIT_S, "within_bound": ok,
                             "meets_target": ok and all(
                                 c["exit_s"]["max"] <= TARGET_EXIT_S for c in cases.values())})


if __name__ == "__main__":
    main()
