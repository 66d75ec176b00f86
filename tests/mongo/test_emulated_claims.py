"""Claims under exact interleavings (the emulation's `before_next` puts other replicas' work at a chosen point of
one claim): a claim returns a job whenever one is claimable, however other claimers fill and free its key or
how many keys fill up under it, and never takes a place a key does not have."""

from __future__ import annotations

from datetime import timedelta

from jobsd.domain.clock import to_micros
from jobsd.domain.model import Job, JobStatus
from jobsd.domain.states import Action
from jobsd.store.mongo.store import CLAIM_LOCK_TTL, MongoStore
from tests.contract.factories import T0, claim_request, move, new_job, new_workspace_id
from tests.mongo.slots import DATABASE, holders_of
from tests.support.mongo_emulation import EmulatedAsyncMongoClient

NOW = T0 + timedelta(minutes=1)


def one_each(kind: str) -> int:
    return 1


async def older_and_newer(store: MongoStore, ws: str) -> tuple[Job, Job]:
    """Two copy jobs of one key (target `t`), a second apart: FIFO says the older runs first."""
    older = await store.insert_job(new_job(ws, kind="copy", datasource_name="t", created_at=T0))
    newer = await store.insert_job(new_job(ws, kind="copy", datasource_name="t", created_at=T0 + timedelta(seconds=1)))
    return older, newer


async def test_a_key_that_others_keep_filling_and_freeing_does_not_make_a_claim_give_up(
    emulated_client: EmulatedAsyncMongoClient, replicas: tuple[MongoStore, MongoStore]
) -> None:
    """Each time this claim tries to take the key's only place, another replica has just taken it (so the
    conditional upsert meets the existing slot document: DuplicateKeyError), and each time it reads the slot to
    see why, that replica has just let go. The key has room whenever it looks; the claim must not give up."""
    store = replicas[0]
    ws = new_workspace_id()
    waiting = await store.insert_job(new_job(ws, kind="populateview", datasource_name="t", created_at=T0))
    slots = emulated_client.raw_database(DATABASE)["slots"]
    elsewhere = {"job": "a-job-of-another-replica", "claim": "its-lease"}

    async def another_replica_takes_the_place() -> None:
        slots.update_one(
            {"_id": waiting.concurrency_key},
            {"$push": {"holders": elsewhere}, "$setOnInsert": {"kind": "populateview"}},
            upsert=True,
        )

    async def another_replica_lets_go() -> None:
        slots.update_one({"_id": waiting.concurrency_key}, {"$pull": {"holders": elsewhere}})

    for _ in range(5):
        for operation in ("find_one_and_update", "update_one"):
            emulated_client.before_next("slots", operation, another_replica_takes_the_place)
        emulated_client.before_next("slots", "find_one", another_replica_lets_go)

    claimed = await store.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each))

    assert claimed is not None and claimed.id == waiting.id
    slot = slots.find_one({"_id": waiting.concurrency_key})
    assert slot is not None and [h["job"] for h in slot["holders"]] == [waiting.id]


async def test_keys_that_fill_up_during_a_claim_do_not_make_it_give_up_on_the_one_that_has_room(
    replicas: tuple[MongoStore, MongoStore], emulated_client: EmulatedAsyncMongoClient
) -> None:
    """40 keys with a limit of one. Right after this claim read which keys are full (none), another replica
    claims the oldest job of each of them. Every job this claim then locks is on a full key, 40 in a row; the
    newest job, on a key of its own, is claimable all along and must be the answer."""
    this, other = replicas
    ws = new_workspace_id()
    keys = 40

    def copy(target: str, second: int) -> Job:
        return new_job(ws, kind="copy", datasource_name=target, created_at=T0 + timedelta(seconds=second))

    for i in range(keys):
        await this.insert_job(copy(f"t{i}", i))
    for i in range(keys):
        await this.insert_job(copy(f"t{i}", 100 + i))
    claimable = await this.insert_job(copy("free", 200))

    async def another_replica_claims_one_job_per_key() -> None:
        for _ in range(keys):
            assert await other.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each, worker="b"))

    # Right after the claim read the full keys, before its first look at the jobs.
    emulated_client.before_next("jobs", "find_one", another_replica_claims_one_job_per_key)
    claimed = await this.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each, worker="a"))

    assert claimed is not None and claimed.id == claimable.id
    assert claimed.status is JobStatus.WORKING


async def test_a_key_freed_after_the_claim_read_it_full_is_looked_at_again_before_giving_up(
    replicas: tuple[MongoStore, MongoStore], emulated_client: EmulatedAsyncMongoClient
) -> None:
    """The claim reads the key full (its one place is taken), then, before it looks for a job, the running job
    ends and frees the place. Its job is claimable when the claim answers: the answer must be that job."""
    this, other = replicas
    ws = new_workspace_id()
    first, second = await older_and_newer(this, ws)
    taken = await other.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each, worker="b"))
    assert taken is not None and taken.id == first.id

    async def the_running_job_ends() -> None:
        assert await other.compare_and_set(taken, move(taken, Action.FINISH_DONE, NOW))

    emulated_client.before_next("jobs", "find_one", the_running_job_ends)
    claimed = await this.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each, worker="a"))

    assert claimed is not None and claimed.id == second.id


