"""What only the SQLite store promises: index-only list plans, durability across kill -9, failures as Unavailable."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from jobsd.domain.auth import ReadScope
from jobsd.domain.filters import JobFilter
from jobsd.domain.states import Action
from jobsd.errors import AlreadyExists, InvalidArgument, Unavailable
from jobsd.store.base import FeedReset, JobChanged, JobQuery, LogQuery
from jobsd.store.sqlite import store as store_module
from jobsd.store.sqlite.checkpoint import WalCheckpointer
from jobsd.store.sqlite.store import PURGE_BATCH, SCHEMA_VERSION, SqliteStore
from tests.contract.factories import RETENTION, T0, claim_request, move, new_job, new_workspace_id
from tests.contract.wire import assert_record_of, encode_job


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "db" / "jobsd.db", busy_timeout_ms=50)
    await store.open()
    yield store
    await store.close()


def _list_queries() -> list[JobQuery]:
    wide = ReadScope("ws", everything=True)
    narrow = ReadScope("ws", everything=False, datasource_names=frozenset({"a", "b"}), pipe_names=frozenset({"p"}))
    queries = []
    for scope, kind, status, pipe_id, pipe_name, bounded, after, active in itertools.product(
        (wide, narrow),
        (None, "import"),
        (None, "waiting"),
        (None, "pid"),
        (None, "p"),
        (False, True),
        (None, (T0, "some-id")),
        (False, True),
    ):
        queries.append(
            JobQuery(
                scope=scope,
                now=T0,
                limit=100,
                after=after,
                only_active=active,
                filter=JobFilter(
                    kind=kind,
                    status=status,
                    pipe_id=pipe_id,
                    pipe_name=pipe_name,
                    created_after=T0 - timedelta(hours=1) if bounded else None,
                    created_before=T0 if bounded else None,
                ),
            )
        )
    return queries


async def test_every_list_query_is_an_index_search_without_a_sort(sqlite_store: SqliteStore) -> None:
    # Some rows, so the plans are those of a real table rather than an empty one.
    ws = "ws"
    for i in range(50):
        await sqlite_store.insert_job(
            new_job(ws, kind=("import", "copy")[i % 2], datasource_name="a", pipe_name="p", created_at=T0)
        )
    queries = _list_queries()
    assert len(queries) == 256
    for query in queries:
        for plan in sqlite_store.explain_list_jobs(query):
            text = " | ".join(plan)
            assert len(plan) == 1 and plan[0].startswith("SEARCH jobs USING INDEX jobs_by_"), (query, text)
            assert "workspace_id=?" in plan[0], (query, text)
            assert "TEMP B-TREE" not in text, (query, text)


_CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, sys, uuid
    from datetime import datetime, timedelta
    from jobsd.domain.model import Job, JobStatus
    from jobsd.store.sqlite import SqliteStore

    async def main() -> None:
        store = SqliteStore(sys.argv[1])
        await store.open()
        t0 = datetime.fromisoformat(sys.argv[3])
        for i in range(int(sys.argv[2])):
            job = Job(
                id=str(uuid.uuid4()), workspace_id="ws", kind="import", status=JobStatus.WAITING,
                created_at=t0, updated_at=t0, revision=1, status_revision=1, concurrency_key="ws:import",
                expires_at=t0 + timedelta(hours=48),
            )
            await store.insert_job(job)
            print("acked", job.id, flush=True)
        sys.stdin.read()  # never closes the store: the parent kills this process mid-life

    asyncio.run(main())
    """
)


def test_acknowledged_writes_survive_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "crash" / "jobsd.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(path), "25", T0.isoformat()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        acked = [writer.stdout.readline().split() for _ in range(25)]
        assert all(line[0] == "acked" for line in acked), acked
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    assert writer.returncode == -signal.SIGKILL

    async def reopen() -> list[str]:
        store = SqliteStore(path)
        await store.open()
        try:
            return [job.id for _, job_id in acked if (job := await store.get_job(job_id, T0)) is not None]
        finally:
            await store.close()

    assert asyncio.run(reopen()) == [job_id for _, job_id in acked]


