"""``until_stopped``: a stop while a gather of fetches is under way leaves nothing behind
that asyncio would report when it is freed (found by the fault simulator: exchange seed
193, a SIGTERM during a candle poll logged "_GatheringFuture exception was never
retrieved" with a traceback)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from quantshift.backoff import Stopped, until_stopped


async def test_a_stop_during_a_gather_leaves_no_unretrieved_exception() -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: reported.append(ctx))
    stopping = asyncio.Event()

    async def fetch() -> int:
        await asyncio.sleep(10)
        return 1

    loop.call_later(0.02, stopping.set)
    with pytest.raises(Stopped):
        await until_stopped(asyncio.gather(fetch(), fetch()), stopping)
    with pytest.raises(Stopped):  # the poll's form: exceptions returned, not raised
        stopping.clear()
        loop.call_later(0.02, stopping.set)
        await until_stopped(asyncio.gather(fetch(), return_exceptions=True), stopping)
    await asyncio.sleep(0)
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []
