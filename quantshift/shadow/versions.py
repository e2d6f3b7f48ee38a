"""Strategy versions: their configuration, its rules, and who is active at run time.

In the configuration a strategy entry may list ``versions``, each with its own parameters
and a status::

    [[strategies]]
    name = "ma_cross"
    params = { ma = "ema", fast = 5, slow = 15 }   # the base every version starts from
    canary_percent = 10
    versions = [
      { version = "v1", status = "active" },
      { version = "v2", status = "canary", params = { fast = 8 } },
      { version = "v3", status = "shadow", params = { slow = 30 }, exits = { stop_loss = "2%" } },
    ]

* ``active`` trades, ``canary`` trades the share of symbols chosen by
  :mod:`quantshift.shadow.routing`, ``shadow`` only records what it would have done,
  ``retired`` does not run.
* A version's parameters are the entry's ``params`` updated with its own, so a version
  names only what differs; its ``exits`` replace the entry's when given; its ``name``
  (the registered strategy it runs) defaults to the entry's.
* An entry without ``versions`` is one active version ``v1`` with the entry's parameters:
  configurations written before versions existed keep their meaning.
* Exactly one active version per strategy, at most one canary (routing has one bucket per
  symbol, so a second canary would trade the very same symbols), any number of shadows.

``validate_versions`` raises a ``ValueError`` whose message starts with the strategy's key;
the settings turn it into exit 78. :class:`VersionRegistry` is the run-time side: which
version is active, which was active before it, promotion and rollback.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quantshift.shadow.routing import CanaryRouter
from quantshift.strategies.base import DEFAULT_VERSION

DEFAULT_CANARY_PERCENT = 10
DEFAULT_CANARY_MIN_PERCENT = 5
DEFAULT_CANARY_MAX_PERCENT = 50
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")


class VersionStatus(StrEnum):
    ACTIVE = "active"  # trades every symbol the canary does not take
    CANARY = "canary"  # trades the symbols whose bucket is below the canary percent
    SHADOW = "shadow"  # runs on every bar, only records
    RETIRED = "retired"  # does not run


class VersionSpec(BaseModel):
    """One version of a strategy as configured."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str
    status: VersionStatus
    name: str | None = None  # the registered strategy; None = the entry's name
    params: dict[str, Any] = Field(default_factory=dict)
    # stop_loss / take_profit / trail / trail_activate / atr_period; None = the entry's
    exits: dict[str, Any] | None = None


