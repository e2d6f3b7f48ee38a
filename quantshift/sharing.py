"""The control plane's side of an account shared by several instances (state/shared.py):
which changes of the trading state go to the account, the changes that come from it, and
the caps' answer for an order. A mixin of :class:`~quantshift.control.ControlPlane`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from loguru import logger

from quantshift.commands import (
    Command,
    ControlRefused,
    Demote,
    Flatten,
    Halt,
    Lift,
    Reduce,
    Resume,
    Source,
)
from quantshift.domain import OrderIntent

if TYPE_CHECKING:
    from quantshift.state.shared import AccountStore

# What reaches every instance of an account, by the name it travels under.
SHARED: dict[str, type[Command]] = {"halt": Halt, "reduce": Reduce, "resume": Resume,
                                    "flatten": Flatten, "demote": Demote, "lift": Lift}


class AccountSharing:
    """The account half of the control plane (the state lives on the plane)."""

    _account: AccountStore | None
    _shared: asyncio.Event | None

    if TYPE_CHECKING:
        def apply(self, cmd: Command) -> Any: ...  # the control plane's own

    def attach_account(self, store: AccountStore) -> None:
        """The account's shared state: halts, reductions, resumptions, flattens and
        demotions reach every instance of the account, and entries count against its
        caps (``clearance``)."""
        self._account = store

    @property
    def account(self) -> AccountStore | None:
        return self._account

    async def clearance(self, intent: OrderIntent) -> str | None:
        """Asked once per order, right before its first attempt: why the account's caps
        (shared by its instances) keep it from going, or None. Every order counts, as the
        risk gate counts them; exits always pass."""
        link = self._account
        if link is None or intent.parent:
            return None
        if intent.reduce_only:
            await link.reserve(intent, 0.0, check=False)
            return None
        return await link.reserve(intent, intent.qty * intent.ref_price)

    def _share(self, cmd: Command) -> None:
        """Send a change of the trading state to the account: an operator's always; a
        rule's only from an instance whose orders reach the broker (a shadow's breakers
        demote the shadow alone); one that came from the account never goes back."""
        link = self._account
        if link is None or cmd.name not in SHARED or cmd.source in (Source.ACCOUNT,
                                                                     Source.LOCAL):
            return
        if cmd.source is Source.RULE and not link.sends:
            return
        self._shared = link.publish({"cmd": cmd.name, "reason": cmd.reason,
                                     "flatten": bool(getattr(cmd, "flatten", False))})

    def adopt(self, doc: dict[str, Any], live: bool) -> None:
        """A change another instance of the account made (``live``: as it happened; else
        read back at a start or a reconnect, when a flatten of the past is not repeated)."""
        cls = SHARED.get(str(doc.get("cmd")))
        if cls is None:
            logger.warning("account: a change this release does not know ({}); ignored",
                           doc.get("cmd"))
            return
        if cls is Flatten and not live:
            return
        who = f"account (instance {doc.get('by', '?')})"
        kw: dict[str, Any] = {"by": who, "reason": str(doc.get("reason") or ""),
                              "source": Source.ACCOUNT}
        if cls in (Halt, Demote):
            kw["flatten"] = bool(doc.get("flatten")) and live
        logger.warning("account: {} by instance {}{}", cls.name, doc.get("by", "?"),
                       f" ({kw['reason']})" if kw["reason"] else "")
        try:
            self.apply(cls(**kw))
        except ControlRefused as exc:
            logger.info("account: {} not applied here: {}", cls.name, exc.message)
