"""Contract: atomic FIFO claims within kinds / workspace / concurrency limits, and the lease sweep's query."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from datetime import timedelta

from jobsd.domain.model import Job, JobStatus
from jobsd.domain.states import Action
from jobsd.store.base import JobStore

from .factories import LEASE, RETENTION, T0, USEC, claim_request, claim_until_none, move, new_job, new_workspace_id

NOW = T0 + timedelta(hours=1)


def one_each(kind: str) -> int:
    return 1


async def _claim_id(store: JobStore, ws: str | None, **kwargs: object) -> str | None:
    job = await store.claim_next(claim_request(NOW, workspace_id=ws, **kwargs))  # type: ignore[arg-type]
    return None if job is None else job.id


async def test_claims_are_fifo_by_created_at_and_take_the_lease(store: JobStore) -> None:
    ws = new_workspace_id()
    offsets = [5, 1, 4, 2, 3]  # inserted out of order on purpose
    jobs = [await store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=s))) for s in offsets]
    claimed: list[Job] = []
    while (job := await store.claim_next(claim_request(NOW, workspace_id=ws))) is not None:
        claimed.append(job)
    assert [j.created_at for j in claimed] == sorted(j.created_at for j in jobs)
    for job in claimed:
        assert job.status is JobStatus.WORKING
        assert job.revision == 2 and job.attempt == 1
        assert job.worker_id == "worker-1" and job.lease_expires_at == NOW + LEASE
        assert await store.get_job(job.id, NOW) == job


async def test_a_waiting_job_past_its_window_is_never_claimed(store: JobStore) -> None:
    ws = new_workspace_id()
    stale = await store.insert_job(new_job(ws, created_at=T0))
    fresh = await store.insert_job(new_job(ws, created_at=T0 + timedelta(hours=1)))
    end = T0 + RETENTION
    assert await store.get_job(stale.id, end) is None
    assert (await store.claim_next(claim_request(end, workspace_id=ws)) or stale).id == fresh.id
    assert await store.claim_next(claim_request(end, workspace_id=ws)) is None


async def test_only_the_requested_kinds_are_claimed(store: JobStore) -> None:
    ws = new_workspace_id()
    older_import = await store.insert_job(new_job(ws, kind="import", created_at=T0))
    copy = await store.insert_job(new_job(ws, kind="copy", datasource_name="t", created_at=T0 + timedelta(seconds=1)))
    newer_import = await store.insert_job(new_job(ws, kind="import", created_at=T0 + timedelta(seconds=2)))
    assert await _claim_id(store, ws, kinds={"query"}) is None
    assert await _claim_id(store, ws, kinds={"copy"}) == copy.id
    assert await _claim_id(store, ws, kinds={"copy", "import"}) == older_import.id
    assert await _claim_id(store, ws, kinds=["query", "import"]) == newer_import.id
    assert await _claim_id(store, ws, kinds={"import", "copy"}) is None


async def test_only_the_requested_workspace_is_claimed(store: JobStore) -> None:
    ws_a, ws_b = new_workspace_id(), new_workspace_id()
    a = await store.insert_job(new_job(ws_a, created_at=T0))
    b = await store.insert_job(new_job(ws_b, created_at=T0 + timedelta(seconds=1)))
    assert await _claim_id(store, ws_b) == b.id
    assert await _claim_id(store, ws_b) is None
    assert await _claim_id(store, None) == a.id  # no filter: any workspace


async def test_a_full_concurrency_key_is_skipped_not_blocking_the_queue(store: JobStore) -> None:
    ws = new_workspace_id()

    def populate(target: str, second: int) -> Job:
        return new_job(ws, kind="populateview", datasource_name=target, created_at=T0 + timedelta(seconds=second))

    first_on_t1 = await store.insert_job(populate("t1", 1))
    second_on_t1 = await store.insert_job(populate("t1", 2))
    first_on_t2 = await store.insert_job(populate("t2", 3))
    assert await _claim_id(store, ws, limit_for=one_each) == first_on_t1.id
    assert await _claim_id(store, ws, limit_for=one_each) == first_on_t2.id  # t1 is busy: skipped, not waited on
    assert await _claim_id(store, ws, limit_for=one_each) is None
    # A job being cancelled still holds its slot until its worker lets go.
    running = await store.get_job(first_on_t1.id, NOW)
    assert running is not None
    cancelling = move(running, Action.CANCEL, NOW)
    assert await store.compare_and_set(running, cancelling)
    assert await _claim_id(store, ws, limit_for=one_each) is None
    cancelled = move(cancelling, Action.FINISH_CANCELLED, NOW)
    assert await store.compare_and_set(cancelling, cancelled)
    assert await _claim_id(store, ws, limit_for=one_each) == second_on_t1.id


async def test_the_limit_is_per_kind(store: JobStore) -> None:
    ws = new_workspace_id()
    imports = [await store.insert_job(new_job(ws, created_at=T0 + timedelta(seconds=i))) for i in range(4)]
    queries = [
        await store.insert_job(new_job(ws, kind="query", created_at=T0 + timedelta(seconds=10 + i))) for i in range(2)
    ]

    def limits(kind: str) -> int:
        return {"import": 2, "query": 1}[kind]

    claimed = [await _claim_id(store, ws, limit_for=limits) for _ in range(4)]
    assert claimed == [imports[0].id, imports[1].id, queries[0].id, None]


async def test_twenty_concurrent_claimers_never_claim_a_job_twice(store: JobStore) -> None:
    ws = new_workspace_id()
    rng = random.Random(7)
    jobs = [
        await store.insert_job(
            new_job(ws, kind=rng.choice(("import", "query", "sink")), created_at=T0 + timedelta(milliseconds=i))
        )
        # 100 jobs, five per claimer: enough that every claimer collides with the others on every round; the
        # wire server takes ~0.2-0.6 s per contended claim on a loaded 2-core machine, so more would only be slower.
        for i in range(100)
    ]

    results = await asyncio.gather(
        *(claim_until_none(store, claim_request(NOW, workspace_id=ws, worker=f"worker-{n}")) for n in range(20))
    )
    claimed = [job for mine in results for job in mine]
    assert Counter(j.id for j in claimed).most_common(1)[0][1] == 1
    assert {j.id for j in claimed} == {j.id for j in jobs}
    for name, mine in zip((f"worker-{n}" for n in range(20)), results, strict=True):
        for job in mine[:3]:
            stored = await store.get_job(job.id, NOW)
            assert stored is not None and stored.worker_id == name and stored.status is JobStatus.WORKING


async def test_concurrent_claimers_hold_the_limits_and_take_the_oldest_per_key(store: JobStore) -> None:
    ws = new_workspace_id()
    targets = ("t1", "t2", "t3")
    jobs = [
        await store.insert_job(
            new_job(ws, kind="copy", datasource_name=targets[i % 3], created_at=T0 + timedelta(seconds=i))
        )
        for i in range(60)
    ]

    def two_copies(kind: str) -> int:
        return 2

    request = claim_request(NOW, workspace_id=ws, limit_for=two_copies)
    claimed = [
        job for mine in await asyncio.gather(*(claim_until_none(store, request) for _ in range(20))) for job in mine
    ]
    by_target: defaultdict[str, set[str]] = defaultdict(set)
    for job in claimed:
        by_target[job.datasource_name or ""].add(job.id)
    # `jobs` is in created_at order: the first two of each target are its oldest.
    oldest_two = {t: {j.id for j in [j for j in jobs if j.datasource_name == t][:2]} for t in targets}
    assert dict(by_target) == oldest_two


async def test_lapsed_leases_oldest_first_strictly_before_now(store: JobStore) -> None:
    ws = new_workspace_id()
    jobs = [
        await store.insert_job(
            new_job(ws, kind="populateview", datasource_name=f"t{i}", created_at=T0 + timedelta(seconds=i))
        )
        for i in range(4)
    ]
    running: list[Job] = []
    for i, job in enumerate(jobs):
        claimed = move(job, Action.CLAIM, NOW + timedelta(seconds=10 * (3 - i)))  # leases end in reverse order
        assert await store.compare_and_set(job, claimed)
        running.append(claimed)
    newest_lease, middle, older, oldest_lease = running
    # One of them ends (its lease is cleared) and one is being cancelled (its lease still counts).
    done = move(older, Action.FINISH_DONE, NOW + timedelta(seconds=1))
    assert await store.compare_and_set(older, done)
    cancelling = move(middle, Action.CANCEL, NOW + timedelta(seconds=1))
    assert await store.compare_and_set(middle, cancelling)

    first_end = oldest_lease.lease_expires_at
    assert first_end is not None
    assert await store.lapsed_leases(first_end, 10) == []  # at the instant itself the lease still holds
    assert await store.lapsed_leases(first_end + USEC, 10) == [oldest_lease]
    later = NOW + timedelta(minutes=5)
    assert await store.lapsed_leases(later, 10) == [oldest_lease, cancelling, newest_lease]
    assert await store.lapsed_leases(later, 2) == [oldest_lease, cancelling]
