"""The SQLite store's WAL limit: under writes that never pause, SQLite never starts its WAL over and the file grows
without end; past `SqliteCommit.wal_limit` the store holds new writes for one checkpoint so that it can. Every test
runs real writers against a real file and its real checkpoint thread, and checks that nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobsd.domain.model import Job
from jobsd.errors import InvalidArgument, Unavailable
from jobsd.store.sqlite import SqliteCommit, SqliteStore
from tests.contract.factories import new_job, new_workspace_id

LIMIT = 256 * 1024
WRITERS = 16


@dataclass
class Load:
    """What writers that never pause did: the jobs acknowledged, the refusals, the WAL file's largest size seen."""

    acknowledged: list[Job] = field(default_factory=list)
    unavailable: int = 0
    largest_wal: int = 0
    # Set once every writer has been refused (and so has ended).
    all_refused: asyncio.Event = field(default_factory=asyncio.Event)


def wal_size(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError):
        return Path(f"{path}-wal").stat().st_size
    return 0


async def write_without_pause(store: SqliteStore, seconds: float, load: Load | None = None) -> Load:
    """WRITERS coroutines inserting jobs back to back for `seconds`: the group commits follow each other with no
    pause, which is what keeps SQLite from ever starting the WAL over on its own."""
    load = load or Load()
    ws = new_workspace_id()
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            job = new_job(ws)
            try:
                await store.insert_job(job)
            except Unavailable:
                load.unavailable += 1
                if load.unavailable == WRITERS:
                    load.all_refused.set()
                return
            load.acknowledged.append(job)

    async def watch_wal() -> None:
        while not stop.is_set():
            load.largest_wal = max(load.largest_wal, wal_size(store.path))
            await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(writer()) for _ in range(WRITERS)] + [asyncio.create_task(watch_wal())]
    try:
        await asyncio.sleep(seconds)
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    return load


async def open_store(path: Path, wal_limit: int) -> SqliteStore:
    store = SqliteStore(path, commit=SqliteCommit(window=0.004, wal_limit=wal_limit))
    await store.open()
    return store


def stored_ids(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM jobs")}
    finally:
        conn.close()


async def test_writes_that_never_pause_keep_the_wal_near_its_limit(tmp_path: Path) -> None:
    # Without a limit: the WAL only grows while the writes go on (the failure this limit exists for).
    unlimited = await open_store(tmp_path / "unlimited.db", wal_limit=0)
    try:
        grown = await write_without_pause(unlimited, 3.0)
        assert unlimited.stats().wal_restarts == 0
    finally:
        await unlimited.close()
    assert grown.largest_wal > 8 * LIMIT, f"the unlimited WAL reached only {grown.largest_wal} bytes"

    store = await open_store(tmp_path / "limited.db", wal_limit=LIMIT)
    try:
        load = await write_without_pause(store, 3.0)
        stats = store.stats()
    finally:
        await store.close()
    assert load.unavailable == 0
    assert stats.wal_restarts >= 2, stats
    assert load.largest_wal < grown.largest_wal / 2, (load.largest_wal, grown.largest_wal)
    # Each restart cut the file back to the limit; what it holds now is what was written since the last one.
    assert wal_size(tmp_path / "limited.db") <= grown.largest_wal / 2
    # Nothing acknowledged was lost on the way.
    assert {job.id for job in load.acknowledged} <= stored_ids(tmp_path / "limited.db")
    assert len(load.acknowledged) > 0


async def test_a_reader_that_pins_the_wal_neither_stalls_writes_nor_loses_any(tmp_path: Path) -> None:
    path = tmp_path / "jobsd.db"
    store = await open_store(path, wal_limit=LIMIT)
    # Another process's long read (a backup, say): no checkpoint can copy past its snapshot, so no restart can come.
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM jobs").fetchone()
        pinned = await write_without_pause(store, 2.0)
        during = store.stats()
        assert during.wal_restarts == 0, during
        assert pinned.unavailable == 0 and len(pinned.acknowledged) > 0
        # The holds ended as soon as each checkpoint found the WAL pinned, not at their one-second cap.
        assert during.write_hold_seconds < 1.0, during
        reader.execute("COMMIT")
        freed = await write_without_pause(store, 2.0)
        after = store.stats()
        assert after.wal_restarts >= 1, after
        assert freed.unavailable == 0
    finally:
        reader.close()
        await store.close()
    assert {job.id for job in pinned.acknowledged + freed.acknowledged} <= stored_ids(path)


async def test_close_while_writes_are_held_ends_every_writer(tmp_path: Path) -> None:
    path = tmp_path / "jobsd.db"
    # A limit this small holds writes after nearly every checkpoint.
    store = await open_store(path, wal_limit=16 * 1024)
    load = Load()
    writing = asyncio.create_task(write_without_pause(store, 30.0, load))
    try:
        async with asyncio.timeout(20):
            while store.stats().wal_restarts < 2:  # noqa: ASYNC110 -- restarts follow the checkpoint thread
                await asyncio.sleep(0.05)
        async with asyncio.timeout(10):
            await store.close()
        # Every writer ends (none is left waiting on a hold): its next write is refused, the store being closed.
        async with asyncio.timeout(10):
            await load.all_refused.wait()
    finally:
        writing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writing
    assert {job.id for job in load.acknowledged} <= stored_ids(path)


def test_a_negative_wal_limit_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="wal_limit"):
        SqliteCommit(wal_limit=-1)
