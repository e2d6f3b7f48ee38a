"""Durable state: the journal (SQLite) and, later, shared stores."""
