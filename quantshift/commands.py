"""The control plane's commands, typed: what an operator, the guard or the periodic tasks
ask of it, and the refusals it answers with (quantshift/control.py carries them out)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, ClassVar

__all__ = [
    "AddVersion",
    "Command",
    "ControlRefused",
    "Demote",
    "Flatten",
    "Halt",
    "Handover",
    "Lift",
    "MarkStale",
    "NotDurable",
    "Promote",
    "Reduce",
    "Resume",
    "Rollback",
    "SetCanary",
    "SetStatus",
    "Source",
]


class ControlRefused(Exception):
    """A command understood but not possible now (HTTP 409 unless told otherwise)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotDurable(ControlRefused):
    """Done in memory, but the journal cannot be written: a restart would not know it, so
    the command is not claimed as done (HTTP 503)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message, 503)
        self.result = result


class Source(Enum):
    """Where a command comes from, which decides how far it reaches when several instances
    share an account (state/shared.py)."""

    OPERATOR = "operator"  # a person (HTTP, CLI): the whole account
    RULE = "rule"  # a rule's verdict (guard, reconciliation): the account when this
    # instance's orders reach the broker, this instance alone otherwise
    LOCAL = "local"  # this process only (its journal failed, it is shutting down)
    ACCOUNT = "account"  # another instance of the account issued it


# -- the commands -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    by: str = "operator"  # who: "api from 127.0.0.1", "guard", "reconcile", "journal", ...
    reason: str = ""
    source: Source = Source.OPERATOR
    name: ClassVar[str] = "command"

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if k not in ("by", "source") and v not in ("", None)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Halt(Command):
    """Nothing new goes out; open orders are cancelled; optionally flatten everything."""

    flatten: bool = False
    name: ClassVar[str] = "halt"


@dataclass(frozen=True, slots=True, kw_only=True)
class Reduce(Command):
    """Only exposure-reducing orders pass."""

    name: ClassVar[str] = "reduce"


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(Command):
    """Back to active; a demotion is lifted too."""

    name: ClassVar[str] = "resume"


@dataclass(frozen=True, slots=True, kw_only=True)
class Flatten(Command):
    """Send every position to flat (these exits pass while halted)."""

    name: ClassVar[str] = "flatten"


@dataclass(frozen=True, slots=True, kw_only=True)
class Demote(Command):
    """Out of trading on the daemon's own evidence: orders go to the log only."""

    flatten: bool = False
    name: ClassVar[str] = "demote"


@dataclass(frozen=True, slots=True, kw_only=True)
class Lift(Command):
    """End a demotion (the trading state stays what it is otherwise)."""

    name: ClassVar[str] = "lift"


@dataclass(frozen=True, slots=True, kw_only=True)
class Promote(Command):
    strategy: str
    version: str
    force: bool = False
    name: ClassVar[str] = "promote"


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollback(Command):
    strategy: str
    name: ClassVar[str] = "rollback"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetStatus(Command):
    """A version that is not active becomes a shadow, the canary (``percent``: its share,
    else the strategy's current one) or retired."""

    strategy: str
    version: str
    status: str
    percent: int | None = None
    name: ClassVar[str] = "version"


@dataclass(frozen=True, slots=True, kw_only=True)
class AddVersion(Command):
    """A new version of a strategy, as a shadow (``parameters`` over the configured ones)."""

    strategy: str
    version: str
    strategy_name: str | None = None  # the registered strategy it runs (default: the same)
    parameters: dict[str, Any] = field(default_factory=dict)
    exits: dict[str, Any] | None = None
    name: ClassVar[str] = "add"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetCanary(Command):
    """The share of symbols the canary trades."""

    strategy: str
    percent: int
    name: ClassVar[str] = "canary"


@dataclass(frozen=True, slots=True, kw_only=True)
class Handover(Command):
    """The primary gives the bot's lease up (to ``to``, or to any standby) once nothing of
    its own is in flight; this instance's only, never the account's."""

    to: str = ""
    name: ClassVar[str] = "handover"


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkStale(Command):
    """The feed fell silent (``reason``) or, with an empty reason, is fresh again: entries
    stop while it is stale, exits pass."""

    name: ClassVar[str] = "stale"
