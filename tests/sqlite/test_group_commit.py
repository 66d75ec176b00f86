"""Group commit in the SQLite store: concurrent writes share one COMMIT, yet each is acknowledged only once durable,
a lone write never waits for the window, a read never sees an uncommitted write, and a refusal or a crash loses
nothing that was acknowledged."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from jobsd.domain.auth import ReadScope
from jobsd.domain.model import Job
from jobsd.domain.states import Action
from jobsd.errors import AlreadyExists, InvalidArgument
from jobsd.store.base import JobChanged, JobQuery, LogQuery
from jobsd.store.sqlite import SqliteCommit, SqliteStore
from tests.contract.factories import T0, move, new_job, new_workspace_id

T = TypeVar("T")

# Long enough that a test passing within its deadline proves the write did not wait for it.
LONG_WINDOW = SqliteCommit(window=600.0)


async def open_store(path: Path, commit: SqliteCommit | None = None) -> SqliteStore:
    store = SqliteStore(path, commit=commit)
    await store.open()
    return store


async def committed(store: SqliteStore, *writes: Awaitable[T]) -> list[T | BaseException]:
    """Start `writes` in one loop turn (so they join one group), then read: a read commits the group first."""
    tasks = [asyncio.ensure_future(w) for w in writes]
    await asyncio.sleep(0.05)
    await store.get_job("no-such-job", T0)
    async with asyncio.timeout(10):
        return await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
async def gathering_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """A store with a 10-minute window whose last group held two writes: the next write waits to be joined."""
    store = await open_store(tmp_path / "jobsd.db", LONG_WINDOW)
    ws = new_workspace_id()
    # Two writes in one loop turn share the turn's COMMIT: the store now believes others are writing.
    await asyncio.gather(store.insert_job(new_job(ws)), store.insert_job(new_job(ws)))
    assert (store.commits, store.committed_writes) == (1, 2)
    yield store
    await store.close()


async def test_concurrent_writes_share_commits_and_every_one_is_stored(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "jobsd.db", SqliteCommit(window=0.005, max_writes=64))
    ws = new_workspace_id()
    try:
        jobs = [new_job(ws) for _ in range(200)]
        feed = store.changes()
        stored = await asyncio.gather(*(store.insert_job(job) for job in jobs))
        assert stored == jobs
        assert store.committed_writes == 200
        assert store.commits < 50, f"{store.commits} commits for 200 concurrent writes"
        for job in jobs:
            assert await store.get_job(job.id, T0) == job
        # Published once committed, each once, in the order written.
        published = [await anext(feed) for _ in range(200)]
        assert [e.job.id for e in published if isinstance(e, JobChanged)] == [job.id for job in jobs]
    finally:
        await store.close()


async def test_writes_one_at_a_time_commit_alone_without_waiting_for_the_window(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "jobsd.db", LONG_WINDOW)
    ws = new_workspace_id()
    try:
        async with asyncio.timeout(30):  # a wait for the 10-minute window would fail here
            for _ in range(20):
                await store.insert_job(new_job(ws))
        assert (store.commits, store.committed_writes) == (20, 20)
    finally:
        await store.close()


async def test_a_gathering_write_is_invisible_to_another_connection_until_committed(
    gathering_store: SqliteStore,
) -> None:
    job = new_job(new_workspace_id())
    write = asyncio.create_task(gathering_store.insert_job(job))
    await asyncio.sleep(0.05)
    assert not write.done(), "the write should be waiting for others to join its COMMIT"
    other = sqlite3.connect(gathering_store.path)  # another process reading the file
    try:
        assert other.execute("SELECT count(*) FROM jobs WHERE id = ?", (job.id,)).fetchone() == (0,)
        # A read through the writing store commits the group first: it sees the write, and the write returns.
        assert await gathering_store.get_job(job.id, T0) == job
        async with asyncio.timeout(10):
            assert await write == job
        assert other.execute("SELECT count(*) FROM jobs WHERE id = ?", (job.id,)).fetchone() == (1,)
    finally:
        other.close()


async def test_a_full_group_commits_at_once(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "jobsd.db", SqliteCommit(window=600.0, max_writes=8))
    ws = new_workspace_id()
    try:
        await asyncio.gather(store.insert_job(new_job(ws)), store.insert_job(new_job(ws)))
        async with asyncio.timeout(30):
            await asyncio.gather(*(store.insert_job(new_job(ws)) for _ in range(8)))
        assert store.committed_writes == 10
    finally:
        await store.close()


async def test_a_refused_write_leaves_the_others_of_its_group_as_they_were(gathering_store: SqliteStore) -> None:
    ws = new_workspace_id()
    [taken] = await committed(gathering_store, gathering_store.insert_job(new_job(ws)))
    assert isinstance(taken, Job)
    first, last = new_job(ws), new_job(ws)
    duplicate = replace(taken, kind="copy", idempotency_key="key-1")
    batch = [new_job(ws), new_job(ws)]
    results = await committed(
        gathering_store,
        gathering_store.insert_job(first),
        gathering_store.insert_job(replace(taken, kind="copy")),
        gathering_store.insert_job(duplicate),
        gathering_store.insert_jobs([*batch, replace(taken, kind="copy")]),
        gathering_store.insert_jobs([last, last]),
    )
    assert results[0] == first
    assert gathering_store.committed_writes == 4  # the fixture's 2, `taken`, `first`: the refusals joined nothing
    assert all(isinstance(r, AlreadyExists) for r in results[1:]), results
    assert await gathering_store.get_job(first.id, T0) == first
    assert await gathering_store.get_job(taken.id, T0) == taken
    for refused in (*batch, last):
        assert await gathering_store.get_job(refused.id, T0) is None
    logged = await gathering_store.list_log(LogQuery(workspace_id=ws, limit=50))
    assert sorted(e.job_id for e in logged) == sorted([taken.id, first.id])


async def test_compare_and_set_in_one_group_sees_the_write_before_it(gathering_store: SqliteStore) -> None:
    """Two moves decided on the same old copy: the second loses, in the same transaction, to the first."""
    job = new_job(new_workspace_id())
    await committed(gathering_store, gathering_store.insert_job(job))
    claimed = move(job, Action.CLAIM, T0)
    cancelled = move(job, Action.CANCEL, T0)
    commits = gathering_store.commits
    outcomes = await committed(
        gathering_store, gathering_store.compare_and_set(job, claimed), gathering_store.compare_and_set(job, cancelled)
    )
    assert outcomes == [True, False]
    assert gathering_store.commits == commits + 1
    assert await gathering_store.get_job(job.id, T0) == claimed


async def test_closing_commits_the_gathering_writes(tmp_path: Path) -> None:
    path = tmp_path / "jobsd.db"
    store = await open_store(path, LONG_WINDOW)
    ws = new_workspace_id()
    await asyncio.gather(store.insert_job(new_job(ws)), store.insert_job(new_job(ws)))
    job = new_job(ws)
    write = asyncio.create_task(store.insert_job(job))
    await asyncio.sleep(0.05)
    assert not write.done()
    await store.close()
    async with asyncio.timeout(10):
        assert await write == job
    reopened = await open_store(path)
    try:
        assert await reopened.get_job(job.id, T0) == job
        page = await reopened.list_jobs(JobQuery(scope=ReadScope(ws, True), now=T0, limit=10))
        assert len(page) == 3
    finally:
        await reopened.close()


async def test_every_write_commits_alone_with_one_write_per_commit(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "jobsd.db", SqliteCommit(max_writes=1))
    ws = new_workspace_id()
    try:
        await asyncio.gather(*(store.insert_job(new_job(ws)) for _ in range(30)))
        assert (store.commits, store.committed_writes) == (30, 30)
    finally:
        await store.close()


def test_bad_group_commit_settings_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match=r"commit.window.*0 or more"):
        SqliteCommit(window=-1.0)
    with pytest.raises(InvalidArgument, match=r"commit.max_writes.*at least 1"):
        SqliteCommit(max_writes=0)


_CONCURRENT_CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from tests.contract.factories import new_job
    from jobsd.store.sqlite import SqliteCommit, SqliteStore

    async def main() -> None:
        # A long window: acknowledged writes are the committed ones, the others still gather when the kill comes.
        store = SqliteStore(sys.argv[1], commit=SqliteCommit(window=0.5, max_writes=16))
        await store.open()

        async def write(i: int) -> None:
            job = await store.insert_job(new_job("ws-crash"))
            print("acked", job.id, flush=True)

        await asyncio.gather(*(write(i) for i in range(int(sys.argv[2]))))
        await asyncio.gather(*(write(i) for i in range(5)), asyncio.sleep(3600))  # killed while these gather

    asyncio.run(main())
    """
)


