"""The MongoDB backends of the contract suite (see conftest.py): an emulated one, always, and a real server when
JOBSD_TEST_MONGODB_URI is set."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pymongo import AsyncMongoClient

from jobsd.store.base import JobEncoder
from jobsd.store.mongo import MongoStore
from tests.support.mongo_emulation import EmulatedAsyncMongoClient

__all__ = ["EMULATED_LACKS", "REAL_MONGO_ENV", "emulated_mongo_store", "real_mongo_store"]

REAL_MONGO_ENV = "JOBSD_TEST_MONGODB_URI"
# What the emulation cannot do (see tests.support.mongo_emulation): tests marked with these are skipped for it.
# Its change feed is the store's standalone fallback: this process's own writes, published in-process.
EMULATED_LACKS: frozenset[str] = frozenset({"cross_process_feed", "ttl", "explain"})


@asynccontextmanager
async def emulated_mongo_store(encoder: JobEncoder | None = None) -> AsyncIterator[MongoStore]:
    """An opened MongoStore on a fresh in-process emulation."""
    client = EmulatedAsyncMongoClient().as_client()
    store = MongoStore("mongodb://emulated.invalid/jobsd", client=client, encoder=encoder)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def real_mongo_store(encoder: JobEncoder | None = None) -> AsyncIterator[MongoStore]:
    """An opened MongoStore on a fresh database of the server at JOBSD_TEST_MONGODB_URI, dropped afterwards."""
    uri = os.environ[REAL_MONGO_ENV]
    database = f"jobsd_test_{uuid.uuid4().hex[:12]}"
    store = MongoStore(uri, database=database, encoder=encoder)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        cleanup: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5_000)
        try:
            await cleanup.drop_database(database)
        finally:
            await cleanup.close()
