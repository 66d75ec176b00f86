"""Races (docs/contract.md #the-job, #queue): racing writers produce exactly one outcome; concurrent claims never hand
a job out twice, keep FIFO per concurrency key and hold the per-kind limits at every moment; long-polling claims
wake up."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path

import grpc
import pytest

from jobsd.domain.clock import ManualClock
from jobsd.domain.model import RUNNING_STATUSES, Job
from jobsd.store.base import ClaimRequest, FeedReset, JobChanged
from jobsd_client import pb

from .conftest import Server, bounded, make_settings, running_server

TERMINAL = {"done", "error", "cancelled"}
ROUNDS = 25


def failed_with(result: object, code: grpc.StatusCode) -> bool:
    return isinstance(result, grpc.aio.AioRpcError) and result.code() == code


async def test_cancel_vs_finish_done_vs_finish_error_has_exactly_one_outcome(server: Server) -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    for i in range(ROUNDS):
        job = await server.create_kind("populateview", target=f"mv_{i}")
        claim = await server.claim_job(job.id)
        calls = {
            "cancel": server.cancel(job.id),
            "done": server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE),
            "error": server.finish(job.id, claim.lease_token, pb.JOB_STATUS_ERROR, error="lost"),
        }
        order = list(calls)[i % 3 :] + list(calls)[: i % 3]  # each one goes first in some rounds
        results = dict(
            zip(order, await bounded(asyncio.gather(*(calls[n] for n in order), return_exceptions=True)), strict=True)
        )
        cancel, done, error = results["cancel"], results["done"], results["error"]
        finishes = [r for r in (done, error) if isinstance(r, pb.Job)]
        assert len(finishes) == 1, f"round {i}: both finishes succeeded or none did: {done!r} {error!r}"
        loser = error if finishes[0] is done else done
        assert failed_with(loser, grpc.StatusCode.FAILED_PRECONDITION), f"round {i}: {loser!r}"
        final = await server.get(job.id)
        assert final.status == finishes[0].status and final.revision == finishes[0].revision
        log = [e.status for e in await server.job_log(job.id)]
        assert sum(s in TERMINAL for s in log) == 1, f"round {i}: {log}"
        assert log[-1] == pb.JobStatus.Name(final.status).removeprefix("JOB_STATUS_").lower()
        if isinstance(cancel, pb.Job):
            assert cancel.status == pb.JOB_STATUS_CANCELLING and "cancelling" in log
        else:
            assert failed_with(cancel, grpc.StatusCode.FAILED_PRECONDITION) and "cancelling" not in log
        revisions = [e.revision for e in await server.job_log(job.id)]
        assert revisions == sorted(set(revisions))
        outcomes[f"{'cancelled first, ' if 'cancelling' in log else ''}{log[-1]}"] += 1
    assert sum(outcomes.values()) == ROUNDS
    assert len(outcomes) > 1, f"the race always went one way ({outcomes}); it was not exercised"


async def test_cancel_vs_lease_expiry_always_ends_cancelled(server: Server) -> None:
    for i in range(ROUNDS):
        job = await server.create_kind("copy", target=f"copy_{i}")
        claim = await server.claim_job(job.id)
        server.clock.advance(timedelta(seconds=31))
        cancel, swept, beat = await bounded(
            asyncio.gather(
                server.cancel(job.id),
                server.app.service.sweep_leases(),
                server.heartbeat(job.id, claim.lease_token),
                return_exceptions=True,
            )
        )
        assert failed_with(beat, grpc.StatusCode.FAILED_PRECONDITION), f"round {i}: a lapsed lease took a heartbeat"
        assert isinstance(cancel, pb.Job), f"round {i}: {cancel!r}"
        assert swept == 1
        final = await server.get(job.id)
        # Either the sweep requeued it and the cancel hit a waiting job, or the cancel came first and the sweep
        # found it cancelling: both end cancelled, and nothing is left for a worker.
        assert final.status == pb.JOB_STATUS_CANCELLED, f"round {i}: {final.status}"
        log = [e.status for e in await server.job_log(job.id)]
        assert log in (
            ["waiting", "working", "waiting", "cancelled"],
            ["waiting", "working", "cancelling", "cancelled"],
        ), log
        assert not (await server.claim()).HasField("job")


async def sweep_losing_to(
    server: Server, monkeypatch: pytest.MonkeyPatch, write: Callable[[], Awaitable[object]]
) -> int:
    """One lease sweep whose compare-and-set loses for sure: `write` runs after the sweep read the lapsed leases
    and before it writes (a store hook on the real store, so the interleaving is exact on every backend)."""
    store = server.app.store
    original = store.lapsed_leases
    calls = 0

    async def then_write(now: datetime, limit: int) -> list[Job]:
        nonlocal calls
        calls += 1
        lapsed = await original(now, limit)
        if calls == 1:
            assert lapsed, "the sweep found no lapsed lease to lose"
            await write()
        return lapsed

    monkeypatch.setattr(store, "lapsed_leases", then_write)
    return await bounded(server.app.service.sweep_leases())


async def lapsed_copy(server: Server) -> pb.Job:
    """A copy job claimed once, its 30 s lease lapsed (the clock moved past it), not yet swept."""
    job = await server.create_kind("copy", target="snapshot")
    await server.claim_job(job.id)
    server.clock.advance(timedelta(seconds=31))
    return job


async def test_a_lease_sweep_that_loses_to_a_cancel_decides_again_and_ends_the_job_cancelled(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await lapsed_copy(server)
    swept = await sweep_losing_to(server, monkeypatch, lambda: server.cancel(job.id))
    assert swept == 1
    assert [e.status for e in await server.job_log(job.id)] == ["waiting", "working", "cancelling", "cancelled"]
    assert (await server.get(job.id)).status == pb.JOB_STATUS_CANCELLED
    assert not (await server.claim()).HasField("job")


async def test_a_lease_sweep_that_loses_to_another_sweep_leaves_the_job_requeued_once(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = await lapsed_copy(server)
    others: list[int] = []

    async def another_replica_sweeps() -> None:  # the hook passes the second call through
        others.append(await server.app.service.sweep_leases())

    swept = await sweep_losing_to(server, monkeypatch, another_replica_sweeps)
    assert (others, swept) == ([1], 0)
    assert [e.status for e in await server.job_log(job.id)] == ["waiting", "working", "waiting"]
    stored = await server.get(job.id)
    assert stored.status == pb.JOB_STATUS_WAITING and stored.attempt == 1
    assert (await server.claim_job(job.id)).job.attempt == 2


async def test_cancel_vs_claim_on_a_waiting_job(server: Server) -> None:
    for i in range(ROUNDS):
        job = await server.create_kind("populateview", target=f"pv_{i}")
        cancel, claim = await bounded(
            asyncio.gather(server.cancel(job.id), server.claim(worker_id=f"w{i}"), return_exceptions=True)
        )
        assert isinstance(cancel, pb.Job) and isinstance(claim, pb.ClaimJobResponse), (cancel, claim)
        final = await server.get(job.id)
        log = [e.status for e in await server.job_log(job.id)]
        if claim.HasField("job"):
            assert claim.job.id == job.id
            assert cancel.status == final.status == pb.JOB_STATUS_CANCELLING
            assert log == ["waiting", "working", "cancelling"]
            await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_CANCELLED)
        else:
            assert cancel.status == final.status == pb.JOB_STATUS_CANCELLED
            assert log == ["waiting", "cancelled"]


# ---------------------------------------------------------------- many workers

LIMITS = {"import": 3, "populateview": 1, "copy": 2, "query": 2, "delete_data": 1, "sink": 1}
WORKERS = 20
TOTAL = 500


@pytest.fixture
async def limited(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, kind_limits=LIMITS), clock) as srv:
        yield srv


def job_spec(i: int) -> tuple[str, str | None]:
    """(kind, target) of the i-th job: several kinds, several keys per kind."""
    return [
        ("import", "events"),
        ("import", "clicks"),  # imports share one key per workspace whatever the target
        ("populateview", f"mv_{i % 3}"),
        ("copy", f"copy_{i % 2}"),
        ("query", None),
    ][i % 5]


class RunningWatcher:
    """Follows the store's change feed (every committed write, in commit order) and keeps, per concurrency key,
    the number of running jobs after each write, the worst it ever was, and the order jobs started in."""

    def __init__(self, server: Server) -> None:
        self._feed = server.app.store.changes()
        self.status: dict[str, str] = {}
        self.running: collections.Counter[str] = collections.Counter()
        self.peak: collections.Counter[str] = collections.Counter()
        self.kind_of_key: dict[str, str] = {}
        self.started: dict[str, list[str]] = collections.defaultdict(list)
        self.resets = 0
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        async for change in self._feed:
            if isinstance(change, FeedReset):
                self.resets += 1
            elif isinstance(change, JobChanged):
                self._apply(change.job)

    def _apply(self, job: Job) -> None:
        before = self.status.get(job.id)
        was = before in ("working", "cancelling")
        now = job.status in RUNNING_STATUSES
        key = job.concurrency_key
        self.kind_of_key[key] = job.kind
        if now and not was:
            self.running[key] += 1
            self.started[key].append(job.id)
        elif was and not now:
            self.running[key] -= 1
        self.peak[key] = max(self.peak[key], self.running[key])
        self.status[job.id] = job.status.value

    async def close(self) -> None:
        await self._feed.aclose()  # type: ignore[attr-defined]
        await bounded(self.task)


async def test_20_workers_claim_500_jobs_once_each_fifo_per_key_within_limits(limited: Server) -> None:
    server = limited
    watcher = RunningWatcher(server)
    created: list[pb.Job] = []
    for i in range(TOTAL):
        kind, target = job_spec(i)
        created.append(await server.create_kind(kind, target=target))
        server.clock.advance(timedelta(microseconds=1))  # distinct created_at: FIFO is by creation time

    claimed: list[str] = []
    finished: set[str] = set()
    kinds_of_worker = [(), ("import",), ("populateview", "copy"), ("query", "import")]

    async def worker(n: int) -> None:
        kinds = kinds_of_worker[n % len(kinds_of_worker)]
        while len(finished) < TOTAL:
            claim = await bounded(server.claim(kinds=kinds, worker_id=f"worker-{n}", wait=1))
            if not claim.HasField("job"):
                continue
            assert not kinds or claim.job.kind in kinds
            claimed.append(claim.job.id)
            # Hold the slot across a round trip so that workers really overlap.
            await server.heartbeat(claim.job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=50))
            await server.finish(claim.job.id, claim.lease_token, pb.JOB_STATUS_DONE)
            finished.add(claim.job.id)

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(WORKERS))), timeout=90)
    await watcher.close()

    assert watcher.resets == 0, "the change feed lost events; the limit check below would be incomplete"
    duplicates = [job_id for job_id, n in collections.Counter(claimed).items() if n > 1]
    assert not duplicates, f"claimed twice: {duplicates[:5]}"
    assert sorted(claimed) == sorted(j.id for j in created), "every job claimed exactly once"

    for key, peak in watcher.peak.items():
        assert peak <= LIMITS[watcher.kind_of_key[key]], f"{key} ran {peak} jobs at once"
    assert watcher.peak[f"{server.workspace_id}:import"] > 1, "the workers never overlapped: the test proves nothing"

    created_by_key: dict[str, list[str]] = collections.defaultdict(list)
    for job in created:
        created_by_key[job.concurrency_key].append(job.id)
    assert set(created_by_key) == set(watcher.started)
    for key, order in created_by_key.items():
        assert watcher.started[key] == order, f"{key}: claims out of creation order"

    response = await server.jobs.ListJobs(pb.ListJobsRequest(status="done"), metadata=server.md(server.admin))
    assert len(response.jobs) == 100 and response.next_page_token  # 500 done jobs: a full first page and more


# ---------------------------------------------------------------- long-poll


async def parked_claim(
    server: Server, monkeypatch: pytest.MonkeyPatch, kinds: tuple[str, ...] = ()
) -> asyncio.Task[pb.ClaimJobResponse]:
    """A ClaimJob(wait_seconds=5) that has looked once, found nothing and is now waiting."""
    store = server.app.store
    original = store.claim_next
    empty_look = asyncio.Event()

    async def observed(request: ClaimRequest) -> Job | None:
        job = await original(request)
        if job is None:
            empty_look.set()
        return job

    monkeypatch.setattr(store, "claim_next", observed)
    task = asyncio.create_task(server.claim(kinds=kinds, worker_id="poller", wait=5))
    await bounded(empty_look.wait())
    assert not task.done()
    return task


async def test_long_poll_claim_returns_the_job_created_meanwhile(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await parked_claim(server, monkeypatch)
    job = await server.create_kind("import")
    claim = await bounded(task)
    assert claim.job.id == job.id and claim.job.status == pb.JOB_STATUS_WORKING and claim.lease_token


async def test_long_poll_claim_ignores_kinds_it_did_not_ask_for(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = await parked_claim(server, monkeypatch, kinds=("copy",))
    other = await server.create_kind("import")
    wanted = await server.create_kind("copy", target="snap")
    claim = await bounded(task)
    assert claim.job.id == wanted.id
    assert (await server.get(other.id)).status == pb.JOB_STATUS_WAITING


async def test_long_poll_claim_wakes_when_a_slot_frees(limited: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    server = limited
    first = await server.create_kind("populateview", target="mv")
    server.clock.advance(timedelta(microseconds=1))
    second = await server.create_kind("populateview", target="mv")
    running = await server.claim_job(first.id)
    task = await parked_claim(server, monkeypatch)  # `second` waits for the key's only slot
    await server.finish(first.id, running.lease_token, pb.JOB_STATUS_DONE)
    claim = await bounded(task)
    assert claim.job.id == second.id


# ---------------------------------------------------------------- idempotent creates racing


async def test_concurrent_creates_with_one_idempotency_key_make_one_job(server: Server) -> None:
    for round_ in range(10):
        key = f"nightly-import-{round_}"
        jobs = await bounded(asyncio.gather(*(server.create_kind("import", idempotency_key=key) for _ in range(10))))
        assert len({j.id for j in jobs}) == 1, f"round {round_}: duplicates {sorted({j.id for j in jobs})}"
    ids = await server.list_ids()
    assert len(ids) == len(set(ids)) == 10
    for job_id in ids:
        assert [e.status for e in await server.job_log(job_id)] == ["waiting"]


async def test_paging_while_jobs_are_created_and_finished_loses_and_repeats_nothing(server: Server) -> None:
    existing = []
    for _ in range(25):
        existing.append((await server.create_kind("sink", target=None)).id)
        server.clock.advance(timedelta(microseconds=1))
    seen: list[str] = []
    token = ""
    while True:
        page = await server.jobs.ListJobs(
            pb.ListJobsRequest(page_size=4, page_token=token), metadata=server.md(server.admin)
        )
        seen += [j.id for j in page.jobs]
        # Writers keep going between pages: a new job (newer than every page) and a finished one.
        await server.create_kind("sink", target=None)
        claim = await server.claim(kinds=("sink",))
        await server.finish(claim.job.id, claim.lease_token, pb.JOB_STATUS_DONE)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(existing)), "newest first, each once, none missing"
