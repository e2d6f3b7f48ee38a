"""A stalled ccxt order websocket (the exchange emulator's ``stall`` fault: the socket stays
open and goes silent both ways), with the real ccxt.pro client and the daemon's poll
settings (every second while the stream is down, every ten while it is up).

Per stall, in seconds from arming it: ``detected`` (the stream marked down), ``fill`` (an
order that filled at the venue right after the stall reaches the updates the executor
reads: by the poll) and ``redialled`` (a new user-data subscription is up; stalls a few
seconds apart count as one outage, so the jittered backoff grows from one to the next).
Target:
detected <= 3 s, the fill well before the 10 s safety-net poll.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from _common import percentile, save

from quantshift.domain import OrderIntent, OrderState, Side
from quantshift.emulators.exchange import ExchangeEmulator
from quantshift.execution.venues.ccxt import CcxtVenue

TARGET_DETECTED_S = 3.0


async def until(cond: Callable[[], bool], timeout: float = 30.0) -> float:
    started = time.monotonic()
    while not cond():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.005)
    return time.monotonic()


async def run(stalls: int) -> list[dict[str, float]]:
    emu = ExchangeEmulator(["BTC/USDT"], interval=120)
    await emu.start("127.0.0.1", run_bars=False)
    venue = CcxtVenue("binance", key="emulator-key", secret="emulator-secret",
                      api_url=emu.base_url, websocket="on", poll_every=1.0)
    await venue.connect()
    await venue.instruments(["BTC/USDT"])
    tracked: list[tuple[str, str]] = []
    filled: set[str] = set()

    async def drain() -> None:
        async for vo in venue.updates(lambda: list(tracked)):
            if vo.state is OrderState.FILLED:
                filled.add(vo.client_order_id)

    reader = asyncio.create_task(drain())
    out = []
    try:
        for i in range(stalls):
            await until(lambda: venue.stream_up and emu.user_streams == 1)
            await asyncio.sleep(1.5)  # a healthy stretch first
            coid = f"stall-{i}"
            emu.faults.partial_fill(0.5)
            await venue.submit(OrderIntent(coid, "b", "BTC/USDT", Side.BUY, 0.01,
                                           time.time_ns(), 0.0))
            tracked.append((coid, "BTC/USDT"))
            await asyncio.sleep(0.5)
            subscriptions = emu.user_subscriptions
            armed = time.monotonic()
            emu.faults.stall()
            emu.engine.fill_rest()
            detected = await until(lambda: not venue.stream_up)
            fill = await until(lambda c=coid: c in filled)
            redialled = await until(lambda n=subscriptions: venue.stream_up
                                    and emu.user_subscriptions > n)
            out.append({"detected_s": detected - armed, "fill_s": fill - armed,
                        "redialled_s": redialled - armed})
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await venue.close()
        await emu.stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stalls", type=int, default=10)
    args = ap.parse_args()
    runs = asyncio.run(run(args.stalls))
    figures = {k: {"p50": round(percentile([r[k] for r in runs], 50), 3),
                   "max": round(max(r[k] for r in runs), 3)}
               for k in ("detected_s", "fill_s", "redialled_s")}
    save("order_stream_stall", {"stalls": args.stalls, **figures,
                                "target_detected_s": TARGET_DETECTED_S,
                                "meets_target": figures["detected_s"]["max"]
                                <= TARGET_DETECTED_S})


if __name__ == "__main__":
    main()
