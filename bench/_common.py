"""Helpers shared by the benchmarks: data generation, RSS, saving results."""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def random_walk_csv(path: Path, bars: int, *, seed: int = 1, symbol: str | None = None,
                    start: float = 100.0, sigma: float = 0.001, ts_format: str = "iso") -> Path:
    """One-minute bars of a seeded geometric random walk; timestamps ISO 8601 (UTC) or
    epoch seconds (``ts_format="epoch"``)."""
    rng = random.Random(seed)
    t0 = datetime(2020, 1, 1, tzinfo=UTC)
    price = start
    header = "timestamp,open,high,low,close,volume" + (",symbol" if symbol else "") + "\n"
    tail = f",{symbol}" if symbol else ""
    with path.open("w") as fh:
        fh.write(header)
        lines = []
        for i in range(bars):
            o = price
            c = o * math.exp(sigma * rng.gauss(0.0, 1.0))
            h = max(o, c) * (1 + abs(rng.gauss(0.0, sigma / 2)))
            lo = min(o, c) * (1 - abs(rng.gauss(0.0, sigma / 2)))
            price = c
            when = t0 + timedelta(minutes=i)
            ts = (str(int(when.timestamp())) if ts_format == "epoch"
                  else when.strftime("%Y-%m-%dT%H:%M:%SZ"))
            lines.append(f"{ts},{o:.4f},{h:.4f},{lo:.4f},{c:.4f},{rng.randint(100, 5000)}{tail}\n")
            if len(lines) >= 50_000:
                fh.writelines(lines)
                lines.clear()
        fh.writelines(lines)
    return path


def rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def save(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        **figures,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return path


def quantshift_bin() -> str:
    candidate = Path(sys.executable).with_name("quantshift")
    return str(candidate) if candidate.exists() else "quantshift"


def now() -> float:
    return time.perf_counter()


def timed_on_bar(engine: Any, record: Callable[[int, bool], None]) -> Callable[[Any], None]:
    """``Engine.on_bar`` with each bar's time in ns handed to ``record``, with whether the
    bar sent an order (the recording itself is outside the timed span)."""
    counts = engine.counts
    inner = engine.on_bar
    clock = time.perf_counter_ns

    def timed(bar: Any) -> None:
        before = counts["orders"]
        t0 = clock()
        inner(bar)
        took = clock() - t0
        record(took, counts["orders"] != before)

    return timed


async def flush_every(journal: Any, interval: float, db: Any) -> None:
    """The daemon's group commit: the journal flushed in its own thread every ``interval``."""
    import asyncio

    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        await loop.run_in_executor(db, journal.flush)


async def timed_engine_run(settings: Any, seconds: float, interval: float,
                           seed: int = 5, setup: Any = None,
                           ) -> tuple[list[float], list[float], dict[str, int]]:
    """The daemon's components (journal with its group-commit flusher, engine, executor,
    sim feed) for ``seconds``, every ``Engine.on_bar`` timed. Returns the latencies in ms
    of bars that produced an intent, of all bars, and the engine's counts. ``setup``:
    ``async (engine, journal) -> async close()``, run before the first bar."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from quantshift.app import build_engine, open_journal
    from quantshift.feeds.sim import SimFeed

    journal = open_journal(settings)
    engine = build_engine(settings, journal, log_decisions=False)
    close = await setup(engine, journal) if setup is not None else None
    decision: list[int] = []
    quiet: list[int] = []
    timed = timed_on_bar(engine, lambda took, sent: (decision if sent else quiet).append(took))
    feed = SimFeed(settings.symbols, interval, seed=seed)
    flush_task = asyncio.create_task(flush_every(journal, 0.1, ThreadPoolExecutor(1)))
    feed_task = asyncio.create_task(feed.run(timed))
    await asyncio.sleep(seconds)
    feed.stop()
    await feed_task
    flush_task.cancel()
    if close is not None:
        await close()
    journal.flush()
    journal.close()
    return ([x / 1e6 for x in decision], [x / 1e6 for x in decision + quiet],
            dict(engine.counts))
