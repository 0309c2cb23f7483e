"""Persistent state outside Temporal: inventory and logs (SQLite file or PostgreSQL)."""
