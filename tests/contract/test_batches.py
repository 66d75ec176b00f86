"""Contract: the batch writes mean what a loop of the single writes means, item by item, on every backend."""

from __future__ import annotations

from datetime import timedelta

from jobsd.domain.model import JobStatus
from jobsd.domain.states import Action
from jobsd.store.base import JobStore

from .factories import T0, claim_request, move, new_job, new_workspace_id

NOW = T0 + timedelta(hours=1)


def one_each(kind: str) -> int:
    return 1


async def test_insert_jobs_stores_each_and_honours_idempotency_keys_within_and_across_batches(store: JobStore) -> None:
    ws = new_workspace_id()
    earlier = await store.insert_job(new_job(ws, idempotency_key="k1"))
    batch = [
        new_job(ws, created_at=T0 + timedelta(seconds=1)),
        new_job(ws, idempotency_key="k1"),  # held by `earlier`
        new_job(ws, idempotency_key="k2"),
        new_job(ws, idempotency_key="k2"),  # held by the item before it
    ]
    stored = await store.insert_jobs(batch)
    assert [j.id for j in stored] == [batch[0].id, earlier.id, batch[2].id, batch[2].id]
    for job in (batch[0], batch[2]):
        assert await store.get_job(job.id, NOW) == job
    for duplicate in (batch[1], batch[3]):
        assert await store.get_job(duplicate.id, NOW) is None


async def test_claim_batch_is_fifo_and_counts_the_limits_of_the_jobs_it_claims(store: JobStore) -> None:
    ws = new_workspace_id()
    jobs = [
        await store.insert_job(new_job(ws, kind="copy", datasource_name=name, created_at=T0 + timedelta(seconds=i)))
        for i, name in enumerate(["a", "a", "b", "c", "b"])
    ]
    claimed = await store.claim_batch(claim_request(NOW, workspace_id=ws, limit_for=one_each), 10)
    # One per data source (limit 1 each), oldest first: a, b, c; the second a and b stay waiting.
    assert [j.id for j in claimed] == [jobs[0].id, jobs[2].id, jobs[3].id]
    assert all(j.status is JobStatus.WORKING for j in claimed)
    assert (await store.get_job(jobs[1].id, NOW)).status is JobStatus.WAITING  # type: ignore[union-attr]
    assert await store.claim_batch(claim_request(NOW, workspace_id=ws, limit_for=one_each), 10) == []


async def test_claim_batch_takes_no_more_than_asked(store: JobStore) -> None:
    ws = new_workspace_id()
    for i in range(5):
        await store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=i)))
    assert len(await store.claim_batch(claim_request(NOW, workspace_id=ws), 3)) == 3
    assert len(await store.claim_batch(claim_request(NOW, workspace_id=ws), 3)) == 2


async def test_compare_and_set_many_decides_each_pair_on_its_own(store: JobStore) -> None:
    ws = new_workspace_id()
    a, b, c = [await store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=i))) for i in range(3)]
    stale_b = b
    b = move(b, Action.CANCEL, NOW)
    assert await store.compare_and_set(stale_b, b)
    pairs = [
        (a, move(a, Action.CANCEL, NOW)),
        (stale_b, move(stale_b, Action.CANCEL, NOW)),
        (c, move(c, Action.CLAIM, NOW)),
    ]
    outcomes = await store.compare_and_set_many(pairs)
    assert outcomes == [True, False, True]
    assert (await store.get_job(a.id, NOW)).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    assert await store.get_job(b.id, NOW) == b  # the stale pair changed nothing
    assert (await store.get_job(c.id, NOW)).status is JobStatus.WORKING  # type: ignore[union-attr]
