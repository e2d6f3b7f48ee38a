"""One bar's trip: feed -> strategies -> RiskGate -> executor, and what comes back.

Everything here is synchronous: the hot path awaits nothing, and journal writes are
only queued (the daemon group-commits them off the loop). Whether an order may go out,
and to which executor, is the control plane's (quantshift/control.py): the engine reads
its executor slot and asks it before handing an intent to the real executor.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from loguru import logger

from quantshift.domain import (
    Bar,
    Direction,
    Fill,
    Order,
    OrderIntent,
    OrderState,
    Side,
    Signal,
    Trade,
    TradingState,
)
from quantshift.execution import handoff
from quantshift.execution.base import Executor
from quantshift.exits import ExitManager
from quantshift.portfolio import Portfolio
from quantshift.risk.gate import RiskGate
from quantshift.risk.pending import Pending
from quantshift.state.journal import Journal
from quantshift.strategies.base import StrategyBase

StrategyMaker = Callable[[str], StrategyBase]
_EPS = 1e-9
# Upper bounds (ns) of the decision latency histogram's buckets, 10 µs to 1 s; the
# last counter of Engine.latency_counts holds what is slower.
LATENCY_BOUNDS_NS: tuple[int, ...] = (
    10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000,
    10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 500_000_000, 1_000_000_000)


# Log lines that are also alerts (ops/notify.py copies them to Telegram).
_ALERT_FILL = logger.bind(alert="fill")
# A strategy's exception is its version's (isolated, shadow/runtime.py), not the daemon's:
# an error with a rule of its own, which the error-rate trigger does not count.
_STRATEGY_RAISED = logger.bind(alert="error", ruled=True)

class Engine:
    def __init__(self, *, strategies: list[StrategyMaker], gate: RiskGate,
                 portfolio: Portfolio, journal: Journal, log_decisions: bool = True,
                 keep_trades: bool = False, exits: ExitManager | None = None) -> None:
        self.makers = strategies
        self.gate = gate
        self.control = gate.control  # the trading state and the executor slot
        self.portfolio = portfolio
        self.journal = journal
        self._executor_wants_bars = False
        # Set when the executor's venue holds exits itself (brackets): the entry's tick.
        self._bracket_tick: Callable[[OrderIntent, float], float | None] | None = None
        self.log_decisions = log_decisions
        self.exits = exits
        self.trades: list[Trade] | None = [] if keep_trades else None
        self.bars = 0
        self.counts = {"signals": 0, "approved": 0, "vetoed": 0, "orders": 0,
                       "fills": 0, "trades": 0, "duplicates": 0, "warmup_signals": 0}
        self.last_ts: dict[str, int] = {}
        self._by_symbol: dict[str, list[StrategyBase]] = {}
        self._instances: dict[tuple[str, str], StrategyBase] = {}
        self._live: dict[str, list[StrategyBase]] = {}  # symbols past their warm-up
        self._resume_after: dict[str, int] = {}
        self._known_ids: set[str] = set()
        self._orders: dict[str, Order] = {}
        # Signed quantity sent but not yet filled, per (strategy, symbol), for the gate.
        self._pending = Pending()
        self._fill_seq = 0
        # Each decision's summary, for an account's decision stream (state/shared.py):
        # None unless instances share an account. Called on the hot path: it only appends.
        self.decision_tap: Callable[[tuple[Any, ...]], None] | None = None
        self.fill_tap: Callable[[tuple[Any, ...]], None] | None = None  # and each fill
        # Read by /metrics at scrape time: plain counters, the cheapest a bar can keep
        # (a defaultdict's += costs half a Counter's).
        self.signal_counts: defaultdict[tuple[str, str], int] = defaultdict(int)  # by version
        self.veto_counts: defaultdict[str, int] = defaultdict(int)  # text up to its first ':'
        self.final_counts: defaultdict[str, int] = defaultdict(int)  # orders by final state
        # With /metrics on (Metrics sets it), each bar's on_bar time goes into a fixed-bucket
        # histogram: two clock reads a bar, which backtests and version books need not pay.
        self._timed = False
        self.latency_counts = [0] * (len(LATENCY_BOUNDS_NS) + 1)
        self.latency_sum_ns = 0
        self._books: Any = None
        # Versions whose code raised, (strategy, version): skipped from then on; the hook
        # (shadow/runtime.py) retires them, after the bar, and rolls an active one back.
        self.failed: set[tuple[str, str]] = set()
        self.on_strategy_error: Callable[[str, str, BaseException], None] | None = None
        self._rewire()
        self.control.attach(self)
        self.control.on_executor_change(self._executor_changed)
        self._executor_changed()

    @property
    def executor(self) -> Executor | None:
        """Where orders go now (the control plane's slot: log-only while demoted)."""
        return self.control.executor

    def _executor_changed(self) -> None:
        executor = self.control.executor
        self._executor_wants_bars = bool(executor is not None and executor.wants_bars)
        self._bracket_tick = getattr(executor, "bracket_tick", None) \
            if getattr(executor, "supports_brackets", False) else None

    def use_makers(self, makers: list[StrategyMaker]) -> None:
        """The strategies' makers (strategy versions route each symbol to a version)."""
        self.makers = makers

    # -- the hot path ------------------------------------------------------------------
    # ``on_bar`` is the bare trip of one bar (a backtest's path), or, when the decision
    # latency is timed (/metrics) or version books run beside the real one, a wrapper
    # around it: the choice is made when either changes, not on every bar.
    @property
    def timed(self) -> bool:
        return self._timed

    def time_decisions(self, on: bool = True) -> None:
        """Time every bar's trip into the latency histogram (/metrics turns it on)."""
        if on != self._timed:
            self._timed = on
            self._rewire()

    @property
    def books(self) -> Any:
        """The strategies' version books (shadow/books.py): every version sees every bar,
        after the real book has decided on it."""
        return self._books

    def attach_books(self, books: Any) -> None:
        self._books = books
        self._rewire()

    def _rewire(self) -> None:
        watched = self._timed or self._books is not None
        self.on_bar = self._on_bar_watched if watched else self._on_bar  # type: ignore[method-assign]

    def _on_bar_watched(self, bar: Bar) -> None:
        t0 = perf_counter_ns()
        self._on_bar(bar)
        if self._timed:
            took = perf_counter_ns() - t0
            self.latency_sum_ns += took
            # Most bars take under 10 µs: the first bucket without a search.
            self.latency_counts[0 if took <= 10_000 else bisect_left(LATENCY_BOUNDS_NS, took)] += 1
        if self._books is not None:
            self._books.on_bar(bar)

    def on_bar(self, bar: Bar) -> None:
        self._on_bar(bar)  # replaced per instance by _rewire; kept for the type checker

    def _on_bar(self, bar: Bar) -> None:
        self.bars += 1
        symbol = bar.symbol
        gate = self.gate
        # Bars at or before the last one handled before a restart only warm the strategies
        # up: they fill nothing and value nothing, the books already saw them.
        live = not self._resume_after or bar.ts > self._resume_after.get(symbol, -1)
        control = self.control
        if control.stale is not None:
            logger.info("feed fresh again ({} {}): entries resume", symbol, bar.ts)
            control.mark_fresh()
        gate.on_bar(bar)  # market state (ATR, regime, volume) learns from every bar
        if live:
            strategies = self._live.get(symbol)
            if strategies is None:
                strategies = self._sync_positions(symbol)
            if self._executor_wants_bars:
                self.executor.on_bar(bar)  # type: ignore[union-attr]  # resting orders first
            self.portfolio.mark(symbol, bar.close, bar.ts)
            if self.exits is not None:
                for exit_signal in self.exits.on_bar(bar, self.portfolio):
                    owner = self._instances.get((exit_signal.strategy, symbol))
                    if owner is not None:  # the version whose position it closes
                        exit_signal.version = owner.version
                    self.decide(exit_signal, bar.close)
        else:
            if self.exits is not None:
                self.exits.observe(bar, self.portfolio)
            strategies = self._by_symbol.get(symbol) or self._spawn(symbol)
        failed = self.failed
        for strategy in strategies:
            if failed and (strategy.id, strategy.version) in failed:
                continue
            try:
                signal = strategy.on_bar(bar)
            except Exception as exc:  # its code: that version stops, the daemon does not
                self._raised(strategy, bar, exc)
                continue
            if signal is not None:
                signal.version = strategy.version
                if live:
                    self.decide(signal, bar.close)
                else:
                    self.counts["warmup_signals"] += 1
        if live:
            self.last_ts[symbol] = bar.ts

    def warm_up(self, bar: Bar) -> None:
        """Feed a history bar to the strategies (and the gate's market state, ATR, regime;
        the exits' ATR and trailing stops) only: it is the past, nothing trades on it."""
        self.gate.on_bar(bar)
        if self.exits is not None:
            self.exits.observe(bar, self.portfolio)
        strategies = self._by_symbol.get(bar.symbol)
        if strategies is None:
            strategies = self._spawn(bar.symbol)
        failed = self.failed
        for strategy in strategies:
            if failed and (strategy.id, strategy.version) in failed:
                continue
            try:
                if strategy.on_bar(bar) is not None:
                    self.counts["warmup_signals"] += 1
            except Exception as exc:
                self._raised(strategy, bar, exc)
        if self.books is not None:
            self.books.warm_up(bar)

    def _raised(self, strategy: StrategyBase, bar: Bar, exc: Exception) -> None:
        """A strategy's ``on_bar`` raised: its version decides nothing more here (every
        symbol), the traceback is logged once, and the hook is told (once)."""
        key = (strategy.id, strategy.version)
        if key in self.failed:
            return
        self.failed.add(key)
        _STRATEGY_RAISED.opt(exception=exc).error(
            "strategy {} version {} raised on the {} bar at {}: it decides nothing more "
            "({}: {})", strategy.id, strategy.version, bar.symbol, bar.ts,
            type(exc).__name__, exc)
        if self.on_strategy_error is not None:
            self.on_strategy_error(strategy.id, strategy.version, exc)

    def _spawn(self, symbol: str) -> list[StrategyBase]:
        """The strategies' instances for a symbol's first bar."""
        made = self._by_symbol[symbol] = [make(symbol) for make in self.makers]
        for strategy in made:
            self._instances[(strategy.id, symbol)] = strategy
        return made

    def _sync_positions(self, symbol: str) -> list[StrategyBase]:
        """At a symbol's first live bar, tell its strategies what they really hold: warm-up
        bars replay the decisions they made before, the books say what came of them."""
        strategies = self._live[symbol] = self._by_symbol.get(symbol) or self._spawn(symbol)
        for strategy in strategies:
            strategy.position = self.portfolio.position_qty(strategy.id, symbol)
        return strategies

    def decide(self, signal: Signal, price: float, *,
               authorize: Callable[[OrderIntent], None] | None = None) -> list[OrderIntent]:
        """Put one signal through the gate and hand what it approves to the executor.

        ``authorize``: the signal is the control plane's flatten, which it authorizes
        (each intent is passed to it before it is sent) and no trading state holds back."""
        counts = self.counts
        counts["signals"] += 1
        self.signal_counts[(signal.strategy, signal.version)] += 1
        gate = self.gate
        control = self.control
        state, loss_halt_day = control.state, gate.loss_halt_day
        decision = gate.evaluate(signal, price, self.portfolio, self._pending,
                                 authorize is not None)
        # A breaker tripped (daily loss, drawdown): snapshotted once this decision's rows
        # are queued, so it is on disk with the next group commit, not the next snapshot,
        # and a crash meanwhile cannot lift it.
        tripped = control.state is not state or gate.loss_halt_day != loss_halt_day
        journal = self.journal
        veto = decision.veto
        if veto is not None:
            counts["vetoed"] += 1
            self.veto_counts[veto.partition(":")[0]] += 1
            journal.veto(signal.ts, signal.strategy, signal.symbol, int(signal.target), veto)
            if self.log_decisions:
                logger.info("veto {} {} {}: {}", signal.strategy, signal.symbol,
                            signal.target.name, veto)
        sent: list[OrderIntent] = []
        for intent in decision.intents:
            coid = intent.client_order_id
            if coid in self._known_ids:
                # The same strategy, symbol, bar, side and leg: this order exists already.
                counts["duplicates"] += 1
                logger.warning("not sending {} again: {} {} for this bar exists already", coid,
                               intent.side.value, intent.symbol)
                continue
            self._known_ids.add(coid)
            sent.append(intent)
        if not sent:
            outcome = "vetoed" if veto else "duplicate" if decision.intents else "unchanged"
            journal.decision(signal.ts, signal.strategy, signal.symbol, int(signal.target),
                             outcome, veto or signal.reason, signal.confidence,
                             signal.indicators, None, signal.version)
            if self.decision_tap is not None:
                self.decision_tap((signal.ts, signal.symbol, signal.strategy, signal.version,
                                   int(signal.target), outcome, veto or signal.reason, "",
                                   price))
            if tripped:
                self.snapshot()
            return sent
        counts["approved"] += 1
        journal.decision(signal.ts, signal.strategy, signal.symbol, int(signal.target),
                         "exit_only" if veto else "approved", veto or signal.reason,
                         signal.confidence, {**signal.indicators, "regime": self.gate.regime},
                         ",".join(i.client_order_id for i in sent), signal.version)
        if self.decision_tap is not None:
            self.decision_tap((signal.ts, signal.symbol, signal.strategy, signal.version,
                               int(signal.target), "exit_only" if veto else "approved",
                               veto or signal.reason,
                               ",".join(f"{i.side.value} {i.qty:g}" for i in sent), price))
        executor = control.executor
        real = executor is control.real_executor  # log-only while demoted: nothing leaves
        for intent in sent:
            counts["orders"] += 1
            if self._bracket_tick is not None and not intent.reduce_only and self.exits \
                    and self.exits.attach(intent, self._bracket_tick) and self.log_decisions:
                logger.info("{} carries its exits to the venue: take-profit {}, stop-loss {}",
                            intent.client_order_id, intent.take_profit, intent.stop_loss)
            journal.intent(intent)
            if self.log_decisions:
                logger.info("signal {} {} {} ({}) -> {} {:g} @ {:g}{} coid={}", signal.strategy,
                            signal.symbol, signal.target.name, signal.reason, intent.side.value,
                            intent.qty, price, " reduce-only" if intent.reduce_only else "",
                            intent.client_order_id)
            self._orders[intent.client_order_id] = Order(intent)
            self._add_pending(intent, intent.signed_qty)
            if authorize is not None:
                authorize(intent)
            why = control.refusal(intent) if real else None
            if why is not None:  # the state changed under the decision: it does not go
                self.on_order_state(intent, OrderState.CANCELLED, f"not sent: {why}")
                continue
            executor.submit(intent)  # type: ignore[union-attr]
        if tripped:
            self.snapshot()
        return sent

    def _add_pending(self, intent: OrderIntent, qty: float) -> None:
        if intent.parent:
            return  # a bracket's leg waits on a price: nothing the gate counts as sent
        self._pending.add(intent.strategy, intent.symbol, qty)

    # -- what the executor reports (ExecutionSink) -------------------------------------
    def on_order_state(self, intent: OrderIntent, state: OrderState, detail: str = "") -> None:
        coid = intent.client_order_id
        order = self._orders.get(coid)
        if order is not None:
            order.state = state
            if state.final:
                self.final_counts[state] += 1
                del self._orders[coid]
                unfilled = intent.qty - order.filled_qty
                if unfilled > _EPS:  # cancelled, rejected, expired or never sent
                    self._add_pending(intent, -unfilled if intent.side is Side.BUY else unfilled)
        self.journal.order_state(coid, state, detail)
        if intent.parent and state.final and self.exits is not None:
            self.exits.leg_closed(coid)  # the daemon watches that level again, if held
        if self.log_decisions and state is not OrderState.FILLED:
            logger.info("order {} {}{}", coid, state.value, f": {detail}" if detail else "")

    def on_leg(self, parent: OrderIntent, leg: OrderIntent) -> bool:
        """A leg the venue made for a bracket entry: journaled as an intent of the entry's
        strategy (its fills book there, a restart tracks it). False if already known."""
        coid = leg.client_order_id
        if coid in self._known_ids:
            return False
        self._known_ids.add(coid)
        self._orders[coid] = Order(leg)
        self.journal.intent(leg)
        if self.exits is not None:
            self.exits.leg_opened(leg)
        if self.log_decisions:
            logger.info("leg {} of {}: {} {:g} {} at {:g} coid={}", leg.leg, parent.client_order_id,
                        leg.side.value, leg.qty, leg.symbol, leg.ref_price, coid)
        return True

    def on_fill(self, intent: OrderIntent, qty: float, price: float, commission: float,
                ts: int) -> None:
        self._fill_seq += 1
        fill = Fill(self._fill_seq, intent.client_order_id, intent.strategy, intent.symbol,
                    intent.side, qty, price, commission, ts)
        trade = self.portfolio.apply_fill(fill)
        instance = self._instances.get((intent.strategy, intent.symbol))
        if instance is not None:
            instance.position = self.portfolio.position_qty(intent.strategy, intent.symbol)
        if intent.client_order_id in self._orders:
            self._add_pending(intent, -fill.signed_qty)
        self.journal.fill(fill, trade)
        if self.fill_tap is not None:
            self.fill_tap((intent.ts, intent.symbol, intent.strategy, intent.side.value, qty,
                           price, commission))
        self.counts["fills"] += 1
        if trade is not None:
            self.gate.on_trade(trade)
            self.counts["trades"] += 1
            if self.trades is not None:
                self.trades.append(trade)
        order = self._orders.get(intent.client_order_id)
        done = True
        if order is not None:
            total = order.filled_qty + qty
            order.avg_price = (order.avg_price * order.filled_qty + price * qty) / total
            order.filled_qty = total
            done = total >= intent.qty - _EPS
        if self.log_decisions:
            _ALERT_FILL.info("fill {} {:g} {} @ {:.4f} commission {:.2f} coid={} equity {:.2f}",
                             intent.side.value, qty, intent.symbol, price, commission,
                             intent.client_order_id, self.portfolio.equity)
        self.on_order_state(intent, OrderState.FILLED if done else OrderState.PARTIALLY_FILLED)

    # -- flatten, persistence ----------------------------------------------------------
    def replace_strategy(self, strategy: str, make: StrategyMaker) -> int:
        """Swap every instance of one strategy for a new one (a promotion or a rollback),
        between two bars. Each new instance is told the position the books hold, so it
        neither enters again nor forgets to exit; later symbols get ``make``'s instances
        through the makers, which route the same way."""
        swapped = 0
        for symbol, instances in self._by_symbol.items():
            for i, inst in enumerate(instances):
                if inst.id != strategy:
                    continue
                new = make(symbol)
                new.position = self.portfolio.position_qty(strategy, symbol)
                instances[i] = new  # _live shares these lists
                self._instances[(strategy, symbol)] = new
                swapped += 1
        return swapped

    def pending_by_symbol(self) -> dict[str, float]:
        """The signed quantity of orders sent and not yet filled, per symbol."""
        return dict(self._pending.by_symbol)

    def known_ids(self) -> set[str]:
        """Every client order id the journal has."""
        return self._known_ids

    def open_orders(self) -> list[OrderIntent]:
        return self.executor.open_orders() if self.executor is not None else []

    def in_flight(self) -> int:
        """Intents journaled that no venue has acknowledged yet: sent or not, unknown."""
        return sum(1 for order in self._orders.values() if order.state is OrderState.NEW)

    def flatten_orders(self, reason: str, authorize: Callable[[OrderIntent], None]) -> int:
        """Send the orders that take every position to flat (the control plane's flatten:
        ``authorize`` lets each through whatever the trading state; exits pass any entry
        limit). Returns how many were sent.

        Orders in flight count as done (an exit already sent is not sent twice). Each
        flatten decides at a time of its own, one nanosecond past the symbol's last bar or
        decision: its client order ids never collide with a strategy's exit on that bar or
        an earlier flatten's, so a flatten after a refused exit or a rejected flatten still
        goes out. A restart reads that time back from the journal's decisions."""
        sent = 0
        latest = max(self.last_ts.values(), default=0)
        for pos in list(self.portfolio.positions.values()):
            if abs(pos.qty) > _EPS:
                mark = self.portfolio.marks.get(pos.symbol, pos.avg_price)
                ts = self.last_ts[pos.symbol] = (self.last_ts.get(pos.symbol) or latest) + 1
                signal = Signal(pos.strategy, pos.symbol, ts, Direction.FLAT, reason)
                sent += len(self.decide(signal, mark, authorize=authorize))
        return sent

    def state(self) -> dict[str, Any]:
        return {"portfolio": self.portfolio.snapshot(), "risk": self.gate.counters(),
                "last_ts": dict(self.last_ts), "counts": {"bars": self.bars, **self.counts},
                "trading_state": self.control.state.value, "halt_reason": self.control.reason,
                "exits": self.exits.state() if self.exits is not None else {},
                "latency_counts": list(self.latency_counts)}

    def snapshot(self) -> None:
        self.journal.equity_point(self.portfolio.equity, self.portfolio.drawdown)
        self.journal.snapshot(self.state())

    def owners(self, symbol: str) -> set[str]:
        """The strategies that trade ``symbol``."""
        return {strategy for strategy, sym in self._instances if sym == symbol}

    def adopt(self, strategy: str, symbol: str, qty: float, price: float, coid: str) -> None:
        """Book ``qty`` (signed) of ``symbol`` that the venue holds and this book lacks, at
        ``price``: a new primary's takeover finding the last primary's fills made after
        the state it left. Journaled as an order and its fill under ``coid``."""
        side = Side.BUY if qty > 0 else Side.SELL
        ts = time.time_ns()
        intent = OrderIntent(coid, strategy, symbol, side, abs(qty), ts, price,
                             reason="takeover: held at the venue")
        self._known_ids.add(coid)
        self.journal.intent(intent)
        self.on_fill(intent, abs(qty), price, 0.0, ts)

    def open_orders_state(self) -> list[dict[str, Any]]:
        """The orders this book follows at the venue, for the next primary (a handover)."""
        return handoff.open_docs(self._orders)

    def adopt_orders(self, docs: list[Any], source: str) -> list[str]:
        """Follow the orders the last primary left open (``open_orders_state``): journaled
        here, tracked by the real executor, their fills beyond what they had booked to this
        book. Returns their ids."""
        executor = self.control.real_executor
        taken: dict[bool, list[tuple[OrderIntent, float, float]]] = {True: [], False: []}
        for doc in docs if isinstance(docs, list) else ():
            parsed = handoff.from_doc(doc) if isinstance(doc, dict) else None
            if parsed is None or executor is None or parsed[0].client_order_id in self._orders:
                continue
            intent, filled, avg, sent = parsed
            coid = intent.client_order_id
            self._known_ids.add(coid)
            self.journal.intent(intent)
            self.journal.order_state(coid, OrderState.SUBMITTED if sent else OrderState.NEW,
                                     f"adopted from instance {source}")
            taken[sent].append((intent, filled, avg))
        for sent, group in taken.items():
            self._follow(group, sent)
        return [i.client_order_id for group in taken.values() for i, _, _ in group]

    def shadow_intent(self, client_order_id: str) -> OrderIntent | None:
        """This bot's decision under this id, made here as a standby (never sent from
        here; every instance derives the same id for one decision), or None."""
        if client_order_id in self._orders:
            return None
        return self.journal.shadow_intent(client_order_id)

    def adopt_found(self, intent: OrderIntent, source: str) -> None:
        """Follow an order another instance sent for a decision made here as a standby
        (``shadow_intent``; the quantity the venue's): journaled as sent, counted by the
        risk gate, tracked from nothing filled, so every fill the venue reports books here."""
        coid = intent.client_order_id
        self._known_ids.add(coid)
        self.journal.intent(intent, replace=True)
        self.journal.order_state(coid, OrderState.SUBMITTED, f"adopted: {source}")
        if not intent.parent:
            self.gate.count_order(intent.ts, self.portfolio)
        self._follow([(intent, 0.0, 0.0)], True)

    def _follow(self, group: list[tuple[OrderIntent, float, float]], sent: bool) -> None:
        """Track orders open at the venue (``sent``) or journaled unanswered, with what they
        have filled: the book's side (pending quantities, legs watched) and the real
        executor's (also while demoted: it reconciles them)."""
        executor = self.control.real_executor
        if executor is None or not group:
            return
        for intent, filled, avg in group:
            self._orders[intent.client_order_id] = Order(
                intent, OrderState.SUBMITTED if sent else OrderState.NEW, filled, avg)
            if intent.parent and self.exits is not None:
                self.exits.leg_opened(intent)  # still at the venue, guarding its position
            left = intent.qty - filled
            self._add_pending(intent, left if intent.side is Side.BUY else -left)
        executor.restore_open(group, sent)

    def take_over(self, state: dict[str, Any]) -> None:
        """Start from another instance's state (a new primary takes the last one's book:
        its positions, cash and risk counters), then snapshot it into this journal. The
        fill numbering stays this journal's own."""
        seq = self.portfolio.fill_seq
        self.portfolio = Portfolio.restore(state["portfolio"])
        self.portfolio.fill_seq = seq
        self.gate.restore_counters(state.get("risk", {}))
        if self.exits is not None:
            self.exits.restore(state.get("exits", {}))
        for symbol, ts in state.get("last_ts", {}).items():
            self.last_ts[symbol] = max(int(ts), self.last_ts.get(symbol, 0))
        # The strategies hold what the book holds now: a standby's own (it never filled)
        # would have them enter what is held, or never exit it.
        for (strategy, symbol), instance in self._instances.items():
            instance.position = self.portfolio.position_qty(strategy, symbol)
        self.snapshot()

    def restore(self) -> dict[str, Any]:
        """Load the last snapshot, then every fill journaled after it; return what was done."""
        journal = self.journal
        snap = journal.latest_snapshot()
        replayed = 0
        if snap is not None:
            self.portfolio = Portfolio.restore(snap["portfolio"])
            self.gate.restore_counters(snap.get("risk", {}))
            self._resume_after = {s: int(t) for s, t in snap.get("last_ts", {}).items()}
            if self.exits is not None:
                self.exits.restore(snap.get("exits", {}))
            self.last_ts = dict(self._resume_after)
        # What happened after the snapshot (a crash skips the one at shutdown): its fills
        # into the book, its round trips and orders into the risk counters, so a restart
        # resets no cap, cooldown or Kelly statistic.
        for fill in journal.fills_after(self.portfolio.fill_seq):
            trade = self.portfolio.apply_fill(fill)
            if trade is not None:
                self.gate.on_trade(trade)
            replayed += 1
        for ts in journal.order_times_after(journal.latest_snapshot_ns() if snap else 0):
            self.gate.count_order(ts, self.portfolio)
        # Bars up to the last decision on disk were handled: later snapshots or not, they
        # only warm the strategies up again (their fills are booked above).
        for symbol, ts in journal.last_decision_ts().items():
            if ts > self._resume_after.get(symbol, -1):
                self._resume_after[symbol] = ts
                self.last_ts[symbol] = max(ts, self.last_ts.get(symbol, ts))
        self._fill_seq = max(journal.max_fill_seq(), self.portfolio.fill_seq)
        self._known_ids = journal.client_order_ids()
        # Before any order is looked at: a halt, a reduce or a demotion is in force for the
        # orders the restart finds unsent as much as for new ones.
        self.control.restore(snap)
        resting: list[tuple[OrderIntent, float, float]] = []
        unsent: list[tuple[OrderIntent, float, float]] = []
        for intent, filled, avg, sent in journal.unsettled():
            if filled >= intent.qty - _EPS:
                # Filled before the stop; its last order event did not reach the disk.
                self.on_order_state(intent, OrderState.FILLED, "filled before the restart")
            else:
                (resting if sent else unsent).append((intent, filled, avg))
        self._follow(resting, True)
        self._follow(unsent, False)
        return {"snapshot": snap is not None, "fills_replayed": replayed,
                "open_orders": len(resting), "unsent": len(unsent),
                "halted": self.control.state is TradingState.HALTED}
