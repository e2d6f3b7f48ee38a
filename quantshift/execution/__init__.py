"""Executors behind one protocol, chosen once at start-up."""

from __future__ import annotations

from quantshift.domain import ExecutorKind
from quantshift.errors import ConfigError
from quantshift.execution.base import ExecutionSink, Executor
from quantshift.execution.log_only import LogOnlyExecutor
from quantshift.execution.paper import PaperExecutor

__all__ = ["ExecutionSink", "Executor", "LogOnlyExecutor", "PaperExecutor", "make_executor"]


def make_executor(kind: ExecutorKind, sink: ExecutionSink, *, paper_fill: str = "close",
                  slippage_bps: float = 0.0, commission_bps: float = 0.0) -> Executor:
    if kind is ExecutorKind.LOG_ONLY:
        return LogOnlyExecutor(sink)
    if kind is ExecutorKind.PAPER:
        return PaperExecutor(sink, paper_fill, slippage_bps, commission_bps)
    raise ConfigError("SHADOW_MODE", f"the {kind.value} executor needs a broker: "
                                     "no broker configured")
