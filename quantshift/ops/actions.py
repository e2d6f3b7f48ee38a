"""Operator actions: what the control API's requests do to the running daemon.

Each runs on the daemon's loop, between two bars (the HTTP server shares the loop).
Trading-state changes persist: the journal's trading state and a fresh snapshot both
carry them, so a restart comes back the way the operator left it.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from loguru import logger

from quantshift.ops.control import ControlRefused
from quantshift.ops.periodic import flush_books
from quantshift.risk.gate import ACTIVE, REDUCING
from quantshift.shadow.runtime import NotApproved, VersionControl
from quantshift.shadow.versions import VersionError

if TYPE_CHECKING:  # ops is used by the daemon, never the reverse
    from quantshift.daemon import Daemon


def apply_control(d: Daemon, action: str, body: Any) -> Any:
    """Do one operator action; return what came of it, or raise ControlRefused."""
    engine = d.engine
    if engine is None or d.should_exit:
        raise ControlRefused("the daemon is starting or stopping; try again later", 503)
    if body.bot is not None and body.bot != d.settings.bot:
        raise ControlRefused(f"this daemon runs bot {d.settings.bot!r}, "
                             f"not {body.bot!r}")
    if action in ("promote", "rollback"):
        return change_strategy_version(d, action, body.strategy,
                                       getattr(body, "version", None),
                                       getattr(body, "force", False))
    gate = engine.gate
    was = gate.state
    out: dict[str, Any] = {}
    if action == "halt":
        sent = engine.halt(body.reason, flatten=body.flatten)
        if body.flatten:
            out["flatten_orders"] = sent
    elif action == "resume":
        if d.guard is not None and d.guard.lift():
            out["demotion_lifted"] = True
        gate.resume()
        engine.journal.set("trading_state", {"state": ACTIVE, "reason": ""})
        logger.warning("trading resumed by the operator (was {})", was)
    elif action == "reduce":
        gate.reduce(body.reason)
        engine.journal.set("trading_state", {"state": REDUCING, "reason": body.reason})
        logger.warning("trading reduce-only: {}", body.reason)
    elif action == "flatten":
        out["orders"] = engine.flatten(body.reason)
        logger.warning("flatten by the operator: {} orders sent", out["orders"])
    else:
        raise ControlRefused(f"unknown action {action!r}", 404)
    engine.snapshot()
    return {"was": was, "state": gate.state, "reason": gate.halt_reason, **out}


def change_strategy_version(d: Daemon, action: str, strategy: str, version: str | None,
                            force: bool = False) -> Any:
    """Promote a strategy version (a coroutine: the statistics run off the loop) or
    roll back to the previous active one (at once, between two bars)."""
    vc = d.version_control
    known = [spec.key for spec in d.settings.strategies]
    if vc is None or strategy not in known:
        raise ControlRefused(f"no strategy {strategy!r}; running: {', '.join(known)}",
                             404)
    if len(vc.registry.versions(strategy)) < 2:
        raise ControlRefused(f"strategy {strategy!r} has one version: there is nothing "
                             f"to {action}")
    try:
        if action == "rollback":
            return _version_changed(d, vc.rollback(strategy))
    except VersionError as exc:
        raise ControlRefused(str(exc)) from None
    return _promote(d, vc, strategy, version or "", force)


async def _promote(d: Daemon, vc: VersionControl, strategy: str, version: str,
                   force: bool) -> dict[str, Any]:
    try:
        return _version_changed(d, await vc.promote(strategy, version, force,
                                                    partial(flush_books, d)))
    except (NotApproved, VersionError) as exc:
        raise ControlRefused(str(exc)) from None


def _version_changed(d: Daemon, result: dict[str, Any]) -> dict[str, Any]:
    assert d.engine is not None
    d.engine.snapshot()
    return result

