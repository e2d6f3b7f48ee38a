"""The account's caps in Redis: trades per day and per hour, the day's loss and the gross
exposure, checked and counted for each order in one Lua script (so two bots racing for
the account's last trade of the day never both get it), with the last counts mirrored in
memory for while Redis is away. A mixin of :class:`~quantshift.state.shared.AccountStore`,
which owns the connection.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from redis.exceptions import RedisError

from quantshift.domain import NS_PER_SECOND, OrderIntent

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from quantshift.state.lease import Lease

T = TypeVar("T")
NS_PER_DAY = 86_400 * NS_PER_SECOND
HOUR_MS = 3_600_000

# Check the caps and count one entry, atomically. A cap of 0 is no cap; ``ARGV[10]`` = 1
# counts without checking (an entry sent while Redis was away, added back, or an exit).
# ``ARGV[11]``: the lease value this instance holds (the fencing check, exits included),
# '' where no lease applies.
RESERVE = """
if ARGV[11] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[11] then
  return {0, "not the primary: the lease is no longer this instance's"}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {1, 'counted'} end
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - 3600000)
local h = redis.call('ZCARD', KEYS[3])
local pnl = 0
for _, v in ipairs(redis.call('HVALS', KEYS[4])) do pnl = pnl + tonumber(v) end
local gross = 0
for _, v in ipairs(redis.call('HVALS', KEYS[5])) do gross = gross + tonumber(v) end
local notional = tonumber(ARGV[8])
if ARGV[10] ~= '1' then
  local cap = tonumber(ARGV[4])
  if cap > 0 and n >= cap then
    return {0, 'account trades per day: ' .. n .. ' >= ' .. ARGV[4]}
  end
  cap = tonumber(ARGV[5])
  if cap > 0 and h >= cap then
    return {0, 'account trades per hour: ' .. h .. ' >= ' .. ARGV[5]}
  end
  cap = tonumber(ARGV[6])
  if cap > 0 and pnl <= -cap then
    return {0, string.format('account daily loss: day P&L %.2f <= -%s', pnl, ARGV[6])}
  end
  cap = tonumber(ARGV[7])
  if cap > 0 and gross + notional > cap then
    return {0, string.format('account exposure: %.2f + %.2f > %s', gross, notional, ARGV[7])}
  end
