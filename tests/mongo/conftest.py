"""MongoDB-specific tests.

`test_emulated_*.py` and `test_change_stream_pump.py` always run (on the in-process emulation, or on a scripted
change stream). `test_real_server.py` needs a MongoDB replica set at JOBSD_TEST_MONGODB_URI; without it, it is not
even collected (`make test-mongo` sets it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient

from jobsd.store.mongo import MongoStore
from tests.support.mongo_emulation import EmulatedAsyncMongoClient

REAL_MONGO_ENV = "JOBSD_TEST_MONGODB_URI"

collect_ignore = [] if os.environ.get(REAL_MONGO_ENV) else ["test_real_server.py"]


@pytest.fixture
def emulated_client() -> EmulatedAsyncMongoClient:
    return EmulatedAsyncMongoClient()


@pytest.fixture
async def emulated_store(emulated_client: EmulatedAsyncMongoClient) -> AsyncIterator[MongoStore]:
    store = MongoStore("mongodb://emulated.invalid/jobsd", client=emulated_client.as_client())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def real_database() -> AsyncIterator[tuple[str, str]]:
    """(uri, database name): a fresh database on the real server, dropped afterwards."""
    uri = os.environ[REAL_MONGO_ENV]
    name = f"jobsd_test_{uuid.uuid4().hex[:12]}"
    yield uri, name
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5_000)
    try:
        await client.drop_database(name)
    finally:
        await client.close()
