"""Live equity bars from Alpaca: the market-data websocket, with REST backfill and the clock.

* Live bars come from alpaca-py's ``StockDataStream``. Its ``run()`` calls ``asyncio.run``,
  so its private ``_run_forever()`` coroutine runs as a task in our loop; ``_BarStream``
  is the only code that touches the SDK's private stream API.
* After every (re)connection, once the subscription is acknowledged (or before the first
  live bar), the bars since the last delivered one are fetched over REST and delivered
  first: strategies see neither a gap nor a bar twice.
* With ``market_hours_only`` the trading clock is polled; while the market is closed the
  stream is disconnected, ``idle`` is True and the feed sleeps until the next open.

The REST clients are synchronous (``requests``): every call runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from alpaca.data.enums import DataFeed
from alpaca.data.live.stock import StockDataStream
from alpaca.data.requests import StockBarsRequest
from loguru import logger

from quantshift import clients as vc
from quantshift.aio import within
from quantshift.backoff import Backoff, until_stopped
from quantshift.backoff import Stopped as _Stopped
from quantshift.domain import NS_PER_SECOND, Bar
from quantshift.feeds.base import BarValidator

T = TypeVar("T")
_STOP = "stop"
_REST_TRIES = 3
_HISTORY_CONCURRENCY = 4  # requests in flight while warming up many symbols
_WS_PARAMS = {"ping_interval": 10, "ping_timeout": 20, "max_queue": 1024, "close_timeout": 1}


class _SdkStream(StockDataStream):
    """StockDataStream with hooks: before each connection attempt (our backoff paces
    reconnects, the SDK's own wait is disabled), after it, and on the subscription ack."""

    def __init__(self, *args: Any, hooks: _BarStream, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._qs_hooks = hooks
        self._reconnect_min_backoff = 0.0
        self._reconnect_max_backoff = 0.0

    async def _start_ws(self) -> None:
        await self._qs_hooks.before_connect()
        await super()._start_ws()
        self._qs_hooks.emit("connected")

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        if msg.get("T") == "subscription":
            self._qs_hooks.emit("subscribed")
        await super()._dispatch(msg)


class _BarStream:
    """One StockDataStream run as a task of our loop (the one place using private API:
    ``_run_forever``, ``_start_ws``, ``_dispatch``, the reconnect-backoff attributes)."""

    def __init__(self, feed: AlpacaFeed, generation: int) -> None:
        self.feed = feed
        self.generation = generation
        self.attempts = 0
        self.stream = _SdkStream(feed._key, feed._secret, feed=DataFeed(feed.data_feed),
                                 url_override=vc.alpaca_stream_url(feed.stream_url,
                                                                   feed.data_feed),
                                 websocket_params=dict(_WS_PARAMS), hooks=self)
        # Before the task starts: once running, subscribing blocks on the loop itself.
        self.stream.subscribe_bars(self._on_bar, *feed.symbols)
        self.task = asyncio.create_task(self.stream._run_forever(), name="alpaca-stream")
        self.task.add_done_callback(lambda _t: self.emit("ended"))

    def emit(self, kind: str, payload: Any = None) -> None:
        self.feed._events.put_nowait((kind, self.generation, payload))

    async def before_connect(self) -> None:
        self.attempts += 1
        if self.attempts > 1:  # the SDK reconnects after a drop or a failed attempt
            self.emit("dropped")
            await self.feed.backoff.wait(self.feed._stopping)
        if self.feed._stopping.is_set():
            raise asyncio.CancelledError

    async def _on_bar(self, bar: Any) -> None:
        try:
            ours = vc.from_alpaca(bar)
        except (AttributeError, TypeError, ValueError) as exc:
            self.feed.validator.reject("unparseable bar", f"{bar!r}: {exc}")
            return
        self.emit("bar", ours)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stream.stop_ws()
        if not self.task.done():
            # _consume looks at a stop request only between 5 s receive timeouts: cancel.
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=1.0)
        with contextlib.suppress(Exception):
            await within(self.stream.close(), 1.0)


class AlpacaFeed:
    name = "alpaca"

    def __init__(self, symbols: list[str], key: Any, secret: Any, data_url: str | None = None,
                 stream_url: str | None = None, trading_url: str | None = None,
                 data_feed: str = "iex", bar_seconds: float = 60.0,
                 reconnect_max_seconds: float = 60.0, market_hours_only: bool = True, *,
                 paper: bool = True, timeout: float = 10.0, clock_check_seconds: float = 60.0,
                 idle_check_seconds: float = 180.0) -> None:
        if data_feed not in ("iex", "sip"):
            raise ValueError(f"alpaca data feed must be iex or sip, got {data_feed!r}")
        self.symbols = list(symbols)
        self.validator = BarValidator(self.name)
        self.bar_seconds = float(bar_seconds)
        self.last_bar_at = 0.0
        self.idle = False
        self.data_feed = data_feed
        self.stream_url = stream_url
        self.market_hours_only = market_hours_only
        self.timeout = timeout
        self.clock_check_seconds = clock_check_seconds
        self.idle_check_seconds = idle_check_seconds
        self.backoff = Backoff(cap=reconnect_max_seconds)
        self.reconnects = 0  # stream drops seen
        self.backfilled = 0  # bars delivered from REST after a (re)connection
        self._key, self._secret = vc.reveal(key), vc.reveal(secret)
        self._timeframe = vc.alpaca_timeframe(bar_seconds)
        self._bar_ns = int(self.bar_seconds * NS_PER_SECOND)
        self._data = vc.alpaca_data_client(self._key, self._secret, data_url)
        self._trading = vc.alpaca_trading_client(self._key, self._secret, trading_url, paper)
        for client in (self._data, self._trading):
            # The SDK sends requests without a timeout: a call to a broker that stopped
            # answering would hold its thread for good (abandoning it frees no thread).
            session = client._session
            session.request = functools.partial(session.request, timeout=timeout)
        self._rest_backoff = Backoff(cap=min(reconnect_max_seconds, 5.0))
        self._order = {s: i for i, s in enumerate(self.symbols)}
        self._last: dict[str, int] = {}  # ts of the last bar delivered (or warmed) per symbol
        self._default = 0  # where a symbol without a delivered bar starts (set by run)
        self._floor = 0  # bars at or before this ts are never delivered (session start)
        self._session_end: int | None = None
        self._session_start: int | None = None
        self._need_fill = False
        self._stream: _BarStream | None = None
        self._generation = 0
        self._on_bar: Callable[[Bar], None] | None = None
        self._events: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        self._stopping = asyncio.Event()

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> AlpacaFeed:
        live = settings.executor == "live"  # live keys do not open the paper clock
        return cls(settings.symbols, settings.apca_api_key_id, settings.apca_api_secret_key,
                   data_url=settings.apca_api_data_url, stream_url=settings.apca_api_stream_url,
                   trading_url=settings.apca_api_base_url, data_feed=settings.alpaca_data_feed,
                   bar_seconds=settings.bar_seconds,
                   reconnect_max_seconds=settings.reconnect_max_seconds,
                   market_hours_only=settings.market_hours_only, paper=not live,
                   timeout=settings.broker_timeout, **kwargs)

    def resume_after(self, last: dict[str, int]) -> AlpacaFeed:
        """Deliver only bars after these (ts per symbol): the gap since is filled through
        REST when the stream connects (an instance taking over a shared feed)."""
        self._last.update(last)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._events.put_nowait((_STOP, -1, None))

    # -- REST ------------------------------------------------------------------------------
    async def _rest(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a thread, bounded in time, abandoned at once on stop()."""
        return await until_stopped(asyncio.to_thread(fn, *args), self._stopping,
                                   self.timeout * 3)

    def _fetch_latest(self, symbol: str, count: int) -> list[Bar]:
        now = time.time_ns()
        # Far enough back to span nights, weekends and holidays; the limit does the rest.
        start = vc.ns_to_dt(now - count * self._bar_ns * 3 - 7 * 86_400 * NS_PER_SECOND)
        # One symbol per request: with several, Alpaca's limit counts all symbols together.
        request = StockBarsRequest(symbol_or_symbols=symbol, timeframe=self._timeframe,
                                   start=start, limit=count, sort="desc",
                                   feed=DataFeed(self.data_feed))
        got = [vc.from_alpaca(b) for b in self._data.get_stock_bars(request).data.get(symbol, [])]
        return sorted((b for b in got if b.ts + self._bar_ns <= now), key=lambda b: b.ts)[-count:]

    def _fetch_since(self, start_ns: int) -> list[Bar]:
        request = StockBarsRequest(symbol_or_symbols=self.symbols, timeframe=self._timeframe,
                                   start=vc.ns_to_dt(start_ns), feed=DataFeed(self.data_feed))
        data = self._data.get_stock_bars(request).data
        return [vc.from_alpaca(b) for bars in data.values() for b in bars]

    def _chronological(self, bars: list[Bar]) -> list[Bar]:
        order = self._order
        return sorted(bars, key=lambda b: (b.ts, order.get(b.symbol, 0)))

    async def _retrying(self, what: str, fn: Callable[..., T], *args: Any,
                        budget: float = 0.0) -> T:
        """``fn`` through ``_rest``, with backoff between tries: at least three tries, and
        more until ``budget`` seconds have passed."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                result = await self._rest(fn, *args)
            except (_Stopped, asyncio.CancelledError):
                raise
            except Exception as exc:
                if attempt >= _REST_TRIES and time.monotonic() - started >= budget:
                    raise
                logger.warning("feed alpaca: {} failed (attempt {}): {!r}", what, attempt, exc)
                await self._rest_backoff.wait(self._stopping)
                if self._stopping.is_set():
                    raise _Stopped from None
            else:
                self._rest_backoff.succeeded()
                return result

    async def history(self, count: int) -> list[Bar]:
        if count <= 0 or not self.symbols:
            return []
        gate = asyncio.Semaphore(_HISTORY_CONCURRENCY)

        async def one(symbol: str) -> list[Bar]:
            async with gate:
                return await self._retrying("history", self._fetch_latest, symbol, count)

        try:
            per_symbol = await asyncio.gather(*(one(s) for s in self.symbols))
        except _Stopped:
            return []
        bars = [b for b in self._chronological([b for got in per_symbol for b in got])
                if self.validator.accept(b)]
        for bar in bars:  # warmed strategies have seen these: live delivery continues after
            self._last[bar.symbol] = bar.ts
        return bars

    # -- delivery --------------------------------------------------------------------------
    def _after(self, symbol: str) -> int:
        """Only bars after this ts are new for ``symbol``."""
        return max(self._last.get(symbol, self._default), self._floor)

    def _deliver(self, bar: Bar) -> bool:
        if bar.ts <= self._after(bar.symbol) or not self.validator.accept(bar):
            return False  # already delivered (backfill and stream overlap), or invalid
        self._last[bar.symbol] = bar.ts
        self.last_bar_at = time.monotonic()
        assert self._on_bar is not None
        self._on_bar(bar)
        return True

    async def _fill(self, until_ns: int | None = None) -> None:
        """Deliver the closed bars since the last delivered one of each symbol."""
        self._need_fill = False
        start = min(self._after(s) for s in self.symbols)
        try:
            # Live bars wait meanwhile: delivering them first would make the gap permanent.
            bars = await self._retrying("backfill", self._fetch_since, start,
                                        budget=max(2 * self.bar_seconds, 10.0))
        except (_Stopped, asyncio.CancelledError):
            raise
        except Exception as exc:
            logger.error("feed alpaca: backfill failed, bars may be missing: {!r}", exc)
            return
        now = time.time_ns()
        delivered = 0
        for bar in self._chronological(bars):
            if bar.ts + self._bar_ns > now or (until_ns is not None and bar.ts >= until_ns):
                continue  # still forming (the stream brings it), or after the session
            delivered += self._deliver(bar)
        self.backfilled += delivered
        if delivered:
            logger.info("feed alpaca: backfilled {} bars", delivered)

    # -- the stream ------------------------------------------------------------------------
    def _start_stream(self) -> None:
        self._generation += 1
        self._need_fill = True
        self._stream = _BarStream(self, self._generation)

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()

    async def _pump(self, until: float | None) -> None:
        """Handle the stream's events until loop time ``until`` (None: for good) or stop()."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            timeout = None if until is None else until - loop.time()
            if timeout is not None and timeout <= 0:
                return
            try:
                kind, gen, payload = await within(self._events.get(), timeout)
            except TimeoutError:
                return
            if kind == "bar":
                if self._need_fill:
                    await self._fill()
                self._deliver(payload)
            elif kind == _STOP or gen != self._generation:
                continue  # an old stream's news (bars above are valid whatever their source)
            elif kind == "connected":
                self._need_fill = True
                self.backoff.succeeded()
                logger.info("feed alpaca: stream connected ({} symbols)", len(self.symbols))
            elif kind == "subscribed":
                if self._need_fill:
                    await self._fill()
            elif kind == "dropped":
                self.reconnects += 1
                logger.warning("feed alpaca: stream dropped; reconnecting")
            elif kind == "ended":
                logger.warning("feed alpaca: stream ended; restarting")
                self.reconnects += 1
                await self._close_stream()
                await self.backoff.wait(self._stopping)
                if not self._stopping.is_set():
                    self._start_stream()

    async def _drain(self, until_ns: int | None) -> None:
        while not self._events.empty():
            kind, _gen, payload = self._events.get_nowait()
            if kind == "bar" and (until_ns is None or payload.ts < until_ns):
                self._deliver(payload)

    # -- the clock -------------------------------------------------------------------------
    async def _clock(self) -> Any | None:
        try:
            return await self._rest(self._trading.get_clock)
        except (_Stopped, asyncio.CancelledError):
            raise
        except Exception as exc:
            logger.warning("feed alpaca: clock unavailable, assuming open: {!r}", exc)
            return None

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await within(self._stopping.wait(), max(seconds, 0.0))
        if self._stopping.is_set():
            raise _Stopped

    async def _idle_until_open(self, clock: Any) -> None:
        if not self.idle:
            if self._stream is not None:
                await self._close_stream()
                await self._drain(self._session_end)
                await self._fill(until_ns=self._session_end)  # the session's last bars
            self.idle = True
            logger.info("feed alpaca: market closed; idle until {}", clock.next_open)
        self._session_start = vc.dt_to_ns(clock.next_open)
        to_open = (self._session_start - time.time_ns()) / NS_PER_SECOND
        # Sleep until the open, but look at the clock again every few minutes.
        await self._sleep(min(max(to_open + 1.0, min(5.0, self.idle_check_seconds)),
                              self.idle_check_seconds))

    def _until_next_check(self, clock: Any) -> float:
        if clock is None:
            return self.clock_check_seconds
        self._session_end = vc.dt_to_ns(clock.next_close)
        to_close = (self._session_end - time.time_ns()) / NS_PER_SECOND
        return min(max(to_close + 1.0, min(5.0, self.clock_check_seconds)),
                   self.clock_check_seconds)

    def _reopen(self) -> None:
        self.idle = False
        # The daemon measures silence from last_bar_at: restart that clock at the open, or
        # a feed idle all night would look stale the moment it wakes.
        self.last_bar_at = time.monotonic()
        now = time.time_ns()
        start = self._session_start
        # Bars from the closed hours are not this session's: start at the open.
        self._floor = start - 1 if start is not None and start <= now else \
            now - now % self._bar_ns - self._bar_ns - 1
        logger.info("feed alpaca: market open; streaming")

    async def run(self, on_bar: Callable[[Bar], None]) -> None:
        self._on_bar = on_bar
        loop = asyncio.get_running_loop()
        now = time.time_ns()
        # A symbol without history starts with the bar that closed last.
        self._default = now - now % self._bar_ns - self._bar_ns - 1
        try:
            while not self._stopping.is_set():
                wait: float | None = None
                if self.market_hours_only:
                    clock = await self._clock()
                    if clock is not None and not clock.is_open:
                        await self._idle_until_open(clock)
                        continue
                    wait = self._until_next_check(clock)
                if self.idle:
                    self._reopen()
                if self._stream is None:
                    self._start_stream()
                await self._pump(None if wait is None else loop.time() + wait)
        except _Stopped:
            pass
        finally:
            await self._close_stream()
