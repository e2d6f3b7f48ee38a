"""LogOnly: orders go nowhere; each intent is logged as "would execute"."""

from __future__ import annotations

from loguru import logger

from quantshift.domain import Bar, ExecutorKind, OrderIntent, OrderState
from quantshift.execution.base import ExecutionSink


class LogOnlyExecutor:
    kind = ExecutorKind.LOG_ONLY
    wants_bars = False
    description = "orders go nowhere: every intent is only logged as 'would execute'"

    def __init__(self, sink: ExecutionSink) -> None:
        self._sink = sink
        self._log = logger.bind(shadow=True)

    def submit(self, intent: OrderIntent) -> None:
        self._log.info(
            "would execute {} {:g} {} @ ~{:g} strategy={} coid={} reduce_only={} reason={}",
            intent.side.value, intent.qty, intent.symbol, intent.ref_price, intent.strategy,
            intent.client_order_id, intent.reduce_only, intent.reason)
        self._sink.on_order_state(intent, OrderState.NOT_SENT, "log_only")

    def on_bar(self, bar: Bar) -> None:
        return None

    def open_orders(self) -> list[OrderIntent]:
        return []

    async def start(self) -> None:
        return None

    async def drain(self, timeout: float) -> None:
        return None

    async def settle(self, timeout: float) -> int:
        return 0  # nothing leaves the process

    def restore_open(self, orders: list[tuple[OrderIntent, float, float]],
                     sent: bool = True) -> None:
        for intent, _, _ in orders:  # an earlier executor's leftovers are not ours to send
            self._sink.on_order_state(intent, OrderState.CANCELLED, "not sent by log_only")

    def cancel_all(self, reason: str, keep_exits: bool = False) -> int:
        return 0

    async def close(self) -> None:
        return None
