"""The embedded store: one SQLite file (see `jobsd.store.sqlite.store`)."""

from jobsd.store.sqlite.store import SqliteCommit, SqliteStats, SqliteStore

__all__ = ["SqliteCommit", "SqliteStats", "SqliteStore"]
