"""Several jobsd replicas on one MongoDB database (emulated: two MongoStores on one emulated server), and what a
replica that dies mid-write leaves behind."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import timedelta

import pytest
from pymongo.errors import AutoReconnect

from jobsd.domain.clock import to_micros
from jobsd.domain.filters import JobFilter
from jobsd.domain.model import JobStatus
from jobsd.domain.states import Action
from jobsd.errors import InvalidArgument, Unavailable
from jobsd.store.base import JobChanged, LogQuery
from jobsd.store.mongo.store import CLAIM_LOCK_TTL, MongoStore, database_from_uri
from tests.contract.factories import RETENTION, T0, claim_request, claim_until_none, move, new_job, new_workspace_id
from tests.mongo.slots import holders_of
from tests.support.mongo_emulation import EmulatedAsyncMongoClient

NOW = T0 + timedelta(minutes=1)


def two_per_key(kind: str) -> int:
    return 2


async def test_replicas_claiming_at_once_never_share_a_job_and_hold_the_limit_per_key(
    replicas: tuple[MongoStore, MongoStore],
) -> None:
    ws = new_workspace_id()
    targets = ("t1", "t2", "t3")
    jobs = [
        await replicas[i % 2].insert_job(
            new_job(ws, kind="copy", datasource_name=targets[i % 3], created_at=T0 + timedelta(seconds=i))
        )
        for i in range(30)
    ]

    requests = [claim_request(NOW, workspace_id=ws, limit_for=two_per_key, worker=f"w{n}") for n in range(8)]
    results = await asyncio.gather(*(claim_until_none(replicas[n % 2], r) for n, r in enumerate(requests)))
    claimed = [job for mine in results for job in mine]
    assert Counter(j.id for j in claimed).most_common(1)[0][1] == 1
    # Two per target, and the two oldest of each: FIFO within what the limits allow.
    for target in targets:
        of_target = [j for j in jobs if j.datasource_name == target]
        assert sorted(j.id for j in claimed if j.datasource_name == target) == sorted(j.id for j in of_target[:2])

    # A job finished through one replica frees its slot for a claim through the other.
    first = next(j for j in claimed if j.datasource_name == "t1")
    assert await replicas[1].compare_and_set(first, move(first, Action.FINISH_DONE, NOW))
    later = NOW + timedelta(seconds=1)
    next_one = await replicas[0].claim_next(claim_request(later, workspace_id=ws, limit_for=two_per_key))
    t1_jobs = [j for j in jobs if j.datasource_name == "t1"]
    assert next_one is not None and next_one.id == t1_jobs[2].id
    assert await replicas[0].claim_next(claim_request(later, workspace_id=ws, limit_for=two_per_key)) is None


async def test_a_slot_held_by_a_replica_that_died_does_not_hold_back_the_next_claim_of_its_key(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    ws = new_workspace_id()
    waiting = await emulated_store.insert_job(new_job(ws, kind="copy", datasource_name="t"))
    # What a replica leaves when it dies after finishing a job but before freeing its slot.
    slots = emulated_client.raw_database("jobsd").slots
    slots.insert_one(
        {"_id": waiting.concurrency_key, "kind": "copy", "holders": [{"job": "dead-job", "claim": "lease-x"}]}
    )
    # Nothing runs for the key: the claim takes its job at once, not after the next sweep.
    claimed = await emulated_store.claim_next(claim_request(NOW, workspace_id=ws, limit_for=lambda kind: 1))
    assert claimed is not None and claimed.id == waiting.id
    assert holders_of(emulated_client, waiting.concurrency_key) == [(waiting.id, claimed.lease_token)]


async def test_a_slot_held_by_a_replica_that_died_is_freed_by_the_sweep(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    ws = new_workspace_id()
    running = await emulated_store.insert_job(new_job(ws, kind="copy", datasource_name="live"))
    claimed = await emulated_store.claim_next(claim_request(NOW, workspace_id=ws, limit_for=lambda kind: 1))
    assert claimed is not None and claimed.id == running.id
    # What a replica leaves when it dies after finishing a job but before freeing its slot, on a key no claim
    # looks at (nothing waits for it); beside a key whose job still runs.
    slots = emulated_client.raw_database("jobsd").slots
    slots.insert_one({"_id": f"{ws}:copy:gone", "kind": "copy", "holders": [{"job": "dead-job", "claim": "lease-x"}]})
    await emulated_store.purge(NOW, NOW - timedelta(days=30))
    assert slots.find_one({"_id": f"{ws}:copy:gone"}) is None
    assert holders_of(emulated_client, claimed.concurrency_key) == [(running.id, claimed.lease_token)]


async def test_a_job_locked_by_a_claimer_that_died_is_claimable_once_the_lock_lapses(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    ws = new_workspace_id()
    waiting = await emulated_store.insert_job(new_job(ws))
    emulated_client.raw_database("jobsd").jobs.update_one(
        {"_id": waiting.id},
        {"$set": {"claim_lock": "dead", "claim_lock_until_us": to_micros(NOW + CLAIM_LOCK_TTL)}},
    )
    assert await emulated_store.claim_next(claim_request(NOW, workspace_id=ws)) is None
    later = NOW + CLAIM_LOCK_TTL
    claimed = await emulated_store.claim_next(claim_request(later, workspace_id=ws))
    assert claimed is not None and claimed.id == waiting.id and claimed.status is JobStatus.WORKING


async def test_a_log_row_not_copied_after_its_write_is_copied_by_the_sweep_before_the_job_expires(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    ws = new_workspace_id()
    waiting = await emulated_store.insert_job(new_job(ws))
    working = move(waiting, Action.CLAIM, T0)
    assert await emulated_store.compare_and_set(waiting, working)
    done = move(working, Action.FINISH_DONE, NOW)
    emulated_client.fail_next("jobs_log", "insert_many", AutoReconnect("connection lost after the job write"))
    assert await emulated_store.compare_and_set(working, done)
    log = LogQuery(workspace_id=ws, limit=10, filter=JobFilter(job_id=done.id))
    assert [e.status for e in await emulated_store.list_log(log)] == ["working", "waiting"]

    past_window = T0 + RETENTION
    deleted = await emulated_store.purge(past_window, past_window - timedelta(days=30))
    assert deleted == 1
    assert await emulated_store.get_job(done.id, T0) is None
    assert [e.status for e in await emulated_store.list_log(log)] == ["done", "working", "waiting"]


async def test_an_unreachable_server_is_unavailable_and_recovers(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    job = await emulated_store.insert_job(new_job(new_workspace_id()))
    emulated_client.reachable = False
    with pytest.raises(Unavailable):
        await emulated_store.ping()
    with pytest.raises(Unavailable):
        await emulated_store.get_job(job.id, NOW)
    with pytest.raises(Unavailable):
        await emulated_store.claim_next(claim_request(NOW))
    emulated_client.reachable = True
    await emulated_store.ping()
    assert await emulated_store.get_job(job.id, NOW) == job


def test_a_bad_uri_is_refused_naming_the_store_setting() -> None:
    with pytest.raises(InvalidArgument) as refused:
        MongoStore("mongodb://host:notaport/jobsd")
    assert refused.value.field == "store"


@pytest.mark.parametrize(
    ("uri", "database"),
    [
        ("mongodb://mongo:27017/jobsd?replicaSet=rs0", "jobsd"),
        ("mongodb://user:p%40ss@a:1,b:2/prod_jobs", "prod_jobs"),
        ("mongodb+srv://cluster.example.net/?retryWrites=true", None),
        ("mongodb://localhost", None),
    ],
)
def test_the_database_comes_from_the_uri_path(uri: str, database: str | None) -> None:
    assert database_from_uri(uri) == database


async def test_without_change_streams_a_replica_publishes_its_own_writes_and_says_so(
    emulated_client: EmulatedAsyncMongoClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="jobsd.store.mongo"):
        mine = MongoStore("mongodb://emulated.invalid/jobsd", client=emulated_client.as_client())
        other = MongoStore("mongodb://emulated.invalid/jobsd", client=emulated_client.as_client())
        await mine.open()
        await other.open()
    try:
        warnings = [r for r in caplog.records if "no change streams" in r.getMessage()]
        assert len(warnings) == 2 and "replica set" in warnings[0].getMessage()  # once per store opened
        assert mine.publishes_locally
        feed = mine.changes()
        ws = new_workspace_id()
        waiting = await mine.insert_job(new_job(ws))
        await other.insert_job(
            new_job(ws, created_at=T0 + timedelta(seconds=1))
        )  # another replica's write: not seen without change streams
        claimed = await mine.claim_next(claim_request(NOW, workspace_id=ws))
        assert claimed is not None and claimed.id == waiting.id
        received = [await anext(feed), await anext(feed)]
        assert received == [JobChanged(waiting), JobChanged(claimed)]
    finally:
        await mine.close()
        await other.close()
