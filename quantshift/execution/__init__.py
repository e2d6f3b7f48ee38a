"""Executors behind one protocol, chosen once at start-up."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from quantshift.domain import ExecutorKind, OrderIntent
from quantshift.execution.base import ExecutionSink, Executor
from quantshift.execution.broker import BrokerExecutor, Clear
from quantshift.execution.log_only import LogOnlyExecutor
from quantshift.execution.paper import PaperExecutor
from quantshift.execution.venues.base import Venue

__all__ = ["BrokerExecutor", "ExecutionSink", "Executor", "LogOnlyExecutor", "PaperExecutor",
           "make_executor"]


def make_executor(kind: ExecutorKind, sink: ExecutionSink, *, paper_fill: str = "close",
                  slippage_bps: float = 0.0, commission_bps: float = 0.0,
                  venue: Venue | None = None,
                  durable: Callable[[], Awaitable[object]] | None = None,
                  permit: Callable[[OrderIntent], str | None] | None = None,
                  clear: Clear | None = None, timeout: float = 10.0) -> Executor:
    """``permit``: the control plane's answer to "may this order go out now?", which the
    broker executor asks at every submission attempt; ``clear``: its answer on the
    account's caps, asked once per order before the first attempt."""
    if kind is ExecutorKind.LOG_ONLY:
        return LogOnlyExecutor(sink)
    if kind is ExecutorKind.PAPER:
        return PaperExecutor(sink, paper_fill, slippage_bps, commission_bps)
    if venue is None or durable is None or permit is None:
        raise ValueError(f"the {kind.value} executor needs a venue, a durable journal and "
                         "the control plane's permit")
    return BrokerExecutor(kind, venue, sink, durable=durable, permit=permit, clear=clear,
                          timeout=timeout)
