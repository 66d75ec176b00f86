"""Contract: claims take the workspaces in turns, FIFO within each, and hold a claimer's max share while others wait
(jobsd.domain.fairshare; docs/contract.md#queue). Every backend, every claim path (one at a time and batched)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from datetime import timedelta

from jobsd.domain.fairshare import WorkspaceShare
from jobsd.domain.model import Job
from jobsd.store.base import ClaimRequest, JobStore

from .factories import T0, claim_request, new_job, new_workspace_id

NOW = T0 + timedelta(hours=1)


async def _enqueue(
    store: JobStore,
    workspace_id: str,
    count: int,
    start_ms: int,
    *,
    kind: str = "import",
    datasource_name: str | None = None,
) -> list[Job]:
    """`count` jobs of the workspace, one millisecond apart from T0 + `start_ms`, in one batch."""
    jobs = [
        new_job(
            workspace_id,
            kind=kind,
            datasource_name=datasource_name,
            created_at=T0 + timedelta(milliseconds=start_ms + i),
        )
        for i in range(count)
    ]
    return await store.insert_jobs(jobs)


async def _claims(store: JobStore, request: ClaimRequest, count: int) -> list[Job]:
    """Up to `count` claims, one claim_next after another."""
    claimed: list[Job] = []
    for _ in range(count):
        job = await store.claim_next(request)
        if job is None:
            break
        claimed.append(job)
    return claimed


def _share(cap: int, slots: int, held: Mapping[str, int]) -> WorkspaceShare:
    share = WorkspaceShare.of(cap / slots, slots, held)
    assert share is not None and share.cap == cap
    return share


async def test_a_lone_job_behind_a_flood_is_the_second_claim(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()
    flood = await _enqueue(store, a, 200, 0)
    (lone,) = await _enqueue(store, b, 1, 1_000)
    claimed = await _claims(store, claim_request(NOW), 5)
    # Both unserved: the older job first; then B's turn; then A alone, FIFO.
    assert [j.id for j in claimed] == [flood[0].id, lone.id, flood[1].id, flood[2].id, flood[3].id]


async def test_a_batch_takes_the_lone_job_second_too(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()
    flood = await _enqueue(store, a, 200, 0)
    (lone,) = await _enqueue(store, b, 1, 1_000)
    claimed = await store.claim_batch(claim_request(NOW), 4)
    assert [j.id for j in claimed] == [flood[0].id, lone.id, flood[1].id, flood[2].id]


async def test_three_workspaces_take_turns_fifo_within_each(store: JobStore) -> None:
    a, b, c = new_workspace_id(), new_workspace_id(), new_workspace_id()
    # A's jobs are all older than B's, B's than C's: FIFO alone would drain A, then B, then C.
    jobs = {w: await _enqueue(store, w, 4, 100 * n) for n, w in enumerate((a, b, c))}
    claimed = await _claims(store, claim_request(NOW), 12)
    assert [j.workspace_id for j in claimed] == [a, b, c] * 4
    for w, mine in jobs.items():
        assert [j.id for j in claimed if j.workspace_id == w] == [j.id for j in mine]
    assert await store.claim_next(claim_request(NOW)) is None


async def test_turns_carry_over_between_claims_and_batches(store: JobStore) -> None:
    a, b, c = new_workspace_id(), new_workspace_id(), new_workspace_id()
    for n, w in enumerate((a, b, c)):
        await _enqueue(store, w, 3, 100 * n)
    first = await store.claim_batch(claim_request(NOW), 2)
    rest = await _claims(store, claim_request(NOW), 4)
    assert [j.workspace_id for j in first + rest] == [a, b, c, a, b, c]


async def test_a_workspace_that_comes_back_is_served_next(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()
    await _enqueue(store, a, 10, 0)
    (early,) = await _enqueue(store, b, 1, 50)
    # Claims one microsecond apart, as time passes: A and B take turns, then A alone.
    moments = iter(NOW + timedelta(microseconds=i) for i in range(10))
    claimed = [await store.claim_next(claim_request(next(moments))) for _ in range(4)]
    assert [j.workspace_id for j in claimed if j is not None] == [a, b, a, a]
    # B's new job is newer than all of A's, yet it is the next claim: B was served less recently than A.
    (late,) = await _enqueue(store, b, 1, 5_000)
    assert (await store.claim_next(claim_request(next(moments))) or early).id == late.id


async def test_a_workspace_alone_for_a_while_yields_to_one_that_arrives(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()
    a_jobs = await _enqueue(store, a, 5, 0)
    assert [j.id for j in await _claims(store, claim_request(NOW), 2)] == [j.id for j in a_jobs[:2]]
    (lone,) = await _enqueue(store, b, 1, 1_000)
    # A was served (alone, but served); B never was: B's job is the next claim, not after A's backlog.
    assert [j.id for j in await _claims(store, claim_request(NOW), 2)] == [lone.id, a_jobs[2].id]


async def test_turns_skip_a_workspace_whose_keys_are_full_and_never_give_up_early(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()

    def one_each(kind: str) -> int:
        return 1

    # Each copy's key is its target: A has one target (one job at a time), B two.
    a_jobs = await _enqueue(store, a, 3, 0, kind="copy", datasource_name="t")
    b_first = await _enqueue(store, b, 2, 100, kind="copy", datasource_name="t1")
    b_second = await _enqueue(store, b, 1, 200, kind="copy", datasource_name="t2")
    request = claim_request(NOW, limit_for=one_each)
    claimed = await _claims(store, request, 5)
    # A (its key now full), B, then B again (A is due but has nothing claimable), then nothing.
    assert [j.id for j in claimed] == [a_jobs[0].id, b_first[0].id, b_second[0].id]


async def test_kinds_and_workspace_filters_still_apply(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()
    a_imports = await _enqueue(store, a, 2, 0)
    b_queries = await _enqueue(store, b, 2, 10, kind="query")
    a_queries = await _enqueue(store, a, 2, 20, kind="query")
    claimed = await _claims(store, claim_request(NOW, kinds={"query"}), 4)
    assert [j.id for j in claimed] == [b_queries[0].id, a_queries[0].id, b_queries[1].id, a_queries[1].id]
    only_a = await _claims(store, claim_request(NOW, workspace_id=a), 3)
    assert [j.id for j in only_a] == [j.id for j in a_imports]


async def test_max_share_serves_the_others_first_while_they_wait(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()
    a_jobs = await _enqueue(store, a, 6, 0)
    b_jobs = await _enqueue(store, b, 3, 100)
    # A worker of 4 slots, 2 of them held by A: A is at its share (2 of 4) while B waits.
    request = replace(claim_request(NOW), share=_share(2, 4, {a: 2}))
    claimed = await store.claim_batch(request, 6)
    # B twice (A at its share); then both at their share: turns again (A never served, so first), until B has
    # nothing left and A, alone, takes the rest.
    expected = [b_jobs[0], b_jobs[1], a_jobs[0], b_jobs[2], a_jobs[1], a_jobs[2]]
    assert [j.id for j in claimed] == [j.id for j in expected]


async def test_max_share_splits_a_batch_between_two_waiting_workspaces(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()
    await _enqueue(store, a, 10, 0)
    await _enqueue(store, b, 10, 100)
    # 8 slots, a share of 3: A and B alternate; at 3 each both are at their share, and take turns again.
    request = replace(claim_request(NOW), share=_share(3, 8, {}))
    claimed = await store.claim_batch(request, 8)
    assert Counter(j.workspace_id for j in claimed) == {a: 4, b: 4}
    assert [j.workspace_id for j in claimed][:6] == [a, b, a, b, a, b]


async def test_max_share_lifts_when_the_workspace_is_alone(store: JobStore) -> None:
    a = new_workspace_id()
    a_jobs = await _enqueue(store, a, 5, 0)
    request = replace(claim_request(NOW), share=_share(1, 4, {a: 3}))
    claimed = await store.claim_batch(request, 4)
    assert [j.id for j in claimed] == [j.id for j in a_jobs[:4]]


async def test_max_share_gives_way_only_to_jobs_the_claimer_can_start(store: JobStore) -> None:
    a, b = new_workspace_id(), new_workspace_id()
    a_jobs = await _enqueue(store, a, 3, 0)
    await _enqueue(store, b, 2, 100, kind="query")  # not a kind this claimer runs: B does not wait for it
    request = replace(claim_request(NOW, kinds={"import"}), share=_share(1, 4, {a: 1}))
    claimed = await _claims(store, request, 2)
    assert [j.id for j in claimed] == [j.id for j in a_jobs[:2]]


async def test_concurrent_claimers_over_workspaces_claim_each_job_once_and_all_of_them(store: JobStore) -> None:
    workspaces = [new_workspace_id() for _ in range(3)]
    jobs = [job for n, w in enumerate(workspaces) for job in await _enqueue(store, w, 20, 100 * n)]
    share = _share(2, 4, {})

    async def worker(name: str) -> list[Job]:
        mine: list[Job] = []
        while True:
            request = replace(claim_request(NOW, worker=name), share=share)
            got = await store.claim_batch(request, 2) if len(mine) % 2 else await store.claim_next(request)
            batch = got if isinstance(got, list) else [] if got is None else [got]
            if not batch:
                return mine
            mine.extend(batch)

    results = await asyncio.gather(*(worker(f"worker-{n}") for n in range(12)))
    claimed = [job for mine in results for job in mine]
    assert Counter(j.id for j in claimed).most_common(1)[0][1] == 1
    assert {j.id for j in claimed} == {j.id for j in jobs}
    # None of them gave up early: once any claimer answered None, every job was taken.
    assert await store.claim_next(claim_request(NOW)) is None
