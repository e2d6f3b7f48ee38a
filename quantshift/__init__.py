"""QuantShift: one asyncio loop from market data to orders, phase by phase."""

__version__ = "0.1.0"
