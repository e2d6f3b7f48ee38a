"""What the broker executor keeps of each order it follows, and what a lookup can tell."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from quantshift.domain import OrderIntent, OrderState


class Lookup(Enum):
    """What a lookup by client order id told: the venue has it, has not, or no answer."""

    FOUND = "found"
    ABSENT = "absent"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Tracked:
    intent: OrderIntent
    state: OrderState = OrderState.NEW
    filled: float = 0.0
    avg_price: float = 0.0
    venue_id: str = ""
    status: str = ""  # the venue's last word on it (legs: held, new, ...)
    sending: bool = False  # a submission loop owns it (attempts, lookups, back-off)
    stop: str | None = None  # why it must not go out (any more): a halt, a shutdown
    unresolved: bool = False  # an attempt's outcome is unknown and no lookup could tell
