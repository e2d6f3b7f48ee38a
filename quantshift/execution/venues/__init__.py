"""Venue adapters: one per broker, all behind the Venue protocol."""
