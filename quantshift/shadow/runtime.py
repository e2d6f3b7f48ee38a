"""Strategy versions in the running daemon: routing, promotion, rollback, persistence.

The real book trades each strategy through one maker that picks, per symbol, the active
version or (for the canary's share of symbols) the canary version. Every version that is
not retired also runs in its own paper book (shadow/books.py), which is what makes the
versions comparable and what keeps their indicators warm: a promotion or a rollback swaps
the real book's instances of that strategy for warm copies of the new version's, between
two bars, so the new version decides on the very next bar.

The registry (which version is active, canary, shadow or retired, and the previous
active) is persisted in the journal's kv table after every change; a restart comes back
with the versions the operator left, not the ones in the config file.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from datetime import date
from typing import Any

import orjson
from loguru import logger
from pydantic import ValidationError

from quantshift.control import ControlRefused
from quantshift.domain import Bar
from quantshift.engine import Engine
from quantshift.exits import ExitRule
from quantshift.settings import Settings
from quantshift.shadow.books import Recent, VersionBooks, open_books
from quantshift.shadow.merge import Difference, merge
from quantshift.shadow.versions import (
    VersionChange,
    VersionError,
    VersionRegistry,
    VersionSpec,
    VersionStatus,
)
from quantshift.state.journal import Journal
from quantshift.strategies.base import StrategyBase, factory, parse_params

KV_KEY = "strategy_versions"
ADAPTIVE_KEY = "adaptive_canary"
_ALERT_PROMOTION = logger.bind(alert="promotion")
_ALERT_ROLLBACK = logger.bind(alert="rollback")
_TRACE_CHARS = 8000  # of a strategy's traceback, journaled once

Maker = Callable[[str], StrategyBase]


class RoutedMaker:
    """Makes a strategy's instance for a symbol from the version that trades it."""

    def __init__(self, strategy: str, registry: VersionRegistry,
                 makers: dict[str, Maker]) -> None:
        self.strategy = strategy
        self.registry = registry
        self.makers = makers

    def __call__(self, symbol: str) -> StrategyBase:
        return self.makers[self.registry.route(self.strategy, symbol)](symbol)