async def test_a_newer_job_of_a_key_never_starts_while_an_older_one_waits_for_a_claimer_that_loses_the_place(
    replicas: tuple[MongoStore, MongoStore], emulated_client: EmulatedAsyncMongoClient
) -> None:
    """Key limit one, jobs `older` and `newer`. Claimer C has picked `older`; just before it takes the key's place,
    claimer A runs a whole claim. Whoever wins the place, the job that runs must be `older` (FIFO per key)."""
    c, a = replicas
    ws = new_workspace_id()
    older, newer = await older_and_newer(c, ws)
    ran: list[Job | None] = []

    async def a_claims_first() -> None:
        if not ran:
            ran.append(await a.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each, worker="a")))

    # C's first write to `slots` (taking the place), whichever operation does it.
    for operation in ("find_one_and_update", "update_one"):
        emulated_client.before_next("slots", operation, a_claims_first)
    by_c = await c.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each, worker="c"))

    started = [job for job in (*ran, by_c) if job is not None]
    assert [job.id for job in started] == [older.id]
    stored = await c.get_job(newer.id, NOW)
    assert stored is not None and stored.status is JobStatus.WAITING


async def test_a_claim_whose_place_was_swept_away_takes_a_new_one_before_it_claims(
    replicas: tuple[MongoStore, MongoStore], emulated_client: EmulatedAsyncMongoClient
) -> None:
    """The sweep drops a place whose claim outlived its lock. If that happens between the claim taking the place
    and handing it to the job, the job must not be claimed without a place (the key's limit would no longer
    hold): the claim takes a new place first."""
    store = replicas[0]
    ws = new_workspace_id()
    waiting = await store.insert_job(new_job(ws, kind="copy", datasource_name="t", created_at=T0))
    slots = emulated_client.raw_database(DATABASE)["slots"]

    async def nothing() -> None:
        return None

    async def the_sweep_drops_the_place() -> None:
        slots.update_one({"_id": waiting.concurrency_key}, {"$set": {"holders": []}})

    emulated_client.before_next("slots", "update_one", nothing)  # taking the place
    emulated_client.before_next("slots", "update_one", the_sweep_drops_the_place)  # handing it to the job
    claimed = await store.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each))

    assert claimed is not None and claimed.id == waiting.id
    assert holders_of(emulated_client, waiting.concurrency_key) == [(waiting.id, claimed.lease_token)]


async def test_a_job_requeued_by_a_replica_that_has_not_freed_its_place_yet_is_claimable_at_once(
    replicas: tuple[MongoStore, MongoStore], emulated_client: EmulatedAsyncMongoClient
) -> None:
    """Another replica's sweep requeues a job whose worker stopped heartbeating: the job is written `waiting`
    (watchers see it) and only then does that replica free the key's place. A claim in between finds the key full
    with nothing running in it; the job must be its answer, and the late release must not free the new claim's
    place. (The wire-server replica test saw the claim answer nothing there.)"""
    this, other = replicas
    ws = new_workspace_id()
    requeued, behind = await older_and_newer(other, ws)
    running = await other.claim_next(claim_request(NOW, workspace_id=ws, limit_for=one_each, worker="dead"))
    assert running is not None and running.id == requeued.id
    later = NOW + timedelta(minutes=5)
    claimed_between: list[Job | None] = []

    async def a_claim_before_the_place_is_freed() -> None:
        request = claim_request(later, workspace_id=ws, limit_for=one_each, worker="a")
        claimed_between.append(await this.claim_next(request))

    emulated_client.before_next("slots", "update_one", a_claim_before_the_place_is_freed)
    assert await other.compare_and_set(running, move(running, Action.LEASE_REQUEUE, later))

    [claimed] = claimed_between
    assert claimed is not None and claimed.id == requeued.id and claimed.status is JobStatus.WORKING
    assert holders_of(emulated_client, requeued.concurrency_key) == [(requeued.id, claimed.lease_token)]
    # The key is full again, with a claim that runs: the job behind it waits.
    assert await this.claim_next(claim_request(later, workspace_id=ws, limit_for=one_each, worker="b")) is None
    stored = await this.get_job(behind.id, later)
    assert stored is not None and stored.status is JobStatus.WAITING


async def test_places_of_claims_that_still_run_or_are_still_choosing_are_kept_when_a_claim_finds_the_key_full(
    replicas: tuple[MongoStore, MongoStore], emulated_client: EmulatedAsyncMongoClient
) -> None:
    """Key limit two: one place held by a running job, one by a claim that has reserved it and not yet chosen its
    job (its lock not lapsed). A claim with the key's third job waiting checks both holders and must keep both:
    it answers nothing, and the key still has exactly those two holders."""
    this, other = replicas
    ws = new_workspace_id()
    for second in range(3):
        await other.insert_job(new_job(ws, kind="copy", datasource_name="t", created_at=T0 + timedelta(seconds=second)))
    running = await other.claim_next(claim_request(NOW, workspace_id=ws, limit_for=lambda kind: 2, worker="b"))
    assert running is not None
    slots = emulated_client.raw_database(DATABASE)["slots"]
    choosing = {"job": None, "claim": "a-claim-still-choosing", "until": to_micros(NOW + CLAIM_LOCK_TTL)}
    slots.update_one({"_id": running.concurrency_key}, {"$push": {"holders": choosing}})

    assert await this.claim_next(claim_request(NOW, workspace_id=ws, limit_for=lambda kind: 2, worker="a")) is None
    slot = slots.find_one({"_id": running.concurrency_key})
    assert slot is not None
    assert [h["claim"] for h in slot["holders"]] == [running.lease_token, "a-claim-still-choosing"]
