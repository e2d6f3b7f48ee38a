"""The trading control plane: the one place that answers "may this order go out now?".

It owns the trading state (:class:`~quantshift.domain.TradingState`), the executor slot
(the real executor, or log-only while demoted) and the typed commands that change them:
halt, reduce, resume, flatten, demote, lift, promote, rollback, and the feed's staleness.
Every change is persisted (the journal's ``trading_state`` and ``demotion`` keys) and
journaled (its ``control`` table: who, why, what came of it) here and nowhere else.

Who asks it what:

* the risk gate reads the state on every decision (:attr:`ControlPlane.state`);
* the engine asks :meth:`ControlPlane.refusal` before it hands an intent to the real
  executor, and the broker executor asks again at **every** submission attempt (each retry,
  each start-up resubmission), so an acknowledged halt means no attempt starts after it;
* HTTP, CLI, the guard and the periodic tasks send it commands (:meth:`apply`, or
  :meth:`command` for an operator's request, which also waits for the attempts in flight
  and for the journal) and read :meth:`view`.

A flatten is what a halt wants: the exits a flatten sends (and the exits a halt that
flattens lets finish) are authorized by id, so they pass while everything else is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from loguru import logger

from quantshift.aio import within
from quantshift.commands import (
    AddVersion,
    Command,
    ControlRefused,
    Demote,
    Flatten,
    Halt,
    Handover,
    Lift,
    MarkStale,
    NotDurable,
    Promote,
    Reduce,
    Resume,
    Rollback,
    SetCanary,
    SetStatus,
    Source,
)
from quantshift.domain import OrderIntent, TradingState
from quantshift.execution.base import Executor
from quantshift.execution.log_only import LogOnlyExecutor
from quantshift.sharing import AccountSharing
from quantshift.state.journal import Journal

if TYPE_CHECKING:
    from quantshift.state.lease import Lease
    from quantshift.state.shared import AccountStore

__all__ = [
    "AddVersion",
    "Command",
    "ControlPlane",
    "ControlRefused",
    "ControlView",
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

STATE_KEY = "trading_state"
DEMOTION_KEY = "demotion"
_ACTIVE, _REDUCING, _HALTED, _DEMOTED = (TradingState.ACTIVE, TradingState.REDUCING,
                                         TradingState.HALTED, TradingState.DEMOTED)
_MAX_AUTHORIZED = 1000  # flatten exits kept across a restart (a flatten is a few orders)
_ALERT_HALT = logger.bind(alert="halt")
_ALERT_DEMOTION = logger.bind(alert="demotion")
_SHARE_WAIT = 1.0  # s an operator's command waits for the account to have it


# -- what the control plane works with -------------------------------------------------------
class TradingEngine(Protocol):
    """The engine, as the control plane uses it."""

    journal: Journal

    def flatten_orders(self, reason: str,
                       authorize: Callable[[OrderIntent], None]) -> int: ...

    def snapshot(self) -> None: ...

    def on_order_state(self, intent: OrderIntent, state: Any, detail: str = "") -> None: ...

    def on_fill(self, intent: OrderIntent, qty: float, price: float, commission: float,
                ts: int) -> None: ...


class Versions(Protocol):
    """Strategy versions (shadow/runtime.py), as promote and rollback need them."""

    def promote(self, strategy: str, version: str, force: bool) -> Awaitable[dict[str, Any]]: ...

    def rollback(self, strategy: str) -> dict[str, Any]: ...

    def set_status(self, strategy: str, version: str, status: str,
                   percent: int | None) -> Awaitable[dict[str, Any]]: ...

    def set_canary(self, strategy: str, percent: int) -> dict[str, Any]: ...

    def add(self, strategy: str, version: str, name: str | None, params: dict[str, Any],
            exits: dict[str, Any] | None) -> Awaitable[dict[str, Any]]: ...

    def listing(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class ControlView:
    """A read-only picture of the control plane (for /status, /readyz, /metrics, the log)."""

    state: TradingState
    reason: str
    stale: str | None
    market_open: bool | None
    demoted: bool
    demoted_reason: str
    executor: str | None  # the kind orders go to now (log_only while demoted)
    description: str
    authorized_exits: int


Listener = Callable[[TradingState, TradingState], None]


class ControlPlane(AccountSharing):
    def __init__(self, journal: Journal | None = None) -> None:
        self._journal = journal
        self._state = _ACTIVE
        self._reason = ""
        self._stale: str | None = None
        self._late_ns = 0  # an entry decided on a bar older than this stays in (0: any age)
        self._market_open: bool | None = None
        self._demotion: dict[str, Any] | None = None
        self._real: Executor | None = None
        self._current: Executor | None = None
        self._authorized: set[str] = set()
        self._listeners: list[Listener] = []
        self._executor_listeners: list[Callable[[], None]] = []
        self._engine: TradingEngine | None = None
        self._versions: Versions | None = None
        self._durable: Callable[[], Awaitable[bool]] | None = None
        self._accepting = True
        self._account: AccountStore | None = None
        self._lease: Lease | None = None
        self._leading = False
        self._shared: asyncio.Event | None = None
        self.settle_timeout = 10.0  # how long an operator's halt waits for attempts in flight

    # -- wiring (once, at start-up) -------------------------------------------------------
    def install(self, executor: Executor) -> None:
        """The real executor: where orders go unless demoted."""
        self._real = self._current = executor
        for hook in self._executor_listeners:
            hook()

    def attach(self, engine: TradingEngine) -> None:
        self._engine = engine

    def attach_versions(self, versions: Versions) -> None:
        self._versions = versions

    @property
    def versions(self) -> Versions | None:
        return self._versions

    def attach_durable(self, durable: Callable[[], Awaitable[bool]]) -> None:
        """How an operator's command is made durable before it is answered."""
        self._durable = durable

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(old, new)`` after every change of the trading state."""
        self._listeners.append(listener)

    def on_executor_change(self, listener: Callable[[], None]) -> None:
        self._executor_listeners.append(listener)

    def accepting(self, on: bool) -> None:
        """Whether operators' commands are taken (not while starting or stopping)."""
        self._accepting = on

    # -- reads ----------------------------------------------------------------------------
    @property
    def state(self) -> TradingState:
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def stale(self) -> str | None:
        return self._stale

    @property
    def market_open(self) -> bool | None:
        return self._market_open

    def state_name(self) -> str:
        """The trading state as an account's shared state names it: halted, reducing or
        active (a demotion is kept apart)."""
        state = self._state
        return "halted" if state is _HALTED else "reducing" if state is _REDUCING \
            else "active"

    @property
    def demoted(self) -> bool:
        return self._demotion is not None

    @property
    def executor(self) -> Executor | None:
        """Where the engine's orders go now: the real executor, or log-only while demoted."""
        return self._current

    @property
    def real_executor(self) -> Executor | None:
        """The real executor, also while demoted (its orders at the venue still report)."""
        return self._real

    def executors(self) -> list[Executor]:
        """Every executor with orders to mind: the current one and, while demoted, the real
        one set aside (each once)."""
        out = [self._current] if self._current is not None else []
        if self._real is not None and self._real is not self._current:
            out.append(self._real)
        return out

    def view(self) -> ControlView:
        ex = self._current
        return ControlView(self._state, self._reason, self._stale, self._market_open,
                           self.demoted, (self._demotion or {}).get("reason", ""),
                           ex.kind.value if ex is not None else None,
                           ex.description if ex is not None else "", len(self._authorized))

    # -- the question ----------------------------------------------------------------------
    def refusal(self, intent: OrderIntent) -> str | None:
        """Why ``intent`` may not go to the real executor now; None when it may. Asked
        before every submission attempt."""
        standby = self.lease_refusal()
        if standby is not None:  # exits too: only the primary's orders reach the venue
            return standby
        if intent.client_order_id in self._authorized:
            return None  # a flatten's exit (or an exit a flattening halt lets finish)
        state = self._state
        if state is _ACTIVE:
            if intent.reduce_only:
                return None
            link = self._account
            return self.late(intent.ts) or (link.entry_refusal() if link is not None
                                            else None)
        if state is _REDUCING:
            return None if intent.reduce_only else f"reducing: {self._reason}; only " \
                                                    "exposure-reducing orders pass"
        if state is _DEMOTED:
            return f"demoted: {(self._demotion or {}).get('reason', '')}"
        return f"halted: {self._reason or 'trading is halted'}"

    # -- commands -------------------------------------------------------------------------
    def apply(self, cmd: Command) -> Any:
        """Do one command; return what came of it (a dict; a coroutine for a promotion),
        or raise ControlRefused. Journaled, with its result, either way."""
        try:
            out = self._dispatch(cmd)
        except ControlRefused as exc:
            self.record(cmd.name, cmd.params(), cmd.by, {"status": exc.status,
                                                         "error": exc.message})
            raise
        if inspect.isawaitable(out):
            return self._finish_async(cmd, out)
        self.record(cmd.name, cmd.params(), cmd.by, {"status": 200, **out})
        self._share(cmd)
        return out

    async def command(self, cmd: Command) -> dict[str, Any]:
        """An operator's command: applied, then answered only once it holds. A halt waits
        for the submission attempts in flight when it came (bounded), so no order reaches
        the venue after the answer; every command waits for the journal, and one that
        cannot be made durable is not claimed (NotDurable)."""
        if not self._accepting:
            raise ControlRefused("the daemon is starting or stopping; try again later", 503)
        out = self.apply(cmd)
        if inspect.isawaitable(out):
            out = await out
        if isinstance(cmd, Halt | Demote):
            out["attempts_in_flight"] = await self.settle(self.settle_timeout)
        shared, self._shared = self._shared, None
        if shared is not None and self._account is not None:
            with contextlib.suppress(TimeoutError):
                await within(shared.wait(), _SHARE_WAIT)
            out["account"] = self._account.account
            out["account_shared"] = self._account.pending is None
        if not await self.durable():
            raise NotDurable(f"{cmd.name} is in force in memory, but the journal cannot be "
                             "written, so a restart would not know it; see the daemon's "
                             "log", out)
        return out

    async def durable(self) -> bool:
        """Commit what is journaled so far; False when the journal cannot be written."""
        return self._durable is None or await self._durable()

    def record(self, action: str, params: dict[str, Any], actor: str,
               result: dict[str, Any]) -> None:
        """Journal one control request and what came of it (the ``control`` table)."""
        if self._journal is not None:
            self._journal.control(action, params, actor,
                                  orjson.dumps(result, default=str).decode())

    async def settle(self, timeout: float) -> int:
        """Wait (bounded) for submission attempts under way to return; how many did not."""
        left = 0
        for ex in self.executors():
            left += await ex.settle(timeout)
        return left

    def _dispatch(self, cmd: Command) -> Any:
        if isinstance(cmd, Halt):
            return self._halt(cmd)
        if isinstance(cmd, Reduce):
            return self._reduce(cmd)
        if isinstance(cmd, Resume):
            return self._resume(cmd)
        if isinstance(cmd, Flatten):
            return self._flatten_cmd(cmd)
        if isinstance(cmd, Demote):
            return self._demote(cmd)
        if isinstance(cmd, Lift):
            return self._lift(cmd)
        if isinstance(cmd, MarkStale):
            return self._mark_stale(cmd)
        if isinstance(cmd, Handover):
            return self._hand_over(cmd)
        if isinstance(cmd, Promote | Rollback | SetStatus | SetCanary | AddVersion):
            versions = self._versions
            if versions is None:
                raise ControlRefused("no strategy versions to change", 404)
            if isinstance(cmd, Promote):
                return versions.promote(cmd.strategy, cmd.version, cmd.force)
            if isinstance(cmd, AddVersion):
                return versions.add(cmd.strategy, cmd.version, cmd.strategy_name,
                                    cmd.parameters, cmd.exits)
            if isinstance(cmd, SetStatus):  # a book to open and warm: snapshot when done
                return versions.set_status(cmd.strategy, cmd.version, cmd.status,
                                           cmd.percent)
            if isinstance(cmd, Rollback):
                out = versions.rollback(cmd.strategy)
            else:
                out = versions.set_canary(cmd.strategy, cmd.percent)
            self._snapshot()
            return out
        raise ControlRefused(f"unknown command {cmd.name!r}", 404)

    async def _finish_async(self, cmd: Command, pending: Awaitable[dict[str, Any]]
                            ) -> dict[str, Any]:
        try:
            out = await pending
        except ControlRefused as exc:
            self.record(cmd.name, cmd.params(), cmd.by, {"status": exc.status,
                                                         "error": exc.message})
            raise
        self.record(cmd.name, cmd.params(), cmd.by, {"status": 200, **out})
        self._snapshot()
        return out

    def _halt(self, cmd: Halt) -> dict[str, Any]:
        was = self._state
        reason = cmd.reason or "halted by the operator"
        self._set(_HALTED, reason)
        cancelled = sum(ex.cancel_all(f"halted: {reason}", keep_exits=cmd.flatten)
                        for ex in self.executors())
        out: dict[str, Any] = {"was": was.value, "cancelled": cancelled}
        if cmd.flatten:
            # The exits already on their way are what a flatten counts on: they finish.
            for ex in self.executors():
                for intent in ex.open_orders():
                    if intent.reduce_only:
                        self._authorize(intent)
            out["flatten_orders"] = self._flatten(reason)
        self._persist()
        _ALERT_HALT.warning("trading halted: {} ({} open orders cancelled)", reason, cancelled)
        self._snapshot()
        return {**out, **self._now()}

    def _reduce(self, cmd: Reduce) -> dict[str, Any]:
        if self.demoted:
            raise ControlRefused("the daemon is demoted: resume lifts the demotion first")
        was = self._state
        reason = cmd.reason or "reduce-only by the operator"
        self._set(_REDUCING, reason)
        self._persist()
        logger.warning("trading reduce-only: {}", reason)
        self._snapshot()
        return {"was": was.value, **self._now()}

    def trip_breaker(self, reason: str) -> None:
        """A breaker of the risk gate (the drawdown limit): reduce-only from an active
        state; a stricter state stays as it is. Never raises: it runs inside a decision."""
        if self._state is _ACTIVE:
            self._set(_REDUCING, reason)
            self._persist()
            self.record("reduce", {"reason": reason}, "risk gate", {"status": 200})

    def _resume(self, cmd: Resume) -> dict[str, Any]:
        was = self._state
        out: dict[str, Any] = {"was": was.value}
        if self.demoted:
            self._undemote()
            out["demotion_lifted"] = True
        self._authorized.clear()
        self._set(_ACTIVE, "")
        self._persist()
        logger.warning("trading resumed by the operator (was {})", was.value)
        self._snapshot()
        return {**out, **self._now()}

    def _flatten_cmd(self, cmd: Flatten) -> dict[str, Any]:
        reason = cmd.reason or "flattened by the operator"
        sent = self._flatten(reason)
        self._persist()  # the authorized exits survive a restart
        logger.warning("flatten by the operator: {} orders sent", sent)
        self._snapshot()
        return {"was": self._state.value, "orders": sent, **self._now()}

    def _flatten(self, reason: str) -> int:
        if self._engine is None:
            return 0
        return self._engine.flatten_orders(reason, self._authorize)

    def _authorize(self, intent: OrderIntent) -> None:
        self._authorized.add(intent.client_order_id)

    def _demote(self, cmd: Demote) -> dict[str, Any]:
        if self.demoted:
            return {"was": self._state.value, "already": True, **self._now()}
        reason = cmd.reason or "demoted"
        real = self._real
        cancelled = real.cancel_all(f"demoted: {reason}", keep_exits=cmd.flatten) if real else 0
        flattened = 0
        if cmd.flatten:
            if real is not None:
                for intent in real.open_orders():
                    if intent.reduce_only:
                        self._authorize(intent)
            flattened = self._flatten(f"demoted: {reason}")
        self._demotion = {"reason": reason, "at_ns": time.time_ns(), "flattened": flattened}
        self._to_log_only()
        was = self._state
        if was is not _HALTED:  # a halt is stricter: it stays, the demotion comes on top
            self._set(_DEMOTED, reason)
        self._persist()
        _ALERT_DEMOTION.error("DEMOTED to log-only: {}; {} open orders cancelled, {} flatten "
                              "orders; positions {}; `quantshift resume` lifts it", reason,
                              cancelled, flattened, "being flattened" if flattened else "kept")
        self._snapshot()
        return {"was": was.value, "cancelled": cancelled, "flattened": flattened,
                **self._now()}

    def _lift(self, cmd: Lift) -> dict[str, Any]:
        if not self.demoted:
            raise ControlRefused("the daemon is not demoted")
        self._undemote()
        if self._state is _DEMOTED:
            self._set(_ACTIVE, "")
        self._persist()
        self._snapshot()
        return self._now()

    def _undemote(self) -> None:
        self._demotion = None
        self._route()
        kind = self._real.kind.value if self._real is not None else "real"
        logger.warning("demotion lifted by the operator: orders go to the {} executor again",
                       kind)

    def _to_log_only(self) -> None:
        if self._engine is not None and not isinstance(self._current, LogOnlyExecutor):
            # The real one is kept, not closed: fills of orders already at the venue still
            # come back through it.
            self._current = LogOnlyExecutor(self._engine)
            for hook in self._executor_listeners:
                hook()

    def _route(self) -> None:
        """The real executor, unless demoted or a standby (then log-only)."""
        if self.demoted or not self.leading():
            self._to_log_only()
        elif self._current is not self._real and self._real is not None:
            self._current = self._real
            for hook in self._executor_listeners:
                hook()

    def _mark_stale(self, cmd: MarkStale) -> dict[str, Any]:
        self._stale = cmd.reason or None
        return self._now()

    def set_late_limit(self, seconds: float) -> None:
        """A live feed's rule: an entry decided on a bar that started more than
        ``seconds`` ago does not go out (a backlog after a freeze, a backfill after a
        takeover, an entry retried past it); exits always may. 0: no limit (a file)."""
        self._late_ns = int(seconds * 1e9)

    def late(self, bar_ts: int) -> str | None:
        """Why an entry on the bar of ``bar_ts`` is too late now; None when it is not."""
        if not self._late_ns:
            return None
        age = time.time_ns() - bar_ts
        if age <= self._late_ns:
            return None
        return f"late bar: decided on a bar that began {age / 1e9:.1f}s ago (entries only " \
               f"within {self._late_ns / 1e9:g}s); exits pass"

    def mark_fresh(self) -> None:
        """A bar came: the feed is fresh again (called by the engine on the hot path)."""
        self._stale = None

    def set_market_open(self, is_open: bool | None) -> None:
        """The venue's clock (equities trade in market hours): entries wait while closed."""
        self._market_open = is_open

    # -- persistence ----------------------------------------------------------------------
    def _set(self, state: TradingState, reason: str) -> None:
        old = self._state
        self._state, self._reason = state, reason
        for listener in self._listeners:
            listener(old, state)

    def _now(self) -> dict[str, Any]:
        return {"state": self._state.value, "reason": self._reason}

    def _persist(self) -> None:
        if self._journal is None:
            return
        exits = sorted(self._authorized)[:_MAX_AUTHORIZED] if self._state is not _ACTIVE \
            else []
        self._journal.set(STATE_KEY, {"state": self._state.value, "reason": self._reason,
                                      "exits": exits})
        self._journal.set(DEMOTION_KEY, self._demotion)

    def _snapshot(self) -> None:
        if self._engine is not None:
            self._engine.snapshot()

    def restore(self, snapshot: dict[str, Any] | None = None) -> None:
        """Come back the way the last run left it: the journal's trading state (else the
        snapshot's, for a ledger an older release wrote) and its demotion. Nothing is
        cancelled here: that was done when the state was entered."""
        journal = self._journal
        data = journal.get(STATE_KEY) if journal is not None else None
        if data:
            state, reason = _parse_state(data.get("state")), str(data.get("reason", ""))
            self._authorized = {str(c) for c in data.get("exits") or ()}
        elif snapshot:
            saved = (snapshot.get("risk") or {}).get("state")  # older ledgers kept it there
            state = _parse_state(snapshot.get("trading_state") or (saved or ["active"])[0])
            reason = str(snapshot.get("halt_reason") or (saved or ["", ""])[1])
        else:
            return
        if state is _HALTED and not reason:
            reason = "halted before the restart"
        demotion = journal.get(DEMOTION_KEY) if journal is not None else None
        if demotion:
            self._demotion = dict(demotion)
            self._to_log_only()
            if state is not _HALTED:
                state, reason = _DEMOTED, str(demotion.get("reason", ""))
            _ALERT_DEMOTION.error("DEMOTED to log-only (still, after a restart): {}; "
                                  "`quantshift resume` lifts it", demotion.get("reason", ""))
        elif state is _DEMOTED:
            state, reason = _ACTIVE, ""
        self._set(state, reason)


def _parse_state(value: Any) -> TradingState:
    """A state read back from disk; one this release does not know holds everything."""
    try:
        return TradingState(str(value))
    except ValueError:
        return _HALTED