async def test_a_closed_store_is_unavailable_and_closing_twice_is_fine(sqlite_store: SqliteStore) -> None:
    job = await sqlite_store.insert_job(new_job(new_workspace_id()))
    feed = sqlite_store.changes()
    await sqlite_store.close()
    await sqlite_store.close()
    for call in (sqlite_store.ping(), sqlite_store.get_job(job.id, T0), sqlite_store.insert_job(new_job("ws"))):
        with pytest.raises(Unavailable, match="is not open"):
            await call
    with pytest.raises(Unavailable):
        sqlite_store.changes()
    with pytest.raises(StopAsyncIteration):
        await anext(feed)  # subscribers are told the feed ended


def _remove_database_files(path: Path) -> None:
    """What an operator's stray `rm -rf .jobsd` does under a running server."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_a_removed_database_file_is_unavailable_not_silently_written(sqlite_store: SqliteStore) -> None:
    await sqlite_store.ping()
    _remove_database_files(sqlite_store.path)
    with pytest.raises(Unavailable, match="gone"):
        await sqlite_store.ping()
    with pytest.raises(Unavailable, match="gone"):
        await sqlite_store.insert_job(new_job("ws"))


async def test_the_checkpoint_thread_never_creates_a_removed_database_file(sqlite_store: SqliteStore) -> None:
    # The store starts its checkpoint thread when it opens; a file removed before that thread connects must stay
    # missing (an empty file made in its place would read as "replaced", and hide what the operator did).
    _remove_database_files(sqlite_store.path)
    checkpointer = WalCheckpointer(sqlite_store.path, interval=0.01)
    checkpointer.start()
    await checkpointer.stop()  # joins the thread, whose first step is connecting
    assert not sqlite_store.path.exists()
    with pytest.raises(Unavailable, match="gone"):
        await sqlite_store.ping()


async def test_a_file_that_is_not_a_database_cannot_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database file" * 200)
    with pytest.raises(Unavailable, match=str(path)):
        await SqliteStore(path).open()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(Unavailable, match="schema version 99"):
        await SqliteStore(path).open()


async def test_a_locked_database_fails_as_unavailable_and_changes_nothing(sqlite_store: SqliteStore) -> None:
    ws = new_workspace_id()
    other = sqlite3.connect(sqlite_store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holding the write lock
        with pytest.raises(Unavailable, match="database is locked"):
            await sqlite_store.insert_job(new_job(ws))
        with pytest.raises(Unavailable, match="database is locked"):
            await sqlite_store.ping()
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert await sqlite_store.list_jobs(JobQuery(scope=ReadScope(ws, True), now=T0, limit=10)) == []
    assert await sqlite_store.list_log(LogQuery(workspace_id=ws, limit=10)) == []
    await sqlite_store.ping()


async def test_a_duplicate_id_is_refused_and_changes_nothing(sqlite_store: SqliteStore) -> None:
    ws = new_workspace_id()
    job = await sqlite_store.insert_job(new_job(ws))
    with pytest.raises(AlreadyExists):
        await sqlite_store.insert_job(replace(job, kind="copy"))
    assert await sqlite_store.get_job(job.id, T0) == job
    assert len(await sqlite_store.list_log(LogQuery(workspace_id=ws, limit=10))) == 1


async def test_bad_arguments_name_the_field_and_change_nothing(sqlite_store: SqliteStore) -> None:
    job = await sqlite_store.insert_job(new_job(new_workspace_id()))
    with pytest.raises(InvalidArgument) as refused:
        await sqlite_store.compare_and_set(job, replace(job, progress_percentage=5.0))
    assert refused.value.field == "job.revision"
    with pytest.raises(InvalidArgument) as refused:
        await sqlite_store.compare_and_set(job, move(new_job("ws"), Action.CANCEL, T0))
    assert refused.value.field == "job.id"
    assert await sqlite_store.get_job(job.id, T0) == job
    with pytest.raises(InvalidArgument) as refused:
        await sqlite_store.list_jobs(JobQuery(scope=ReadScope("ws", True), now=T0, limit=0))
    assert refused.value.field == "limit"
    with pytest.raises(InvalidArgument) as refused:
        await sqlite_store.insert_job(replace(new_job("ws"), params={"not-json": object()}))
    assert refused.value.field == "job"
    with pytest.raises(InvalidArgument) as refused:
        await sqlite_store.claim_next(claim_request(T0, kinds="import"))
    assert refused.value.field == "kinds"
    assert await sqlite_store.get_job(job.id, T0) == job
    with pytest.raises(InvalidArgument) as refused:
        await sqlite_store.ensure_workspace("  ", T0)
    assert refused.value.field == "name"


async def test_data_survives_a_clean_reopen(tmp_path: Path) -> None:
    path = tmp_path / "reopen.db"
    first = SqliteStore(path)
    await first.open()
    await first.open()  # idempotent
    job = await first.insert_job(new_job("ws"))
    await first.close()
    second = SqliteStore(path)
    await second.open()
    try:
        assert await second.get_job(job.id, T0) == job
    finally:
        await second.close()


async def test_a_subscriber_that_falls_behind_gets_a_feed_reset(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "feed.db", feed_capacity=3)
    await store.open()
    try:
        feed = store.changes()
        jobs = [await store.insert_job(new_job("ws", created_at=T0 + timedelta(seconds=i))) for i in range(5)]
        # Four events overflowed the buffer of three: the backlog is replaced by one reset; later events follow.
        assert await anext(feed) == FeedReset()
        assert await anext(feed) == JobChanged(jobs[4])
    finally:
        await store.close()


async def test_purge_works_through_large_backlogs_in_batches(sqlite_store: SqliteStore) -> None:
    ws = new_workspace_id()
    count = PURGE_BATCH + 5
    for i in range(count):
        await sqlite_store.insert_job(new_job(ws, created_at=T0 + timedelta(microseconds=i)))
    end = T0 + RETENTION + timedelta(seconds=1)
    assert await sqlite_store.purge(end, log_before=end) == 2 * count
    assert await sqlite_store.list_log(LogQuery(workspace_id=ws, limit=10)) == []
    assert await sqlite_store.list_jobs(JobQuery(scope=ReadScope(ws, True), now=T0, limit=10)) == []


async def test_an_old_version_that_is_not_what_the_store_holds_loses(sqlite_store: SqliteStore) -> None:
    # compare_and_set assigns only the indexed columns that change and compares the others, so an `old` that
    # claims the stored revision but differs from the stored row cannot leave an index out of step with the job.
    waiting = await sqlite_store.insert_job(new_job(new_workspace_id(), kind="copy", datasource_name="t"))
    forged = replace(waiting, kind="query")
    assert not await sqlite_store.compare_and_set(forged, move(forged, Action.CANCEL, T0))
    assert await sqlite_store.get_job(waiting.id, T0) == waiting
    assert await sqlite_store.compare_and_set(waiting, move(waiting, Action.CANCEL, T0))


async def test_a_file_of_schema_version_1_gains_the_wire_column_and_answers_its_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    old = SqliteStore(path)  # no encoder: rows without wire bytes, as version 1 wrote them
    await old.open()
    ws = new_workspace_id()
    jobs = [await old.insert_job(new_job(ws, datasource_name="events")) for _ in range(3)]
    await old.close()
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE jobs DROP COLUMN wire")
        conn.execute("PRAGMA user_version=1")
    conn.close()
    store = SqliteStore(path, encoder=encode_job)
    await store.open()
    try:
        assert_record_of(await store.get_record(jobs[0].id, T0), jobs[0])
        records = await store.list_records(JobQuery(scope=ReadScope(ws, everything=True), now=T0, limit=10))
        for record, job in zip(records, sorted(jobs, key=lambda j: j.id, reverse=True), strict=True):
            assert_record_of(record, job)
        moved = move(jobs[1], Action.CLAIM, T0)
        assert await store.compare_and_set(jobs[1], moved)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            assert conn.execute("SELECT wire IS NOT NULL FROM jobs WHERE id = ?", (moved.id,)).fetchone()[0] == 1
        conn.close()
    finally:
        await store.close()


def _as_schema_version_2(path: Path, purged_id: str) -> None:
    """Lay the file out as version 2 left it: the log keyed by (job_id, revision), no jobs_gone; and one job
    deleted as a version-2 purge deleted it, its log rows kept."""
    with sqlite3.connect(path) as conn:
        columns = ", ".join(r[1] for r in conn.execute("PRAGMA table_info(jobs_log)"))
        conn.execute("DROP TABLE jobs_gone")
        conn.execute("DROP INDEX jobs_log_by_workspace")
        conn.execute("DROP INDEX jobs_log_by_age")
        conn.execute("ALTER TABLE jobs_log RENAME TO new_log")
        conn.execute(
            "CREATE TABLE jobs_log (job_id TEXT NOT NULL, revision INTEGER NOT NULL, job_type TEXT NOT NULL, "
            "status TEXT NOT NULL, error TEXT, workspace_id TEXT NOT NULL, request_id TEXT NOT NULL, pipe_id TEXT, "
            "datasource_id TEXT, created_at INTEGER NOT NULL, started_at INTEGER, updated_at INTEGER NOT NULL, "
            "job_metadata TEXT NOT NULL, PRIMARY KEY (job_id, revision))"
        )
        conn.execute(f"INSERT INTO jobs_log ({columns}) SELECT {columns} FROM new_log")
        conn.execute("DROP TABLE new_log")
        conn.execute("CREATE INDEX jobs_log_by_workspace ON jobs_log (workspace_id, updated_at, job_id, revision)")
        conn.execute("CREATE INDEX jobs_log_by_age ON jobs_log (updated_at)")
        conn.execute("DELETE FROM jobs WHERE id = ?", (purged_id,))
        conn.execute("PRAGMA user_version=2")
    conn.close()


async def test_a_file_of_schema_version_2_gets_its_log_rekeyed_and_keeps_every_row_readable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "v2.db"
    old = SqliteStore(path, encoder=encode_job)
    await old.open()
    ws = new_workspace_id()
    jobs = [await old.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=i))) for i in range(4)]
    claimed = await old.claim_next(claim_request(T0 + timedelta(seconds=10), workspace_id=ws))
    assert claimed is not None
    before = await old.list_log(LogQuery(workspace_id=ws, limit=100))
    await old.close()
    gone = jobs[1]
    _as_schema_version_2(path, gone.id)

    store = SqliteStore(path, encoder=encode_job)
    with caplog.at_level("WARNING", logger="jobsd.store.sqlite.store"):
        await store.open()
    assert any("rebuilding jobs_log" in r.getMessage() for r in caplog.records)
    try:
        assert await store.list_log(LogQuery(workspace_id=ws, limit=100)) == before
        for job in jobs:
            by_id = LogQuery(workspace_id=ws, limit=100, filter=JobFilter(job_id=job.id))
            assert await store.list_log(by_id) == [r for r in before if r.job_id == job.id]
        assert [r.status for r in await store.list_log(replace(by_id, filter=JobFilter(job_id=claimed.id)))] == [
            "working",
            "waiting",
        ]
        later = await store.insert_job(new_job(ws, created_at=T0 + timedelta(minutes=1)))
        assert [r.job_id for r in await store.list_log(LogQuery(workspace_id=ws, limit=1))] == [later.id]
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            key = [r[2] for r in conn.execute("PRAGMA index_info(sqlite_autoindex_jobs_log_1)")]
            assert key == ["created_at", "job_id", "revision"]
            assert conn.execute("SELECT id FROM jobs_gone").fetchall() == [(gone.id,)]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert "jobs_log_keyed_by_job" not in tables
        conn.close()
    finally:
        await store.close()
    # Opened again, nothing is rebuilt twice.
    caplog.clear()
    again = SqliteStore(path, encoder=encode_job)
    await again.open()
    assert not any("rebuilding" in r.getMessage() for r in caplog.records)
    try:
        assert len(await again.list_log(LogQuery(workspace_id=ws, limit=100))) == len(before) + 1
    finally:
        await again.close()


async def test_an_upgrade_that_fails_midway_leaves_the_version_2_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v2.db"
    old = SqliteStore(path)
    await old.open()
    ws = new_workspace_id()
    jobs = [await old.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=i))) for i in range(3)]
    before = await old.list_log(LogQuery(workspace_id=ws, limit=100))
    await old.close()
    _as_schema_version_2(path, jobs[0].id)
    real_rekey = store_module._rekey_log

    def rekey_then_fail(conn: sqlite3.Connection) -> None:
        real_rekey(conn)  # every row copied, the old table dropped: then the disk is full
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_module, "_rekey_log", rekey_then_fail)
    with pytest.raises(Unavailable, match="disk is full"):
        await SqliteStore(path).open()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
        assert [r[2] for r in conn.execute("PRAGMA index_info(sqlite_autoindex_jobs_log_1)")] == ["job_id", "revision"]
        assert conn.execute("SELECT COUNT(*) FROM jobs_log").fetchone()[0] == len(before)
        assert "jobs_gone" not in {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    monkeypatch.setattr(store_module, "_rekey_log", real_rekey)
    store = SqliteStore(path)
    await store.open()
    try:
        assert await store.list_log(LogQuery(workspace_id=ws, limit=100)) == before
    finally:
        await store.close()


async def test_a_log_read_by_job_id_is_a_search_of_the_log_key_and_not_a_scan(sqlite_store: SqliteStore) -> None:
    ws = new_workspace_id()
    jobs = [await sqlite_store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=i))) for i in range(20)]
    await sqlite_store.purge(T0 + RETENTION + timedelta(seconds=5), log_before=T0 - timedelta(days=1))
    statements: list[str] = []
    conn = sqlite_store._open_connection()
    conn.set_trace_callback(statements.append)
    try:
        for job in (jobs[0], jobs[-1]):  # one purged, one kept
            rows = await sqlite_store.list_log(LogQuery(workspace_id=ws, limit=10, filter=JobFilter(job_id=job.id)))
            assert [r.job_id for r in rows] == [job.id]
    finally:
        conn.set_trace_callback(None)
    assert len(statements) == 4
    for sql in statements:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "SCAN" not in plan.replace("SCAN CONSTANT ROW", ""), (sql, plan)


async def test_a_file_with_the_global_fifo_claim_indexes_gets_the_workspace_led_ones_and_claims_in_turns(
    tmp_path: Path,
) -> None:
    path = tmp_path / "before-fair-share.db"
    old = SqliteStore(path)
    await old.open()
    a, b = new_workspace_id(), new_workspace_id()
    a_jobs = [await old.insert_job(new_job(a, created_at=T0 + timedelta(seconds=i))) for i in range(3)]
    b_job = await old.insert_job(new_job(b, created_at=T0 + timedelta(seconds=10)))
    await old.close()
    # The claim indexes as files written before fair share have them (and no turns table).
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX jobs_waiting")
        conn.execute("DROP INDEX jobs_waiting_by_kind")
        conn.execute("DROP TABLE turns")
        conn.execute(
            "CREATE INDEX jobs_claim ON jobs (created_at, id, kind, concurrency_key, workspace_id, expires_at) "
            "WHERE status = 'waiting'"
        )
        conn.execute(
            "CREATE INDEX jobs_claim_by_kind ON jobs (kind, created_at, id, concurrency_key, workspace_id, expires_at) "
            "WHERE status = 'waiting'"
        )
    conn.close()
    store = SqliteStore(path)
    await store.open()
    try:
        with sqlite3.connect(path) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name IN ('jobs', 'turns')")}
        conn.close()
        assert {"jobs_waiting", "jobs_waiting_by_kind", "turns"} <= names
        assert not {"jobs_claim", "jobs_claim_by_kind"} & names
        claimed = [await store.claim_next(claim_request(T0 + timedelta(hours=1))) for _ in range(4)]
        assert [j.id for j in claimed if j is not None] == [a_jobs[0].id, b_job.id, a_jobs[1].id, a_jobs[2].id]
    finally:
        await store.close()


async def test_every_statement_of_a_claim_is_an_index_search_without_a_sort(sqlite_store: SqliteStore) -> None:
    workspaces = [new_workspace_id() for _ in range(3)]
    for i in range(60):
        kind = ("import", "copy", "query")[i % 3]
        job = new_job(workspaces[i % 3], kind=kind, datasource_name=f"t{i % 4}", created_at=T0 + timedelta(seconds=i))
        await sqlite_store.insert_job(job)
    statements: list[str] = []
    conn = sqlite_store._open_connection()
    conn.set_trace_callback(statements.append)  # each statement with its values bound
    try:
        for kinds, workspace_id in (((), None), (("copy",), None), (("copy", "import"), None), ((), workspaces[0])):
            assert await sqlite_store.claim_next(claim_request(T0, kinds=kinds, workspace_id=workspace_id))
    finally:
        conn.set_trace_callback(None)
    reads = [s for s in statements if s.startswith("SELECT") and " FROM jobs " in s]
    assert any("jobs_waiting_by_kind" in s for s in reads) and any("INDEXED BY jobs_waiting " in s for s in reads)
    for sql in reads:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        text = " | ".join(plan)
        # A search; or the first entry of a waiting index (where the skip along workspace_id starts): LIMIT 1.
        index = sql.split("INDEXED BY ", 1)[-1].split()[0]
        first_entry = (
            sql.endswith("LIMIT 1") and index.startswith("jobs_waiting") and plan == [f"SCAN jobs USING INDEX {index}"]
        )
        assert first_entry or all(p.startswith("SEARCH") for p in plan), (sql, text)
        assert "TEMP B-TREE" not in text, (sql, text)
