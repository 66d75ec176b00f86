"""Contract: a jobs_log row per status change (filters, newest-first pages), and purge of what has expired."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from jobsd.domain.filters import JobFilter
from jobsd.domain.model import Job, LogEntry, Progress
from jobsd.domain.states import Action, apply_progress
from jobsd.store.base import JobStore, LogQuery
from jobsd.store.plain import log_entry_for

from .factories import RETENTION, T0, claim_request, move, new_job, new_workspace_id


async def _lifecycle(store: JobStore, job: Job, finish: Action, start: timedelta) -> list[Job]:
    """Insert, claim, report progress, finish: every version written, in order."""
    versions = [await store.insert_job(job)]
    claimed = await store.claim_next(claim_request(job.created_at + start, workspace_id=job.workspace_id))
    assert claimed is not None and claimed.id == job.id
    versions.append(claimed)
    progressed = apply_progress(claimed, Progress(progress_percentage=50.0), claimed.updated_at + timedelta(seconds=1))
    assert await store.compare_and_set(claimed, progressed)
    versions.append(progressed)
    finished = move(progressed, finish, progressed.updated_at + timedelta(seconds=1), error="it broke")
    assert await store.compare_and_set(progressed, finished)
    versions.append(finished)
    return versions


def expected_log(versions: list[Job], query: LogQuery) -> list[LogEntry]:
    """Status changes only (a version whose status_revision is its revision), filtered, newest first."""
    rows = [log_entry_for(v) for v in versions if v.status_revision == v.revision]
    rows = [
        r
        for r in rows
        if r.workspace_id == query.workspace_id
        and (query.filter.job_id is None or r.job_id == query.filter.job_id)
        and (query.filter.kind is None or r.job_type == query.filter.kind)
        and (query.filter.status is None or r.status == query.filter.status)
        and (query.filter.pipe_id is None or r.pipe_id == query.filter.pipe_id)
        and (query.filter.pipe_name is None or r.job_metadata.get("pipe_name") == query.filter.pipe_name)
        and (query.filter.created_after is None or r.created_at >= query.filter.created_after)
        and (query.filter.created_before is None or r.created_at <= query.filter.created_before)
        and (query.after is None or (r.updated_at, r.job_id, r.revision) < query.after)
    ]
    rows.sort(key=lambda r: (r.updated_at, r.job_id, r.revision), reverse=True)
    return rows[: query.limit]


async def test_every_status_change_and_only_those_is_logged(store: JobStore) -> None:
    ws = new_workspace_id()
    versions = await _lifecycle(
        store, new_job(ws, kind="copy", datasource_name="t", pipe_name="cp"), Action.FINISH_ERROR, timedelta(seconds=3)
    )
    rows = await store.list_log(LogQuery(workspace_id=ws, limit=100, filter=JobFilter(job_id=versions[0].id)))
    assert [r.status for r in rows] == ["error", "working", "waiting"]
    assert rows == [log_entry_for(versions[3]), log_entry_for(versions[1]), log_entry_for(versions[0])]
    assert rows[0].error == "it broke" and rows[0].pipe_id == "id_cp" and rows[0].datasource_id == "t_t"
    assert rows[0].started_at == versions[1].updated_at


@pytest.fixture
async def history(store: JobStore) -> tuple[str, list[Job]]:
    ws = new_workspace_id()
    versions: list[Job] = []
    for i in range(12):
        job = new_job(
            ws,
            kind=("import", "copy", "query")[i % 3],
            datasource_name="t" if i % 3 == 1 else None,
            pipe_name=("a", "b")[i % 2],
            created_at=T0 + timedelta(minutes=i),
        )
        # Finish times interleave across jobs, so pages mix jobs.
        versions += await _lifecycle(
            store, job, (Action.FINISH_DONE, Action.FINISH_ERROR)[i % 2], timedelta(minutes=12 - i)
        )
    await _lifecycle(store, new_job(new_workspace_id()), Action.FINISH_DONE, timedelta(seconds=1))
    return ws, versions


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"kind": "copy"},
        {"status": "done"},
        {"status": "waiting", "kind": "query"},
        {"pipe_id": "id_b"},
        {"pipe_name": "a"},
        {"pipe_name": "b", "status": "error"},
        {"created_after": T0 + timedelta(minutes=4), "created_before": T0 + timedelta(minutes=8)},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()) or "all",
)
async def test_log_filters(store: JobStore, history: tuple[str, list[Job]], filters: dict[str, object]) -> None:
    ws, versions = history
    query = LogQuery(workspace_id=ws, limit=100, filter=JobFilter(**filters))  # type: ignore[arg-type]
    rows = await store.list_log(query)
    assert rows == expected_log(versions, query)
    if "pipe_name" in filters:  # the oracle itself must not be vacuous: the rows of the other pipe are left out
        assert all(r.job_metadata["pipe_name"] == filters["pipe_name"] for r in rows)
        assert len(rows) < len(expected_log(versions, LogQuery(workspace_id=ws, limit=100)))
    assert rows, "the filter should match something"


async def test_log_pages_without_gap_or_repeat(store: JobStore, history: tuple[str, list[Job]]) -> None:
    ws, versions = history
    query = LogQuery(workspace_id=ws, limit=5)
    seen: list[LogEntry] = []
    while page := await store.list_log(query):
        seen += page
        assert len(page) <= 5
        query = replace(query, after=(page[-1].updated_at, page[-1].job_id, page[-1].revision))
    assert seen == expected_log(versions, LogQuery(workspace_id=ws, limit=1000))
    assert len(seen) == 36


async def test_purge_deletes_expired_jobs_and_old_log_rows_only(store: JobStore) -> None:
    ws = new_workspace_id()
    expiring = await store.insert_job(new_job(ws, created_at=T0))
    staying = await store.insert_job(new_job(ws, created_at=T0 + timedelta(hours=1)))
    running_job = await store.insert_job(new_job(ws, kind="query", created_at=T0 + timedelta(hours=2)))
    running = await store.claim_next(claim_request(T0 + timedelta(hours=2), workspace_id=ws, kinds={"query"}))
    assert running is not None and running.id == running_job.id
    end = T0 + RETENTION

    deleted = await store.purge(end, log_before=T0 + timedelta(minutes=30))
    # One job (`expiring`) and one log row (its "waiting" row, the only one before the cut), counted together.
    assert deleted == 2
    assert await store.get_job(expiring.id, T0) is None  # gone for good, not merely hidden
    assert await store.get_job(staying.id, end) == staying
    assert await store.get_job(running.id, end + RETENTION) == running
    remaining = await store.list_log(LogQuery(workspace_id=ws, limit=100))
    assert {(r.job_id, r.status) for r in remaining} == {
        (staying.id, "waiting"),
        (running.id, "waiting"),
        (running.id, "working"),
    }
    assert await store.purge(end, log_before=T0 + timedelta(minutes=30)) == 0


async def test_a_purged_jobs_log_rows_are_still_found_by_its_id_until_the_log_lets_them_go(store: JobStore) -> None:
    # The log outlives the jobs: the status changes of a job purged after its retention stay readable by its id
    # for as long as the log keeps them, and then they go too.
    ws = new_workspace_id()
    purged = await _lifecycle(store, new_job(ws, kind="copy", created_at=T0), Action.FINISH_DONE, timedelta(seconds=2))
    kept = await _lifecycle(store, new_job(ws, created_at=T0 + RETENTION * 3), Action.FINISH_DONE, timedelta(seconds=2))
    end = T0 + RETENTION * 2
    assert await store.purge(end, log_before=T0 - timedelta(days=1)) == 1
    assert await store.get_job(purged[0].id, T0) is None
    by_id = LogQuery(workspace_id=ws, limit=100, filter=JobFilter(job_id=purged[0].id))
    rows = await store.list_log(by_id)
    assert rows == expected_log(purged, by_id)
    assert [r.status for r in rows] == ["done", "working", "waiting"]
    # The same rows from another workspace stay out of reach, as for a job that still exists.
    assert await store.list_log(replace(by_id, workspace_id=new_workspace_id())) == []
    # Past the log's retention they go; the job that is still kept keeps its own.
    assert await store.purge(end, log_before=end) == 3
    assert await store.list_log(by_id) == []
    kept_query = LogQuery(workspace_id=ws, limit=100, filter=JobFilter(job_id=kept[0].id))
    assert await store.list_log(kept_query) == expected_log(kept, kept_query)
