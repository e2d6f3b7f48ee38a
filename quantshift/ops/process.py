"""The daemon's process: serve until stopped, then exit within the shutdown bound.

The bound is counted from the signal and covers what the event loop still holds after the
daemon's own shutdown: tasks nobody awaited (an SDK's socket tasks), async generators, and
the threads of blocking calls. A thread stuck in a call is not waited for past a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from loguru import logger

from quantshift.aio import within


def run_bounded(serve: Callable[[], Awaitable[int]],
                exit_event: Callable[[], asyncio.Event | None], bound: float,
                db_thread: ThreadPoolExecutor) -> int:
    """Serve until stopped; then close what the event loop still holds, inside the same
    shutdown bound, counted from the signal: tasks nobody awaited (an SDK's socket
    tasks), async generators, and the threads of blocking calls (``asyncio.to_thread``,
    the journal's writer). A thread still blocked in a call (a REST request to a slow
    broker) gets a second at most, within the bound; then the process exits without it,
    as Python would otherwise join it at exit however long the call takes. The last log
    line says how long after the signal the process exits, and what it left behind."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        factory = None
    thread_grace = 1.0  # seconds the exit waits for a thread still in a blocking call
    io = ThreadPoolExecutor(thread_name_prefix="quantshift-io")
    marks: dict[str, float] = {}
    stuck: list[str] = []

    def blocked() -> list[str]:
        return [t.name for t in threading.enumerate()
                if t.name.startswith(("quantshift-io", "journal")) and t.is_alive()]

    async def teardown() -> None:
        loop = asyncio.get_running_loop()
        marks["closed"] = time.monotonic()
        deadline = marks.get("signal", marks["closed"]) + bound
        tasks = asyncio.all_tasks() - {asyncio.current_task()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.1))
        with contextlib.suppress(TimeoutError):
            await within(loop.shutdown_asyncgens(),
                                   max(deadline - time.monotonic(), 0.1))
        io.shutdown(wait=False, cancel_futures=True)
        db_thread.shutdown(wait=False, cancel_futures=True)
        # Nothing awaits what a blocked call returns any more (its task is cancelled;
        # an order's outcome is settled by the next start's reconciliation): a short
        # grace, not the whole bound.
        grace = min(deadline, time.monotonic() + thread_grace)
        while blocked() and time.monotonic() < grace:
            await asyncio.sleep(0.02)
        stuck.extend(t.get_name() for t in tasks if not t.done())
        stuck.extend(blocked())

    async def main() -> int:
        asyncio.get_running_loop().set_default_executor(io)
        serving = asyncio.ensure_future(serve())
        await asyncio.sleep(0)  # serve() has made its exit event: time the signal
        event = exit_event()
        if event is not None:
            signalled = asyncio.ensure_future(event.wait())
            signalled.add_done_callback(
                lambda _f: marks.setdefault("signal", time.monotonic()))
        try:
            return await serving
        finally:
            await teardown()

    runner = asyncio.Runner(loop_factory=factory)
    try:
        code = runner.run(main())
    except BaseException:  # a failed start: the CLI says why, after the loop is closed
        runner.close()
        raise
    since = "the signal" if "signal" in marks else "the shutdown completed"
    start = marks.get("signal", marks.get("closed", time.monotonic()))
    if stuck:
        logger.warning("process exiting {:.3f}s after {}, exit status {}, without what "
                       "did not finish in time: {}", time.monotonic() - start, since,
                       code, ", ".join(stuck))
        logger.remove()  # flushes and closes the log files
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    runner.close()
    logger.info("process exiting {:.3f}s after {}, everything closed, exit status {}",
                time.monotonic() - start, since, code)
    return code


