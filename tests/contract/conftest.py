"""The `store` fixture: every contract test runs once per backend.

Every backend is built with the app's job encoder and wrapped in `wire.WireChecked`, so each job a test reads is
also read as a record whose stored wire bytes must decode to that job.

Backends (and their test ids):
- `sqlite`: a real SQLite file in tmp_path, always.
- `mongo-emulated`: an in-process MongoDB emulation, when tests/contract/mongo_backends.py exists.
- `mongo-real`: a real MongoDB server, only when JOBSD_TEST_MONGODB_URI is set (so it is never a skip in CI).

mongo_backends.py (owned by the MongoDB backend) exports `emulated_mongo_store()` and `real_mongo_store()`, async
context managers yielding an opened, empty JobStore. It may also export `EMULATED_LACKS`, a set of capability
names (see `needs` below) the emulation cannot provide; tests marked `@pytest.mark.needs("<capability>")` are then
skipped for that backend only, with the reason shown.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from jobsd.store.base import JobStore
from jobsd.store.sqlite import SqliteStore

from .wire import WireChecked, encode_job

REAL_MONGO_ENV = "JOBSD_TEST_MONGODB_URI"


def _mongo_backends() -> ModuleType | None:
    if not (Path(__file__).parent / "mongo_backends.py").exists():
        return None
    return importlib.import_module(f"{__package__}.mongo_backends" if __package__ else "mongo_backends")


_MONGO = _mongo_backends()
_BACKENDS = ["sqlite"]
if _MONGO is not None:
    _BACKENDS.append("mongo-emulated")
    if os.environ.get(REAL_MONGO_ENV):
        _BACKENDS.append("mongo-real")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs(capability): the test needs a store capability, e.g. change_feed")


def _lacks(backend: str) -> frozenset[str]:
    if backend == "mongo-emulated" and _MONGO is not None:
        return frozenset(getattr(_MONGO, "EMULATED_LACKS", ()))
    return frozenset()


@pytest.fixture(params=_BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    backend: str = request.param
    needed = {cap for mark in request.node.iter_markers("needs") for cap in mark.args}
    missing = needed & _lacks(backend)
    if missing:
        pytest.skip(f"{backend} cannot provide {', '.join(sorted(missing))}")
    if backend == "sqlite":
        sqlite_store = SqliteStore(tmp_path / "contract" / "jobsd.db", encoder=encode_job)
        await sqlite_store.open()
        try:
            yield WireChecked(sqlite_store)  # type: ignore[misc]
        finally:
            await sqlite_store.close()
        return
    assert _MONGO is not None
    factory: Callable[[], AbstractAsyncContextManager[Any]] = (
        _MONGO.emulated_mongo_store if backend == "mongo-emulated" else _MONGO.real_mongo_store
    )
    async with factory(encoder=encode_job) as mongo_store:
        yield WireChecked(mongo_store)
