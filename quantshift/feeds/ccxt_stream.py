"""Closed bars from a ccxt.pro candle websocket (``watchOHLCV``): a mixin of CcxtFeed.

ccxt hands candles over as ``[open time, o, h, l, c, v]``, without the exchange's "closed"
flag, so a candle counts as closed once a newer one has started (Binance sends the first
update of the next candle right after the last one of the old). A session:

1. backfills by REST (``fetch_ohlcv``) every closed bar since the last one delivered;
2. watches the candles and, on every update, delivers those a newer candle has superseded;
   should the stream skip a bar (a bar closed between the backfill and the subscription),
   the bars in between come from REST first: never a gap, never a bar twice;
3. at each bar boundary plus a grace, asks REST for a bar the stream has not closed yet (a
   quiet market, a late exchange), counted in ``fallback_polls``; until then, while a bar
   is due, it looks at ccxt's candle cache every few milliseconds, as ccxt does not wake a
   watch for an update that landed before the watch was renewed;
4. ends on any stream error, or when nothing arrived for two bar lengths (a stalled socket
   that still answers pings). The websocket is closed, the feed backs off with jitter and
   starts a new session, with its own backfill.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import ccxt.async_support as ccxt_async
from loguru import logger

from quantshift.aio import within
from quantshift.backoff import Backoff, until_stopped
from quantshift.domain import Bar

_RECHECK = 0.02  # seconds between looks at ccxt's candle cache while a bar is due


class StreamStalled(Exception):
    """The websocket is open but has said nothing for too long."""


class CandleStream:
    """Needs from the feed: the exchange, symbols, timeframe, bar lengths, backoff, and
    its REST poll, fetch and delivery."""

    exchange: Any
    exchange_id: str
    symbols: list[str]
    timeframe: str
    bar_seconds: float
    grace: float
    backoff: Backoff
    failures: int
    _bar_ms: int
    _last: dict[str, int]
    _stopping: asyncio.Event

    if TYPE_CHECKING:
        async def _poll(self) -> bool: ...
        async def _fetch_closed(self, symbol: str, since_ms: int) -> list[Bar]: ...
        def _deliver(self, bar: Bar) -> bool: ...
        def _since(self, symbol: str) -> int: ...
        def _behind(self) -> bool: ...
        def _to_bar(self, symbol: str, row: list[Any]) -> Bar | None: ...

    def _init_stream(self) -> None:
        # Binance's first update of a new candle follows the close within a second or two.
        self.ws_grace = max(self.grace, min(0.5 * self.bar_seconds, 5.0))
        self.stall_after = 2 * self.bar_seconds + self.ws_grace
        self.ws_sessions = 0     # websocket sessions started (the first, then reconnects)
        self.ws_updates = 0      # candle updates received
        self.ws_bars = 0         # bars delivered from the stream
        self.gap_fills = 0       # REST fetches for bars the stream skipped
        self.fallback_polls = 0  # REST polls for a bar the stream had not closed in time
        self.reconnects = 0

    async def _run_stream(self) -> None:
        while not self._stopping.is_set():
            error: BaseException | None = None
            try:
                if not await self._poll():  # the backfill; what it missed, a gap fill gets
                    self.failures += 1
                await self._session()
            except (ccxt_async.BaseError, StreamStalled) as exc:
                error = exc
            finally:
                await self._close_sockets()
            if self._stopping.is_set():
                return
            self.reconnects += 1
            delay = self.backoff.next_delay()
            logger.warning("feed ccxt: {} candle websocket lost ({!r}); reconnecting in "
                           "{:.2f} s", self.exchange_id, error, delay)
            with contextlib.suppress(TimeoutError):
                await within(self._stopping.wait(), delay)

    def _watch(self, key: str | None) -> Awaitable[Any]:
        if key is None:
            return self.exchange.watch_ohlcv_for_symbols(  # type: ignore[no-any-return]
                [[s, self.timeframe] for s in self.symbols])
        return self.exchange.watch_ohlcv(key, self.timeframe)  # type: ignore[no-any-return]

    async def _session(self) -> None:
        """One websocket session; returns when the feed stops, raises when the stream
        fails or stalls."""
        self._forget_candles()
        self.ws_sessions += 1
        logger.info("feed ccxt: {} candles by websocket ({} {})", self.exchange_id,
                    ",".join(self.symbols), self.timeframe)
        # One subscription for all symbols where the exchange can, else one per symbol.
        keys: list[str | None] = [None] if self.exchange.has.get("watchOHLCVForSymbols") \
            else list(self.symbols)
        watches: dict[asyncio.Future[Any], str | None] = {
            asyncio.ensure_future(self._watch(k)): k for k in keys}
        stop = asyncio.ensure_future(self._stopping.wait())
        heard = time.monotonic()
        polled = -1  # the bar slot of the last REST fallback
        try:
            while True:
                # While a bar is due (the grace after a boundary), look at the cache often;
                # after it, sleep until the next boundary.
                phase = time.time() % self.bar_seconds
                if phase < self.ws_grace:
                    tick = self.ws_grace - phase
                    if self._behind():
                        tick = min(tick, _RECHECK)
                else:
                    tick = self.bar_seconds - phase
                done, _ = await asyncio.wait({*watches, stop}, timeout=tick,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return
                if not done:
                    if time.monotonic() - heard >= self.stall_after:
                        raise StreamStalled(f"no candle for {self.stall_after:g} s")
                    await self._deliver_stream()
                    now = time.time()
                    slot = int(now // self.bar_seconds)
                    if now % self.bar_seconds >= self.ws_grace and slot != polled \
                            and self._behind():
                        polled = slot  # once per bar: REST may not have the bar yet either
                        self.fallback_polls += 1
                        await self._poll()
                    continue
                for fut in done:
                    key = watches.pop(fut)
                    if fut.cancelled():  # ccxt closed the socket under the watch
                        raise ccxt_async.NetworkError("the candle websocket was closed")
                    fut.result()  # a stream error ends the session
                    watches[asyncio.ensure_future(self._watch(key))] = key
                heard = time.monotonic()
                self.ws_updates += len(done)
                self.backoff.succeeded()
                await self._deliver_stream()
        finally:
            stop.cancel()
            for fut in watches:
                fut.cancel()
            if watches:
                await asyncio.wait(list(watches), timeout=1.0)

    def _candles(self, symbol: str, after: int) -> list[list[Any]]:
        """The stream's candles of ``symbol`` opening after ``after``, oldest first."""
        ohlcvs = getattr(self.exchange, "ohlcvs", None)
        cache = (ohlcvs.get(symbol) or {}).get(self.timeframe) if isinstance(ohlcvs, dict) \
            else None
        rows: list[list[Any]] = []
        # ccxt appends new candles and updates a known one in place, so the new ones are
        # at the end: read backwards to the first one already delivered.
        for row in reversed(cache or ()):
            if not row or row[0] is None:
                continue
            if row[0] <= after:
                break
            rows.append(row)
        return sorted(rows, key=lambda r: r[0])

    def _forget_candles(self) -> None:
        """Drop what an earlier session cached: a candle it saw in progress may have changed
        while the socket was down."""
        ohlcvs = getattr(self.exchange, "ohlcvs", None)
        if isinstance(ohlcvs, dict):
            for symbol in self.symbols:
                (ohlcvs.get(symbol) or {}).pop(self.timeframe, None)

    def _gap(self, symbol: str, rows: list[list[Any]]) -> bool:
        """Whether the stream skipped a bar after the last one delivered (``rows``: the
        candles after it)."""
        last = self._last.get(symbol)
        if last is None or not rows:
            return False  # nothing delivered yet: start wherever the stream starts
        times = [int(r[0]) for r in rows]
        if times[0] != last + self._bar_ms:
            return True
        return any(b - a != self._bar_ms for a, b in itertools.pairwise(times))

    async def _deliver_stream(self) -> None:
        for symbol in self.symbols:
            rows = self._candles(symbol, self._since(symbol) - 1)
            if len(rows) < 2:
                continue  # nothing superseded yet: the newest candle may still change
            if self._gap(symbol, rows):
                self.gap_fills += 1
                for bar in await until_stopped(
                        self._fetch_closed(symbol, self._since(symbol)), self._stopping):
                    self._deliver(bar)
            for row in rows[:-1]:
                if row[0] >= self._since(symbol):
                    bar = self._to_bar(symbol, row)
                    if bar is not None and self._deliver(bar):
                        self.ws_bars += 1

    async def _close_sockets(self) -> None:
        """Close the websockets (the REST session stays); the next watch dials anew."""
        clients = getattr(self.exchange, "clients", None)
        if not isinstance(clients, dict):
            return
        for url, client in list(clients.items()):
            with contextlib.suppress(Exception):
                await within(client.close(), 2.0)
            clients.pop(url, None)
