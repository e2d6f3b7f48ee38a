"""One market-data connection for every instance of a bot.

Alpaca allows one market-data websocket per account, so instances of one bot cannot each
open their own. The instance holding the bot's *feed lease* (the lease of state/lease.py
under another name, independent of which instance trades) runs the venue's feed and
appends every bar it delivers to a capped Redis stream; the others read the stream, so a
standby sees every bar the source sees, in the same order. When the source stops (a
handover, a stop, a kill: its lease runs out) another instance takes the lease, fills the
gap since its last bar through the venue's REST history (the venue feed's own backfill on
connect), opens the websocket and publishes from there.

While Redis is away the source keeps its websocket (nobody can take the lease meanwhile)
and the readers get nothing: their bars stop, the feed watch marks them stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger
from redis.exceptions import RedisError

from quantshift.aio import within
from quantshift.domain import NS_PER_SECOND, Bar
from quantshift.feeds.base import BarValidator, Feed
from quantshift.state.lease import Lease, Role

if TYPE_CHECKING:
    from quantshift.state.shared import AccountStore

STREAM_MAXLEN = 10_000  # bars kept (approximately): hours of a few symbols' minute bars
_BLOCK_MS = 500
_BACKLOG = 10_000  # bars waiting for Redis at the source; the oldest go first
_REDIS = (RedisError, OSError, TimeoutError)

# make(last): a new venue feed that delivers only bars after ``last`` (ts per symbol),
# filling the gap since through REST when it connects.
MakeFeed = Callable[[dict[str, int]], Feed]


def encode(bar: Bar) -> dict[str, str]:
    return {"s": bar.symbol, "t": str(bar.ts), "o": repr(bar.open), "h": repr(bar.high),
            "l": repr(bar.low), "c": repr(bar.close), "v": repr(bar.volume)}


def decode(fields: dict[Any, Any]) -> Bar | None:
    """A bar from a stream entry; None for an entry that is not one."""
    try:
        f = {(k.decode() if isinstance(k, bytes) else str(k)):
             (v.decode() if isinstance(v, bytes) else str(v)) for k, v in fields.items()}
        return Bar(f["s"], int(f["t"]), float(f["o"]), float(f["h"]), float(f["l"]),
                   float(f["c"]), float(f["v"]))
    except (KeyError, ValueError, UnicodeDecodeError):
        return None


class SharedFeed:
    """A venue feed shared by the instances of one bot through a Redis stream."""

    def __init__(self, make: MakeFeed, store: AccountStore, bot: str, ttl: float) -> None:
        self._make = make
        self._first: Feed | None = make({})  # the history's; run makes its own
        self.name = self._first.name
        self.validator = BarValidator(f"{self.name} (shared)")  # what the stream brings
        self.bar_seconds = self._first.bar_seconds
        self.last_bar_at = 0.0
        self.source = False  # whether this instance holds the venue's connection
        self.published = 0
        self.read = 0
        self.dropped = 0  # bars the source could not append while Redis was away
        self._store = store
        self._lease = Lease(store, f"{bot}:feed", Role.AUTO, ttl, quiet=True)
        self._key = store.key(f"bars:{bot}")
        self._idle_key = store.key(f"bars:{bot}:idle")
        self._period = ttl / 3
        self._bar_ns = int(self.bar_seconds * NS_PER_SECOND)
        self._last: dict[str, int] = {}
        self._default = 0
        self._inner: Feed | None = None
        self._out: list[Bar] = []
        self._idle = False
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._on_bar: Callable[[Bar], None] | None = None
        self._said_down = False

    @property
    def idle(self) -> bool:
        """The venue's market is closed (as the source's feed knows it)."""
        inner = self._inner
        return bool(getattr(inner, "idle", False)) if self.source and inner else self._idle

    @property
    def holder(self) -> str:
        return self._lease.holder

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._inner is not None:
            self._inner.stop()

    async def history(self, count: int) -> list[Bar]:
        first = self._first
        bars = await first.history(count) if first is not None else []
        for bar in bars:
            self._last[bar.symbol] = max(bar.ts, self._last.get(bar.symbol, 0))
        return bars

    # -- the loop ---------------------------------------------------------------------
    async def run(self, on_bar: Callable[[Bar], None]) -> None:
        self._on_bar = on_bar
        self._first = None
        now = time.time_ns()
        # A symbol without history starts with the bar that closed last.
        self._default = now - now % self._bar_ns - self._bar_ns - 1 if self._bar_ns else 0
        pump: asyncio.Task[None] | None = None
        try:
            while not self._stopping.is_set():
                # Redis away: keep what it is (nobody can take the feed meanwhile).
                with contextlib.suppress(*_REDIS):
                    await self._lease.turn()
                want = self._lease.value is not None
                if pump is not None and pump.done():
                    pump.result()  # the venue feed's own error is the daemon's to see
                    if self.source:
                        return  # the source ended (a file, or stopped)
                    pump = None
                if pump is None or want != self.source:
                    if pump is not None:
                        await self._end(pump)
                    pump = self._begin(want)
                await self._publish()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await within(self._wake.wait(), self._period)
        finally:
            if pump is not None:
                await self._end(pump)
            if self._lease.value is not None:  # another instance takes the feed at once
                with contextlib.suppress(*_REDIS):
                    await self._publish()
                    await self._lease.release()

    def _begin(self, source: bool) -> asyncio.Task[None]:
        self.source = source
        if source:
            logger.warning("feed {}: this instance holds the venue's connection and shares "
                           "its bars (feed lease epoch {})", self.name, self._lease.epoch)
            inner = self._inner = self._make({s: self._after(s) for s in self._last})
            return asyncio.create_task(inner.run(self._tee), name="feed-source")
        self._out.clear()  # the new source publishes its own
        logger.warning("feed {}: reading the bars instance {} shares", self.name,
                       self._lease.holder or "(none yet)")
        return asyncio.create_task(self._read(), name="feed-reader")

    async def _end(self, pump: asyncio.Task[None]) -> None:
        inner, self._inner = self._inner, None
        if inner is not None and self.source:
            inner.stop()
            with contextlib.suppress(TimeoutError):
                await within(asyncio.shield(pump), 1.5)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump

    # -- the source ---------------------------------------------------------------------
    def _after(self, symbol: str) -> int:
        return self._last.get(symbol, self._default)

    def _deliver(self, bar: Bar) -> None:
        self._last[bar.symbol] = bar.ts
        self.last_bar_at = time.monotonic()
        assert self._on_bar is not None
        self._on_bar(bar)

    def _tee(self, bar: Bar) -> None:
        """A bar of the venue feed (validated there): here first, then to the stream."""
        self._deliver(bar)
        self._out.append(bar)
        if len(self._out) > _BACKLOG:
            del self._out[0]
            self.dropped += 1
        self._wake.set()

    async def _publish(self) -> None:
        if not self.source:
            return
        bars, self._out = self._out, []
        try:
            pipe = self._store.client.pipeline(transaction=False)
            for bar in bars:
                pipe.xadd(self._key, encode(bar), maxlen=STREAM_MAXLEN, approximate=True)
            pipe.set(self._idle_key, "1" if self.idle else "0", px=int(self._period * 9000))
            await self._store.bounded(pipe.execute())
        except _REDIS as exc:
            self._out = bars + self._out  # again next time, in order
            if not self._said_down:
                self._said_down = True
                logger.warning("feed {}: cannot share bars ({}); the other instances see "
                               "none until Redis answers", self.name, type(exc).__name__)
            return
        self._said_down = False
        self.published += len(bars)

    # -- the readers --------------------------------------------------------------------
    async def _read(self) -> None:
        client, key = self._store.client, self._key
        cursor: str | None = None
        while True:
            try:
                if cursor is None:  # the recent bars first: those after the last one seen
                    recent = await self._store.bounded(client.xrevrange(key, count=500))
                    cursor = _text(recent[0][0]) if recent else "0-0"
                    self._take([fields for _, fields in reversed(recent)])
                got = await within(client.xread({key: cursor}, count=1000, block=_BLOCK_MS),
                                   _BLOCK_MS / 1000 + 2.0)
                for _, entries in got or ():
                    if entries:
                        cursor = _text(entries[-1][0])
                    self._take([fields for _, fields in entries])
                idle = _text(await self._store.bounded(client.get(self._idle_key))) == "1"
                if self._idle and not idle:
                    self.last_bar_at = time.monotonic()  # silence is counted from the open
                self._idle = idle
                self._said_down = False
            except asyncio.CancelledError:
                raise
            except _REDIS as exc:
                if not self._said_down:
                    self._said_down = True
                    logger.warning("feed {}: the shared bars cannot be read ({}); trying "
                                   "again", self.name, type(exc).__name__)
                await asyncio.sleep(0.5)

    def _take(self, entries: list[Any]) -> None:
        for fields in entries:
            bar = decode(fields)
            if bar is None:
                self.validator.reject("not a bar", repr(fields)[:200])
                continue
            if bar.ts <= self._after(bar.symbol):
                continue  # seen already (history, or the stream's overlap)
            if self.validator.accept(bar):
                self.read += 1
                self._deliver(bar)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
