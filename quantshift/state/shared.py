"""The account's shared state in Redis: the kill switch, the caps' counters, the exposure.

Several instances of one bot, and several bots of one account, see one trading state and
one set of caps (``QUANTSHIFT_REDIS_URL``; without it nothing here runs). Keys, all under
``quantshift:<account>:``:

* ``control`` the account's trading state (active, reducing or halted, and a demotion),
  a JSON document numbered from ``control:seq`` and carrying the count of flattens from
  ``control:flatten``; every new one is also published on the ``control`` channel (pub/sub
  for speed; the key is the truth, read again on every start and reconnect). A flatten is
  an event: it is done once per instance (``flatten`` counts them), live or when missed by
  an instance that was away for at most ``FLATTEN_WINDOW_S``;
* ``instance:<name>`` held by the process running as that instance (two processes with
  one name would take each other's counts);
* ``decisions:<instance>`` a capped stream of each instance's decisions (bar time, symbol,
  strategy, version, signal, outcome, reason, orders), which ``quantshift compare
  --against`` lines up bar by bar;
* ``trades:<day>`` the orders sent on a UTC day, ``coids:<day>`` their client order ids
  (an order is counted once however often it is asked for), ``hour`` the last hour's
  orders, ``pnl:<day>`` each instance's P&L of the day, ``exposure:<day>`` each instance's
  gross notional. The day's keys expire at the day's end.

A reservation (``reserve``, state/caps.py) checks the caps and counts the entry in one Lua
script, so two bots racing for the last trade of the day never both get it. While Redis
cannot be reached the counts go on in memory from the last values read, and are added back
on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from loguru import logger
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, InvalidResponse, RedisError, ResponseError

from quantshift.aio import within
from quantshift.errors import ConfigError
from quantshift.state.caps import (  # noqa: F401  (Caps, NS_PER_DAY: the store's API)
    NS_PER_DAY,
    RESERVE,
    AccountCaps,
    Caps,
    Mirror,
    day_end,
)

if TYPE_CHECKING:
    from quantshift.state.lease import Lease

T = TypeVar("T")
SETTING = "QUANTSHIFT_REDIS_URL"
LINK_KEY = "account_link"  # the journal's record of the account as this instance knows it
FLATTEN_WINDOW_S = 300.0  # a flatten missed while away is done if at most this old
INSTANCE_TTL_MS = 5_000  # how long a process's claim on its instance name outlives it
_STATES = ("active", "reducing", "halted")
STREAM_MAXLEN = 200_000  # decisions kept per instance (about a day of 100 symbols' bars)
DECISION_FIELDS = ("ts", "symbol", "strategy", "version", "target", "outcome", "reason",
                   "orders", "price")
# A fill of this instance's (its real executor's), keyed by the bar its order was decided on.
FILL_FIELDS = ("ts", "symbol", "strategy", "side", "qty", "price", "commission")
_STREAMS = {"decisions": DECISION_FIELDS, "fills": FILL_FIELDS}
_ALERT = logger.bind(alert="error")
# An error with a rule of its own (entries wait for the store, or for the other process to
# go): alerted, but not counted by the error-rate trigger, which would demote for it.
_RULED = logger.bind(alert="error", ruled=True)

# The account's trading state: a new change takes the next number and is published.
# ARGV[2] and ARGV[4]: the highest change number and flatten count the publisher has seen
# (a store that lost its keys restarts from there, so no instance takes a new change for an
# old one, or an old flatten for a new one); ARGV[3] = 1: this change is a flatten.
_PUBLISH = """
local seq = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[2])
if seq <= floor then
  seq = floor + 1
  redis.call('SET', KEYS[2], seq)
end
local flat = tonumber(redis.call('GET', KEYS[3]) or '0')
if flat < tonumber(ARGV[4]) then flat = tonumber(ARGV[4]) end
if ARGV[3] == '1' then flat = flat + 1 end
redis.call('SET', KEYS[3], flat)
local doc = '{"seq":' .. seq .. ',"flatten":' .. flat .. ',' .. string.sub(ARGV[1], 2)
redis.call('SET', KEYS[1], doc)
redis.call('PUBLISH', KEYS[1], doc)
return doc
"""

# The process running as an instance holds its name (ARGV[1] its nonce).
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
"""

def describe(url: str) -> str:
    """The URL without its password: what a log line may say of it."""
    parts = urlsplit(url)
    host = parts.hostname or parts.path or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path if parts.hostname else ''}"


