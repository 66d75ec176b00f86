"""MongoDB-specific tests.

`test_emulated_*.py` and `test_change_stream_pump.py` run on the in-process emulation (or a scripted change
stream). `test_real_server.py` runs on a server process: the wire server (SecantusDB, test ids `mongo-wire`)
always, and a real MongoDB replica set at JOBSD_TEST_MONGODB_URI too when it is set (`mongo-real`,
`make test-mongo`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient

from jobsd.store.mongo import MongoStore
from tests.support.mongo_emulation import EmulatedAsyncMongoClient
from tests.support.wire_server import fresh_database_name

REAL_MONGO_ENV = "JOBSD_TEST_MONGODB_URI"
SERVERS = ["mongo-wire", *(["mongo-real"] if os.environ.get(REAL_MONGO_ENV) else [])]


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
async def replicas(emulated_client: EmulatedAsyncMongoClient) -> AsyncIterator[tuple[MongoStore, MongoStore]]:
    """Two stores on the one emulated database: replicas of the service, nothing shared but the data."""
    stores = [MongoStore("mongodb://emulated.invalid/jobsd", client=emulated_client.as_client()) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        yield stores[0], stores[1]
    finally:
        for store in stores:
            await store.close()


@pytest.fixture(params=SERVERS)
async def real_database(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, str]]:
    """(uri, database name): a fresh database on a server process (the wire server, or the real one at
    JOBSD_TEST_MONGODB_URI), dropped afterwards."""
    uri = request.getfixturevalue("wire_server").uri if request.param == "mongo-wire" else os.environ[REAL_MONGO_ENV]
    name = fresh_database_name()
    yield uri, name
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5_000)
    try:
        await client.drop_database(name)
    finally:
        await client.close()
