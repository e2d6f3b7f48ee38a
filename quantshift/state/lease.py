"""Which instance of a bot trades: one lease per account and bot, in Redis.

The holder is the primary; every other instance is a standby that runs the same bars and
strategies with its orders going nowhere. The lease is ``SET NX PX`` under a script that
also counts the acquisitions: the count is the **fencing token** (``lease_epoch``), and
the lease's value carries it. The holder renews with compare-and-extend every third of
the TTL and believes itself primary only until ``ttl - margin`` after the last renewal it
*sent*, so a primary that cannot renew (Redis away, a partition, a frozen process) stops
sending before any other instance can acquire. Each order's clearance checks the value
in Redis atomically with the account's caps (state/shared.py), so a primary that lost the
lease while it was frozen is refused even before it notices.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger
from redis.exceptions import RedisError

from quantshift.aio import within

if TYPE_CHECKING:
    from quantshift.state.shared import AccountStore

_ALERT_LEASE = logger.bind(alert="lease")
READY_MS = 2_500  # how long a standby's "ready to take over" lasts unrenewed

# KEYS: lease, epoch counter, handover target. ARGV: instance|nonce, ttl ms, instance, the
# highest epoch this instance knows of (a Redis that lost its data must not count again
# from 1: the token would repeat). Returns {epoch, value} when acquired, {0, holder's value
# or '', ms it has left} when not.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur, redis.call('PTTL', KEYS[1])} end
local to = redis.call('GET', KEYS[3])
if to and to ~= ARGV[3] then return {0, '', redis.call('PTTL', KEYS[3])} end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[4]) or 0
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[2], e)
end
local v = e .. '|' .. ARGV[1]
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return {e, v}
"""

# Compare-and-extend: 1 when the lease is still ours, else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# The holder's last state (positions, counters), for the next primary to start from.
_SAVE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

