"""/metrics with 100 symbols: the scrape over real HTTP (target p99 <= 20 ms) and its effect
on the decision latency when Prometheus scrapes once a second (target: at most 5 % on p99).

The daemon's components run on uvloop as `quantshift run` wires them: journal with its
group-commit flusher, engine, Paper executor, sim feed, and the daemon's own HTTP server
(quantshift/ops/http.py) answering GET /metrics from `Metrics.render()` in the same loop.
The scraper is a separate process, as Prometheus is, on a kept-alive connection.

Phases, after a warm-up: quiet and scraped-once-a-second windows alternate (so drift on a
shared machine hits both alike), every `Engine.on_bar` timed; then a burst of scrapes
10 times a second measures the scrape itself while bars keep flowing. A scrape runs on the
loop between bars, so besides on_bar's own time the figures include the loop lag (how late
a 5 ms timer wakes up): the longest a bar can wait behind a scrape.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvloop
from _common import flush_every, percentile, rss_mb, save, timed_on_bar

from quantshift.app import build_engine, build_feed, open_journal
from quantshift.daemon import Daemon, StatusView
from quantshift.ops.metrics import Metrics
from quantshift.settings import Settings, StrategySpec

TARGET_SCRAPE_P99_MS = 20.0
TARGET_EFFECT_PCT = 5.0

# The scraper process: GET /metrics every `interval` s for `seconds` s on one kept-alive
# connection (as Prometheus does); prints the round trips in ms as a JSON list.
SCRAPER = r"""
import http.client, json, sys, time
port, interval, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
took, sizes = [], []
end = time.monotonic() + seconds
due = time.monotonic()
while time.monotonic() < end:
    t0 = time.perf_counter()
    conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    resp = conn.getresponse()
    body = resp.read()
    took.append((time.perf_counter() - t0) * 1000)
    sizes.append(len(body))
    assert resp.status == 200 and b"quantshift_bars_total" in body, resp.status
    due += interval
    time.sleep(max(0.0, due - time.monotonic()))