end
redis.call('INCR', KEYS[1])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('PEXPIRE', KEYS[3], 3600000)
redis.call('HINCRBYFLOAT', KEYS[5], ARGV[9], ARGV[8])
redis.call('EXPIREAT', KEYS[5], ARGV[3])
return {1, tostring(n + 1), tostring(h + 1), tostring(pnl), tostring(gross + notional)}
"""


@dataclass(frozen=True, slots=True)
class Caps:
    """The account's caps (the bot's risk profile); 0 = none."""

    trades_per_day: int = 0
    trades_per_hour: int = 0
    daily_loss: float = 0.0
    exposure: float = 0.0


@dataclass(slots=True)
class Mirror:
    """The last counts read from Redis, and what was counted here while it was away."""

    day: int = -1
    trades: int = 0
    hour: list[int] = field(default_factory=list)  # ms of the last hour's entries
    pnl: float = 0.0
    gross: float = 0.0
    coids: set[str] = field(default_factory=set)
    offline: list[tuple[str, int, float]] = field(default_factory=list)  # coid, ts, notional


def day_end(day: int) -> int:
    """When a day's keys expire (epoch seconds): the UTC day's end, or a minute from now
    for a day already over (bar times of a replayed day)."""
    return max((day + 1) * 86_400, int(time.time()) + 60)


class AccountCaps:
    """The caps' half of the account store (the connection and the state live there)."""

    caps: Caps
    instance: str
    lease: Lease | None
    up: bool
    ever_up: bool
    live: bool
    grace: float
    down_since: float | None
    last_error: str
    duplicate: str | None
    _sends: bool
    _mirror: Mirror
    _counted: dict[str, tuple[int, float]]
    _report: tuple[int, float, float] | None
    _client: aioredis.Redis
    _reserve: Any

    if TYPE_CHECKING:  # the store's own
        @property
        def sends(self) -> bool: ...

        @property
        def _lease_key(self) -> str: ...

        def key(self, name: str) -> str: ...

        async def bounded(self, aw: Awaitable[T]) -> T: ...

        def _down(self, exc: BaseException) -> None: ...

        def _save(self) -> None: ...

    # -- the counters ------------------------------------------------------------------
    def entry_refusal(self) -> str | None:
        """Why entries must wait for the store now (live phases, orders that reach the
        broker): never before the grace is out, at once if it never answered."""
        if self.duplicate is not None and self.sends:
            return (f"another process ({self.duplicate}) runs as instance {self.instance}; "
                    "new entries wait until it stops")
        if self.up or not (self.live and self.sends) or self.down_since is None:
            return None
        away = time.monotonic() - self.down_since
        if self.ever_up and away < self.grace:
            return None
        return (f"shared store unreachable for {away:.0f}s ({self.last_error}); new entries "
                "wait for it, exits pass")

    async def reserve(self, intent: OrderIntent, notional: float,
                      check: bool = True) -> str | None:
        """Count one order against the account's caps; why it may not go, or None.
        ``check=False`` (an exit): counted, never refused by the caps. Under a lease, only
        the primary's orders go, and Redis checks that it still is, in the same script."""
        if not self._sends:
            return None
        lease = self.lease
        if lease is not None and not lease.primary:
            return f"not the primary: {lease.holder or 'no instance'} holds the lease"
        if self.up:
            try:
                return await self._call_reserve(intent.client_order_id, intent.ts, notional,
                                                force=not check)
            except (RedisError, OSError, TimeoutError) as exc:
                self._down(exc)
                if lease is not None and not lease.primary:  # the call outlived the lease
                    return "not the primary: the lease lapsed while Redis did not answer"
        why = self.entry_refusal() if check else None
        return why if why is not None else self._reserve_offline(intent, notional, check)

    async def _call_reserve(self, coid: str, ts: int, notional: float,
                            force: bool = False) -> str | None:
        day = ts // NS_PER_DAY
        caps = self.caps
        out = await self.bounded(self._reserve(
            keys=[self.key(f"trades:{day}"), self.key(f"coids:{day}"), self.key("hour"),
                  self.key(f"pnl:{day}"), self.key(f"exposure:{day}"), self._lease_key],
            args=[coid, ts // 1_000_000, day_end(day), caps.trades_per_day,
                  caps.trades_per_hour, repr(float(caps.daily_loss)),
                  repr(float(caps.exposure)), repr(float(notional)), self.instance,
                  "1" if force else "0",
                  self.lease.token() if self.lease is not None else ""]))
        if int(out[0]) == 0:
            return _text(out[1])
        self._count_own(coid, ts, notional)
        if len(out) > 2:
            m = self._mirror
            if m.day != day:
                m.day, m.coids, m.hour = day, set(), []
            m.trades, m.pnl, m.gross = int(_text(out[1])), float(_text(out[3])), \
                float(_text(out[4]))
            m.hour = [*m.hour, ts // 1_000_000][-int(_text(out[2])):]
            m.coids.add(coid)
        return None

    def _reserve_offline(self, intent: OrderIntent, notional: float,
                         check: bool) -> str | None:
        m = self._mirror
        day, now = intent.ts // NS_PER_DAY, intent.ts // 1_000_000
        if m.day != day:
            m.day, m.trades, m.pnl, m.coids = day, 0, 0.0, set()
        if intent.client_order_id in m.coids:
            return None
        m.hour = [t for t in m.hour if t > now - HOUR_MS]
        why = self._over_caps(m, notional) if check else None
        if why is not None:
            return why
        m.trades += 1
        m.hour.append(now)
        m.gross += notional
        m.coids.add(intent.client_order_id)
        m.offline.append((intent.client_order_id, intent.ts, notional))
        self._count_own(intent.client_order_id, intent.ts, notional)
        self._save()
        return None

    def _count_own(self, coid: str, ts: int, notional: float) -> None:
        """This instance's orders of the day, put back should Redis lose its counts."""
        counted = self._counted
        if counted and next(iter(counted.values()))[0] // NS_PER_DAY != ts // NS_PER_DAY:
            counted.clear()
        counted[coid] = (ts, notional)

    def _over_caps(self, m: Mirror, notional: float) -> str | None:
        caps = self.caps
        if caps.trades_per_day and m.trades >= caps.trades_per_day:
            return f"account trades per day: {m.trades} >= {caps.trades_per_day} (in memory)"
        if caps.trades_per_hour and len(m.hour) >= caps.trades_per_hour:
            return f"account trades per hour: {len(m.hour)} >= {caps.trades_per_hour} " \
                   "(in memory)"
        if caps.daily_loss and m.pnl <= -caps.daily_loss:
            return f"account daily loss: day P&L {m.pnl:.2f} <= -{caps.daily_loss:g} " \
                   "(in memory)"
        if caps.exposure and m.gross + notional > caps.exposure:
            return f"account exposure: {m.gross:.2f} + {notional:.2f} > {caps.exposure:g} " \
                   "(in memory)"
        return None

    def report(self, day: int, pnl: float, gross: float) -> None:
        """This instance's P&L of the day and gross exposure (written on the next turn of
        the link; only an instance whose orders reach the broker writes them)."""
        if self.sends:
            self._report = (day, pnl, gross)
            m = self._mirror
            if not self.up and m.day == day:
                m.gross = gross  # this instance's part: the others' stay as last read

    async def counts(self, day: int) -> dict[str, Any]:
        """The account's counts of ``day`` as Redis holds them (for tests and the CLI)."""
        c, b = self._client, self.bounded
        trades = await b(c.get(self.key(f"trades:{day}")))
        return {"trades": int(trades or 0),
                "coids": sorted(_text(x) for x in await b(c.smembers(self.key(f"coids:{day}")))),
                "pnl": {_text(k): float(v) for k, v in
                        (await b(c.hgetall(self.key(f"pnl:{day}")))).items()},
                "exposure": {_text(k): float(v) for k, v in
                             (await b(c.hgetall(self.key(f"exposure:{day}")))).items()}}


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
