"""Several `jobsd serve` replicas on one replica set, for real: separate processes on the wire server (SecantusDB,
`mongo-wire`; not mongod), and on a real one too when JOBSD_TEST_MONGODB_URI is set (`mongo-real`).

What they must do together: hold claims and concurrency limits across replicas, carry every status change made
through one to the watchers of another in order, list on one what another created, and survive a replica killed
with -9 mid-load (no acknowledged job lost, its leases recovered by a survivor, its watchers resuming elsewhere
with since_revision without missing a status change). Each test prints one `replicas:` line with its figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter, defaultdict
from pathlib import Path

import grpc
import pytest

from jobsd_client import pb
from tests.support.wire_server import WireServer, fresh_database_name

from .conftest import REAL_MONGO_ENV, SERVERS
from .replicas import ADMIN, WAIT, Replica, md, replicas

pytestmark = pytest.mark.mongo

TARGETS = ("t0", "t1", "t2")
COPY_LIMIT = 2


@pytest.fixture(params=SERVERS)
def store_uri(request: pytest.FixtureRequest) -> str:
    """A fresh database on the wire server (`mongo-wire`) or the real server at JOBSD_TEST_MONGODB_URI."""
    database = fresh_database_name("jobsd_replicas")
    if request.param == "mongo-wire":
        server: WireServer = request.getfixturevalue("wire_server")
        return f"mongodb://127.0.0.1:{server.port}/{database}?replicaSet=secantus"
    base, _, options = os.environ[REAL_MONGO_ENV].partition("?")
    scheme, _, rest = base.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}/{database}" + (f"?{options}" if options else "")


async def watch_all(
    replica: Replica, events: list[pb.JobEvent], synced: asyncio.Event, arrived: asyncio.Condition
) -> None:
    """Every event of WatchJobs on `replica` (all jobs of the admin's workspace), in arrival order; `arrived` is
    notified after each one, and when the stream ends."""
    stream = replica.jobs.WatchJobs(pb.WatchJobsRequest(), metadata=md(ADMIN))
    try:
        async for event in stream:
            if event.type == pb.JobEvent.TYPE_SYNCED:
                synced.set()
                continue
            events.append(event)
            async with arrived:
                arrived.notify_all()
    finally:
        async with arrived:
            arrived.notify_all()


def status_changes(events: list[pb.JobEvent]) -> dict[str, list[int]]:
    by_job: defaultdict[str, list[int]] = defaultdict(list)
    for event in events:
        if event.type in (pb.JobEvent.TYPE_STATUS, pb.JobEvent.TYPE_SNAPSHOT):
            by_job[event.job.id].append(event.job.status)
    return dict(by_job)


async def test_three_replicas_hold_claims_and_limits_and_carry_every_status_change_in_order(
    store_uri: str, tmp_path: Path
) -> None:
    jobs_count = 60
    async with replicas(store_uri, 3, tmp_path, JOBSD_CONCURRENCY_LIMITS=f"copy={COPY_LIMIT}") as (r0, r1, r2):
        events: list[pb.JobEvent] = []
        synced = asyncio.Event()
        arrived = asyncio.Condition()
        watcher = asyncio.create_task(watch_all(r0, events, synced, arrived))
        await asyncio.wait_for(synced.wait(), WAIT)

        # Created through replica 1 (REST on replica 2 lists them below).
        created = [await r1.create_copy(TARGETS[i % 3]) for i in range(jobs_count)]

        # Twelve workers, four per replica, claim until nothing is claimable: only the limit per target runs.
        claimers = [(r, f"{r.name}-worker-{n}") for n in range(4) for r in (r0, r1, r2)]

        async def claim_all(replica: Replica, worker: str) -> list[pb.ClaimJobResponse]:
            mine = []
            while (claim := await replica.claim(worker)).job.id:
                mine.append(claim)
            return mine

        first = [c for mine in await asyncio.gather(*(claim_all(r, w) for r, w in claimers)) for c in mine]
        by_target = Counter(c.job.datasource["name"] for c in first)
        assert by_target == dict.fromkeys(TARGETS, COPY_LIMIT)
        for target in TARGETS:
            oldest = [j.id for j in created if j.datasource["name"] == target][:COPY_LIMIT]
            assert sorted(c.job.id for c in first if c.job.datasource["name"] == target) == sorted(oldest)

        # Drain: every worker finishes what it holds and claims again, through replicas 1 and 2 alternately.
        claimed_ids = [c.job.id for c in first]

        async def drain(index: int, holding: list[pb.ClaimJobResponse]) -> None:
            replica = (r1, r2)[index % 2]
            while holding:
                claim = holding.pop()
                await replica.finish(claim)
                # Long-poll: other workers may hold every free place for a moment.
                while not (following := await replica.claim(f"drain-{index}", wait=0.5)).job.id:
                    if len(claimed_ids) >= jobs_count:
                        return
                claimed_ids.append(following.job.id)
                holding.append(following)

        holdings: list[list[pb.ClaimJobResponse]] = [[c] for c in first]
        await asyncio.wait_for(asyncio.gather(*(drain(i, h) for i, h in enumerate(holdings))), 120)

        listed = {j["id"] for j in await r2.rest_list(limit="100")}
        final = {job.id: (await r0.get(job.id)).status for job in created}

        # The watcher on replica 0 has every status change made through replicas 1 and 2, in order, per job.
        # Some may still be in flight from the change stream: wait for them (bounded; what is missing by then is
        # counted below as missed), or for the stream to end.
        def complete() -> bool:
            changes = status_changes(events)
            return watcher.done() or all(len(changes.get(j.id, [])) >= 3 for j in created)

        with contextlib.suppress(TimeoutError):
            async with arrived:
                await asyncio.wait_for(arrived.wait_for(complete), WAIT)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

    duplicates = len(claimed_ids) - len(set(claimed_ids))
    lost = len({j.id for j in created} - set(claimed_ids))
    expected = [pb.JOB_STATUS_WAITING, pb.JOB_STATUS_WORKING, pb.JOB_STATUS_DONE]
    changes = status_changes(events)
    missed = sum(1 for j in created if changes.get(j.id) != expected)
    # The change stream of one node delivers in commit order: replaying it counts what ran at once per target.
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    for event in events:
        target = str(event.job.datasource["name"])
        if event.job.status == pb.JOB_STATUS_WORKING:
            running[target] += 1
            most[target] = max(most[target], running[target])
        elif event.job.status == pb.JOB_STATUS_DONE:
            running[target] -= 1
    print(
        f"\nreplicas: jobs {jobs_count}, replicas 3, claimers 12, duplicates {duplicates}, lost {lost}, "
        f"missed events {missed}, most running per target {dict(most)} (limit {COPY_LIMIT})"
    )
    assert duplicates == 0 and lost == 0 and missed == 0
    assert set(final.values()) == {pb.JOB_STATUS_DONE}
    assert listed == {j.id for j in created}
    assert max(most.values()) == COPY_LIMIT


async def watch_one(replica: Replica, job_id: str, since: int, seen: asyncio.Queue[pb.JobEvent]) -> None:
    stream = replica.jobs.WatchJob(pb.WatchJobRequest(job_id=job_id, since_revision=since), metadata=md(ADMIN))
    async for event in stream:
        seen.put_nowait(event)


async def first_status_change(replica: Replica, job: pb.Job) -> pb.Job:
    """The job as of its next status change after `job`'s revision, watched on `replica`."""
    stream = replica.jobs.WatchJob(pb.WatchJobRequest(job_id=job.id, since_revision=job.revision), metadata=md(ADMIN))
    async for event in stream:
        # A resumed watch replays what it missed as STATUS events, then a SNAPSHOT of the job as it is now (the
        # change itself, when it is the latest).
        if event.type in (pb.JobEvent.TYPE_STATUS, pb.JobEvent.TYPE_SNAPSHOT) and event.job.status != job.status:
            stream.cancel()
            found: pb.Job = event.job
            return found
    raise AssertionError(f"the watch of {job.id} ended without a status change")


async def test_a_replica_killed_mid_load_loses_nothing_and_a_survivor_takes_over(
    store_uri: str, tmp_path: Path
) -> None:
    async with replicas(store_uri, 2, tmp_path, JOBSD_LEASE_SECONDS="3", JOBSD_SWEEP_INTERVAL_SECONDS="0.3") as (
        doomed,
        survivor,
    ):
        # Workers that die with the doomed replica hold leases through it.
        for n in range(3):
            await doomed.create_copy(f"leased_{n}")
        leased: list[pb.ClaimJobResponse] = []
        while len(leased) < 3:
            claim = await doomed.claim("dies-with-its-replica")
            assert claim.job.id, "three jobs were waiting"
            leased.append(claim)

        # A watcher on the doomed replica follows one job.
        followed = await survivor.create_copy("watched")
        seen: asyncio.Queue[pb.JobEvent] = asyncio.Queue()
        watch = asyncio.create_task(watch_one(doomed, followed.id, 0, seen))
        snapshot = await asyncio.wait_for(seen.get(), WAIT)
        assert snapshot.type == pb.JobEvent.TYPE_SNAPSHOT and snapshot.job.status == pb.JOB_STATUS_WAITING

        # Load: creates through the doomed replica until it dies; only acknowledged ones count.
        acknowledged: list[str] = []
        under_load = asyncio.Event()

        async def load() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while True:
                    acknowledged.append((await doomed.create_copy(f"load_{len(acknowledged) % 5}")).id)
                    if len(acknowledged) == 40:
                        under_load.set()

        loader = asyncio.create_task(load())
        await asyncio.wait_for(under_load.wait(), 120)
        doomed.kill()
        await asyncio.wait_for(loader, WAIT)
        await doomed.process.wait()
        with contextlib.suppress(grpc.aio.AioRpcError):
            await watch  # its replica died: the stream ends with UNAVAILABLE
        last = snapshot.revision
        while not seen.empty():
            last = seen.get_nowait().revision

        # While the watcher has no replica, its job changes status twice through the survivor.
        leased_ids = {c.job.id for c in leased}
        reclaimed: set[str] = set()
        while True:
            claim = await survivor.claim("survivor")
            assert claim.job.id
            if claim.job.id == followed.id:
                break
            if claim.job.id in leased_ids:
                reclaimed.add(claim.job.id)  # its lease already lapsed and the survivor requeued it: held, not done
            else:
                await survivor.finish(claim)
        await survivor.finish(claim)

        # It resumes on the survivor after the last revision it saw: both changes, in order, then the end.
        resumed_queue: asyncio.Queue[pb.JobEvent] = asyncio.Queue()
        await asyncio.wait_for(watch_one(survivor, followed.id, last, resumed_queue), WAIT)
        resumed = [resumed_queue.get_nowait() for _ in range(resumed_queue.qsize())]
        # Every status change after `last`, the final one as the closing snapshot or as a status event.
        statuses = [e.job.status for e in resumed if e.type in (pb.JobEvent.TYPE_STATUS, pb.JobEvent.TYPE_SNAPSHOT)]
        missed = 0 if statuses == [pb.JOB_STATUS_WORKING, pb.JOB_STATUS_DONE] else 1
        assert all(e.revision > last for e in resumed)

        # Nothing acknowledged is lost, and nothing is stored twice: REST on the survivor lists every job created
        # through the dead replica once; at most the one create in flight when it died (unacknowledged) is extra.
        lost = [job_id for job_id in acknowledged if not await _exists(survivor, job_id)]
        listed = [j["id"] for j in await survivor.rest_list(limit="100")]
        duplicates = len(listed) - len(set(listed))
        in_flight = set(listed) - set(acknowledged) - {c.job.id for c in leased} - {followed.id}

        # The dead workers' leases lapse (3 s) and the survivor's sweep (every 0.3 s) puts their jobs back.
        back = [await asyncio.wait_for(first_status_change(survivor, c.job), WAIT) for c in leased]
        # Recovered means claimable again, through the survivor.
        while (claim := await survivor.claim("after")).job.id:
            reclaimed.add(claim.job.id)

    print(
        f"\nreplicas: killed 1 of 2 after {len(acknowledged)} acknowledged creates, jobs {len(listed)}, "
        f"duplicates {duplicates}, lost {len(lost)}, unacknowledged stored {len(in_flight)}, "
        f"leases recovered {len(back)}/3, resumed watcher missed {missed} status changes"
    )
    assert lost == [] and missed == 0 and duplicates == 0
    assert set(acknowledged) <= set(listed) and len(in_flight) <= 1, in_flight
    assert [job.status for job in back] == [pb.JOB_STATUS_WAITING] * 3, back
    assert leased_ids <= reclaimed


async def _exists(replica: Replica, job_id: str) -> bool:
    try:
        await replica.get(job_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return False
        raise
    return True
