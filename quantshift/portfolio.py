"""Cash, positions, P&L and drawdown, derived from fills and marks.

Equity is kept incrementally (cash + the marked value of every net position) so
that marking one symbol after one bar costs O(1), whatever the number of symbols.
"""

from __future__ import annotations

from typing import Any

from quantshift.domain import NS_PER_DAY, Direction, Fill, Position, Trade

_EPS = 1e-9


class Portfolio:
    def __init__(self, cash: float) -> None:
        self.initial_cash = cash
        self.cash = cash
        self.positions: dict[tuple[str, str], Position] = {}
        self.net: dict[str, float] = {}  # symbol -> net quantity over all strategies
        # The symbols whose net quantity is not zero: the book keeps every symbol it ever
        # traded in ``net``, the exposure limits only need these.
        self.open_net: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        self.realized_pnl = 0.0
        self.commission = 0.0
        self.fill_seq = 0  # the last fill applied
        self._mtm = 0.0
        # Gross notional of the open positions at their marks, kept like _mtm: a term per
        # mark of a held symbol and per fill. The exposure limit reads it instead of
        # summing every position on every decision (and sums exactly near its cap).
        self.gross = 0.0
        self.peak_equity = cash
        self.drawdown = 0.0
        self.max_drawdown = 0.0
        self.day = -1
        self.day_start_equity = cash
        self._day_start_ns = 0
        self._day_end_ns = 0
        # Per-bar equity returns (a bar without a change counts as a zero return).
        self.return_n = 0
        self.return_sum = 0.0
        self.return_sq = 0.0
        self._last_equity = cash

    # -- reading -------------------------------------------------------------------------
    @property
    def equity(self) -> float:
        return self.cash + self._mtm

    @property
    def day_pnl(self) -> float:
        return self.equity - self.day_start_equity

    def position_qty(self, strategy: str, symbol: str) -> float:
        pos = self.positions.get((strategy, symbol))
        return pos.qty if pos is not None else 0.0

    def exposure(self) -> float:
        """Gross notional of all net positions at their marks."""
        marks = self.marks
        return sum(abs(q) * marks.get(s, 0.0) for s, q in self.net.items() if q)

    def open_symbols(self) -> int:
        return sum(1 for q in self.net.values() if abs(q) > _EPS)

    def unrealized_pnl(self) -> float:
        marks = self.marks
        return sum(p.qty * (marks.get(p.symbol, p.avg_price) - p.avg_price)
                   for p in self.positions.values() if p.qty)

    # -- writing -------------------------------------------------------------------------
    def mark(self, symbol: str, price: float, ts: int) -> None:
        """Value the symbol at ``price``; roll the trading day on the first bar of a new one."""
        if not self._day_start_ns <= ts < self._day_end_ns:
            self._roll_day(ts)
        marks = self.marks
        old = marks.get(symbol)
        marks[symbol] = price
        q = self.net.get(symbol)
        self.return_n += 1
        if q and old is not None and price != old:
            self._mtm += q * (price - old)
            self.gross += (q if q > 0 else -q) * (price - old)
            self._track_equity()

    def _roll_day(self, ts: int) -> None:
        self.day = ts // NS_PER_DAY
        self._day_start_ns = self.day * NS_PER_DAY
        self._day_end_ns = self._day_start_ns + NS_PER_DAY
        self.day_start_equity = self.cash + self._mtm

    def _track_equity(self) -> None:
        """Drawdown, and the per-bar return sums behind the Sharpe ratio."""
        equity = self.cash + self._mtm
        prev = self._last_equity
        if prev > 0:
            r = equity / prev - 1.0
            self.return_sum += r
            self.return_sq += r * r
        self._last_equity = equity
        if equity > self.peak_equity:
            self.peak_equity = equity
            self.drawdown = 0.0
        elif self.peak_equity > 0:
            dd = (self.peak_equity - equity) / self.peak_equity
            self.drawdown = dd
            if dd > self.max_drawdown:
                self.max_drawdown = dd

    def apply_fill(self, fill: Fill) -> Trade | None:
        """Book a fill; return the round trip it closed, if any."""
        key = (fill.strategy, fill.symbol)
        pos = self.positions.get(key)
        if pos is None:
            pos = self.positions[key] = Position(fill.strategy, fill.symbol)
        d = fill.signed_qty
        price = fill.price
        symbol = fill.symbol
        if fill.seq > self.fill_seq:
            self.fill_seq = fill.seq

        self.cash -= d * price + fill.commission
        self.commission += fill.commission
        mark = self.marks.get(symbol)
        if mark is None:
            mark = self.marks[symbol] = price
        was = self.net.get(symbol, 0.0)
        now = self.net[symbol] = was + d
        self.gross += (abs(now) - abs(was)) * mark
        if now > _EPS or now < -_EPS:
            self.open_net[symbol] = now
        else:
            self.open_net.pop(symbol, None)
        self._mtm += d * mark

        self._track_equity()
        q = pos.qty
        trade: Trade | None = None
        if abs(q) < _EPS or (q > 0) == (d > 0):
            new_q = q + d
            if abs(q) < _EPS:
                pos.entry_ts, pos.trade_pnl, pos.trade_max_qty, pos.avg_price = fill.ts, 0.0, 0.0, 0
            pos.avg_price = (q * pos.avg_price + d * price) / new_q
            pos.qty = new_q
            pos.trade_pnl -= fill.commission
            pos.trade_max_qty = max(pos.trade_max_qty, abs(new_q))
            return None

        sign = 1.0 if q > 0 else -1.0
        closing = min(abs(d), abs(q))
        pnl = closing * (price - pos.avg_price) * sign
        close_commission = fill.commission * closing / abs(d)
        pos.realized_pnl += pnl
        self.realized_pnl += pnl
        pos.trade_pnl += pnl - close_commission
        new_q = q + d
        if abs(new_q) < _EPS or (new_q > 0) != (q > 0):
            trade = Trade(
                strategy=fill.strategy, symbol=symbol,
                direction=Direction.LONG if q > 0 else Direction.SHORT,
                qty=pos.trade_max_qty, entry_ts=pos.entry_ts, entry_price=pos.avg_price,
                exit_ts=fill.ts, exit_price=price, pnl=pos.trade_pnl,
            )
            if abs(new_q) < _EPS:
                pos.qty, pos.avg_price, pos.trade_pnl, pos.trade_max_qty = 0.0, 0.0, 0.0, 0.0
            else:  # reversal: the rest of the fill opens the other side
                pos.qty, pos.avg_price, pos.entry_ts = new_q, price, fill.ts
                pos.trade_pnl = -(fill.commission - close_commission)
                pos.trade_max_qty = abs(new_q)
        else:
            pos.qty = new_q
        return trade

    # -- persistence ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "initial_cash": self.initial_cash,
            "cash": self.cash,
            "realized_pnl": self.realized_pnl,
            "commission": self.commission,
            "fill_seq": self.fill_seq,
            "marks": dict(self.marks),
            "peak_equity": self.peak_equity,
            "max_drawdown": self.max_drawdown,
            "day": self.day,
            "day_start_equity": self.day_start_equity,
            "equity": self.equity,
            "positions": [
                [p.strategy, p.symbol, p.qty, p.avg_price, p.realized_pnl, p.entry_ts,
                 p.trade_pnl, p.trade_max_qty]
                for p in self.positions.values()
            ],
        }

    @classmethod
    def restore(cls, snap: dict[str, Any]) -> Portfolio:
        pf = cls(snap["initial_cash"])
        pf.cash = snap["cash"]
        pf.realized_pnl = snap["realized_pnl"]
        pf.commission = snap["commission"]
        pf.fill_seq = snap["fill_seq"]
        pf.marks = dict(snap["marks"])
        pf.peak_equity = snap["peak_equity"]
        pf.max_drawdown = snap["max_drawdown"]
        pf.day = snap["day"]
        if pf.day >= 0:
            pf._day_start_ns = pf.day * NS_PER_DAY
            pf._day_end_ns = pf._day_start_ns + NS_PER_DAY
        pf.day_start_equity = snap["day_start_equity"]
        for strategy, symbol, qty, avg, realized, entry_ts, trade_pnl, max_qty in snap["positions"]:
            pf.positions[(strategy, symbol)] = Position(
                strategy, symbol, qty, avg, realized, entry_ts, trade_pnl, max_qty)
            pf.net[symbol] = pf.net.get(symbol, 0.0) + qty
        pf.open_net = {s: q for s, q in pf.net.items() if q > _EPS or q < -_EPS}
        pf._mtm = sum(q * pf.marks.get(s, 0.0) for s, q in pf.net.items())
        pf.gross = pf.exposure()
        equity = pf._last_equity = pf.equity
        pf.drawdown = (pf.peak_equity - equity) / pf.peak_equity if pf.peak_equity > 0 else 0.0
        return pf
