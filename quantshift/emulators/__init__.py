"""Local broker emulators: an Alpaca and a Binance-shaped exchange on 127.0.0.1.

They are test infrastructure and a feature (``quantshift emulate alpaca|exchange``), and
they import nothing from the rest of QuantShift, so they can catch the daemon's mistakes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quantshift.emulators.alpaca import AlpacaEmulator
    from quantshift.emulators.exchange import ExchangeEmulator

__all__ = ["AlpacaEmulator", "ExchangeEmulator"]


def __getattr__(name: str) -> Any:
    if name == "AlpacaEmulator":
        from quantshift.emulators.alpaca import AlpacaEmulator

        return AlpacaEmulator
    if name == "ExchangeEmulator":
        from quantshift.emulators.exchange import ExchangeEmulator

        return ExchangeEmulator
    raise AttributeError(name)
