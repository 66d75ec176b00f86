"""The embedded store: one SQLite file (see `jobsd.store.sqlite.store`)."""

from jobsd.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
