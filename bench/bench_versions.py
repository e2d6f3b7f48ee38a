"""Strategy versions: ten shadows beside the active version, and rollback to first decision.

1. Ten shadow versions beside one active, 100 symbols: the real book's decision latency
   (the active version's path; the version books run after it on the same bar), p50/p99,
   against the same run with no shadows. Target: active p99 <= 1 ms. The whole bar
   (real book plus ten books) is reported too.
2. Rollback (and promotion) in a running daemon through its HTTP control API: from the
   request to the first decision journaled by the version made active, and to its first
   bar. Target: <= 1 s.
3. ``POST /versions`` (a shadow added at run time) in a running daemon on 100 symbols,
   one active version and 100 bars of each symbol to warm the new book on: the active
   version's decision time per bar while the add runs (from the request until a second
   after its answer), p50/p99, against the seconds before it, and the longest the event
   loop was held (the warm-up runs in chunks). Target: active p99 <= 1 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import tempfile
import time
from array import array
from pathlib import Path
from typing import Any

import aiohttp
from _common import percentile, save

from quantshift.app import build_engine, open_journal
from quantshift.daemon import Daemon
from quantshift.feeds.sim import SimFeed
from quantshift.settings import Settings
from quantshift.shadow.runtime import VersionControl

TARGET_ACTIVE_P99_MS = 1.0
TARGET_ROLLBACK_S = 1.0
TOKEN = "bench-token-0123456789abcdef"
BASE = {"ma": "ema", "fast": 5, "slow": 20, "mode": "long_short"}


def strategies(shadows: int) -> list[dict[str, Any]]:
    versions = [{"version": "v1", "status": "active"}] + [
        {"version": f"v{i + 2}", "status": "shadow",
         "params": {"fast": 3 + i % 5, "slow": 12 + 2 * i}} for i in range(shadows)]
    return [{"name": "ma_cross", "params": BASE, "versions": versions}]


def settings_for(root: Path, shadows: int, symbols: int) -> Settings:
    return Settings(state_dir=root / f"var-{shadows}", sizing="fixed:10",
                    symbols=[f"S{i:03d}" for i in range(symbols)],
                    strategies=strategies(shadows), risk_max_trades_per_day=0,
                    risk_max_daily_loss=0, risk_max_drawdown=0, risk_max_open_positions=0,
                    risk_max_exposure=0, http_port=0)


async def shadow_run(root: Path, shadows: int, seconds: float) -> dict[str, Any]:
    s = settings_for(root, shadows, 100)
    journal = open_journal(s)
    engine = build_engine(s, journal, log_decisions=False)
    vc = VersionControl(s, engine, journal)
    books = engine.books
    engine.attach_books(None)  # timed apart: the real book first, as in on_bar
    active: list[int] = []
    whole: list[int] = []

    def on_bar(bar: Any) -> None:
        t0 = time.perf_counter_ns()
        engine.on_bar(bar)
        t1 = time.perf_counter_ns()
        if books is not None:
            books.on_bar(bar)
        active.append(t1 - t0)
        whole.append(time.perf_counter_ns() - t0)

    feed = SimFeed(s.symbols, 0.05, seed=5)
    task = asyncio.create_task(feed.run(on_bar))
    await asyncio.sleep(seconds)
    feed.stop()
    await task
    if vc.books is not None:
        vc.books.close()
    journal.close()
    ms = lambda xs, p: round(percentile([x / 1e6 for x in xs], p), 4)  # noqa: E731
    return {"shadows": shadows, "bars": len(active), "signals": engine.counts["signals"],
            "active_p50_ms": ms(active, 50), "active_p99_ms": ms(active, 99),
            "whole_bar_p50_ms": ms(whole, 50), "whole_bar_p99_ms": ms(whole, 99)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def started(s: Settings) -> tuple[Daemon, Any]:
    """A daemon started in this loop (its settings validated again), with its HTTP API."""
    d = Daemon(Settings.model_validate(s.model_dump()))
    d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
    await d.startup()
    assert d.engine is not None and d.http is not None
    return d, d.engine


async def rollback_run(root: Path, rounds: int) -> dict[str, Any]:
    s = settings_for(root, 1, 20).model_copy(update={
        "http_port": free_port(), "api_token": TOKEN, "sim_interval": 0.05,
        "warmup_bars": 0, "trigger_interval": 0.0,
        "strategies": [{"name": "ma_cross", "params": {"fast": 2, "slow": 5,
                                                       "mode": "long_short"},
                        "versions": [{"version": "v1", "status": "active"},
                                     {"version": "v2", "status": "shadow",
                                      "params": {"fast": 3, "slow": 6}}]}]})
    d, engine = await started(s)
    seen: dict[str, float] = {}
    journal_decision = engine.journal.decision

    def decision(*args: Any) -> None:  # the version is the last argument
        seen.setdefault(str(args[-1]), time.perf_counter())
        journal_decision(*args)

    engine.journal.decision = decision  # type: ignore[method-assign]
    to_decision, to_bar, command = [], [], []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(d.http.url, headers=headers) as client:
        while engine.bars < 200:
            await asyncio.sleep(0.05)
        for i in range(rounds):
            path, body = (("/promote", {"strategy": "ma_cross", "version": "v2", "force": True})
                          if i % 2 == 0 else ("/rollback", {"strategy": "ma_cross"}))
            target = "v2" if i % 2 == 0 else "v1"
            seen.clear()
            bars = engine.bars
            t0 = time.perf_counter()
            async with client.post(path, json=body) as r:
                assert r.status == 200, await r.text()
            command.append(time.perf_counter() - t0)
            while engine.bars == bars:
                await asyncio.sleep(0.001)
            to_bar.append(time.perf_counter() - t0)
            deadline = t0 + 10
            while target not in seen and time.perf_counter() < deadline:
                await asyncio.sleep(0.002)
            to_decision.append(seen.get(target, deadline) - t0)
    d.handle_exit(signal.SIGTERM)
    await d.shutdown()
    stat = lambda xs, p: round(percentile(xs, p), 4)  # noqa: E731
    return {"rounds": rounds, "command_s": {"p50": stat(command, 50), "p99": stat(command, 99)},
            "to_first_bar_s": {"p50": stat(to_bar, 50), "p99": stat(to_bar, 99)},
            "to_first_decision_s": {"p50": stat(to_decision, 50),
                                    "p99": stat(to_decision, 99)},
            "meets_target": max(to_decision) <= TARGET_ROLLBACK_S}


async def add_run(root: Path, adds: int) -> dict[str, Any]:
    s = settings_for(root, 0, 100).model_copy(update={
        "state_dir": root / "var-add", "http_port": free_port(), "api_token": TOKEN,
        "sim_interval": 0.05, "warmup_bars": 100, "trigger_interval": 0.0})
    d, engine = await started(s)
    # (when, ns the real book took), in arrays: millions of tuples would be the
    # collector's work, and its pauses this benchmark's own.
    when, took = array("d"), array("q")
    bare = engine._on_bar

    def timed(bar: Any) -> None:
        t0 = time.perf_counter_ns()
        bare(bar)
        took.append(time.perf_counter_ns() - t0)
        when.append(time.perf_counter())

    engine._on_bar = timed  # type: ignore[method-assign]  # what the watched path calls
    engine.on_bar = timed  # type: ignore[method-assign]
    stalls: list[tuple[float, float]] = []  # turns of the loop held over 0.5 ms

    async def ticker() -> None:  # how long the loop is held between two of its turns
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(0)
            lag = time.perf_counter() - t0
            if lag > 0.0005:
                stalls.append((t0, lag))

    tick = asyncio.create_task(ticker())
    windows: list[tuple[float, float]] = []
    warmed: list[int] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(d.http.url, headers=headers) as client:
        await asyncio.sleep(3.0)
        before_end = time.perf_counter()
        for i in range(adds):
            t0 = time.perf_counter()
            async with client.post("/versions", json={
                    "strategy": "ma_cross", "version": f"v{i + 2}",
                    "params": {"fast": 3 + i, "slow": 12 + 2 * i}}) as r:
                assert r.status == 200, await r.text()
                warmed.append(int((await r.json())["warmed_on"]))
            await asyncio.sleep(1.0)
            windows.append((t0, time.perf_counter()))
    tick.cancel()
    d.handle_exit(signal.SIGTERM)
    await d.shutdown()
    times = list(zip(when, took, strict=True))
    before = [ns for t, ns in times if t < before_end]
    during = [ns for t, ns in times if any(a <= t <= b for a, b in windows)]
    held = [lag for t, lag in stalls if any(a <= t <= b for a, b in windows)]
    ms = lambda xs, p: round(percentile([x / 1e6 for x in xs], p), 4)  # noqa: E731
    return {"symbols": 100, "adds": adds, "warmed_on_bars": warmed,
            "before": {"bars": len(before), "active_p50_ms": ms(before, 50),
                       "active_p99_ms": ms(before, 99)},
            "during": {"bars": len(during), "active_p50_ms": ms(during, 50),
                       "active_p99_ms": ms(during, 99)},
            "loop_held_max_ms": round(max(held) * 1000, 3) if held else None,
            # the same before any add: a round of 100 bars is one turn of the loop
            "loop_held_max_ms_before": round(max((lag for t, lag in stalls
                                                  if t < before_end), default=0) * 1000, 3),
            "loop_held_max_ms_per_add": [
                round(max((lag for t, lag in stalls if a <= t <= b), default=0) * 1000, 3)
                for a, b in windows],
            "meets_target": ms(during, 99) <= TARGET_ACTIVE_P99_MS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    os.environ.setdefault("QUANTSHIFT_CONFIG_DIR", "/nonexistent")
    from loguru import logger

    logger.remove()  # the figures, not the daemon's log lines
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = asyncio.run(shadow_run(root, 0, args.seconds))
        ten = asyncio.run(shadow_run(root, 10, args.seconds))
        rollback = asyncio.run(rollback_run(root, args.rounds))
        added = asyncio.run(add_run(root, 3))
    figures = {
        "no_shadows": base, "ten_shadows": ten,
        "target_active_p99_ms": TARGET_ACTIVE_P99_MS,
        "active_p99_meets_target": ten["active_p99_ms"] <= TARGET_ACTIVE_P99_MS,
        "rollback": rollback, "target_rollback_s": TARGET_ROLLBACK_S,
        "add_shadow_at_run_time": added,
    }
    save("versions", figures)


if __name__ == "__main__":
    main()