class NotApproved(Exception):
    """A promotion the statistics do not support (and that was not forced)."""

    def __init__(self, message: str, verdict: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.verdict = verdict


class VersionControl:
    """The control plane's promote and rollback (quantshift/control.py sends them here)."""

    def __init__(self, settings: Settings, engine: Engine, journal: Journal,
                 flush: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.journal = journal
        self._flush = flush  # makes the version books durable before a verdict reads them
        self.configured = VersionRegistry.from_config(settings.strategies)
        self.registry = self.configured
        self.differences: list[Difference] = []
        persisted = journal.get(KV_KEY)
        if persisted:
            prefer = settings.versions_from
            self.registry, self.differences = merge(self.configured, persisted, prefer)
            for diff in self.differences:  # never silently: one line each
                logger.warning("strategy versions (QUANTSHIFT_VERSIONS_FROM={}): {}", prefer,
                               diff.line())
        self._makers: dict[str, dict[str, Maker]] = {
            key: {v.version: factory(v.name or key, key, v.params, v.version)
                  for v in self.registry.versions(key)}
            for key in self.registry.strategies()}
        engine.use_makers([RoutedMaker(key, self.registry, self._makers[key])
                           for key in self.registry.strategies()])
        self.isolated: set[tuple[str, str]] = set()  # versions whose code raised
        engine.on_strategy_error = self._raised
        self.recent = Recent(settings)  # what warms a version added or brought back
        self.books: VersionBooks | None = open_books(settings, self.registry, self.recent,
                                                     self._raised)
        engine.attach_books(self.books)

    # -- what /status shows -------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        out = []
        for key in self.registry.strategies():
            spec = next(s for s in self.settings.strategies if s.key == key)
            out.append({"strategy": key, "name": spec.name,
                        "version": self.registry.active(key),
                        "status": "active",
                        "canary": self.registry.canary(key),
                        "canary_percent": self.registry.canary_percent(key)
                        if self.registry.canary(key) else 0,
                        "previous_active": self.registry.previous_active(key),
                        "raised": sorted(v for k, v in self.isolated if k == key),
                        "versions": {v.version: v.status.value
                                     for v in self.registry.versions(key)}})
        return out

    # -- the adaptive canary (opt-in per strategy) ------------------------------------------
    def adapt(self, day: date) -> list[dict[str, Any]]:
        """Let Thompson sampling move each adaptive strategy's canary share, at most once a
        UTC day, from the active and canary books' closed trades. Returns the changes (each
        journaled with the posterior it came from)."""
        from quantshift.shadow.adaptive import AdaptiveCanary, Outcomes

        changes = []
        state = self.journal.get(ADAPTIVE_KEY) or {}
        for spec in self.settings.strategies:
            key = spec.key
            canary = self.registry.canary(key)
            if not spec.canary_adaptive or canary is None or self.books is None:
                continue
            sampler = AdaptiveCanary(key, spec.canary_min_percent, spec.canary_max_percent)
            sampler.load(state.get(key, {}))
            active_book = self.books.get(key, self.registry.active(key))
            canary_book = self.books.get(key, canary)
            if active_book is None or canary_book is None:
                continue
            change = sampler.propose(day, self.registry.canary_percent(key),
                                     Outcomes.of(_returns(active_book.engine)),
                                     Outcomes.of(_returns(canary_book.engine)))
            state[key] = sampler.to_dict()
            if change is None:
                continue
            self.registry.set_canary_percent(key, change.new_percent)
            self._apply(VersionChange(key, "canary", self.registry.active(key),
                                      self.registry.previous_active(key), {}, {}))
            record = change.to_dict()
            self.journal.control("canary", {"strategy": key, "version": canary}, "daemon",
                                 orjson.dumps({"status": 200, **record}).decode())
            logger.info("strategy {}: canary {} now trades {}% of symbols (was {}%), "
                        "P(canary better) {:.3f}", key, canary, change.new_percent,
                        change.old_percent, change.p_canary_better)
            changes.append(record)
        self.journal.set(ADAPTIVE_KEY, state)
        return changes

    # -- changes (the control plane's Promote and Rollback) --------------------------------
    def _changeable(self, strategy: str, action: str) -> None:
        known = [spec.key for spec in self.settings.strategies]
        if strategy not in known:
            raise ControlRefused(f"no strategy {strategy!r}; running: {', '.join(known)}",
                                 404)
        if len(self.registry.versions(strategy)) < 2:
            raise ControlRefused(f"strategy {strategy!r} has one version: there is nothing "
                                 f"to {action}")

    async def promote(self, strategy: str, version: str, force: bool) -> dict[str, Any]:
        """Make ``version`` active, if the champion/challenger statistics approve it (or
        ``force``); ControlRefused otherwise."""
        self._changeable(strategy, "promote")
        try:
            return await self._promote(strategy, version, force)
        except (NotApproved, VersionError) as exc:
            raise ControlRefused(str(exc)) from None

    async def _promote(self, strategy: str, version: str, force: bool) -> dict[str, Any]:
        self.registry.spec(strategy, version)  # an unknown version is refused first
        if self.registry.active(strategy) == version:
            raise VersionError(f"strategy {strategy!r}: version {version!r} is already active")
        verdict = await self._verdict(strategy, version)
        decision = verdict.get("decision") if verdict else None
        if not force and decision != "APPROVED":
            raise NotApproved(
                f"strategy {strategy!r}: version {version!r} is not approved "
                f"({decision or 'no version book to judge it by'}); promote with force to "
                "override", verdict)
        change = self.registry.promote(strategy, version)
        self._apply(change)
        _ALERT_PROMOTION.warning("promotion: {} {} is active (was {}){}", strategy, version,
                                 change.previous_active, " FORCED" if force and decision !=
                                 "APPROVED" else f", {decision}")
        return {"change": change.to_dict(), "verdict": verdict, "forced": force and
                decision != "APPROVED"}

    def rollback(self, strategy: str) -> dict[str, Any]:
        self._changeable(strategy, "rollback")
        try:
            change = self.registry.rollback(strategy)
        except VersionError as exc:
            raise ControlRefused(str(exc)) from None
        self._apply(change)
        _ALERT_ROLLBACK.warning("rollback: {} {} is active again (was {})", strategy,
                                change.active, change.previous_active)
        return {"change": change.to_dict()}

    def on_bar(self, bar: Bar) -> None:
        """The feed's callback: the bar kept for later warm-ups, then the engine's trip
        (looked up on every bar: attaching books at run time rewires it)."""
        self.recent.add(bar)
        self.engine.on_bar(bar)

    # -- a version's status and the canary's share, at run time ----------------------------
    def listing(self) -> list[dict[str, Any]]:
        """Every strategy's versions as they run: status, parameters, exits, book."""
        registry, books = self.registry, self.books
        return [{"strategy": key, "active": registry.active(key),
                 "canary": registry.canary(key), "canary_percent": registry.canary_percent(key),
                 "previous_active": registry.previous_active(key),
                 "raised": sorted(v for k, v in self.isolated if k == key),
                 "versions": [{"version": v.version, "status": v.status.value, "name": v.name,
                               "params": v.params, "exits": v.exits,
                               "book": books is not None and books.get(key, v.version)
                               is not None} for v in registry.versions(key)]}
                for key in registry.strategies()]

    async def set_status(self, strategy: str, version: str, status: str,
                         percent: int | None) -> dict[str, Any]:
        """A version that is not active becomes a shadow, the canary or retired: between
        two bars, its paper book opened (warm on the recent bars) or closed, the real
        book's canary symbols routed anew, the registry persisted."""
        self._known(strategy)
        registry = self.registry
        try:
            target = VersionStatus(status)
            spec = registry.spec(strategy, version)
            if (strategy, version) in self.isolated and target is not VersionStatus.RETIRED:
                raise VersionError(f"strategy {strategy!r}: version {version!r} raised in "
                                   "this run; it stays retired until the daemon restarts")
            was = spec.status
            change = registry.set_status(strategy, version, target)
        except (VersionError, ValueError) as exc:
            raise ControlRefused(str(exc)) from None
        if target is VersionStatus.CANARY and percent is not None:
            registry.set_canary_percent(strategy, percent)
        if target is VersionStatus.RETIRED:
            if self.books is not None:
                self.books.drop(strategy, version)
        else:
            await self._book_for(strategy, registry.spec(strategy, version))
        self._apply(change)
        _ALERT_PROMOTION.warning("versions: {} {} is {} now (was {}){}", strategy, version,
                                 target.value, was.value,
                                 f", trading {registry.canary_percent(strategy)}% of symbols"
                                 if target is VersionStatus.CANARY else "")
        return {"change": change.to_dict(), "canary_percent": registry.canary_percent(strategy)}

    async def add(self, strategy: str, version: str, name: str | None,
                  params: dict[str, Any], exits: dict[str, Any] | None) -> dict[str, Any]:
        """A new version of a configured strategy, as a shadow: its parameters are the
        strategy's configured ones updated with ``params`` (validated for the strategy it
        runs: 400 naming the problem), its own paper book warm on the recent bars. The
        real book is not touched."""
        self._known(strategy)
        configured = next((s for s in self.settings.strategies if s.key == strategy), None)
        if configured is None:
            raise ControlRefused(f"strategy {strategy!r} is not in the configuration", 404)
        runs = name or configured.name
        merged = {**configured.params, **params}
        try:
            parse_params(runs, merged)
            if exits is not None:
                ExitRule(**exits)
            spec = VersionSpec(version=version, status=VersionStatus.SHADOW, name=runs,
                               params=merged,
                               exits=exits if exits is not None else configured.exits)
            self.registry.add_version(strategy, spec)
        except ValidationError as exc:
            err = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "exits"
            raise ControlRefused(f"strategy {strategy!r}: {where}: {err['msg']}", 400) \
                from None
        except VersionError as exc:
            raise ControlRefused(str(exc), 409 if "exists" in str(exc) else 400) from None
        except ValueError as exc:
            raise ControlRefused(f"strategy {strategy!r}: {exc}", 400) from None
        self._makers[strategy][version] = factory(runs, strategy, merged, version)
        self.journal.set(KV_KEY, self.registry.to_dict())  # from here on, a restart has it
        warmed = await self._book_for(strategy, spec)
        _ALERT_PROMOTION.warning("versions: {} {} added as a shadow ({} {}), warm on {} bars",
                                 strategy, version, runs, merged, warmed)
        return {"added": spec.model_dump(mode="json"), "strategy": strategy,
                "warmed_on": warmed}

    async def _book_for(self, strategy: str, spec: VersionSpec) -> int:
        if self.books is not None:
            return await self.books.open_warm(strategy, spec)
        # The first version beside an active one: books for both, warm on the recent
        # bars, then every bar.
        def build() -> VersionBooks:  # their files opened and read off the loop
            made = VersionBooks(self.settings, self.registry, self.recent, self._raised)
            made.restore()
            return made

        books = await asyncio.get_running_loop().run_in_executor(None, build)
        warmed = await books.catch_up()
        self.books = books
        self.engine.attach_books(books)  # from the next bar on (no await since the last)
        return warmed

    def set_canary(self, strategy: str, percent: int) -> dict[str, Any]:
        """The share of symbols the canary trades (0: none, it stays a canary)."""
        self._known(strategy)
        registry = self.registry
        try:
            was = registry.set_canary_percent(strategy, percent)
        except VersionError as exc:
            raise ControlRefused(str(exc), 400) from None
        canary = registry.canary(strategy)
        self._apply(VersionChange(strategy, "canary", registry.active(strategy),
                                  registry.previous_active(strategy), {}, {}))
        _ALERT_PROMOTION.warning("versions: {} canary share {}% (was {}%){}", strategy,
                                 percent, was, f": {canary} trades it" if canary
                                 else "; no version is the canary now")
        return {"strategy": strategy, "canary": canary, "canary_percent": percent, "was": was}

    def _known(self, strategy: str) -> None:
        known = self.registry.strategies()
        if strategy not in known:
            raise ControlRefused(f"no strategy {strategy!r}; running: {', '.join(known)}", 404)

    # -- a version whose code raises (the engine has stopped running it) -------------------
    def _raised(self, strategy: str, version: str, exc: BaseException) -> None:
        """Isolate the version, after the bar in hand (a change is applied between bars)."""
        if (strategy, version) in self.isolated:
            return
        self.isolated.add((strategy, version))
        trace = "".join(traceback.format_exception(exc))[-_TRACE_CHARS:]
        try:
            asyncio.get_running_loop().call_soon(self.isolate, strategy, version, trace)
        except RuntimeError:  # no loop (a book driven by hand): at once
            self.isolate(strategy, version, trace)

    def isolate(self, strategy: str, version: str, trace: str) -> dict[str, Any]:
        """Retire a version whose code raised; an active one is rolled back first to the
        previous active version (if there is one that still runs). The daemon trades on;
        the traceback is journaled once, with the change."""
        registry = self.registry
        for book in (self.books.books.values() if self.books else ()):
            book.engine.failed.add((strategy, version))  # the real book's twin stops too
        self.engine.failed.add((strategy, version))
        out: dict[str, Any] = {"strategy": strategy, "version": version}
        if registry.status(strategy, version) is VersionStatus.ACTIVE:
            previous = registry.previous_active(strategy)
            if previous is None or (strategy, previous) in self.isolated or \
                    registry.status(strategy, previous) is VersionStatus.RETIRED:
                _ALERT_ROLLBACK.error("strategy {}: its active version {} raised and there is "
                                      "no version to roll back to: the strategy decides "
                                      "nothing more (its positions keep their exits)",
                                      strategy, version)
                self._record("retire", out, {"status": 409, "error": "no version to roll "
                                             "back to", "trace": trace})
                return out
            change = registry.rollback(strategy)
            self._apply(change)
            out["rollback"] = change.to_dict()
            self._record("rollback", {**out, "reason": "its code raised"},
                         {"status": 200, "change": change.to_dict()})
            _ALERT_ROLLBACK.warning("rollback: {} {} raised; {} is active again", strategy,
                                    version, change.active)
        change = registry.set_status(strategy, version, VersionStatus.RETIRED)
        self._apply(change)
        if self.books is not None:
            self.books.drop(strategy, version)
        out["change"] = change.to_dict()
        self._record("retire", {"strategy": strategy, "version": version,
                                "reason": "its code raised"},
                     {"status": 200, "change": change.to_dict(), "trace": trace})
        _ALERT_ROLLBACK.warning("strategy {}: version {} retired (its code raised); the "
                                "daemon trades on", strategy, version)
        return out

    def _record(self, action: str, params: dict[str, Any], result: dict[str, Any]) -> None:
        self.journal.control(action, params, "daemon", orjson.dumps(result).decode())

    def _apply(self, change: VersionChange) -> None:
        """Swap the real book's instances of the strategy, persist the registry."""
        strategy = change.strategy
        books = self.books

        def make(symbol: str) -> StrategyBase:
            version = self.registry.route(strategy, symbol)
            warm = books.warm_instance(strategy, version, symbol) if books else None
            return warm if warm is not None else self._makers[strategy][version](symbol)

        swapped = self.engine.replace_strategy(strategy, make)
        self.journal.set(KV_KEY, self.registry.to_dict())
        logger.info("strategy {}: {} instances now run {} (canary {})", strategy, swapped,
                    change.active, self.registry.canary(strategy) or "none")

    async def _verdict(self, strategy: str, version: str) -> dict[str, Any] | None:
        if self.books is None or self.books.get(strategy, version) is None:
            return None
        from quantshift.shadow.compare import compare

        if self._flush is not None:
            await self._flush()
        figures = await asyncio.get_running_loop().run_in_executor(
            None, lambda: compare(self.settings, self.registry, strategy))
        for fig in figures:
            if fig.version == version:
                return fig.verdict
        return None


def _returns(engine: Engine) -> list[float]:
    """A book's closed-trade returns, from its journal (the book keeps no trade list)."""
    return engine.journal.trade_returns()
