"""Feeds turn a source into validated Bars."""
