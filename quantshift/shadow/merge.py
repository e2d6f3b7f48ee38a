"""The configuration's strategy versions and the journal's running ones, side by side.

The journal holds what the daemon ran last: each version's status (after promotions,
rollbacks, canary changes made at run time), the previous active version, the canary's
share, and versions added at run time. The configuration file may have been edited since.
Nothing is decided silently: every difference is one :class:`Difference` (logged one line
each at start and shown in ``/status``), and ``QUANTSHIFT_VERSIONS_FROM`` says which side
wins (``journal``, the default, or ``config``). Either way the promotion history is kept:
the previous active version survives a version added to the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from quantshift.shadow.versions import (
    VersionError,
    VersionRegistry,
    VersionSpec,
    VersionStatus,
    validate_versions,
)

_FIELDS = ("status", "name", "params", "exits")


@dataclass(slots=True, frozen=True)
class Difference:
    strategy: str
    version: str | None  # None: the strategy's own setting (the canary's share)
    what: str
    config: Any
    journal: Any
    applied: str  # what the daemon runs with

    def line(self) -> str:
        where = f"strategy {self.strategy!r}" + (f" version {self.version!r}"
                                                 if self.version else "")
        return (f"{where}: {self.what} is {_show(self.config)} in the configuration and "
                f"{_show(self.journal)} in the journal; {self.applied}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "line": self.line()}


def _show(value: Any) -> str:
    return "absent" if value is None else repr(value)


def merge(config: VersionRegistry, saved: dict[str, Any], prefer: str
          ) -> tuple[VersionRegistry, list[Difference]]:
    """The registry to run and every difference between the two. ``prefer`` is
    ``journal`` or ``config``. A saved state that cannot be read is one difference and
    the configuration runs."""
    try:
        journal = VersionRegistry.from_dict(saved)
    except (VersionError, KeyError, TypeError, AttributeError) as exc:
        return config, [Difference("*", None, "the saved state", "valid", "unreadable",
                                   f"the configuration applies ({exc})")]
    out = VersionRegistry()
    diffs: list[Difference] = []
    for key in config.strategies():
        if key not in journal.strategies():
            out.add(key, config.versions(key), config.canary_percent(key))
            continue
        specs, percent, found = _strategy(key, config, journal, prefer == "journal")
        diffs += found
        previous = journal.previous_active(key)
        if previous not in {v.version for v in specs}:
            previous = None
        try:
            out.add(key, specs, percent, previous)
        except VersionError as exc:  # not expected: each side is valid on its own
            out.add(key, config.versions(key), config.canary_percent(key))
            diffs.append(Difference(key, None, "the merged versions", "valid", str(exc),
                                    "the configuration applies"))
    for key in journal.strategies():
        if key not in config.strategies():
            diffs.append(Difference(key, None, "the strategy", None, "present",
                                    "not configured: its saved state is dropped"))
    return out, diffs


def _strategy(key: str, config: VersionRegistry, journal: VersionRegistry, journal_wins: bool
              ) -> tuple[list[VersionSpec], int, list[Difference]]:
    mine = {v.version: v for v in config.versions(key)}
    saved = {v.version: v for v in journal.versions(key)}
    winner = "the journal's applies" if journal_wins else "the configuration's applies"
    diffs: list[Difference] = []
    chosen: list[VersionSpec] = []
    for version in [*mine, *(v for v in saved if v not in mine)]:
        c, j = mine.get(version), saved.get(version)
        if j is None:
            assert c is not None
            chosen.append(c)
            diffs.append(Difference(key, version, "the version", "configured", None,
                                    f"added as {c.status.value}"))
            continue
        if c is None:
            diffs.append(Difference(key, version, "the version", None, j.status.value,
                                    "kept (added at run time)" if journal_wins
                                    else "dropped"))
            if journal_wins:
                chosen.append(j)
            continue
        for field in _FIELDS:
            cv, jv = getattr(c, field), getattr(j, field)
            if field == "status":
                cv, jv = cv.value, jv.value
            if cv != jv:
                diffs.append(Difference(key, version, field, cv, jv, winner))
        chosen.append(j if journal_wins else c)
    chosen = _one_active(key, chosen, mine, saved, journal_wins, diffs)
    percent = journal.canary_percent(key) if journal_wins else config.canary_percent(key)
    if config.canary_percent(key) != journal.canary_percent(key):
        diffs.append(Difference(key, None, "canary_percent", config.canary_percent(key),
                                journal.canary_percent(key), f"{percent} applies"))
    return chosen, percent, diffs


def _one_active(key: str, chosen: list[VersionSpec], mine: dict[str, VersionSpec],
                saved: dict[str, VersionSpec], journal_wins: bool,
                diffs: list[Difference]) -> list[VersionSpec]:
    """A version only one side knows may claim the active or the canary place the other
    side's versions hold: it joins as a shadow."""
    theirs = saved if journal_wins else mine
    taken = {v.status for v in chosen if v.version in theirs}
    out = []
    for v in chosen:
        if v.version not in theirs and v.status in taken & {VersionStatus.ACTIVE,
                                                            VersionStatus.CANARY}:
            diffs.append(Difference(key, v.version, "its place", v.status.value, None,
                                    f"added as shadow: another version is {v.status.value}"))
            v = v.model_copy(update={"status": VersionStatus.SHADOW})
        out.append(v)
    try:
        validate_versions(key, out)
    except ValueError:
        return list(theirs.values())
    return out
