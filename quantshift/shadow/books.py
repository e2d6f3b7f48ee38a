"""Version books: every version of a strategy sees every bar, in a paper book of its own.

For each strategy with more than one version, each version that is not retired runs in
its own small engine: the same strategy code with the version's parameters, a RiskGate
with the phase's limits (so its decisions are the "would" decisions of that version), a
Paper executor, and a journal file of its own under
``<state_dir>/<bot>-<executor>.versions/<strategy>@<version>.sqlite``. Its P&L, win
rate and drawdown are therefore measurable on the same bars as every other version's,
whatever the phase, and nothing a book does can reach the real executor: a book's
executor is always Paper, built here, and never the daemon's.

The books also keep every version's strategy instances warm, so promoting a version in
the running daemon starts it with indicators that have seen every bar.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from quantshift.app import build_engine
from quantshift.domain import Bar, ExecutorKind, OrderIntent
from quantshift.engine import Engine
from quantshift.execution.paper import PaperExecutor
from quantshift.settings import Settings, StrategySpec
from quantshift.shadow.versions import VersionRegistry, VersionSpec, VersionStatus
from quantshift.state.journal import Journal
from quantshift.strategies.base import StrategyBase, factory


class _ShadowPaper(PaperExecutor):
    """Paper fills, plus one "would" line per order in the shadow log."""

    def __init__(self, settings: Settings, sink: Engine, log: Any) -> None:
        super().__init__(sink, settings.paper_fill, settings.paper_slippage_bps,
                         settings.paper_commission_bps)
        self._shadow_log = log

    def submit(self, intent: OrderIntent) -> None:
        self._shadow_log.info("would {} {:g} {} @ ~{:g} ({})", intent.side.value, intent.qty,
                              intent.symbol, intent.ref_price, intent.reason)
        super().submit(intent)


@dataclass
class VersionBook:
    strategy: str
    version: str
    journal: Journal
    engine: Engine

    def instance(self, symbol: str) -> StrategyBase | None:
        return self.engine._instances.get((self.strategy, symbol))


def books_dir(settings: Settings) -> Path:
    return settings.state_dir / f"{settings.bot}-{settings.executor.value}.versions"


def book_path(settings: Settings, strategy: str, version: str) -> Path:
    return books_dir(settings) / f"{strategy}@{version}.sqlite"


ErrorHook = Callable[[str, str, BaseException], None]  # strategy, version, exception


class Recent:
    """The last bars of every symbol in the order they came (``seen``: how many came in
    all), which warm a book opened at run time. The daemon's feed fills it."""

    def __init__(self, settings: Settings) -> None:
        keep = max(settings.warmup_bars, 1) * max(len(settings.symbols), 1)
        self.bars: deque[Bar] = deque(maxlen=keep)
        self.seen = 0

    def add(self, bar: Bar) -> None:
        self.bars.append(bar)
        self.seen += 1


