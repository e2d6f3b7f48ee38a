"""The venue side of a schedule: a shipped emulator in a thread of the harness, with its
own event loop, instrumented (from the outside) so the simulator can observe it.

Two observations the emulator's HTTP surface does not give in time are taken here:

* when each armed fault was used up (``Faults.take`` is wrapped), so the liveness check
  knows when the venue was healthy again;
* the moment the venue receives a given request (its request log is a deque whose
  ``append`` is hooked): a fault armed from that hook applies to that very request, which
  is how a schedule hits, say, the reconciliation's open-orders call and nothing else.

The order log itself (creation time, client order id, fills) is the emulator's own
``state()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from quantshift.emulators.alpaca import AlpacaEmulator
from quantshift.emulators.base import BaseEmulator
from quantshift.emulators.cli import export_lines
from quantshift.emulators.exchange import ExchangeEmulator

SYMBOLS = {"alpaca": ["AAA", "BBB"], "exchange": ["BTC/USDT", "ETH/USDT"]}
INTERVAL = 0.25  # seconds between bars per symbol
# Requests a venue trigger can name: (method, path) per venue.
REQUESTS: dict[str, dict[str, tuple[str, str]]] = {
    "alpaca": {"lookup": ("GET", "/v2/orders:by_client_order_id"),
               "open_orders": ("GET", "/v2/orders"), "positions": ("GET", "/v2/positions"),
               "cancel": ("DELETE", "/v2/orders/")},
    "exchange": {"lookup": ("GET", "/api/v3/order"), "open_orders": ("GET", "/api/v3/openOrders"),
                 "positions": ("GET", "/api/v3/account"), "cancel": ("DELETE", "/api/v3/order")},
}
# Faults that make the venue's REST side misbehave (partial_fill and the stream faults do
# not: the venue answers correctly, only later or elsewhere).
REST_ERRORS = frozenset({"rate_limit", "server_error", "slow", "duplicate_id", "lost_ack",
                         "reject"})


@dataclass
class FaultRecord:
    name: str
    scope: str
    count: int
    params: dict[str, float]
    armed: float
    fired: list[float] = field(default_factory=list)
    done: float | None = None  # used up, or cleared

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Loop:
    """One event loop in one daemon thread, for the emulators of a worker process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="venue-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``fn`` on the loop (between two of its callbacks) and return its result."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class _Requests(deque):  # type: ignore[type-arg]
    """The emulator's request log, calling ``hook`` on every request as it arrives (before
    the emulator takes its faults for it)."""

    def __init__(self, hook: Callable[[tuple[str, str, str]], None], maxlen: int) -> None:
        super().__init__(maxlen=maxlen)
        self._hook = hook

    def append(self, item: tuple[str, str, str]) -> None:
        super().append(item)
        self._hook(item)


class Venue:
    """One emulator for one schedule."""

    def __init__(self, kind: str, loop: Loop, seed: int, host: str = "127.0.0.1") -> None:
        self.kind = kind
        self.loop = loop
        self.host = host
        symbols = SYMBOLS[kind]
        self.emu: BaseEmulator = (
            AlpacaEmulator(symbols, interval=INTERVAL, seed=seed) if kind == "alpaca"
            else ExchangeEmulator(symbols, interval=INTERVAL, seed=seed))
        self.faults: list[FaultRecord] = []
        self.requests: list[tuple[float, str, str]] = []  # (when, method, path)
        self._lock = threading.Lock()
        self._watchers: list[tuple[str, str, Callable[[], None]]] = []
        self.emu.requests = _Requests(self._on_request, 2000)
        take = self.emu.faults.take

        def take_and_record(scope: str, names: Any) -> Any:
            fault = take(scope, names)
            if fault is not None:
                self._fired(fault.name, fault.scope)
            return fault

        self.emu.faults.take = take_and_record  # type: ignore[method-assign]
        loop.run(self.emu.start(host, 0))
        assert self.emu.port is not None
        self.port: int = self.emu.port

    # -- what the daemon is pointed at -----------------------------------------------------
    def exports(self, address: str = "127.0.0.1") -> dict[str, str]:
        """The emulator's own export lines, its URLs on ``address``."""
        out: dict[str, str] = {}
        for line in export_lines(self.kind, self.port, SYMBOLS[self.kind]):
            key, _, value = line.removeprefix("export ").partition("=")
            out[key] = value.strip("'").replace("127.0.0.1", address)
        return out

    # -- faults ----------------------------------------------------------------------------
    def arm(self, name: str, scope: str, count: int, params: dict[str, float]) -> str | None:
        """Arm a fault now (on the emulator's loop); None, or why the emulator refused it."""
        try:
            self.loop.call(lambda: self._arm(name, scope, count, params))
        except ValueError as exc:
            return str(exc)
        return None

    def _arm(self, name: str, scope: str, count: int, params: dict[str, float]) -> None:
        # Recorded before it is armed: a stall or drop_ws fires inside ``add``.
        record = FaultRecord(name, scope, count, dict(params), time.time())
        with self._lock:
            self.faults.append(record)
        try:
            self.emu.faults.add(name, scope, count, **params)  # type: ignore[arg-type]
        except ValueError:
            with self._lock:
                self.faults.remove(record)
            raise

    def arm_on_request(self, request: str, name: str, scope: str, count: int,
                       params: dict[str, float]) -> threading.Event:
        """Arm a fault the moment the venue receives ``request`` (see ``REQUESTS``), so that
        request is the first it applies to. The event is set when it happened."""
        method, path = REQUESTS[self.kind][request]
        hit = threading.Event()

        def fire() -> None:
            with contextlib.suppress(ValueError):
                self._arm(name, scope, count, params)
            hit.set()

        with self._lock:
            self._watchers.append((method, path, fire))
        return hit

    def unwatch(self) -> None:
        with self._lock:
            self._watchers.clear()

    def _on_request(self, item: tuple[str, str, str]) -> None:
        method, path, _ = item
        with self._lock:
            if len(self.requests) < 20_000:
                self.requests.append((time.time(), method, path))
            due = [w for w in self._watchers if w[0] == method and (
                path == w[1] or (w[1].endswith("/") and path.startswith(w[1])))]
            for w in due:
                self._watchers.remove(w)
        for _, _, fire in due:
            fire()

    def _fired(self, name: str, scope: str) -> None:
        now = time.time()
        with self._lock:  # the same fault the emulator's list picked: the first alike
            for record in self.faults:
                if record.done is None and record.name == name and record.scope == scope:
                    record.fired.append(now)
                    if len(record.fired) >= record.count:
                        record.done = now
                    return

    def clear(self) -> None:
        self.unwatch()
        self.loop.call(self.emu.faults.clear)
        now = time.time()
        with self._lock:
            for record in self.faults:
                if record.done is None:
                    record.done = now

    def asked(self, request: str, since: float) -> bool:
        """Whether the venue received ``request`` (see ``REQUESTS``) since then."""
        method, path = REQUESTS[self.kind][request]
        with self._lock:
            return any(t >= since and m == method and p == path
                       for t, m, p in reversed(self.requests))

    def pending(self) -> bool:
        """Whether an armed fault (or a request it waits for) is not used up yet."""
        with self._lock:
            return bool(self._watchers) or any(r.done is None for r in self.faults)

    # -- the order log ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return self.loop.call(self.emu.engine.state)  # type: ignore[no-any-return]

    def counts(self) -> tuple[int, int]:
        """Bars emitted and fills made so far (plain ints: read without the loop)."""
        engine = self.emu.engine
        return engine.bars_emitted, len(engine.fills)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.run(self.emu.stop())
