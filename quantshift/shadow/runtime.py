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
from collections.abc import Callable
from datetime import date
from typing import Any

import orjson
from loguru import logger

from quantshift.control import ControlRefused
from quantshift.engine import Engine
from quantshift.settings import Settings
from quantshift.shadow.books import VersionBooks, open_books
from quantshift.shadow.versions import VersionChange, VersionError, VersionRegistry
from quantshift.state.journal import Journal
from quantshift.strategies.base import StrategyBase, factory

KV_KEY = "strategy_versions"
ADAPTIVE_KEY = "adaptive_canary"
_ALERT_PROMOTION = logger.bind(alert="promotion")
_ALERT_ROLLBACK = logger.bind(alert="rollback")

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
        self.registry = VersionRegistry.from_config(settings.strategies)
        persisted = journal.get(KV_KEY)
        if persisted:
            for note in self.registry.restore(persisted):
                logger.warning("strategy versions: {}", note)
        self._makers: dict[str, dict[str, Maker]] = {
            spec.key: {v.version: factory(v.name or spec.name, spec.key, v.params, v.version)
                       for v in spec.effective_versions()}
            for spec in settings.strategies}
        engine.use_makers([RoutedMaker(key, self.registry, self._makers[key])
                           for key in self.registry.strategies()])
        self.books: VersionBooks | None = open_books(settings, self.registry)
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
