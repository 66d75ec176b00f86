"""Contract: storing and reading jobs, idempotent creates, the visibility bound, compare-and-set."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from datetime import timedelta

from jobsd.domain.auth import ReadScope
from jobsd.domain.model import JobStatus, ProcessedData, QueryProgress, Statistics
from jobsd.domain.states import Action
from jobsd.errors import AlreadyExists
from jobsd.store.base import JobQuery, JobRecord, JobStore, LogQuery

from .factories import RETENTION, T0, USEC, move, new_job, new_workspace_id


def everything(workspace_id: str) -> ReadScope:
    return ReadScope(workspace_id, everything=True)


async def test_every_field_survives_the_round_trip(store: JobStore) -> None:
    ws = new_workspace_id()
    job = replace(
        new_job(ws, kind="copy", datasource_name="events", pipe_name="copy_pipe", idempotency_key="k-1"),
        status=JobStatus.CANCELLING,
        updated_at=T0 + timedelta(seconds=5, microseconds=123_457),
        started_at=T0 + timedelta(seconds=1, microseconds=1),
        revision=7,
        status_revision=5,
        expires_at=None,
        datasource={"id": "t_events", "name": "events", "columns": [{"name": "a", "type": "Int64"}], "n": 1.5},
        query_id="q-1",
        query_sql="SELECT 1",
        mode="append",
        url="https://example.invalid/data.csv",
        import_id="imp-1",
        params={"sql": "SELECT 1", "nested": {"list": [1, "two", None, True]}},
        result={"rows": 3},
        progress_percentage=66.67,
        queries=(QueryProgress("q-a", "done"), QueryProgress("q-b", "working")),
        statistics=Statistics(bytes=1024, row_count=10),
        quarantine_rows=2,
        invalid_lines=3,
        processed_data=ProcessedData(read_rows=1, read_bytes=2, written_rows=3, written_bytes=4),
        error="boom",
        errors=("e1", "e2"),
        attempt=2,
        returns=4,
        note="run 4 ended unfinished: its worker worker-8 stopped heartbeating (attempt 1 of 3)",
        worker_id="worker-9",
        lease_token="lease-9",
        lease_expires_at=T0 + timedelta(seconds=35, microseconds=999_999),
        request_id="req-9",
        cancel_requested_at=T0 + timedelta(seconds=4, microseconds=7),
    )
    assert await store.insert_job(job) == job
    assert await store.get_job(job.id, T0) == job
    assert await store.list_jobs(JobQuery(scope=everything(ws), now=T0, limit=10)) == [job]


async def test_an_unknown_job_is_none(store: JobStore) -> None:
    assert await store.get_job("00000000-0000-4000-8000-000000000000", T0) is None


async def test_a_job_vanishes_at_the_instant_its_window_ends(store: JobStore) -> None:
    ws = new_workspace_id()
    job = await store.insert_job(new_job(ws))
    end = T0 + RETENTION
    assert job.expires_at == end
    query = JobQuery(scope=everything(ws), now=end - USEC, limit=10)
    assert await store.get_job(job.id, end - USEC) == job
    assert await store.list_jobs(query) == [job]
    assert await store.get_job(job.id, end) is None
    assert await store.list_jobs(replace(query, now=end)) == []


async def test_a_running_job_stays_visible_past_the_window_and_lingers_after_it_ends(store: JobStore) -> None:
    ws = new_workspace_id()
    waiting = await store.insert_job(new_job(ws))
    working = move(waiting, Action.CLAIM, T0 + timedelta(seconds=1))
    assert await store.compare_and_set(waiting, working)
    late = T0 + RETENTION + timedelta(hours=5)
    assert await store.get_job(working.id, late) == working
    done = move(working, Action.FINISH_DONE, late)
    assert await store.compare_and_set(working, done)
    assert done.expires_at == late + timedelta(hours=1)
    assert await store.get_job(done.id, late + timedelta(hours=1) - USEC) == done
    assert await store.get_job(done.id, late + timedelta(hours=1)) is None


async def test_idempotency_key_returns_the_existing_job_and_inserts_nothing(store: JobStore) -> None:
    ws = new_workspace_id()
    first = await store.insert_job(new_job(ws, idempotency_key="nightly"))
    again = new_job(ws, idempotency_key="nightly", created_at=T0 + timedelta(minutes=5))
    assert await store.insert_job(again) == first
    assert await store.get_job(again.id, T0 + timedelta(minutes=5)) is None
    assert await store.list_jobs(JobQuery(scope=everything(ws), now=T0 + timedelta(minutes=5), limit=10)) == [first]


async def test_idempotency_key_is_per_workspace(store: JobStore) -> None:
    ws_a, ws_b = new_workspace_id(), new_workspace_id()
    a = await store.insert_job(new_job(ws_a, idempotency_key="same"))
    b = await store.insert_job(new_job(ws_b, idempotency_key="same"))
    assert a.id != b.id
    assert await store.get_job(b.id, T0) == b


async def test_idempotency_key_of_a_job_past_its_window_is_free_again(store: JobStore) -> None:
    ws = new_workspace_id()
    old = await store.insert_job(new_job(ws, idempotency_key="daily"))
    fresh = new_job(ws, idempotency_key="daily", created_at=T0 + RETENTION)
    assert await store.insert_job(fresh) == fresh
    assert await store.get_job(fresh.id, T0 + RETENTION) == fresh
    assert await store.get_job(old.id, T0 + RETENTION) is None
    # ...and the new holder now answers for the key.
    third = new_job(ws, idempotency_key="daily", created_at=T0 + RETENTION + timedelta(seconds=1))
    assert await store.insert_job(third) == fresh


async def test_idempotency_key_of_a_finished_but_visible_job_still_holds(store: JobStore) -> None:
    ws = new_workspace_id()
    waiting = await store.insert_job(new_job(ws, idempotency_key="once"))
    cancelled = move(waiting, Action.CANCEL, T0 + timedelta(seconds=1))
    assert await store.compare_and_set(waiting, cancelled)
    assert await store.insert_job(new_job(ws, idempotency_key="once", created_at=T0 + timedelta(hours=1))) == cancelled


async def test_compare_and_set_succeeds_once_then_loses_on_the_stale_revision(store: JobStore) -> None:
    ws = new_workspace_id()
    waiting = await store.insert_job(new_job(ws))
    working = move(waiting, Action.CLAIM, T0 + timedelta(seconds=1))
    assert await store.compare_and_set(waiting, working) is True
    assert await store.get_job(waiting.id, T0) == working
    cancelled = move(waiting, Action.CANCEL, T0 + timedelta(seconds=2))
    assert await store.compare_and_set(waiting, cancelled) is False
    assert await store.get_job(waiting.id, T0) == working


async def test_compare_and_set_of_a_job_that_does_not_exist_is_false(store: JobStore) -> None:
    ghost = new_job(new_workspace_id())
    assert await store.compare_and_set(ghost, move(ghost, Action.CANCEL, T0)) is False
    assert await store.get_job(ghost.id, T0) is None


async def test_racing_writes_on_one_revision_have_exactly_one_winner(store: JobStore) -> None:
    ws = new_workspace_id()
    now = T0 + timedelta(seconds=10)
    for _ in range(10):
        waiting = await store.insert_job(new_job(ws, kind="populateview", datasource_name="mv"))
        working = move(waiting, Action.CLAIM, T0 + timedelta(seconds=1))
        assert await store.compare_and_set(waiting, working)
        cancelling = move(working, Action.CANCEL, now)
        done = move(working, Action.FINISH_DONE, now)
        outcomes = await asyncio.gather(
            store.compare_and_set(working, cancelling), store.compare_and_set(working, done)
        )
        assert sorted(outcomes) == [False, True]
        winner = cancelling if outcomes[0] else done
        assert await store.get_job(working.id, now) == winner


async def test_a_failing_write_among_concurrent_writes_fails_alone(store: JobStore) -> None:
    # Concurrent writes may share one commit (SQLite's group commit): a write refused for its own reasons (here a
    # duplicate id) must not take the writes around it down with it.
    ws = new_workspace_id()
    first = await store.insert_job(new_job(ws))
    jobs = [new_job(ws, created_at=T0 + i * USEC) for i in range(6)]
    duplicate = replace(first, kind="copy")
    outcomes = await asyncio.gather(
        *(store.insert_job(job) for job in jobs[:3]),
        store.insert_job(duplicate),
        *(store.insert_job(job) for job in jobs[3:]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[3], AlreadyExists)
    assert [o for i, o in enumerate(outcomes) if i != 3] == jobs
    for job in [first, *jobs]:
        assert await store.get_job(job.id, T0) == job
    logged = await store.list_log(LogQuery(workspace_id=ws, limit=100))
    assert sorted(e.job_id for e in logged) == sorted(j.id for j in [first, *jobs])


async def test_jobs_are_found_by_a_prefix_of_their_id_within_one_workspace(store: JobStore) -> None:
    ws, other = new_workspace_id(), new_workspace_id()
    p = uuid.uuid4().hex[:7]  # a prefix of this test's own (a shared real database holds other tests' jobs)
    ids = [f"{p}0-aaaa-4000-8000-000000000001", f"{p}0-bbbb-4000-8000-000000000002", f"{p}1-0000-4000-8000-0"]
    elsewhere = f"{p}0-cccc-4000-8000-000000000003"
    for job_id in ids:
        await store.insert_job(replace(new_job(ws), id=job_id))
    await store.insert_job(replace(new_job(other), id=elsewhere))
    await store.insert_job(replace(new_job(ws), id=f"{p}0-dddd-4000-8000-000000000004", expires_at=T0 + USEC))
    later = T0 + 2 * USEC  # the last one is gone by then

    def found(records: list[JobRecord]) -> list[str]:
        return [record.id for record in records]

    assert found(await store.records_by_id_prefix(f"{p}0", ws, later, 10)) == ids[:2]  # by id; not gone, not other
    assert found(await store.records_by_id_prefix(f"{p}0-b", ws, later, 10)) == ids[1:2]
    assert found(await store.records_by_id_prefix(f"{p}0", ws, later, 1)) == ids[:1]
    assert found(await store.records_by_id_prefix(p, None, later, 10)) == [*ids[:2], elsewhere, ids[2]]
    assert found(await store.records_by_id_prefix(f"{p}0", other, later, 10)) == [elsewhere]
    assert found(await store.records_by_id_prefix(f"{p}0-dddd", ws, later, 10)) == []
    assert len(await store.records_by_id_prefix(f"{p}0-dddd", ws, T0, 10)) == 1
    record = (await store.records_by_id_prefix(ids[0], ws, later, 10))[0]
    assert record.workspace_id == ws and record.wire  # a record as get_record gives it