print(json.dumps({"ms": took, "bytes": sizes[-1] if sizes else 0}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(d: Daemon, port: int) -> Any:
    """The daemon's HTTP server; a bare aiohttp app serving Metrics.render() where the
    tree has none."""
    try:
        from quantshift.ops.http import Heartbeat, HttpServer
    except ImportError:
        from aiohttp import web

        async def metrics(_: web.Request) -> web.Response:
            body, content_type = d.metrics.render()  # type: ignore[attr-defined]
            return web.Response(body=body, headers={"Content-Type": content_type})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner.cleanup, "aiohttp app serving Metrics.render()"
    heartbeat = Heartbeat()
    beat = asyncio.create_task(heartbeat.run())
    server = HttpServer(d.engine.control, StatusView(d), "127.0.0.1", port, None,  # type: ignore[union-attr]
                        heartbeat, bot=d.settings.bot)
    await server.start()

    async def close() -> None:
        beat.cancel()
        await server.close()

    return close, "quantshift.ops.http.HttpServer"


async def _lag_probe(out: list[float]) -> None:
    """How late a 5 ms timer wakes up, in ms: what a bar waits behind other loop work."""
    clock = time.perf_counter  # the loop's own clock counts whole milliseconds (uvloop)
    while True:
        due = clock() + 0.005
        await asyncio.sleep(0.005)
        out.append(max(0.0, clock() - due) * 1000)


async def _scrape(port: int, interval: float, seconds: float) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRAPER, str(port), str(interval), str(seconds),
        stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"scraper failed with status {proc.returncode}")
    return json.loads(out)


def _stats(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "p50": percentile(ms, 50), "p99": percentile(ms, 99),
            "max": max(ms, default=float("nan"))}


async def run(symbols: int, interval: float, window: float, rounds: int, burst: float,
              state: Path) -> dict[str, Any]:
    settings = Settings(
        state_dir=state, log_dir=state / "logs", sim_interval=interval,
        symbols=[f"S{i:03d}" for i in range(symbols)], sizing="fixed:10",
        risk_max_trades_per_day=0, risk_max_open_positions=0, risk_max_exposure=0,
        risk_max_daily_loss=0, risk_max_drawdown=0, risk_max_position_notional=0,
        strategies=[StrategySpec(name="ma_cross",
                                 params={"fast": 2, "slow": 5, "mode": "long_short"})])
    d = Daemon(settings)
    journal = d.journal = open_journal(settings)
    engine = d.engine = build_engine(settings, journal, log_decisions=False)
    feed = d.feed = build_feed(settings, {})
    d.metrics = Metrics(d)

    # Every on_bar timed, filed under the phase running at the time.
    phase = "warmup"
    timings: dict[str, tuple[list[int], list[int]]] = {}

    def record(took: int, sent: bool) -> None:
        decision, quiet = timings.setdefault(phase, ([], []))
        (decision if sent else quiet).append(took)

    lags: dict[str, list[float]] = {}
    port = _free_port()
    close, server = await _serve(d, port)
    tasks = [asyncio.create_task(flush_every(journal, 0.1, ThreadPoolExecutor(1))),
             asyncio.create_task(feed.run(timed_on_bar(engine, record)))]
    await asyncio.sleep(3.0)  # strategies warm, positions open across the symbols

    async def window_run(name: str, scrape_every: float | None,
                         seconds: float = window) -> dict[str, Any] | None:
        nonlocal phase
        phase = name
        probe = asyncio.create_task(_lag_probe(lags.setdefault(name, [])))
        try:
            if scrape_every is None:
                await asyncio.sleep(seconds)
                return None
            return await _scrape(port, scrape_every, seconds)
        finally:
            probe.cancel()

    once_a_second: list[float] = []
    for i in range(rounds):
        order = [("quiet", None), ("scraped", 1.0)]
        for name, every in (order if i % 2 == 0 else order[::-1]):
            got = await window_run(name, every)
            if got is not None:
                once_a_second += got["ms"]
    gc.collect()
    burst_result = await window_run("burst", 0.1, burst) if burst > 0 else {"ms": [], "bytes": 0}
    feed.stop()
    await tasks[1]
    tasks[0].cancel()
    await close()
    d.metrics.close()
    journal.flush()
    journal.close()

    def lat(name: str, which: int) -> list[float]:
        return [x / 1e6 for x in timings.get(name, ([], []))[which]]

    figures: dict[str, Any] = {"symbols": symbols, "sim_interval_s": interval,
                               "window_s": window, "rounds": rounds, "server": server}
    effect: dict[str, float] = {}
    for name in ("quiet", "scraped"):
        intent, quiet_bars = lat(name, 0), lat(name, 1)
        figures[f"{name}_decision_latency_ms"] = {
            "intent_bars": _stats(intent), "all_bars": _stats(intent + quiet_bars),
            "loop_lag": _stats(lags.get(name, []))}
    q, s = figures["quiet_decision_latency_ms"], figures["scraped_decision_latency_ms"]
    for key in ("intent_bars", "all_bars"):
        effect[f"{key}_p99_pct"] = (s[key]["p99"] / q[key]["p99"] - 1) * 100
    effect["loop_lag_p99_ms"] = s["loop_lag"]["p99"] - q["loop_lag"]["p99"]
    scrape_ms = burst_result["ms"]
    figures.update({
        "scrape_ms": _stats(scrape_ms), "scrape_once_a_second_ms": _stats(once_a_second),
        "exposition_bytes": burst_result["bytes"],
        "burst_decision_latency_ms": {"intent_bars": _stats(lat("burst", 0)),
                                      "loop_lag": _stats(lags.get("burst", []))},
        "effect_of_scraping": effect, "bars": engine.bars, "rss_mb": round(rss_mb(), 1),
        "target_scrape_p99_ms": TARGET_SCRAPE_P99_MS,
        "target_effect_pct": TARGET_EFFECT_PCT,
        "meets_scrape_target": percentile(scrape_ms, 99) <= TARGET_SCRAPE_P99_MS,
        "meets_effect_target": effect["intent_bars_p99_pct"] <= TARGET_EFFECT_PCT,
    })
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.02, help="sim interval (s)")
    ap.add_argument("--window", type=float, default=10.0, help="seconds per window")
    ap.add_argument("--rounds", type=int, default=3, help="quiet + scraped window pairs")
    ap.add_argument("--burst", type=float, default=20.0,
                    help="seconds of scrapes 10 times a second (0 = none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = uvloop.run(run(args.symbols, args.interval, args.window, args.rounds,
                                 args.burst, Path(tmp)))
    save("metrics", figures)
    print(f"scrape p50 {figures['scrape_ms']['p50']:.2f} ms, p99 "
          f"{figures['scrape_ms']['p99']:.2f} ms (target <= {TARGET_SCRAPE_P99_MS:g}); "
          f"decision latency p99 with a scrape a second "
          f"{figures['effect_of_scraping']['intent_bars_p99_pct']:+.1f} % "
          f"(target <= {TARGET_EFFECT_PCT:g} %)")


if __name__ == "__main__":
    main()
