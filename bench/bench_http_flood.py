"""The operator API under a flood: does any client delay a bar or lock out /healthz?

A daemon runs in this process on uvloop (sim feed, 20 symbols, a round of bars every
50 ms, HTTP on loopback) with its open-file limit at 1,024, systemd's default. A
second process floods it, one phase at a time:

* ``quiet``: nothing but a /healthz probe every 100 ms (the baseline);
* ``half_open``: 1,100 connections that connect and send nothing or half a request line,
  held open;
* ``status``: 500 concurrent ``GET /status``, wave after wave.

Figures per phase: the event loop's lag (a probe task that sleeps 5 ms and records how
late it wakes; p50/p99/max), how late each round of bars started against its schedule,
the decision latency (``Engine.on_bar``, bars that sent an order; p50/p99), /healthz
latency and failures from the flooding side, and the /status answers. The status phase
runs three times, to measure what sharing /status builds is worth: builds at least
``QUANTSHIFT_HTTP_STATUS_TTL`` apart (the default, 0.05 s), a TTL of 0 (the requests that
arrive in one turn of the loop share a build), and one build per request (as before
the builds were shared). Saves bench/results/http_flood.json.

    .venv/bin/python bench/bench_http_flood.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import percentile, save

HALF_OPEN = 1_100
CONCURRENT_STATUS = 500
PROBE_INTERVAL = 0.005
SIM_INTERVAL = 0.05
DAEMON_NOFILE = 1_024  # systemd's default soft LimitNOFILE


def _stats(values: list[float], scale: float = 1e3) -> dict[str, float]:
    return {"p50": round(percentile(values, 50) * scale, 3),
            "p99": round(percentile(values, 99) * scale, 3),
            "max": round(max(values, default=float("nan")) * scale, 3), "n": len(values)}


# -- the flooding side (a separate process) -------------------------------------------
async def _healthz(port: int) -> float | None:
    started = time.perf_counter()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        head = await asyncio.wait_for(reader.read(64), 3)
        writer.close()
    except (OSError, TimeoutError):
        return None
    return time.perf_counter() - started if head.startswith(b"HTTP/1.1 200") else None


async def _probe_healthz(port: int, stop: asyncio.Event, out: list[float | None]) -> None:
    while not stop.is_set():
        out.append(await _healthz(port))
        await asyncio.sleep(0.1)


async def _hold_half_open(port: int, stop: asyncio.Event) -> dict[str, int]:
    writers: list[asyncio.StreamWriter] = []
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        except (OSError, TimeoutError):
            failed += 1
            return
        if i % 2:
            writer.write(b"GET /sta")  # half a request line, never finished
        writers.append(writer)

    await asyncio.gather(*(one(i) for i in range(HALF_OPEN)))
    await stop.wait()
    for w in writers:
        w.close()
    return {"connected": len(writers), "connect_failed": failed}


async def _status_waves(port: int, stop: asyncio.Event) -> dict[str, Any]:
    import aiohttp

    answers: dict[str, int] = {}
    waves = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector,
                                     timeout=timeout) as client:
        async def one() -> str:
            try:
                async with client.get("/status") as r:
                    await r.read()
                    if r.status == 503 and "Retry-After" not in r.headers:
                        return "503 without Retry-After"
                    return str(r.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc).__name__

        while not stop.is_set():
            for result in await asyncio.gather(*(one() for _ in range(CONCURRENT_STATUS))):
                answers[result] = answers.get(result, 0) + 1
            waves += 1
    return {"waves": waves, "answers": answers}


async def _flood(port: int, phase: str, seconds: float) -> dict[str, Any]:
    stop = asyncio.Event()
    work = asyncio.create_task(_hold_half_open(port, stop) if phase == "half_open"
                               else _status_waves(port, stop))
    await asyncio.sleep(seconds)
    stop.set()
    return await work


async def _probe(port: int, seconds: float) -> dict[str, Any]:
    """/healthz every 100 ms from a process of its own: the flooder's busy loop would
    add its own delays to what it measured."""
    stop = asyncio.Event()
    healthz: list[float | None] = []
    probe = asyncio.create_task(_probe_healthz(port, stop, healthz))
    await asyncio.sleep(seconds)
    stop.set()
    await probe
    ok = [x for x in healthz if x is not None]
    return {"healthz_ms": _stats(ok), "healthz_failed": len(healthz) - len(ok)}


def client_main(role: str, port: int, phase: str, seconds: float) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    result = asyncio.run(_probe(port, seconds) if role == "--probe"
                         else _flood(port, phase, seconds))
    print(json.dumps(result))


# -- the daemon's side ----------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _lag_probe(out: list[float]) -> None:
    clock = time.perf_counter  # uvloop's loop.time() has millisecond steps
    while True:
        due = clock() + PROBE_INTERVAL
        await asyncio.sleep(PROBE_INTERVAL)
        out.append(max(0.0, clock() - due))


class BarTimes:
    """Instruments a running daemon's engine and sim feed: the time of each
    ``Engine.on_bar`` that sent an order, and how late each round of bars started."""

    def __init__(self, engine: Any, feed: Any) -> None:
        self.engine, self.inner_bar, self.inner_round = engine, engine.on_bar, feed._round
        self.loop = asyncio.get_running_loop()
        self.decisions: list[float] = []
        self.late: list[float] = []
        self.due = 0.0
        feed._round = self.round

    def on_bar(self, bar: Any) -> None:
        before = self.engine.counts["orders"]
        t0 = time.perf_counter()
        self.inner_bar(bar)
        if self.engine.counts["orders"] != before:
            self.decisions.append(time.perf_counter() - t0)

    def round(self, _: Any) -> None:
        # The sim feed's own schedule: a round every interval; a round that ends past the
        # next due time moves the schedule to its end instead of bursting.
        started = self.loop.time()  # the feed's own clock, the one it schedules by
        if self.due:
            self.late.append(max(0.0, started - self.due))
        self.inner_round(self.on_bar)
        self.due = max((self.due or started) + SIM_INTERVAL, self.loop.time())

    def clear(self) -> None:
        self.decisions.clear()
        self.late.clear()


async def _phase(state: Path, phase: str, ttl: float | None, seconds: float) -> dict[str, Any]:
    from aiohttp import web

    from quantshift.daemon import Daemon
    from quantshift.ops import http
    from quantshift.settings import Settings

    extra = {} if ttl is None or ttl < 0 else {"http_status_ttl": ttl}
    port = _free_port()
    settings = Settings(
        state_dir=state / phase, symbols=[f"S{i:02d}" for i in range(20)],
        sim_interval=SIM_INTERVAL, warmup_bars=0, http_port=port,
        risk_max_trades_per_day=0, risk_max_open_positions=0, risk_max_exposure=0,
        risk_max_daily_loss=0, risk_max_drawdown=0, risk_max_position_notional=0,
        strategies=[{"name": "ma_cross", "params": {"fast": 2, "slow": 5,
                                                    "mode": "long_short"}}], **extra)
    shared = http.HttpServer.status
    if ttl is not None and ttl < 0:  # one build per request

        async def per_request(self: Any, request: web.Request) -> web.Response:
            return web.Response(body=http.orjson.dumps(self.source.status(), default=str),
                                content_type="application/json")

        http.HttpServer.status = per_request  # type: ignore[method-assign]
    d = Daemon(settings)
    d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
    try:
        await d.startup()
        assert d.engine is not None and d.feed is not None
        bars = BarTimes(d.engine, d.feed)
        await asyncio.sleep(1.0)  # the feed running, the strategies warm
        lag: list[float] = []
        bars.clear()
        probe = asyncio.create_task(_lag_probe(lag))
        flood = "status" if phase.startswith("status") else phase
        roles = ("--probe",) if flood == "quiet" else ("--probe", "--flood")
        procs = [await asyncio.create_subprocess_exec(
            sys.executable, __file__, role, str(port), flood, str(seconds),
            stdout=asyncio.subprocess.PIPE) for role in roles]
        outs = [(await p.communicate())[0] for p in procs]
        probe.cancel()
        gate = getattr(d.http, "gate", None)
        result = {"loop_lag_ms": _stats(lag), "bar_start_late_ms": _stats(bars.late),
                  "decision_latency_ms": _stats(bars.decisions),
                  "server_connections": gate.stats() if gate is not None else None,
                  **json.loads(outs[0])}
        for out in outs[1:]:
            result.update(json.loads(out))
    finally:
        http.HttpServer.status = shared  # type: ignore[method-assign]
        d.handle_exit(signal.SIGTERM)
        await d.shutdown()
    if ttl is not None:
        result["status_ttl_s"] = ttl if ttl >= 0 else "a build per request"
    print(f"{phase}: loop lag p99 {result['loop_lag_ms']['p99']} ms, max "
          f"{result['loop_lag_ms']['max']} ms; healthz failed {result['healthz_failed']}",
          file=sys.stderr)
    return result


Phase = tuple[str, float | None]  # name, /status TTL (None: the default; < 0: no sharing)


async def _daemon_run(state: Path, phases: list[Phase], seconds: float) -> dict[str, Any]:
    return {name: await _phase(state, name, ttl, seconds) for name, ttl in phases}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--flood", "--probe"):
        client_main(sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--phases", default="", help="comma list of phases to run (default all)")
    args = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(DAEMON_NOFILE, hard), hard))
    from loguru import logger

    logger.remove()  # the daemon's lines would only slow the loop down: figures only
    logger.add(sys.stderr, level="WARNING")
    import uvloop

    phases: list[Phase] = [("quiet", None), ("half_open", None), ("status", None),
                           ("status_ttl_0", 0.0), ("status_build_per_request", -1.0)]
    if args.phases:
        phases = [p for p in phases if p[0] in args.phases.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = uvloop.run(_daemon_run(Path(tmp), phases, args.seconds))
    save("http_flood", {
        "setup": {"symbols": 20, "sim_interval_s": SIM_INTERVAL, "half_open": HALF_OPEN,
                  "concurrent_status": CONCURRENT_STATUS, "seconds_per_phase": args.seconds,
                  "daemon_nofile": min(DAEMON_NOFILE, hard), "cpus": os.cpu_count()},
        "phases": results})


if __name__ == "__main__":
    main()
