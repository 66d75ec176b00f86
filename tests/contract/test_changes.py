"""Contract: the change feed delivers every committed job write after subscribing, in commit order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from jobsd.domain.model import Job, Progress
from jobsd.domain.states import Action, apply_progress
from jobsd.store.base import Capability, ChangeEvent, JobChanged, JobStore

from .factories import T0, claim_request, move, new_job, new_workspace_id

pytestmark = pytest.mark.needs(Capability.CHANGE_FEED)


async def _next(feed: AsyncIterator[ChangeEvent]) -> ChangeEvent:
    # The timeout only turns a missing event into a failure instead of a hang; nothing waits on it.
    return await asyncio.wait_for(anext(feed), timeout=10)


async def test_every_write_arrives_in_order(store: JobStore) -> None:
    ws = new_workspace_id()
    before = await store.insert_job(new_job(ws, created_at=T0))
    feed = store.changes()
    written: list[Job] = []
    job = await store.insert_job(new_job(ws, kind="populateview", datasource_name="mv", created_at=T0))
    written.append(job)
    claimed = await store.claim_next(claim_request(T0 + timedelta(seconds=1), workspace_id=ws, kinds={"populateview"}))
    assert claimed is not None
    written.append(claimed)
    progressed = apply_progress(claimed, Progress(progress_percentage=10.0), T0 + timedelta(seconds=2))
    assert await store.compare_and_set(claimed, progressed)
    written.append(progressed)
    # A lost compare-and-set writes nothing, so it publishes nothing.
    assert not await store.compare_and_set(claimed, move(claimed, Action.CANCEL, T0 + timedelta(seconds=3)))
    cancelling = move(progressed, Action.CANCEL, T0 + timedelta(seconds=3))
    assert await store.compare_and_set(progressed, cancelling)
    written.append(cancelling)
    cancelled = move(cancelling, Action.FINISH_CANCELLED, T0 + timedelta(seconds=4))
    assert await store.compare_and_set(cancelling, cancelled)
    written.append(cancelled)
    idempotent_again = new_job(ws, created_at=T0 + timedelta(seconds=5), idempotency_key="k")
    written.append(await store.insert_job(idempotent_again))
    assert await store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=6), idempotency_key="k")) == written[-1]
    marker = await store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=7)))
    written.append(marker)

    received = [await _next(feed) for _ in written]
    assert received == [JobChanged(j) for j in written]
    assert all(e.job.id != before.id for e in received if isinstance(e, JobChanged))
    await feed.aclose()  # type: ignore[attr-defined]


async def test_many_jobs_interleaved_keep_per_job_order(store: JobStore) -> None:
    ws = new_workspace_id()
    feed = store.changes()
    jobs = [await store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=i))) for i in range(20)]
    finished: list[Job] = []
    for i, job in enumerate(jobs):
        claimed = await store.claim_next(claim_request(T0 + timedelta(minutes=1), workspace_id=ws))
        assert claimed is not None and claimed.id == job.id
        done = move(claimed, Action.FINISH_DONE, T0 + timedelta(minutes=2, seconds=i))
        assert await store.compare_and_set(claimed, done)
        finished.append(done)
    received = [await _next(feed) for _ in range(60)]
    per_job: dict[str, list[int]] = {}
    for event in received:
        assert isinstance(event, JobChanged)
        per_job.setdefault(event.job.id, []).append(event.job.revision)
    assert per_job == {j.id: [1, 2, 3] for j in jobs}
    assert [e.job for e in received if isinstance(e, JobChanged) and e.job.revision == 3] == finished
    await feed.aclose()  # type: ignore[attr-defined]


async def test_each_subscriber_gets_every_event_and_closing_one_leaves_the_other(store: JobStore) -> None:
    ws = new_workspace_id()
    first, second = store.changes(), store.changes()
    a = await store.insert_job(new_job(ws, created_at=T0))
    assert await _next(first) == JobChanged(a)
    assert await _next(second) == JobChanged(a)
    await first.aclose()  # type: ignore[attr-defined]
    b = await store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=1)))
    assert await _next(second) == JobChanged(b)
    with pytest.raises(StopAsyncIteration):
        await _next(first)
    await second.aclose()  # type: ignore[attr-defined]