def test_writes_acknowledged_from_concurrent_groups_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash" / "jobsd.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _CONCURRENT_CRASHING_WRITER, str(path), "40"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert writer.stdout is not None
        acked = [writer.stdout.readline().split() for _ in range(40)]
        assert all(line[0] == "acked" for line in acked), acked
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    async def reopen() -> tuple[list[Job | None], int]:
        store = await open_store(path)
        try:
            found = [await store.get_job(job_id, T0) for _, job_id in acked]
            page = await store.list_jobs(JobQuery(scope=ReadScope("ws-crash", True), now=T0, limit=100))
            return found, len(page)
        finally:
            await store.close()

    found, total = asyncio.run(reopen())
    assert all(job is not None for job in found), "an acknowledged write was lost"
    # The 5 writes that were still gathering were never acknowledged: all or none of a group is there.
    assert total in (40, 45)


async def test_wal_checkpoints_run_in_the_background_and_stop_with_the_store(tmp_path: Path) -> None:
    """The database file itself (without its WAL) gains committed rows although no write checkpoints."""
    path = tmp_path / "jobsd.db"
    store = await open_store(path)
    ws = new_workspace_id()
    jobs = [new_job(ws) for _ in range(50)]
    await asyncio.gather(*(store.insert_job(job) for job in jobs))

    def rows_in_the_main_file() -> int:
        copy = tmp_path / "main-file-only.db"
        copy.write_bytes(path.read_bytes())  # the -wal file is not copied: only checkpointed pages are here
        conn = sqlite3.connect(copy)
        try:
            return int(conn.execute("SELECT count(*) FROM jobs WHERE workspace_id = ?", (ws,)).fetchone()[0])
        except sqlite3.DatabaseError:
            return 0
        finally:
            conn.close()

    try:
        async with asyncio.timeout(30):
            while rows_in_the_main_file() < 50:  # noqa: ASYNC110 -- a file being checkpointed: nothing to wait on
                await asyncio.sleep(0.1)
        assert any(t.name.startswith("jobsd-wal-checkpoint") for t in threading.enumerate())
    finally:
        await store.close()
        await store.close()
    assert not any(t.name.startswith("jobsd-wal-checkpoint") for t in threading.enumerate())
