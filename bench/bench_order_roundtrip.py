"""Order round trip against the local emulators: intent -> venue ack -> fill journaled.

The emulator runs as its own process (`quantshift emulate`), as a broker would, so its
work does not run on the daemon's event loop.

For each order, in milliseconds:

* ``total``: from the decision to the fill being durable in the journal (committed here
  right after each fill, so every order's total includes that fsync);
* ``venue``: from the moment the daemon hands the order to the SDK until the fill comes
  back to the executor (the SDK, loopback, the emulator, and the REST answer or the order
  stream that carries the fill);
* ``daemon_overhead``: the daemon's own path (target p99 <= 2 ms): the decision and its
  write-ahead (the intent durable on disk) until the SDK call, then applying the fill,
  booking it in the portfolio and writing it to the journal, as the daemon does: into
  the group commit, which makes it durable within ``QUANTSHIFT_FLUSH_INTERVAL``;
* ``overhead_with_fill_fsync``: the same plus waiting for the fill's own fsync, which the
  daemon does not wait for (``fill_commit`` is that wait alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import percentile, quantshift_bin, save

from quantshift.app import build_engine, open_journal
from quantshift.domain import Direction, Signal
from quantshift.settings import Settings

TARGET_OVERHEAD_P99_MS = 2.0


def start_emulator(venue: str, symbol: str) -> tuple[subprocess.Popen[str], str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([quantshift_bin(), "emulate", venue, "--port", str(port),
                             "--interval", "3600", "--symbols", symbol],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    while "QUANTSHIFT_SYMBOLS" not in proc.stdout.readline():
        pass
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{url}/_emulator/state", timeout=5) as r:
        price = float(json.loads(r.read())["last_prices"][symbol])
    return proc, url, price


async def run(venue: str, orders: int, state: Path) -> dict:
    if venue == "alpaca":
        symbol, extra = "AAA", {"feed": "alpaca", "apca_api_key_id": "k",
                                "apca_api_secret_key": "s", "sizing": "fixed:1"}
    else:
        symbol, extra = "BTC/USDT", {"feed": "ccxt", "ccxt_exchange": "binance",
                                     "ccxt_api_key": "k", "ccxt_secret": "s",
                                     "sizing": "fixed:0.01", "fractional": True}
    emu, url, price = start_emulator(venue, symbol)
    extra["apca_api_base_url" if venue == "alpaca" else "ccxt_api_url"] = url
    settings = Settings(state_dir=state / venue, shadow_mode="sandbox", symbols=[symbol],
                        risk_max_trades_per_day=0, **extra)
    journal = open_journal(settings)
    loop = asyncio.get_running_loop()

    async def commit() -> None:
        await loop.run_in_executor(None, journal.flush)

    engine = build_engine(settings, journal, durable=commit, log_decisions=False)
    executor = engine.executor
    await executor.start()  # type: ignore[union-attr]
    engine.gate.set_instruments(await executor.venue.instruments([symbol]))  # type: ignore[union-attr]

    venue_ns: dict[str, int] = {}
    start_ns: dict[str, int] = {}
    real_submit = executor.venue.submit  # type: ignore[union-attr]

    async def timed_submit(intent):  # type: ignore[no-untyped-def]
        t = time.perf_counter_ns()
        start_ns[intent.client_order_id] = t
        try:
            return await real_submit(intent)
        finally:
            venue_ns[intent.client_order_id] = time.perf_counter_ns() - t

    executor.venue.submit = timed_submit  # type: ignore[union-attr]
    fill_back_ns: dict[str, int] = {}  # the fill reached the executor
    real_apply = executor._apply  # type: ignore[union-attr]

    def timed_apply(vo, nested=False):  # type: ignore[no-untyped-def]
        if vo.filled_qty > 0:
            fill_back_ns.setdefault(vo.client_order_id, time.perf_counter_ns())
        real_apply(vo, nested)

    executor._apply = timed_apply  # type: ignore[union-attr]
    filled: dict[str, asyncio.Future[int]] = {}
    real_on_fill = engine.on_fill

    booked_ns: dict[str, int] = {}

    def on_fill(intent, qty, price, commission, ts):  # type: ignore[no-untyped-def]
        real_on_fill(intent, qty, price, commission, ts)
        booked_ns.setdefault(intent.client_order_id, time.perf_counter_ns())

        async def durable() -> None:
            await commit()
            fut = filled.get(intent.client_order_id)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter_ns())

        pending.add(asyncio.ensure_future(durable()))

    pending: set[asyncio.Future[None]] = set()
    engine.on_fill = on_fill  # type: ignore[method-assign]
    totals, venue_times, overheads, before_venue, after_fill = [], [], [], [], []
    forced: list[float] = []
    commit_fill: list[float] = []
    for i in range(orders):
        direction = Direction.LONG if i % 2 == 0 else Direction.FLAT
        t0 = time.perf_counter_ns()
        sent = engine.decide(Signal("bench", symbol, time.time_ns(), direction, "rt"), price)
        coid = sent[0].client_order_id
        filled[coid] = loop.create_future()
        done = await asyncio.wait_for(filled[coid], 10)
        while coid not in venue_ns:  # the fill may come by the stream before the REST answer
            await asyncio.sleep(0)
        total = done - t0
        venue = fill_back_ns[coid] - start_ns[coid]
        booking = booked_ns[coid] - fill_back_ns[coid]
        totals.append(total / 1e6)
        venue_times.append(venue / 1e6)
        overheads.append((start_ns[coid] - t0 + booking) / 1e6)
        forced.append((total - venue) / 1e6)
        before_venue.append((start_ns[coid] - t0) / 1e6)
        after_fill.append(booking / 1e6)
        commit_fill.append((done - booked_ns[coid]) / 1e6)
    await executor.close()  # type: ignore[union-attr]
    journal.close()
    emu.terminate()
    emu.wait(10)

    def stats(xs: list[float]) -> dict[str, float]:
        return {"p50": round(percentile(xs, 50), 3), "p99": round(percentile(xs, 99), 3)}

    return {"orders": orders, "total_ms": stats(totals), "venue_ms": stats(venue_times),
            "daemon_overhead_ms": stats(overheads),
            "write_ahead_ms": stats(before_venue), "fill_booking_ms": stats(after_fill),
            "fill_commit_ms": stats(commit_fill),
            "overhead_with_fill_fsync_ms": stats(forced),
            "meets_target": percentile(overheads, 99) <= TARGET_OVERHEAD_P99_MS}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--orders", type=int, default=300)
    args = ap.parse_args()
    os.environ.setdefault("QUANTSHIFT_CONFIG_DIR", "/nonexistent")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for venue in ("alpaca", "exchange"):
            figures[venue] = asyncio.run(run(venue, args.orders, Path(tmp)))
    figures["target_overhead_p99_ms"] = TARGET_OVERHEAD_P99_MS
    figures["meets_target"] = all(figures[v]["meets_target"] for v in ("alpaca", "exchange"))
    save("order_roundtrip", figures)


if __name__ == "__main__":
    main()
