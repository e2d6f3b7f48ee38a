"""Live crypto bars from any ccxt exchange: by websocket where ccxt.pro offers
``watchOHLCV`` (``CCXT_WEBSOCKET=auto|on``), otherwise by polling ``fetch_ohlcv`` at each
bar close.

Polling: the feed sleeps until just after the next bar boundary (plus a small grace),
fetches the bars since the last one delivered for each symbol and delivers those that are
closed (open time + bar length <= now). A failed poll (network, 5xx, 429, timeout) backs
off with jitter and tries again; the next successful poll fetches everything since the last
delivered bar, so a failure never leaves a gap and never repeats a bar.

Websocket: see ``CandleStream``. Every session starts with the same REST backfill, so a
reconnect never leaves a gap either.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import ccxt.async_support as ccxt_async
from loguru import logger

from quantshift import clients as vc
from quantshift.aio import within
from quantshift.backoff import Backoff, until_stopped
from quantshift.backoff import Stopped as _Stopped
from quantshift.domain import Bar
from quantshift.feeds.base import BarValidator
from quantshift.feeds.ccxt_stream import CandleStream

_NS_PER_MS = 1_000_000
_PAGE = 1000  # most exchanges serve at least this many candles per request
_HISTORY_TRIES = 3


class CcxtFeed(CandleStream):
    name = "ccxt"

    def __init__(self, exchange_id: str, symbols: list[str], key: Any = None, secret: Any = None,
                 password: Any = None, api_url: str | None = None, bar_seconds: float = 60.0,
                 reconnect_max_seconds: float = 60.0, sandbox: bool = False, *,
                 timeout: float = 10.0, grace: float | None = None,
                 websocket: str = "off") -> None:
        self.exchange_id = exchange_id
        self.symbols = list(symbols)
        self.validator = BarValidator(self.name)
        self.bar_seconds = float(bar_seconds)
        self.last_bar_at = 0.0
        self.idle = False  # crypto never closes
        self.timeframe = vc.ccxt_timeframe(bar_seconds)
        self.exchange = vc.ccxt_exchange(exchange_id, vc.reveal(key), vc.reveal(secret),
                                         vc.reveal(password), api_url, sandbox, timeout,
                                         pro=websocket != "off")
        # "on" without a candle websocket is a ConfigError naming CCXT_WEBSOCKET.
        self.websocket = vc.ccxt_streams(self.exchange, websocket, "watchOHLCV")
        self.transport = "websocket" if self.websocket else "polling"
        known = getattr(self.exchange, "timeframes", None) or {}
        if known and self.timeframe not in known:
            raise ValueError(f"{exchange_id} has no {self.timeframe} candles "
                             f"(it has {', '.join(known)})")
        self.timeout = timeout
        # Poll this long after each boundary: the exchange needs a moment to close the bar.
        self.grace = grace if grace is not None else min(2.0, max(0.05, 0.1 * self.bar_seconds))
        self.backoff = Backoff(cap=reconnect_max_seconds)
        self.failures = 0  # failed polls, for the record
        self._bar_ms = int(self.bar_seconds * 1000)
        self._order = {s: i for i, s in enumerate(self.symbols)}
        self._last: dict[str, int] = {}  # open time (ms) of the last bar delivered per symbol
        self._default = 0
        self._on_bar: Callable[[Bar], None] | None = None
        self._running = False
        self._closing: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._init_stream()

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> CcxtFeed:
        if not settings.ccxt_exchange:
            raise ValueError("CCXT_EXCHANGE is not set")
        return cls(settings.ccxt_exchange, settings.symbols, settings.ccxt_api_key,
                   settings.ccxt_secret, settings.ccxt_password, api_url=settings.ccxt_api_url,
                   bar_seconds=settings.bar_seconds,
                   reconnect_max_seconds=settings.reconnect_max_seconds,
                   sandbox=settings.executor == "sandbox", timeout=settings.broker_timeout,
                   websocket=settings.ccxt_websocket, **kwargs)

    def stop(self) -> None:
        self._stopping.set()
        if not self._running and self._closing is None:  # run() closes the session itself
            with contextlib.suppress(RuntimeError):  # no loop: nothing was ever opened
                self._closing = asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.exchange.close()

    # -- fetching --------------------------------------------------------------------------
    def _to_bar(self, symbol: str, row: list[Any]) -> Bar | None:
        try:
            return Bar(symbol, int(row[0]) * _NS_PER_MS, float(row[1]), float(row[2]),
                       float(row[3]), float(row[4]), float(row[5]))
        except (IndexError, TypeError, ValueError) as exc:
            self.validator.reject("unparseable candle", f"{symbol} {row!r}: {exc}")
            return None

    async def _fetch_closed(self, symbol: str, since_ms: int) -> list[Bar]:
        """The closed bars of ``symbol`` opening at or after ``since_ms``, page by page."""
        bars: list[Bar] = []
        while True:
            now_ms = time.time_ns() // _NS_PER_MS
            wanted = max(1, (now_ms - since_ms) // self._bar_ms + 2)
            limit = min(_PAGE, wanted)
            rows = await self.exchange.fetch_ohlcv(symbol, self.timeframe, since_ms, limit)
            closed = [r for r in rows or () if r and r[0] is not None and r[0] >= since_ms
                      and r[0] + self._bar_ms <= now_ms]
            for row in closed:
                bar = self._to_bar(symbol, row)
                if bar is not None:
                    bars.append(bar)
            if len(rows or ()) < limit or not closed:
                return bars
            since_ms = int(closed[-1][0]) + 1

    def _since(self, symbol: str) -> int:
        return self._last.get(symbol, self._default) + 1

    def _chronological(self, bars: list[Bar]) -> list[Bar]:
        order = self._order
        return sorted(bars, key=lambda b: (b.ts, order.get(b.symbol, 0)))

    async def history(self, count: int) -> list[Bar]:
        if count <= 0 or not self.symbols:
            return []
        now_ms = time.time_ns() // _NS_PER_MS
        since = now_ms - now_ms % self._bar_ms - count * self._bar_ms
        for attempt in range(1, _HISTORY_TRIES + 1):
            try:
                got = await until_stopped(asyncio.gather(
                    *(self._fetch_closed(s, since) for s in self.symbols)), self._stopping)
                break
            except ccxt_async.BaseError as exc:
                if attempt == _HISTORY_TRIES:
                    raise
                logger.warning("feed ccxt: history failed (attempt {}): {!r}", attempt, exc)
                await self.backoff.wait(self._stopping)
            except _Stopped:
                return []
        self.backoff.reset()
        bars = [b for b in self._chronological([b for per in got for b in per[-count:]])
                if self.validator.accept(b)]
        for bar in bars:  # warmed strategies have seen these: live delivery continues after
            self._last[bar.symbol] = bar.ts // _NS_PER_MS
        return bars

    # -- delivery --------------------------------------------------------------------------
    def _deliver(self, bar: Bar) -> bool:
        open_ms = bar.ts // _NS_PER_MS
        if open_ms < self._since(bar.symbol) or not self.validator.accept(bar):
            return False  # already delivered, or invalid
        self._last[bar.symbol] = open_ms
        self.last_bar_at = time.monotonic()
        assert self._on_bar is not None
        self._on_bar(bar)
        return True

    async def _poll(self) -> bool:
        """Fetch and deliver every symbol's new closed bars; False when any fetch failed."""
        results = await until_stopped(asyncio.gather(
            *(self._fetch_closed(s, self._since(s)) for s in self.symbols),
            return_exceptions=True), self._stopping)
        bars: list[Bar] = []
        ok = True
        for symbol, result in zip(self.symbols, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, ccxt_async.BaseError):
                    raise result  # a bug, not the venue: let the daemon see it
                ok = False
                # OperationFailed: network trouble, 5xx, 429, timeouts (worth retrying).
                level = "WARNING" if isinstance(result, ccxt_async.OperationFailed) else "ERROR"
                logger.log(level, "feed ccxt: {} {} candles failed: {!r}", self.exchange_id,
                           symbol, result)
            else:
                bars.extend(result)
        for bar in self._chronological(bars):
            self._deliver(bar)
        return ok

    def _behind(self) -> bool:
        """Whether some symbol still lacks the bar that closed last (not published yet)."""
        now_ms = time.time_ns() // _NS_PER_MS
        latest = now_ms - now_ms % self._bar_ms - self._bar_ms
        return any(self._last.get(s, self._default) < latest for s in self.symbols)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await within(self._stopping.wait(), max(seconds, 0.0))
        if self._stopping.is_set():
            raise _Stopped

    async def run(self, on_bar: Callable[[Bar], None]) -> None:
        self._on_bar = on_bar
        self._running = True
        now_ms = time.time_ns() // _NS_PER_MS
        # A symbol without history starts with the bar that closed last.
        self._default = now_ms - now_ms % self._bar_ms - self._bar_ms - 1
        try:
            if self.websocket:
                await self._run_stream()
            else:
                await self._run_polling()
        except _Stopped:
            pass
        finally:
            self._running = False
            await self.close()

    async def _run_polling(self) -> None:
        while not self._stopping.is_set():
            ok = await self._poll()
            if ok and self._behind():  # the venue has not closed the bar yet: once more
                await self._sleep(self.grace)
                ok = await self._poll()
            if not ok:
                self.failures += 1
                delay = await self.backoff.wait(self._stopping)
                logger.info("feed ccxt: retrying after {:.2f} s", delay)
                continue
            self.backoff.succeeded()
            now = time.time()
            await self._sleep(self.bar_seconds - now % self.bar_seconds + self.grace)
