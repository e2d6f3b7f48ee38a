"""Paper: an in-process simulated book.

Fills happen at the decision bar's close (``close``) or at the next bar's open of the
same symbol (``next_open``), moved against the order by the slippage, with a
commission charged on the filled notional.
"""

from __future__ import annotations

from quantshift.domain import Bar, ExecutorKind, OrderIntent, OrderState, Side
from quantshift.execution.base import ExecutionSink


class PaperExecutor:
    kind = ExecutorKind.PAPER
    description = "orders are simulated in-process by the paper fill model; no broker is contacted"

    def __init__(self, sink: ExecutionSink, fill: str, slippage_bps: float,
                 commission_bps: float) -> None:
        if fill not in ("close", "next_open"):
            raise ValueError(f"unknown paper fill model {fill!r}")
        self._sink = sink
        self._at_close = fill == "close"
        self._slip = slippage_bps / 10_000.0
        self._commission = commission_bps / 10_000.0
        self._resting: dict[str, list[OrderIntent]] = {}
        # Fills at the close happen on submit; only next-open fills need to see bars.
        self.wants_bars = not self._at_close

    def fill_price(self, side: Side, price: float) -> float:
        return price * (1.0 + self._slip) if side is Side.BUY else price * (1.0 - self._slip)

    def submit(self, intent: OrderIntent) -> None:
        if self._at_close:
            self._fill(intent, intent.ref_price, intent.ts)
            return
        self._resting.setdefault(intent.symbol, []).append(intent)
        self._sink.on_order_state(intent, OrderState.SUBMITTED)

    def on_bar(self, bar: Bar) -> None:
        if self._resting:
            waiting = self._resting.pop(bar.symbol, None)
            if waiting:
                for intent in waiting:
                    self._fill(intent, bar.open, bar.ts)

    def _fill(self, intent: OrderIntent, price: float, ts: int) -> None:
        px = self.fill_price(intent.side, price)
        self._sink.on_fill(intent, intent.qty, px, px * intent.qty * self._commission, ts)

    def open_orders(self) -> list[OrderIntent]:
        return [i for waiting in self._resting.values() for i in waiting]

    def restore_open(self, orders: list[tuple[OrderIntent, float, float]],
                     sent: bool = True) -> None:
        for intent, _, _ in orders:
            if sent:
                self._resting.setdefault(intent.symbol, []).append(intent)
            else:  # the book never took it: nothing happened
                self._sink.on_order_state(intent, OrderState.CANCELLED,
                                          "never submitted: the daemon stopped first")

    async def start(self) -> None:
        return None

    async def drain(self, timeout: float) -> None:
        return None

    async def settle(self, timeout: float) -> int:
        return 0  # nothing leaves the process

    def cancel_all(self, reason: str, keep_exits: bool = False) -> int:
        kept: dict[str, list[OrderIntent]] = {}
        cancelled: list[OrderIntent] = []
        for symbol, waiting in self._resting.items():
            for intent in waiting:
                if keep_exits and intent.reduce_only:
                    kept.setdefault(symbol, []).append(intent)
                else:
                    cancelled.append(intent)
        self._resting = kept
        for intent in cancelled:
            self._sink.on_order_state(intent, OrderState.CANCELLED, reason)
        return len(cancelled)

    async def close(self) -> None:
        return None
