"""The store backends every suite runs on: one entry of `BACKENDS` each.

A backend makes a fresh, *unopened* `JobStore` for one test (the caller opens and closes it: the contract suite
itself, or `JobsdApp` in the end-to-end suites) and cleans up after it. Adding a backend is one `Backend(...)` in
`BACKENDS`: its `make` may ask pytest for fixtures (`request.getfixturevalue`), e.g. a session-scoped server
process. What a backend cannot do is asked of the store itself (`JobStore.supports`), not listed here.

Test ids name the backend: `sqlite`, `mongo-emulated` (in-process, mongomock), `mongo-wire` (the MongoDB
wire-protocol test server SecantusDB, one process per session: tests/support/wire_server.py; not mongod),
`mongo-real` (only with JOBSD_TEST_MONGODB_URI, so it is never a skip in CI).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from jobsd.store.base import JobEncoder, JobStore
from jobsd.store.sqlite import SqliteStore

__all__ = [
    "BACKENDS",
    "E2E_BACKENDS_ENV",
    "REAL_MONGO_ENV",
    "Backend",
    "DatabasePool",
    "contract_backends",
    "e2e_backends",
]

REAL_MONGO_ENV = "JOBSD_TEST_MONGODB_URI"
# Comma-separated backend names the end-to-end suites run on (default: those marked e2e below).
E2E_BACKENDS_ENV = "JOBSD_TEST_E2E_BACKENDS"

# (the test's request, its tmp_path, the job encoder) -> a context manager yielding a fresh, unopened store.
MakeStore = Callable[[pytest.FixtureRequest, Path, JobEncoder | None], AbstractAsyncContextManager[JobStore]]


@dataclass(frozen=True)
class Backend:
    name: str
    make: MakeStore
    # Whether it can run here at all (a real server needs its URI).
    available: Callable[[], bool] = lambda: True
    # The end-to-end suites (a real JobsdApp per test: "core", "client", "gateway", "executors", or "*" for all)
    # that run on it by default; the contract suite runs on every available backend.
    e2e: frozenset[str] = frozenset()


@asynccontextmanager
async def _sqlite(
    request: pytest.FixtureRequest, tmp_path: Path, encoder: JobEncoder | None
) -> AsyncIterator[JobStore]:
    yield SqliteStore(tmp_path / "store" / "jobsd.db", encoder=encoder)


@asynccontextmanager
async def _mongo_emulated(
    request: pytest.FixtureRequest, tmp_path: Path, encoder: JobEncoder | None
) -> AsyncIterator[JobStore]:
    from jobsd.store.mongo import MongoStore
    from tests.support.mongo_emulation import EmulatedAsyncMongoClient

    client = EmulatedAsyncMongoClient().as_client()
    yield MongoStore("mongodb://emulated.invalid/jobsd", client=client, encoder=encoder)


@asynccontextmanager
async def _mongo_server(uri: str, encoder: JobEncoder | None) -> AsyncIterator[JobStore]:
    """A fresh database on the server at `uri`, dropped afterwards."""
    from pymongo import AsyncMongoClient

    from jobsd.store.mongo import MongoStore

    database = f"jobsd_test_{uuid.uuid4().hex[:12]}"
    try:
        yield MongoStore(uri, database=database, encoder=encoder)
    finally:
        cleanup: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5_000)
        try:
            await cleanup.drop_database(database)
        finally:
            await cleanup.close()


def _mongo_wire(
    request: pytest.FixtureRequest, tmp_path: Path, encoder: JobEncoder | None
) -> AbstractAsyncContextManager[JobStore]:
    """A fresh database on the session's wire server (started on first use); the end-to-end suites (a test that
    runs a JobsdApp on a ManualClock at a fixed date) get an emptied one of the server whose TTL monitor is off."""
    if "e2e_backend_store" in request.fixturenames:
        pool: DatabasePool = request.getfixturevalue("wire_database_pool")
        return _pooled(pool, encoder)
    return _mongo_server(request.getfixturevalue("wire_server").uri, encoder)


class DatabasePool:
    """Databases of one wire server handed out empty, one test at a time each: a test's database is emptied after
    it (every document of every collection deleted) and its collections and indexes are kept for the next one,
    which then creates none. Creating and dropping a database's five collections and fifteen indexes per test was
    most of what an end-to-end test cost on the wire server. A database that cannot be emptied is dropped."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._client: MongoClient[dict[str, Any]] = MongoClient(
            uri, serverSelectionTimeoutMS=5_000, w="majority", tz_aware=True
        )
        self._free: list[str] = []

    def take(self) -> str:
        return self._free.pop() if self._free else f"jobsd_e2e_{uuid.uuid4().hex[:12]}"

    def give_back(self, name: str) -> None:
        database = self._client.get_database(name)
        try:
            for collection in database.list_collection_names():
                database.get_collection(collection).delete_many({})
        except PyMongoError:
            self._client.drop_database(name)
            raise
        self._free.append(name)

    def close(self) -> None:
        for name in self._free:
            self._client.drop_database(name)
        self._client.close()


@asynccontextmanager
async def _pooled(pool: DatabasePool, encoder: JobEncoder | None) -> AsyncIterator[JobStore]:
    from jobsd.store.mongo import MongoStore

    name = pool.take()
    try:
        yield MongoStore(pool.uri, database=name, encoder=encoder)
    finally:
        pool.give_back(name)


def _mongo_real(
    request: pytest.FixtureRequest, tmp_path: Path, encoder: JobEncoder | None
) -> AbstractAsyncContextManager[JobStore]:
    """A fresh database on the server at JOBSD_TEST_MONGODB_URI."""
    return _mongo_server(os.environ[REAL_MONGO_ENV], encoder)


BACKENDS: dict[str, Backend] = {
    backend.name: backend
    for backend in (
        Backend("sqlite", _sqlite, e2e=frozenset({"*"})),
        # The emulation: the contract (and tests/mongo); the end-to-end suites only when asked
        # (JOBSD_TEST_E2E_BACKENDS=mongo-emulated): the wire server runs them against a real MongoDB protocol.
        Backend("mongo-emulated", _mongo_emulated),
        # The wire server: the whole contract (and tests/mongo), and the gRPC, REST and client end-to-end suites
        # (tests/executors on it only when asked: JOBSD_TEST_E2E_BACKENDS=sqlite,mongo-wire).
        Backend("mongo-wire", _mongo_wire, e2e=frozenset({"core", "gateway", "client"})),
        Backend("mongo-real", _mongo_real, available=lambda: bool(os.environ.get(REAL_MONGO_ENV))),
    )
}


def contract_backends() -> list[str]:
    """The backends the store contract suite runs on: every available one."""
    return [name for name, backend in BACKENDS.items() if backend.available()]


def e2e_backends(suite: str = "*") -> list[str]:
    """The backends the end-to-end `suite` runs on: $JOBSD_TEST_E2E_BACKENDS, else the available ones naming it."""
    chosen = os.environ.get(E2E_BACKENDS_ENV, "")
    if chosen.strip():
        names = [name.strip() for name in chosen.split(",") if name.strip()]
        unknown = sorted(set(names) - set(BACKENDS))
        if unknown:
            raise pytest.UsageError(f"{E2E_BACKENDS_ENV}: unknown backend(s) {', '.join(unknown)}")
        return names
    return [
        name
        for name, backend in BACKENDS.items()
        if backend.available() and ("*" in backend.e2e or suite in backend.e2e)
    ]
