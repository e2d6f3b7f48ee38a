"""The control plane's side of an account shared by several instances (state/shared.py):
which changes of the trading state go to the account, the changes that come from it, and
the caps' answer for an order. A mixin of :class:`~quantshift.control.ControlPlane`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from quantshift.commands import (
    Command,
    ControlRefused,
    Demote,
    Flatten,
    Halt,
    Handover,
    Lift,
    Reduce,
    Resume,
    Source,
)
from quantshift.domain import OrderIntent

if TYPE_CHECKING:
    from quantshift.state.journal import Journal
    from quantshift.state.lease import Lease
    from quantshift.state.shared import AccountStore

# What reaches every instance of an account, by the name it travels under.
SHARED: dict[str, type[Command]] = {"halt": Halt, "reduce": Reduce, "resume": Resume,
                                    "flatten": Flatten, "demote": Demote, "lift": Lift}


class AccountSharing:
    """The account half of the control plane (the state lives on the plane)."""

    _account: AccountStore | None
    _shared: asyncio.Event | None
    _lease: Lease | None
    _leading: bool
    _journal: Journal | None
    _handover: Callable[[str], Awaitable[dict[str, Any]]] | None = None
    leading_since_ns: int | None = None  # when this instance last began to send (wall clock)

    _reason: str

    if TYPE_CHECKING:  # the control plane's own
        @property
        def demoted(self) -> bool: ...

        def apply(self, cmd: Command) -> Any: ...

        def state_name(self) -> str: ...

        def _route(self) -> None: ...

    def attach_account(self, store: AccountStore) -> None:
        """The account's shared state: halts, reductions, resumptions, flattens and
        demotions reach every instance of the account, and entries count against its
        caps (``clearance``)."""
        self._account = store

    @property
    def account(self) -> AccountStore | None:
        return self._account

    # -- the lease: which instance of the bot trades --------------------------------------
    def attach_lease(self, lease: Lease) -> None:
        """Orders reach the real executor only while this instance holds the bot's lease
        and has taken over (``lead``); until then, and from the moment it is lost, they go
        to log-only, and every attempt at the real one is refused."""
        self._lease = lease
        self._leading = False
        self._route()

    @property
    def lease(self) -> Lease | None:
        return self._lease

    def lead(self, on: bool) -> None:
        """``True`` once a new primary has reconciled with the venue (orders go to the
        real executor, unless demoted); ``False`` when the lease is lost or given up."""
        self._leading = on
        self.leading_since_ns = time.time_ns() if on else None
        self._route()

    def attach_handover(self, handover: Callable[[str], Awaitable[dict[str, Any]]]) -> None:
        """How this instance gives its lease up (ops/leadership.py ``handover``)."""
        self._handover = handover

    def _hand_over(self, cmd: Handover) -> Awaitable[dict[str, Any]]:
        if self._handover is None:
            raise ControlRefused("this instance holds no lease to hand over: a handover "
                                 "needs QUANTSHIFT_REDIS_URL and orders that go to a broker")
        return self._handover(cmd.to)

    def leading(self) -> bool:
        return self._lease is None or self._leading

    def lease_refusal(self) -> str | None:
        """Why this instance may send nothing now, as the bot's lease says; None when
        no lease applies or it is the primary. The lease's own clock counts, so a primary
        that could not renew stops at ``ttl - margin`` even before its renewal loop runs."""
        lease = self._lease
        if lease is None or (self._leading and lease.primary):
            return None
        if lease.primary:  # held, the takeover not done
            return f"standby: taking over (lease epoch {lease.epoch}); nothing goes out " \
                   "before the venue's state is reconciled"
        if lease.holder == lease.instance:  # this one, as last read: it lapsed or went
            return f"standby: this instance's lease (epoch {lease.epoch}) lapsed or was " \
                   "given up; not the primary"
        who = f"instance {lease.holder}" if lease.holder else "none yet"
        return f"standby: the primary is {who} (lease epoch {lease.epoch})"

    async def clearance(self, intent: OrderIntent) -> str | None:
        """Asked once per order, right before its first attempt: why the account's caps
        (shared by its instances) keep it from going, or None. Every order counts, as the
        risk gate counts them; exits always pass."""
        link = self._account
        if link is None or intent.parent:
            return None
        if intent.reduce_only:
            why = await link.reserve(intent, 0.0, check=False)  # refused only by the lease
        else:
            why = await link.reserve(intent, intent.qty * intent.ref_price)
        lease = self._lease
        if why is None and lease is not None and self._journal is not None:
            # journaled with the intent's write-ahead, right after this answer
            self._journal.fence(intent.client_order_id, lease.epoch, link.instance)
        return why

    def _share(self, cmd: Command) -> None:
        """Send the account's new state to the account: after an operator's change
        always; after a rule's only from an instance whose orders reach the broker (a
        shadow's breakers demote the shadow alone); never one that came from the account.
        The state is whole (what a start or a reconnect reads back), built on the last one
        this instance made or knew, never on its own local-only states (a breaker's
        reduce, a shadow's demotion)."""
        link = self._account
        if link is None or cmd.name not in SHARED or cmd.source in (Source.ACCOUNT,
                                                                     Source.LOCAL):
            return
        if cmd.source is Source.RULE and not link.sends:
            return
        last = link.state or {}
        state = str(last.get("state", "active"))
        reason = str(last.get("reason", ""))
        demotion = last.get("demotion")
        if isinstance(cmd, Halt):
            state, reason = "halted", self._reason
        elif isinstance(cmd, Reduce):
            state, reason = "reducing", self._reason
        elif isinstance(cmd, Resume):
            state, reason, demotion = "active", "", None
        elif isinstance(cmd, Demote):
            demotion = {"reason": cmd.reason or "demoted"}
        elif isinstance(cmd, Lift):
            demotion = None
        flatten = isinstance(cmd, Flatten) or bool(getattr(cmd, "flatten", False))
        self._shared = link.publish({"cmd": cmd.name, "state": state, "reason": reason,
                                     "demotion": demotion}, flatten)

    def adopt(self, doc: dict[str, Any], flatten: bool) -> None:
        """Take the account's state (idempotent: what holds already is left alone), and
        its flatten when ``flatten`` (not done here yet)."""
        state, reason = doc["state"], str(doc.get("reason") or "")
        demotion = doc.get("demotion")
        kw: dict[str, Any] = {"by": f"account (instance {doc.get('by', '?')})",
                              "source": Source.ACCOUNT}
        mine = self.state_name()
        done: list[str] = []
        if state == "halted" and (mine != "halted" or flatten):
            done.append(self._adopt(Halt(reason=reason, flatten=flatten, **kw)))
            flatten = False
        elif state == "reducing" and mine != "reducing":
            done.append(self._adopt(Reduce(reason=reason, **kw)))
        elif state == "active" and (mine != "active" or (
                self.demoted and doc.get("cmd") == "resume")):
            done.append(self._adopt(Resume(**kw)))
        if demotion and not self.demoted:
            done.append(self._adopt(Demote(reason=str(demotion.get("reason", "")),
                                           flatten=flatten, **kw)))
            flatten = False
        elif not demotion and self.demoted and doc.get("cmd") == "lift":
            done.append(self._adopt(Lift(**kw)))
        if flatten:
            done.append(self._adopt(Flatten(reason=reason or "flattened by the account",
                                            **kw)))
        if done:
            logger.warning("account: {} by instance {}{}", ", ".join(done), doc.get("by", "?"),
                           f" ({reason})" if reason else "")

    def _adopt(self, cmd: Command) -> str:
        try:
            self.apply(cmd)
        except ControlRefused as exc:
            logger.info("account: {} not applied here: {}", cmd.name, exc.message)
        return cmd.name
