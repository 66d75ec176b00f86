"""Store backends behind one contract (`jobsd.store.base.JobStore`), chosen by URL with `open_store`."""

from __future__ import annotations

import importlib
from datetime import timedelta
from typing import cast

from jobsd.errors import InvalidArgument
from jobsd.store.base import JobEncoder, JobStore
from jobsd.store.sqlite import SqliteCommit, SqliteStore

__all__ = ["SqliteCommit", "SqliteStore", "open_store", "store_shown"]

_SQLITE_PREFIX = "sqlite:///"
_MONGO_PREFIXES = ("mongodb://", "mongodb+srv://")


def store_shown(url: str) -> str:
    """The store URL as messages may print it: credentials (`user:password@`) replaced by `…@`, no query
    string (options may carry secrets too)."""
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return url.strip()
    authority, slash, tail = rest.split("?", 1)[0].partition("/")
    if "@" in authority:
        authority = "…@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{tail}"


def open_store(
    url: str,
    *,
    log_retention: timedelta | None = None,
    encoder: JobEncoder | None = None,
    sqlite_commit: SqliteCommit | None = None,
) -> JobStore:
    """The backend for `url` (JOBSD_STORE), not yet opened: the caller awaits `open()` (and later `close()`).

    `sqlite:///relative/path.db` or `sqlite:////absolute/path.db` (three slashes, then the path, as SQLAlchemy
    spells it); `mongodb://...` or `mongodb+srv://...` for MongoDB. `encoder` makes the wire bytes every job write
    stores for the record reads (see jobsd.store.base); the app passes the API's message serialiser.
    `sqlite_commit` is the embedded store's group commit (JOBSD_SQLITE_COMMIT_*).
    """
    url = url.strip()
    if url.startswith(_SQLITE_PREFIX):
        path = url[len(_SQLITE_PREFIX) :]
        if not path or path.endswith("/"):
            raise InvalidArgument("store", f"{url!r} names no database file; expected sqlite:///path/to/jobsd.db")
        if path == ":memory:" or path.startswith("file:"):
            raise InvalidArgument("store", f"{url!r} is not a file path; the embedded store needs a durable file")
        return SqliteStore(path, encoder=encoder, commit=sqlite_commit or SqliteCommit())
    if url.startswith(_MONGO_PREFIXES):
        # Imported only when asked for, so the embedded store never pays for the MongoDB driver.
        mongo = importlib.import_module("jobsd.store.mongo")
        # log_retention also sets the TTL index of jobs_log (purge deletes old rows either way).
        return cast(JobStore, mongo.MongoStore(url, log_retention=log_retention, encoder=encoder))
    shown = url if "@" not in url else url.split("://", 1)[0] + "://…"  # never echo credentials
    raise InvalidArgument(
        "store",
        f"unsupported store URL {shown!r}; expected sqlite:///path/to/jobsd.db, mongodb://... or mongodb+srv://...",
    )