class VersionBooks:
    """The paper books of every version of every multi-version strategy."""

    def __init__(self, settings: Settings, registry: VersionRegistry,
                 recent: Recent | None = None, on_error: ErrorHook | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.on_error = on_error  # each book's engine tells it of a strategy that raised
        self.books: dict[tuple[str, str], VersionBook] = {}
        self.recent = recent if recent is not None else Recent(settings)
        for strategy in registry.strategies():
            versions = registry.versions(strategy)
            if len(versions) < 2:
                continue  # one version: the real book is its record
            for v in versions:
                if v.status is not VersionStatus.RETIRED:
                    self._open(strategy, v)
        self._all = list(self.books.values())

    def _open(self, strategy: str, v: VersionSpec) -> VersionBook:
        book = self.books[(strategy, v.version)] = self._build(strategy, v)
        return book

    def _build(self, strategy: str, v: VersionSpec) -> VersionBook:
        settings = self.settings
        path = book_path(settings, strategy, v.version)
        # Unlocked: the daemon's lock on its own ledger covers its books.
        journal = Journal(path, bot=settings.bot, executor=ExecutorKind.PAPER.value,
                          durable=False, lock=False)
        engine = build_engine(settings, journal, executor=ExecutorKind.PAPER,
                              strategies=[_spec(strategy, v)], log_decisions=False)
        # The version's own maker, so its instances and decisions carry the version.
        engine.use_makers([factory(v.name or strategy, strategy, v.params, v.version)])
        engine.control.install(_ShadowPaper(settings, engine, logger.bind(
            shadow=True, shadow_only=True, version=f"{strategy}@{v.version}")))
        engine.on_strategy_error = self.on_error
        return VersionBook(strategy, v.version, journal, engine)

    async def open_warm(self, strategy: str, v: VersionSpec, chunk: int = 200) -> int:
        """A book for a version that runs from now on (added, or made a shadow or the
        canary at run time; none when it has one): restored from its file, if it had one,
        then warmed on the recent bars in chunks with the loop free in between (the real
        book's bars are not held up by it); the bars that come meanwhile warm it too, and
        it sees live bars from the last one on. Returns the bars it warmed on."""
        key = (strategy, v.version)
        if key in self.books:
            return 0

        def build() -> VersionBook:  # its file opened and read off the loop (~10 ms)
            made = self._build(strategy, v)
            made.engine.restore()
            return made

        book = await asyncio.get_running_loop().run_in_executor(None, build)
        self.books[key] = book
        warmed = await self.catch_up([book], chunk)
        if self.books.get(key) is book:  # not retired meanwhile
            self._all.append(book)  # no await since the last bar it saw: none is missed
        return warmed

    async def catch_up(self, books: list[VersionBook] | None = None, chunk: int = 200) -> int:
        """Warm ``books`` (default: all of them, before they see live bars) on the recent
        bars, in chunks with the loop free in between, until none is left: the bars that
        come meanwhile too. Returns the bars. The caller lets them see live bars with no
        await after this one returns."""
        books = self._all if books is None else books
        recent = self.recent
        done = recent.seen - len(recent.bars)
        warmed = 0
        while True:
            first = recent.seen - len(recent.bars)  # the index of bars[0]
            done = max(done, first)
            pending = list(itertools.islice(recent.bars, done - first, done - first + chunk))
            if not pending:
                return warmed
            for bar in pending:
                for book in books:
                    book.engine.warm_up(bar)
            done += len(pending)
            warmed += len(pending)
            await asyncio.sleep(0)

    def __len__(self) -> int:
        return len(self._all)

    def get(self, strategy: str, version: str) -> VersionBook | None:
        return self.books.get((strategy, version))

    def drop(self, strategy: str, version: str) -> None:
        """A version retired at run time: its book sees no more bars (its file stays)."""
        book = self.books.pop((strategy, version), None)
        if book is None:
            return
        if book in self._all:  # (one still warming up is not)
            self._all.remove(book)
        book.engine.snapshot()
        book.journal.flush()
        book.journal.close()

    # -- bars -------------------------------------------------------------------------
    def on_bar(self, bar: Bar) -> None:
        for book in self._all:
            book.engine.on_bar(bar)

    def warm_up(self, bar: Bar) -> None:
        for book in self._all:
            book.engine.warm_up(bar)

    # -- what promotion needs -----------------------------------------------------------
    def warm_instance(self, strategy: str, version: str, symbol: str) -> StrategyBase | None:
        """A copy of the version's instance for ``symbol``, indicators warm, position
        zero (the caller sets the real one)."""
        book = self.books.get((strategy, version))
        inst = book.instance(symbol) if book is not None else None
        if inst is None:
            return None
        clone = copy.deepcopy(inst)
        clone.position = 0.0
        return clone

    # -- persistence --------------------------------------------------------------------
    def restore(self) -> None:
        for book in self._all:
            book.engine.restore()

    def snapshot(self) -> None:
        for book in self._all:
            book.engine.snapshot()

    @property
    def pending(self) -> int:
        return sum(book.journal.pending for book in self._all)

    def flush(self) -> int:
        return sum(book.journal.flush() for book in self._all)

    def close(self) -> None:
        for book in self._all:
            book.journal.close()


def _spec(strategy: str, v: VersionSpec) -> StrategySpec:
    return StrategySpec(name=v.name or strategy, id=strategy, params=v.params, exits=v.exits)


def open_books(settings: Settings, registry: VersionRegistry, recent: Recent | None = None,
               on_error: ErrorHook | None = None) -> VersionBooks | None:
    books = VersionBooks(settings, registry, recent, on_error)
    if not len(books):
        return None
    books.restore()
    return books