class AccountStore(AccountCaps):
    """One instance's link to the account's shared state."""

    def __init__(self, url: str, account: str, instance: str, caps: Caps, *,
                 sends: bool, live: bool, grace: float, journal: Any = None,
                 timeout: float = 2.0) -> None:
        self.account, self.instance, self.caps = account, instance, caps
        self._sends = sends  # this instance's orders reach the broker: it counts
        self.lease: Lease | None = None  # which instance of the bot trades (lease.py)
        self.live = live  # micro_capital/production: entries wait for the store
        self.grace = grace
        self.where = describe(url)
        self._timeout = timeout
        # No silent reconnects: every reconnect goes through _sync (the key read again,
        # the counts added back), and a pub/sub connection that dropped is noticed.
        # No socket_timeout: with one, redis-py bounds its writes with Python 3.11's
        # asyncio.wait_for, which can drop a cancellation (quantshift/aio.py), and a
        # cancelled listener then never ends; every call here is bounded by ``within``.
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout,
                                               retry=Retry(NoBackoff(), 0))
        self._prefix = f"quantshift:{account}:"
        self._journal = journal
        self.up = False
        self.ever_up = False
        self.down_since: float | None = time.monotonic()
        self.last_error = "not connected yet"
        link = (journal.get(LINK_KEY) if journal is not None else None) or {}
        self.seen = int(link.get("seq", 0))  # the newest account change known here
        self.knew = bool(link)  # this instance had been linked to the account before
        self.flattened = int(link.get("flattened", 0))  # flattens done (or not to do) here
        self.pending: dict[str, Any] | None = link.get("pending")  # made while away
        self.doc: dict[str, Any] | None = _valid(link.get("doc"))  # the newest known
        self._mirror = Mirror()
        # Sent while Redis was away (kept in the journal: a restart meanwhile loses none).
        self._mirror.offline = [(str(c), int(t), float(n))
                                for c, t, n in link.get("offline") or ()]
        self._counted: dict[str, tuple[int, float]] = {}  # this instance's orders of the day
        self._nonce = f"{os.getpid()}-{time.time_ns()}"
        self.duplicate: str | None = None  # another process runs under this instance name
        self._mark: str | None = None
        self._garbage_logged = False
        self._adopt: Callable[[dict[str, Any], bool], None] | None = None
        self._publish = self._client.register_script(_PUBLISH)
        self._claim = self._client.register_script(_CLAIM)
        self._reserve = self._client.register_script(RESERVE)
        self._report: tuple[int, float, float] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._decisions: deque[tuple[Any, ...]] = deque(maxlen=50_000)
        self.divergence: dict[str, float] = {}  # against instance -> share of decisions
        self._pushing = asyncio.Lock()
        self.downs = 0

    def key(self, name: str) -> str:
        return self._prefix + name

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    @property
    def _lease_key(self) -> str:
        return self.lease.key if self.lease is not None else self.key("lease:-")

    @property
    def sends(self) -> bool:
        """Whether this instance's orders reach the broker now: a standby's do not, so it
        counts nothing of the account's and its own rules demote only itself."""
        return self._sends and (self.lease is None or self.lease.primary)

    async def bounded(self, aw: Awaitable[T]) -> T:
        """One call to Redis, cut at the store's timeout (the client has none of its own)."""
        return await within(aw, self._timeout)

    # -- start -------------------------------------------------------------------------
    async def open(self, adopt: Callable[[dict[str, Any], bool], None]) -> None:
        """Connect and take the account's state (before any order goes out). A wrong
        password or a server that is not Redis is a bad setting (ConfigError); a Redis
        that cannot be reached is retried by ``run``, and reported meanwhile."""
        self._adopt = adopt
        try:
            await self.bounded(self._client.ping())
        except AuthenticationError as exc:
            raise ConfigError(SETTING, f"Redis at {self.where} refused the credentials "
                                       f"({exc})") from None
        except InvalidResponse:
            raise ConfigError(SETTING, f"the server at {self.where} does not speak Redis "
                                       "(a wrong port?)") from None
        except ResponseError as exc:  # e.g. a database number the server does not have
            raise ConfigError(SETTING, f"Redis at {self.where} refused the connection: "
                                       f"{exc}") from None
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc)
            return
        # Another process under this name: wait out a claim a killed one left (its TTL),
        # then refuse, naming the setting.
        deadline = time.monotonic() + INSTANCE_TTL_MS / 1000 + 1.0
        while await self._claim_name() and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
        if self.duplicate is not None:
            raise ConfigError("QUANTSHIFT_INSTANCE", f"instance {self.instance!r} of account "
                                                     f"{self.account!r} is already running "
                                                     f"(process {self.duplicate}); give each "
                                                     "process a name of its own")
        await self._sync()

    async def _claim_name(self) -> bool:
        """Hold this instance's name; True when another process holds it."""
        held = _text(await self.bounded(self._claim(
            keys=[self.key(f"instance:{self.instance}")],
            args=[self._nonce, INSTANCE_TTL_MS])))
        if held != self._nonce:
            if self.duplicate is None:
                _RULED.error("shared store: another process ({}) runs as instance {} of "
                             "account {}; this one sends no entry", held, self.instance,
                             self.account)
            self.duplicate = held.split("-", 1)[0]
            return True
        self.duplicate = None
        return False

    # -- the connection's life -----------------------------------------------------------
    async def run(self) -> None:
        """Listen for the account's changes; reconnect with backoff when Redis goes."""
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                self._down(exc)
            except Exception as exc:  # a document this release cannot read: never a crash
                logger.opt(exception=exc).error("shared store: {}", exc)
            await asyncio.sleep(backoff)
            backoff = 0.1 if self.up else min(backoff * 2, 5.0)

    async def _listen(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await self.bounded(pubsub.subscribe(self.key("control")))
            await self._sync()  # after the subscription: no change falls in between
            pinged = time.monotonic()
            lease = None
            while True:
                if lease is None and self.lease is not None:  # attached after the start
                    lease = self.lease
                    await self.bounded(pubsub.subscribe(lease.channel))
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if msg is not None and msg.get("type") == "message":
                    if lease is not None and _text(msg.get("channel")) == lease.channel:
                        lease.wake(msg.get("data"))
                    else:
                        self._take(self._parse(msg["data"]), live=True)
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    # a cancel some library's await swallowed (aio.py): honoured here
                    raise asyncio.CancelledError
                if not self.up:  # a call elsewhere failed: reconnect, and _sync again
                    raise ConnectionError(self.last_error)
                if self._report is not None or self.pending is not None or self._decisions:
                    await self._flush()
                if time.monotonic() - pinged >= 1.0:  # a partition shows no FIN: ask
                    await self._claim_name()
                    pinged = time.monotonic()
        finally:
            with contextlib.suppress(Exception):
                await self.bounded(pubsub.aclose())

    async def _sync(self) -> None:
        """On every (re)connect: the account's state against this instance's, the counts
        made while away added back, then up."""
        await self._claim_name()
        # A mark of this Redis's data: another mark (or none) than the one seen before means
        # it lost the account's keys (a restart without persistence).
        await self.bounded(self._client.set(self.key("mark"), os.urandom(8).hex(), nx=True))
        mark = _text(await self.bounded(self._client.get(self.key("mark"))))
        lost = self._mark is not None and mark != self._mark
        self._mark = mark
        remote = self._parse(await self.bounded(self._client.get(self.key("control"))))
        pending = self.pending
        if pending is not None:
            newer = remote is not None and int(remote.get("seq", 0)) > int(pending.get("base", 0))
            if newer and _rank(remote) > _rank(pending):  # stricter meanwhile: it wins
                self.pending = None
                self._save()
                self._take(remote, live=False)
            else:
                await self._push()
        elif remote is not None and int(remote.get("seq", 0)) > self.seen:
            self._take(remote, live=False)
        elif (remote is None or int(remote.get("seq", 0)) < self.seen) and self.doc is not None:
            # The store lost the account's state (a restart without persistence): the copy
            # this instance keeps goes back, under numbers above every one it has seen (no
            # flatten again).
            logger.warning("shared store {}: the account's state is gone from Redis; "
                           "putting back this instance's copy", self.where)
            self.pending = {k: v for k, v in self.doc.items() if k not in ("seq", "flatten")}
            self.pending.update(base=self.seen, flatten=False)
            await self._push()
        if lost and self._counted:  # and this instance's counts of the day
            logger.warning("shared store {}: the account's counts are gone from Redis; "
                           "putting back this instance's {} orders of the day", self.where,
                           len(self._counted))
            for coid, (ts, notional) in list(self._counted.items()):
                await self._call_reserve(coid, ts, notional, force=True)
        mirror = self._mirror
        for coid, ts, notional in list(mirror.offline):
            await self._call_reserve(coid, ts, notional, force=True)
        counted = len(mirror.offline)
        mirror.offline.clear()
        if counted or not self.knew:
            self.knew = True
            self._save()
        was_down = self.down_since is not None and self.ever_up
        first = not self.ever_up
        self.up, self.ever_up, self.down_since = True, True, None
        if was_down:
            logger.warning("shared store {} is back; account {}: {} orders counted "
                           "meanwhile added back", self.where, self.account, counted)
        elif first:
            logger.info("shared store {}: account {}, instance {}{}", self.where,
                        self.account, self.instance,
                        "" if self._sends else " (its orders reach no broker: it counts "
                                              "nothing of the account's)")
        await self._flush()

    def _down(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self.up or self.down_since is None or not self.downs:
            _RULED.error("shared store {} unreachable ({}); counters go on in memory{}",
                         self.where, self.last_error,
                         f"; new entries stop after {self.grace:g}s" if self.live and
                         self.sends else "")
            self.downs += 1
        if self.up or self.down_since is None:
            self.down_since = time.monotonic()
        self.up = False

    def _parse(self, raw: Any) -> dict[str, Any] | None:
        """The account's state document, or None for none or one this release cannot read
        (logged once: a document someone wrote by hand must not stop the daemon)."""
        if raw is None:
            return None
        try:
            doc = _valid(orjson.loads(raw))
        except orjson.JSONDecodeError:
            doc = None
        if doc is None and not self._garbage_logged:
            self._garbage_logged = True
            _ALERT.error("shared store: {} holds no account state this release can read; "
                         "ignored (the next change replaces it)", self.key("control"))
        return doc

    def _take(self, doc: dict[str, Any] | None, live: bool) -> None:
        """A newer account state: applied here (idempotently: this instance's own too),
        with its flatten when this instance has not done it yet and it is not old news."""
        if doc is None or int(doc.get("seq", 0)) <= self.seen:
            return
        self.seen, self.doc = int(doc.get("seq", 0)), doc
        count = int(doc.get("flatten", 0))
        missed = count > self.flattened
        self.flattened = max(self.flattened, count)
        flatten = False
        if missed:
            age = time.time() - int(doc.get("at_ms", 0)) / 1000
            flatten = live or (self.knew and age <= FLATTEN_WINDOW_S)
            if not flatten:
                logger.info("account: a flatten {:.0f}s ago, before this instance knew of "
                            "it, is not repeated now", age)
        self.knew = True
        self._save()
        if self._adopt is not None:
            self._adopt(doc, flatten)

    # -- the trading state -------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any] | None:
        """The account's state as this instance last made or knew it."""
        return self.pending or self.doc

    def publish(self, change: dict[str, Any], flatten: bool = False) -> asyncio.Event:
        """Share this instance's new account state (a whole one: ``state``, ``reason``,
        ``demotion``, the ``cmd`` that made it) with the account; ``flatten``: it came
        with a flatten, which this instance has done. The event is set once it is in
        Redis (at once when it must wait for a reconnect)."""
        before = self.pending or {}
        self.pending = {**change, "by": self.instance, "base": self.seen,
                        "at_ms": int(time.time() * 1000),
                        "flatten": flatten or bool(before.get("flatten"))}
        self._save()
        event = asyncio.Event()
        if not self.up:
            event.set()  # pushed on reconnect; the caller reports "pending"
        else:
            task = asyncio.ensure_future(self._push_now(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return event

    async def _push_now(self, event: asyncio.Event) -> None:
        try:
            await self.bounded(self._push())
        except (RedisError, OSError, TimeoutError) as exc:
            self._down(exc)  # still pending: pushed on reconnect
        finally:
            event.set()

    def tap(self, decision: tuple[Any, ...]) -> None:
        """One decision for this instance's stream (the engine's hot path: it only queues;
        the link writes them a batch at a time)."""
        self._decisions.append(("decisions", decision))

    def tap_fill(self, fill: tuple[Any, ...]) -> None:
        """One fill of this instance's for its fill stream (compare: real fills against a
        shadow's paper P&L)."""
        self._decisions.append(("fills", fill))

    async def _flush(self) -> None:
        if self.pending is not None:
            await self._push()
        if self._decisions:
            batch = list(self._decisions)
            self._decisions.clear()
            pipe = self._client.pipeline(transaction=False)
            for stream, row in batch:
                pipe.xadd(self.key(f"{stream}:{self.instance}"), dict(zip(_STREAMS[stream], (
                    "" if v is None else str(v) for v in row), strict=True)),
                    maxlen=STREAM_MAXLEN, approximate=True)
            try:
                await self.bounded(pipe.execute())
            except (RedisError, OSError, TimeoutError):
                self._decisions.extendleft(reversed(batch))  # written on the next turn
                raise
        if self._report is not None and self.sends:
            day, pnl, gross = self._report
            self._report = None
            pipe = self._client.pipeline(transaction=False)
            pipe.hset(self.key(f"pnl:{day}"), self.instance, repr(pnl))
            pipe.expireat(self.key(f"pnl:{day}"), day_end(day))
            pipe.hset(self.key(f"exposure:{day}"), self.instance, repr(gross))
            pipe.expireat(self.key(f"exposure:{day}"), day_end(day))
            await self.bounded(pipe.execute())

    async def _push(self) -> None:
        async with self._pushing:  # one at a time, in the order they were made
            pending = self.pending
            if pending is None:
                return
            body = orjson.dumps({k: v for k, v in pending.items()
                                 if k not in ("base", "flatten")}).decode()
            flat = bool(pending.get("flatten"))
            raw = await self.bounded(self._publish(
                keys=[self.key("control"), self.key("control:seq"),
                      self.key("control:flatten")],
                args=[body, self.seen, "1" if flat else "0", self.flattened]))
            if self.pending is pending:
                self.pending = None
            doc = _valid(orjson.loads(raw))
            assert doc is not None
            if flat:  # done here when it was made: the count is this instance's
                self.flattened = max(self.flattened, int(doc["flatten"]))
            self._save()
            # Newest unless another change came meanwhile; applied again either way, so a
            # change this instance took from another while pushing its own cannot stay.
            self._take(doc, live=True)

    def _save(self) -> None:
        if self._journal is not None:
            self._journal.set(LINK_KEY, {"seq": self.seen, "pending": self.pending,
                                         "doc": self.doc, "flattened": self.flattened,
                                         "offline": self._mirror.offline})

    # -- reads ---------------------------------------------------------------------------
    async def decisions(self, instance: str, count: int | None = None,
                        stream: str = "decisions") -> list[dict[str, str]]:
        """An instance's decisions (or ``stream="fills"``: its fills) as its stream holds
        them, oldest first (the newest ``count`` with a count)."""
        key = self.key(f"{stream}:{instance}")
        if count is not None:
            rows = list(reversed(await self.bounded(self._client.xrevrange(key, count=count))))
        else:
            rows, start = [], "-"
            while True:
                chunk = await self.bounded(self._client.xrange(key, min=start, count=10_000))
                rows += chunk
                if len(chunk) < 10_000:
                    break
                start = "(" + _text(chunk[-1][0])
        return [{_text(k): _text(v) for k, v in fields.items()} for _, fields in rows]

    def view(self) -> dict[str, Any]:
        away = None if self.down_since is None else round(time.monotonic() - self.down_since, 1)
        return {"account": self.account, "instance": self.instance, "store": self.where,
                "up": self.up, "down_for_s": away,
                "error": None if self.up else self.last_error, "seq": self.seen,
                "change_pending": self.pending is not None, "counts": self.sends,
                "entries_held": self.entry_refusal() is not None}

    async def close(self) -> None:
        for task in list(self._tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self.bounded(task)
        with contextlib.suppress(Exception):
            if self.up and (self.pending is not None or self._report is not None
                            or self._decisions):
                await self.bounded(self._flush())
        with contextlib.suppress(Exception):
            if self.up and self.duplicate is None:
                await self.bounded(self._client.eval(
                    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) "
                    "end return 1", 1, self.key(f"instance:{self.instance}"), self._nonce))
        with contextlib.suppress(Exception):
            await self.bounded(self._client.aclose())


def _rank(doc: dict[str, Any]) -> int:
    """How strict a state is: halted or demoted over reducing over active."""
    if doc.get("state") == "halted" or doc.get("demotion"):
        return 2
    return 1 if doc.get("state") == "reducing" else 0


def _valid(doc: Any) -> dict[str, Any] | None:
    """``doc`` when it is an account state this release reads, else None."""
    if not isinstance(doc, dict) or doc.get("state") not in _STATES:
        return None
    try:
        int(doc.get("seq", 0))
        int(doc.get("flatten", 0))
        int(doc.get("at_ms", 0))
    except (TypeError, ValueError):
        return None
    dem = doc.get("demotion")
    if dem is not None and not isinstance(dem, dict):
        return None
    return doc


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