class StrategyVersions(BaseModel):
    """A strategy entry with versions: the fields of a plain strategy entry plus
    ``versions`` and the canary's share (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    id: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    exits: dict[str, Any] | None = None
    versions: list[VersionSpec] = Field(default_factory=list)
    canary_percent: int = Field(DEFAULT_CANARY_PERCENT, ge=0, le=100)
    # Opt-in: Thompson sampling moves canary_percent within these bounds (adaptive.py).
    canary_adaptive: bool = False
    canary_min_percent: int = Field(DEFAULT_CANARY_MIN_PERCENT, ge=0, le=100)
    canary_max_percent: int = Field(DEFAULT_CANARY_MAX_PERCENT, ge=0, le=100)

    @property
    def key(self) -> str:
        return self.id or self.name

    def effective_versions(self) -> list[VersionSpec]:
        """Every version with its strategy name, parameters and exits filled in."""
        declared = self.versions or [VersionSpec(version=DEFAULT_VERSION,
                                                 status=VersionStatus.ACTIVE)]
        return [v.model_copy(update={
            "name": v.name or self.name,
            "params": {**self.params, **v.params},
            "exits": v.exits if v.exits is not None else self.exits,
        }) for v in declared]

    @model_validator(mode="after")
    def _rules(self) -> StrategyVersions:
        validate_versions(self.key, self.effective_versions())
        if self.canary_adaptive:
            check_canary_bounds(self.key, self.canary_percent, self.canary_min_percent,
                                self.canary_max_percent)
        return self


def validate_versions(strategy: str, versions: Sequence[VersionSpec]) -> None:
    """Raise ``ValueError`` naming the strategy unless the versions obey the rules."""
    if not versions:
        raise ValueError(f"strategy {strategy!r}: no versions")
    ids = [v.version for v in versions]
    bad = [i for i in ids if not _VERSION_RE.match(i)]
    if bad:
        raise ValueError(f"strategy {strategy!r}: {bad[0]!r} is not a version id (letters, "
                         "digits, '.', '_', '-'; at most 32 characters)")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"strategy {strategy!r}: version {twice[0]!r} is listed twice")
    active = [v.version for v in versions if v.status is VersionStatus.ACTIVE]
    if not active:
        raise ValueError(f"strategy {strategy!r}: no active version; exactly one version "
                         "must be active")
    if len(active) > 1:
        raise ValueError(f"strategy {strategy!r}: {len(active)} active versions "
                         f"({', '.join(active)}); exactly one version must be active")
    canary = [v.version for v in versions if v.status is VersionStatus.CANARY]
    if len(canary) > 1:
        raise ValueError(f"strategy {strategy!r}: {len(canary)} canary versions "
                         f"({', '.join(canary)}); at most one version may be canary")


def check_canary_bounds(strategy: str, percent: int, low: int, high: int) -> None:
    """Raise ``ValueError`` naming the strategy unless ``low <= percent <= high``."""
    if low > high:
        raise ValueError(f"strategy {strategy!r}: canary_min_percent {low} is above "
                         f"canary_max_percent {high}")
    if not low <= percent <= high:
        raise ValueError(f"strategy {strategy!r}: canary_percent {percent} is outside "
                         f"canary_min_percent..canary_max_percent ({low}..{high})")


# -- run time -------------------------------------------------------------------------------


class VersionError(ValueError):
    """A promotion, rollback or status change that the rules refuse; names the strategy."""


@dataclass(slots=True, frozen=True)
class VersionChange:
    """What one promotion, rollback or status change did, for the journal."""

    strategy: str
    action: str  # "promote" | "rollback" | "status"
    active: str
    previous_active: str | None
    before: dict[str, str]  # version -> status
    after: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Entry:
    specs: dict[str, VersionSpec]  # in configured order; each spec carries its current status
    previous_active: str | None
    canary_percent: int
    # Kept next to the specs because route() asks for them on every bar of every symbol.
    active: str = ""
    canary: str | None = None

    def refresh(self) -> None:
        self.active = next(k for k, v in self.specs.items() if v.status is VersionStatus.ACTIVE)
        self.canary = next((k for k, v in self.specs.items()
                            if v.status is VersionStatus.CANARY), None)


class VersionRegistry:
    """Which version of each strategy is active, canary, shadow or retired right now.

    Pure and in memory; ``to_dict``/``from_dict`` persist it. Every change keeps the rules
    of :func:`validate_versions`, and every refusal is a :class:`VersionError` naming the
    strategy.
    """

    FORMAT = 1

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._router = CanaryRouter()
        # (strategy, version) -> times made active: the start state once, then each
        # promotion or rollback as it happens (the metrics' activation counter).
        self.activations: Counter[tuple[str, str]] = Counter()

    @classmethod
    def from_config(cls, entries: Iterable[StrategyVersions]) -> VersionRegistry:
        registry = cls()
        for entry in entries:
            registry.add(entry.key, entry.effective_versions(), entry.canary_percent)
        return registry

    def add(self, strategy: str, versions: Sequence[VersionSpec],
            canary_percent: int = DEFAULT_CANARY_PERCENT,
            previous_active: str | None = None) -> None:
        if strategy in self._entries:
            raise VersionError(f"strategy {strategy!r} is registered twice")
        try:
            validate_versions(strategy, versions)
        except ValueError as exc:
            raise VersionError(str(exc)) from None
        if not 0 <= canary_percent <= 100:
            raise VersionError(f"strategy {strategy!r}: canary percent {canary_percent} is "
                               "outside 0..100")
        specs = {v.version: v for v in versions}
        if previous_active is not None and previous_active not in specs:
            raise VersionError(f"strategy {strategy!r}: no version {previous_active!r}")
        entry = self._entries[strategy] = _Entry(specs, previous_active, canary_percent)
        entry.refresh()
        self.activations[(strategy, self.active(strategy))] += 1

    # -- queries ----------------------------------------------------------------------------
    def strategies(self) -> list[str]:
        return list(self._entries)

    def versions(self, strategy: str, *statuses: VersionStatus) -> list[VersionSpec]:
        """The strategy's versions in configured order, only those in ``statuses`` if given."""
        specs = self._entry(strategy).specs.values()
        return [v for v in specs if not statuses or v.status in statuses]

    def spec(self, strategy: str, version: str) -> VersionSpec:
        found = self._entry(strategy).specs.get(version)
        if found is None:
            raise VersionError(f"strategy {strategy!r}: no version {version!r}")
        return found

    def status(self, strategy: str, version: str) -> VersionStatus:
        return self.spec(strategy, version).status

    def active(self, strategy: str) -> str:
        return self._entry(strategy).active

    def canary(self, strategy: str) -> str | None:
        return self._entry(strategy).canary

    def previous_active(self, strategy: str) -> str | None:
        return self._entry(strategy).previous_active

    def canary_percent(self, strategy: str) -> int:
        return self._entry(strategy).canary_percent

    def set_canary_percent(self, strategy: str, percent: int) -> int:
        """Set the canary's share; returns the share it had."""
        entry = self._entry(strategy)
        if not 0 <= percent <= 100:
            raise VersionError(f"strategy {strategy!r}: canary percent {percent} is outside "
                               "0..100")
        old, entry.canary_percent = entry.canary_percent, percent
        return old

    def route(self, strategy: str, symbol: str) -> str:
        """The version that trades ``symbol``: the canary for its share, else the active."""
        entry = self._entry(strategy)
        if entry.canary is not None and self._router.to_canary(strategy, symbol,
                                                               entry.canary_percent):
            return entry.canary
        return entry.active

    # -- changes ----------------------------------------------------------------------------
    def promote(self, strategy: str, version: str) -> VersionChange:
        """Make ``version`` active; the version active until now becomes a shadow (and is
        what :meth:`rollback` restores)."""
        target = self.spec(strategy, version)
        if target.status is VersionStatus.ACTIVE:
            raise VersionError(f"strategy {strategy!r}: version {version!r} is already active")
        if target.status is VersionStatus.RETIRED:
            raise VersionError(f"strategy {strategy!r}: version {version!r} is retired; make "
                               "it a shadow first")
        return self._swap(strategy, version, "promote")

    def rollback(self, strategy: str) -> VersionChange:
        """Make the previous active version active again; the current one becomes a shadow
        (so a second rollback undoes the first)."""
        previous = self._entry(strategy).previous_active
        if previous is None:
            raise VersionError(f"strategy {strategy!r}: no previous active version to roll "
                               "back to")
        if self.status(strategy, previous) is VersionStatus.RETIRED:
            raise VersionError(f"strategy {strategy!r}: the previous active version "
                               f"{previous!r} is retired")
        return self._swap(strategy, previous, "rollback")

    def set_status(self, strategy: str, version: str, status: VersionStatus) -> VersionChange:
        """Move a version that is not active between canary, shadow and retired."""
        current = self.status(strategy, version)
        if status is VersionStatus.ACTIVE:
            raise VersionError(f"strategy {strategy!r}: use promote to make {version!r} active")
        if current is VersionStatus.ACTIVE:
            raise VersionError(f"strategy {strategy!r}: {version!r} is the active version; "
                               "promote another version first")
        other = self.canary(strategy)
        if status is VersionStatus.CANARY and other not in (None, version):
            raise VersionError(f"strategy {strategy!r}: {other!r} is already the canary")
        before = self._statuses(strategy)
        self._set(strategy, version, status)
        self._entry(strategy).refresh()
        return self._change(strategy, "status", before)

    def add_version(self, strategy: str, spec: VersionSpec) -> None:
        """A version added at run time: a shadow (the rules of the others unchanged)."""
        entry = self._entry(strategy)
        if spec.version in entry.specs:
            raise VersionError(f"strategy {strategy!r}: version {spec.version!r} exists "
                               f"({entry.specs[spec.version].status.value})")
        if spec.status is not VersionStatus.SHADOW:
            raise VersionError(f"strategy {strategy!r}: a version added at run time starts "
                               "as a shadow")
        try:
            validate_versions(strategy, [*entry.specs.values(), spec])
        except ValueError as exc:
            raise VersionError(str(exc)) from None
        entry.specs[spec.version] = spec

    # -- persistence ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "strategies": {
            key: {"previous_active": e.previous_active, "canary_percent": e.canary_percent,
                  "versions": [v.model_dump(mode="json") for v in e.specs.values()]}
            for key, e in self._entries.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionRegistry:
        if data.get("format") != cls.FORMAT:
            raise VersionError(f"unknown version registry format {data.get('format')!r}")
        registry = cls()
        for key, raw in data["strategies"].items():
            try:
                versions = [VersionSpec.model_validate(v) for v in raw["versions"]]
                percent, previous = int(raw["canary_percent"]), raw["previous_active"]
            except ValidationError as exc:
                raise VersionError(f"strategy {key!r}: {exc.errors()[0]['msg']}") from None
            except (KeyError, TypeError, ValueError) as exc:
                raise VersionError(f"strategy {key!r}: malformed state ({exc!r})") from None
            registry.add(key, versions, percent, previous)
        return registry

    # -- internals --------------------------------------------------------------------------
    def _entry(self, strategy: str) -> _Entry:
        entry = self._entries.get(strategy)
        if entry is None:
            raise VersionError(f"unknown strategy {strategy!r}")
        return entry

    def _statuses(self, strategy: str) -> dict[str, str]:
        return {k: v.status.value for k, v in self._entry(strategy).specs.items()}

    def _set(self, strategy: str, version: str, status: VersionStatus) -> None:
        # Callers refresh the entry once all of a change's statuses are in: in between,
        # a swap briefly has no active version.
        specs = self._entry(strategy).specs
        specs[version] = specs[version].model_copy(update={"status": status})

    def _swap(self, strategy: str, version: str, action: str) -> VersionChange:
        before = self._statuses(strategy)
        old = self.active(strategy)
        self._set(strategy, old, VersionStatus.SHADOW)
        self._set(strategy, version, VersionStatus.ACTIVE)
        entry = self._entry(strategy)
        entry.refresh()
        entry.previous_active = old
        self.activations[(strategy, version)] += 1
        return self._change(strategy, action, before)

    def _change(self, strategy: str, action: str, before: dict[str, str]) -> VersionChange:
        return VersionChange(strategy, action, self.active(strategy),
                             self.previous_active(strategy), before, self._statuses(strategy))