# Compare-and-delete, naming who is to take it next (ARGV[2], '' for anyone).
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
return 1
"""


class Role(StrEnum):
    AUTO = "auto"  # primary when the lease is free, standby while another holds it
    PRIMARY = "primary"  # the same, and says so loudly when it has to wait as a standby
    STANDBY = "standby"  # never takes the lease (a shadow of the new code)


def holder_of(value: str | None) -> tuple[int, str]:
    """(epoch, instance) of a lease value ``epoch|instance|nonce``."""
    if not value:
        return 0, ""
    parts = value.split("|")
    try:
        return int(parts[0]), parts[1] if len(parts) > 1 else ""
    except ValueError:
        return 0, ""


class Lease:
    """This instance's side of the bot's lease on the account."""

    def __init__(self, store: AccountStore, bot: str, role: Role, ttl: float, *,
                 margin: float | None = None, quiet: bool = False, floor: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.role = role
        self.quiet = quiet  # a lease of another kind (the shared feed's) says its own words
        self.ttl = ttl
        # Renewals go out every ttl/3; believing ourselves primary stops this long before
        # the key can expire in Redis (clock rates and the call's own time).
        self.margin = margin if margin is not None else min(0.5, ttl / 6)
        self._store = store
        self._clock = clock
        self._keys = [store.key(f"lease:{bot}"), store.key(f"lease:{bot}:epoch"),
                      store.key(f"lease:{bot}:handover"), store.key(f"lease:{bot}:snapshot")]
        self._me = f"{store.instance}|{os.getpid()}-{time.time_ns()}"
        self.key = self._keys[0]
        self._ready = store.key(f"lease:{bot}:ready:")  # + instance: a standby able to lead
        client = store.client
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._save = client.register_script(_SAVE)
        self.value: str | None = None  # ours, while we hold it
        self.epoch = 0  # the fencing token of the lease held (or last seen held)
        self.floor = floor  # the highest token known (the ledger's, at start): never reused
        self.holder = ""  # the instance that holds it, as last read
        self._until = 0.0
        self._quiet_until = 0.0  # after a handover: leave the lease to the others a while
        self._said_waiting = False
        self._next_try: float | None = None  # when the holder's lease runs out, as last read
        self.on_acquire: Callable[[int], None] | None = None  # must not block renewals
        self.on_lose: Callable[[str], None] | None = None
        self._wake = asyncio.Event()
        self.channel = store.key(f"lease:{bot}:released")  # a handover says so at once here

    # -- reads (the control plane asks these before every order) ------------------------
    @property
    def instance(self) -> str:
        return self._store.instance

    @property
    def primary(self) -> bool:
        return self.value is not None and self._clock() < self._until

    def token(self) -> str:
        """The value the account's clearance compares with Redis's ('' when not held)."""
        return self.value or ""

    def view(self) -> dict[str, Any]:
        return {"configured": str(self.role), "lease_epoch": self.epoch,
                "holder": self.holder or None, "ttl_s": self.ttl}

    # -- the loop -----------------------------------------------------------------------
    async def run(self) -> None:
        period = self.ttl / 3
        while True:
            started = self._clock()
            try:
                await self.turn(started)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                if self.value is not None and self._clock() >= self._until:
                    self._lost(f"the lease could not be renewed ({type(exc).__name__})")
            wait = period - (self._clock() - started)
            if self._next_try is not None:  # try right when the holder's lease runs out
                wait = min(wait, self._next_try - self._clock())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await within(self._wake.wait(), max(wait, 0.005))

    def wake(self, to: object = None) -> None:
        """Another instance released the lease (a handover, naming ``to`` or nobody): try
        for it now, not at the next turn; named, even right after handing it over itself."""
        if _text(to) == self.instance:
            self._quiet_until = 0.0
        self._next_try = None
        self._wake.set()

    async def turn(self, started: float | None = None) -> None:
        """One renewal (holding) or one try to acquire (not holding)."""
        started = self._clock() if started is None else started
        b = self._store.bounded
        ttl_ms = int(self.ttl * 1000)
        if self.value is not None:
            if int(await b(self._renew(keys=self._keys[:1], args=[self.value, ttl_ms]))):
                self._until = started + self.ttl - self.margin
                return
            self._lost("another instance holds the lease now")
        if self.role is Role.STANDBY or started < self._quiet_until:
            self.epoch, self.holder = holder_of(_text(
                await b(self._store.client.get(self._keys[0]))))
            return
        self.floor = max(self.floor, self.epoch)
        out = await b(self._acquire(keys=self._keys,
                                    args=[self._me, ttl_ms, self._store.instance, self.floor]))
        epoch, value = int(out[0]), _text(out[1])
        self._next_try = None
        if not epoch:
            if len(out) > 2 and int(out[2]) >= 0:
                self._next_try = started + int(out[2]) / 1000 + 0.005
            if value:
                self.epoch, self.holder = holder_of(value)
            if self.role is Role.PRIMARY and not self._said_waiting:
                self._said_waiting = True
                logger.warning("lease: instance {} holds the lease (epoch {}); this one "
                               "(role primary) is a standby until it frees", self.holder,
                               self.epoch)
            return
        self.value, self.epoch, self.holder = value, epoch, self._store.instance
        self._until = started + self.ttl - self.margin
        self._said_waiting = False
        if not self.quiet:
            logger.warning("lease: this instance is the primary (lease epoch {})", epoch)
        if self.on_acquire is not None:
            self.on_acquire(epoch)

    def _lost(self, why: str) -> None:
        self.value = None
        if not self.quiet:  # a switch of primaries is operations, not an error of this one
            _ALERT_LEASE.warning("lease: no longer the primary: {}; orders stop, this "
                                 "instance is a standby", why)
        if self.on_lose is not None:
            self.on_lose(why)

    async def save(self, state: dict[str, Any]) -> bool:
        """Leave this primary's state (the engine's snapshot) for the next one; only while
        the lease is ours."""
        value = self.value
        if value is None:
            return False
        body = orjson.dumps({"epoch": self.epoch, "instance": self._store.instance,
                             "at_ms": time.time_ns() // 1_000_000, "state": state}).decode()
        return bool(int(await self._store.bounded(self._save(
            keys=[self._keys[0], self._keys[3]], args=[value, body]))))

    async def mark_ready(self) -> None:
        """This standby can take over now (its feed is fresh): said every second, it lasts
        2.5 s, so a standby that froze or lost its feed is not ready for long."""
        await self._store.bounded(self._store.client.set(
            f"{self._ready}{self._store.instance}", "1", px=READY_MS))

    async def ready(self, to: str = "") -> list[str]:
        """The standbys that said they can take over (``to`` alone, when named)."""
        client = self._store.client
        if to:
            found = await self._store.bounded(client.exists(f"{self._ready}{to}"))
            return [to] if found else []

        async def scan() -> list[str]:
            return [_text(k)[len(self._ready):] async for k in
                    client.scan_iter(match=f"{self._ready}*", count=100)]

        return [n for n in await self._store.bounded(scan()) if n != self._store.instance]

    async def last_state(self) -> dict[str, Any] | None:
        """What the last primary left (``save``): epoch, instance, at_ms and state."""
        raw = await self._store.bounded(self._store.client.get(self._keys[3]))
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        return doc if isinstance(doc, dict) and isinstance(doc.get("state"), dict) else None

    async def release(self, to: str = "") -> bool:
        """Give the lease up (a handover): True when it was ours. ``to`` names the only
        instance that may take it next (for a few TTLs)."""
        value = self.value
        if value is None:
            return False
        self.value = None
        self._quiet_until = self._clock() + 2 * self.ttl
        try:
            done = int(await self._store.bounded(self._release(
                keys=[self._keys[0], self._keys[2]], args=[value, to, int(self.ttl * 3000)])))
        finally:  # released or left to expire: not this instance's from here on
            if self.on_lose is not None:
                self.on_lose("handed over")
        if not self.quiet:
            logger.warning("lease: released (epoch {}){}", self.epoch,
                           f" for instance {to}" if to else "")
        with contextlib.suppress(RedisError, OSError, TimeoutError):  # they try at once
            await self._store.bounded(self._store.client.publish(self.channel, to))
        return bool(done)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else "" if value is None else str(value)
