"""The shutdown's bounds: a second signal and a step that hangs both still leave a snapshot."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from loguru import logger

from quantshift.daemon import Daemon
from quantshift.settings import Settings
from tests.conftest import latest_snapshot


def make_daemon(tmp_path: Path, **kw) -> Daemon:
    return Daemon(Settings(state_dir=tmp_path / "var", symbols=["AAA", "BBB"],
                           sim_interval=0.01, **kw))


async def _hang() -> None:
    await asyncio.sleep(3600)


def run_until_stop(d: Daemon, second_signal: bool) -> float:
    async def scenario() -> float:
        d._exit_event, d._force_event = asyncio.Event(), asyncio.Event()
        await d.startup()
        await asyncio.sleep(0.3)  # some bars go through
        d._graceful = _hang  # a shutdown step that never finishes
        d.handle_exit(signal.SIGTERM)
        if second_signal:
            asyncio.get_running_loop().call_later(0.2, d.handle_exit, signal.SIGINT)
        started = time.monotonic()
        await d.shutdown()
        return time.monotonic() - started

    return asyncio.run(scenario())


@pytest.fixture
def messages():
    seen: list[str] = []
    sink = logger.add(lambda m: seen.append(m.record["message"]), level="INFO")
    yield seen
    logger.remove(sink)


def test_second_signal_exits_at_once_after_the_snapshot(tmp_path: Path, messages) -> None:
    d = make_daemon(tmp_path, shutdown_timeout=30)
    took = run_until_stop(d, second_signal=True)
    assert took < 2.0  # not the 30 s bound
    assert d.exit_code == 0
    assert any("second signal" in m for m in messages)
    snap = latest_snapshot(tmp_path / "var" / "equity-paper.sqlite")
    assert snap["counts"]["bars"] == d.engine.bars > 0


def test_a_hanging_step_is_cut_at_the_bound_and_the_snapshot_still_written(
        tmp_path: Path, messages) -> None:
    d = make_daemon(tmp_path, shutdown_timeout=0.5)
    took = run_until_stop(d, second_signal=False)
    assert 0.5 <= took < 2.0
    assert d.exit_code == 1
    assert any("not finished within 0.5s" in m for m in messages)
    snap = latest_snapshot(tmp_path / "var" / "equity-paper.sqlite")
    assert snap["counts"]["bars"] == d.engine.bars > 0
