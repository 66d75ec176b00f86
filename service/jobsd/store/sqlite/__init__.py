"""The embedded store: one SQLite file (see `jobsd.store.sqlite.store`)."""

from jobsd.store.sqlite.store import SqliteCommit, SqliteStore

__all__ = ["SqliteCommit", "SqliteStore"]
