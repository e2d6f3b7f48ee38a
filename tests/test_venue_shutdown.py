"""Closing a broker venue closes everything it opened: once ``close()`` returns, the
emulator holds no socket of it and the event loop runs no task of it (a task left behind is
one the loop's close waits for, with the process's exit behind it)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from quantshift.emulators.alpaca import AlpacaEmulator
from quantshift.emulators.exchange import ExchangeEmulator
from quantshift.execution.venues.alpaca import AlpacaVenue
from quantshift.execution.venues.ccxt import CcxtVenue


@pytest.fixture
async def alpaca_emu() -> AsyncIterator[AlpacaEmulator]:
    emu = AlpacaEmulator(["AAA"], interval=1.0, warmup=5)
    await emu.start("127.0.0.1")
    yield emu
    await emu.stop()


@pytest.fixture
async def exchange_emu() -> AsyncIterator[ExchangeEmulator]:
    emu = ExchangeEmulator(["BTC/USDT"], interval=1.0, warmup=5)
    await emu.start("127.0.0.1")
    yield emu
    await emu.stop()


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        await asyncio.sleep(0.02)


def _emulators(task: asyncio.Task[Any]) -> bool:
    """A task of the emulator's server, which runs in the test's loop too."""
    code = getattr(task.get_coro(), "cr_code", None)
    where = code.co_filename if code is not None else ""
    return "/aiohttp/web" in where or "/quantshift/emulators/" in where


def venue_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    return sorted(repr(t.get_coro()) for t in asyncio.all_tasks() - before
                  if t is not asyncio.current_task() and not t.done() and not _emulators(t))


async def test_closing_the_alpaca_venue_closes_its_trade_updates_socket(
        alpaca_emu: AlpacaEmulator) -> None:
    before = asyncio.all_tasks()
    venue = AlpacaVenue("emulator-key", "emulator-secret", paper=True,
                        base_url=alpaca_emu.base_url, timeout=2.0)
    await venue.connect()
    await until(lambda: len(alpaca_emu.sockets) == 1, "the trade updates socket")
    await venue.close()
    await asyncio.sleep(0)  # the socket's own tasks see their end
    assert venue_tasks(before) == []
    await until(lambda: not alpaca_emu.sockets, "the socket closed at the emulator", 2.0)


async def test_closing_the_ccxt_venue_closes_its_order_socket(
        exchange_emu: ExchangeEmulator) -> None:
    before = asyncio.all_tasks()
    venue = CcxtVenue("binance", key="emulator-key", secret="emulator-secret",
                      api_url=exchange_emu.base_url, websocket="on")
    await venue.connect()
    await until(lambda: venue.stream_up and exchange_emu.user_streams == 1, "the order stream")
    await venue.close()
    await asyncio.sleep(0)
    assert venue_tasks(before) == []
    await until(lambda: not exchange_emu.sockets, "the socket closed at the emulator", 2.0)
