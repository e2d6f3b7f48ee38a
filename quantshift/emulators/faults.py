"""Faults a test (or a human, over HTTP) can switch on in an emulator.

Each fault has a name, a scope and a remaining count; every time it fires the count
goes down, and at zero it is gone. Scopes: ``submit`` (order submission), ``status``
(every other venue REST call), ``stream`` (websockets) and ``any``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

SCOPES = ("submit", "status", "stream", "any")

# name -> scopes it may be given (``any`` is always allowed)
FAULTS: dict[str, tuple[str, ...]] = {
    "rate_limit": ("submit", "status", "stream"),    # HTTP 429 + Retry-After
    "server_error": ("submit", "status", "stream"),  # HTTP 500, venue's JSON error body
    "slow": ("submit", "status", "stream"),          # answer only after `delay` seconds
    "drop_ws": ("stream",),                          # close the websockets now / next message
    "stall": ("stream",),  # exchange websockets open now / next to speak go silent both ways
    "duplicate_id": ("submit",),    # the order is created, the answer is "duplicate id"
    "partial_fill": ("submit",),    # next market order fills `fraction`; the rest rests
    "lost_ack": ("submit",),        # the order is created, the connection closes unanswered
    "reject": ("submit",),          # the order is accepted, then rejected (status rejected)
}


@dataclass(slots=True)
class Fault:
    name: str
    scope: str = "any"
    count: int = 1
    retry_after: int = 1
    delay: float = 2.0
    fraction: float = 0.5

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Faults:
    """A thread-safe list of pending faults; ``take`` fires (and counts down) one."""

    def __init__(self) -> None:
        self._items: list[Fault] = []
        self._lock = threading.Lock()
        self.fired: deque[dict[str, Any]] = deque(maxlen=200)
        self.on_add: list[Callable[[Fault], None]] = []

    def add(self, name: str, scope: str = "any", count: int = 1, *,
            retry_after: float | None = None, delay: float | None = None,
            fraction: float | None = None) -> Fault:
        """Arm a fault; raises ValueError (with a message for a human) when invalid."""
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; one of {', '.join(FAULTS)}")
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
        if scope != "any" and scope not in FAULTS[name]:
            raise ValueError(f"fault {name!r} applies to scope "
                             f"{' or '.join((*FAULTS[name], 'any'))}, not {scope!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be an integer >= 1")
        fault = Fault(name, scope, count)
        if retry_after is not None:
            fault.retry_after = math.ceil(_number("retry_after", retry_after, 0, 86400))
        if delay is not None:
            fault.delay = _number("delay", delay, 0, 3600)
        if fraction is not None:
            fault.fraction = _number("fraction", fraction, 0, 1)
            if not 0 < fault.fraction < 1:
                raise ValueError("fraction must be strictly between 0 and 1")
        with self._lock:
            self._items.append(fault)
        for hook in list(self.on_add):
            hook(fault)
        return fault

    def take(self, scope: str, names: Iterable[str]) -> Fault | None:
        """Fire the first pending fault among ``names`` that applies to ``scope``."""
        wanted = set(names)
        with self._lock:
            for fault in self._items:
                if fault.name in wanted and fault.scope in (scope, "any"):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._items.remove(fault)
                    self.fired.append({"name": fault.name, "scope": scope, "time": time.time()})
                    return Fault(fault.name, fault.scope, 1, fault.retry_after, fault.delay,
                                 fault.fraction)
        return None

    def pending(self, name: str | None = None) -> list[Fault]:
        with self._lock:
            return [f for f in self._items if name is None or f.name == name]

    def clear(self, name: str | None = None) -> None:
        with self._lock:
            self._items = [f for f in self._items if name is not None and f.name != name]

    def __len__(self) -> int:
        return len(self._items)

    # Shorthands for tests.
    def rate_limit(self, scope: str = "any", count: int = 1, retry_after: float = 1) -> Fault:
        return self.add("rate_limit", scope, count, retry_after=retry_after)

    def server_error(self, scope: str = "any", count: int = 1) -> Fault:
        return self.add("server_error", scope, count)

    def slow(self, scope: str = "any", count: int = 1, delay: float = 2.0) -> Fault:
        return self.add("slow", scope, count, delay=delay)

    def drop_ws(self, count: int = 1) -> Fault:
        return self.add("drop_ws", "stream", count)

    def stall(self, count: int = 1) -> Fault:
        return self.add("stall", "stream", count)

    def duplicate_id(self, count: int = 1) -> Fault:
        return self.add("duplicate_id", "submit", count)

    def partial_fill(self, fraction: float = 0.5, count: int = 1) -> Fault:
        return self.add("partial_fill", "submit", count, fraction=fraction)

    def lost_ack(self, count: int = 1) -> Fault:
        return self.add("lost_ack", "submit", count)

    def reject(self, count: int = 1) -> Fault:
        return self.add("reject", "submit", count)


def _number(field: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{field} must be a number")
    if not lo <= value <= hi:
        raise ValueError(f"{field} must be between {lo:g} and {hi:g}")
    return float(value)
