"""Instances of one account on a real redis-server (a private one this benchmark starts).

* Halt propagation (target p99 <= 100 ms): instance A (this process) takes an operator's
  halt through its control plane; instance B, another process with its own control plane
  and link, records when its control plane starts refusing entries. From the halt's start
  to A refusing, and to B refusing; then a resume, and again.
* Decision latency with the store (target p99 <= 1 ms, 100 symbols): the daemon's
  components as in bench_decision_latency.py, the control plane linked to the account (its
  orders counted as a live instance's would be: the store's listener, its pings and the
  account report run on the same loop). The hot path never awaits Redis.

Saves bench/results/account.json.

    .venv/bin/python bench/bench_account.py [--halts 200] [--seconds 15]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import uvloop
from _common import ROOT, percentile, rss_mb, save, timed_engine_run
from bench_decision_latency import bench_settings

sys.path.insert(0, str(ROOT))

from quantshift.control import ControlPlane, Halt, Resume
from quantshift.domain import OrderIntent, Side, TradingState
from quantshift.ops import periodic
from quantshift.state.shared import AccountStore, Caps
from tests.redis_server import RedisServer

TARGET_HALT_P99_MS = 100.0
TARGET_DECISION_P99_MS = 1.0
PROBE = OrderIntent("probe", "s", "AAA", Side.BUY, 1.0, time.time_ns(), 100.0)


def _instance_b(url: str, changes: Any, ready: Any) -> None:
    """Instance B: its control plane's every change of state, timed, goes to the queue."""
    async def main() -> None:
        control = ControlPlane()
        store = AccountStore(url, "bench", "b", Caps(), sends=True, live=False, grace=5)
        control.attach_account(store)
        control.on_change(lambda _old, new: changes.put(
            (new.value, time.time(), control.refusal(PROBE) is not None)))
        await store.open(control.adopt)
        task = asyncio.create_task(store.run())
        ready.set()
        await asyncio.sleep(3600)
        task.cancel()

    uvloop.run(main())


async def halts(url: str, n: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    changes, ready = ctx.Queue(), ctx.Event()
    b = ctx.Process(target=_instance_b, args=(url, changes, ready), daemon=True)
    b.start()
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, ready.wait, 30)
    control = ControlPlane()
    store = AccountStore(url, "bench", "a", Caps(), sends=True, live=False, grace=5)
    control.attach_account(store)
    await store.open(control.adopt)
    task = asyncio.create_task(store.run())
    await asyncio.sleep(0.5)
    local: list[float] = []
    remote: list[float] = []
    for i in range(n):
        for cmd, want in ((Halt(reason=f"bench {i}", by="bench"), "halted"),
                          (Resume(by="bench"), "active")):
            started = time.time()
            await control.command(cmd)
            if want == "halted":
                assert control.refusal(PROBE) is not None
                local.append((time.time() - started) * 1000)
            while True:
                state, at, refusing = await loop.run_in_executor(None, changes.get, True, 10)
                if state == want:
                    break
            if want == "halted":
                assert refusing, "B changed state but did not refuse"
                remote.append((at - started) * 1000)
    task.cancel()
    await store.close()
    b.kill()
    assert control.state is TradingState.ACTIVE
    return {"halts": n,
            "a_refuses_ms": {"p50": percentile(local, 50), "p99": percentile(local, 99),
                             "max": max(local)},
            "b_refuses_ms": {"p50": percentile(remote, 50), "p99": percentile(remote, 99),
                             "max": max(remote)}}


async def decisions(url: str, seconds: float, symbols: int, state: Path) -> dict[str, Any]:
    settings = bench_settings(state, symbols)

    async def link(engine: Any, journal: Any) -> Any:
        store = AccountStore(url, "bench-dec", "d", Caps(trades_per_day=1_000_000),
                             sends=True, live=True, grace=5, journal=journal)
        engine.control.attach_account(store)
        await store.open(engine.control.adopt)
        tasks = [asyncio.create_task(store.run()),
                 asyncio.create_task(periodic.every(1.0, partial(
                     periodic.report_account, engine, store)))]

        async def close() -> None:
            for t in tasks:
                t.cancel()
            await store.close()
        return close

    ms, all_ms, counts = await timed_engine_run(settings, seconds, 0.02, setup=link)
    return {"symbols": symbols, "seconds": seconds, "bars": len(all_ms),
            "decisions_with_intent": len(ms), "orders": counts.get("orders", 0),
            "intent_latency_ms": {"p50": percentile(ms, 50), "p99": percentile(ms, 99),
                                  "max": max(ms, default=float("nan"))},
            "bar_latency_ms": {"p50": percentile(all_ms, 50), "p99": percentile(all_ms, 99)},
            "rss_mb": round(rss_mb(), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--halts", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--symbols", type=int, default=100)
    args = ap.parse_args()
    from loguru import logger

    logger.remove()  # a line per halt and resume would be the output
    logger.add(sys.stderr, level="ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            halt = uvloop.run(halts(server.url, args.halts))
            dec = uvloop.run(decisions(server.url, args.seconds, args.symbols, Path(tmp)))
        finally:
            server.stop()
    halt_p99 = halt["b_refuses_ms"]["p99"]
    dec_p99 = dec["intent_latency_ms"]["p99"]
    save("account", {"halt_propagation": halt, "decision_latency_with_store": dec,
                     "target_halt_p99_ms": TARGET_HALT_P99_MS,
                     "target_decision_p99_ms": TARGET_DECISION_P99_MS,
                     "meets_halt_target": halt_p99 <= TARGET_HALT_P99_MS,
                     "meets_decision_target": dec_p99 <= TARGET_DECISION_P99_MS})
    print(f"halt on A -> B refuses: p50 {halt['b_refuses_ms']['p50']:.2f} ms, p99 "
          f"{halt_p99:.2f} ms (target <= {TARGET_HALT_P99_MS:g}); decision latency with the "
          f"store p99 {dec_p99:.3f} ms (target <= {TARGET_DECISION_P99_MS:g})")


if __name__ == "__main__":
    main()
