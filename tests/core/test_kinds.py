"""Kinds the operator declares, over real gRPC against a real server: only declared kinds are created and claimed,
each rule is enforced where it belongs (cancel while working, key and limit, lease, attempts, run-time limit,
retention), and ListKinds shows them. The clock is moved by hand."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from jobsd.domain.clock import ManualClock
from jobsd.store.base import JobStore
from jobsd_client import pb

from .conftest import Server, bounded, make_settings, rpc_error, running_server

KINDS = """
thumbnail = {cancellable_while_working = true, concurrency_limit = 2, lease_seconds = 12, time_limit_seconds = 60}
reindex = {concurrency_key = "target", max_attempts = 1, retention_hours = 1, description = "rebuild an index"}
"""


@contextlib.asynccontextmanager
async def kinds_server(
    tmp_path: Path, clock: ManualClock, store: JobStore | None, **settings: object
) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, kinds=KINDS, **settings), clock, store) as server:
        yield server


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock, e2e_backend_store: JobStore | None) -> AsyncIterator[Server]:
    async with kinds_server(tmp_path, clock, e2e_backend_store) as srv:
        yield srv


async def test_list_kinds_shows_the_built_in_and_the_declared_kinds_with_their_rules(server: Server) -> None:
    listed = await bounded(server.jobs.ListKinds(pb.ListKindsRequest(), metadata=server.md(server.worker)))
    kinds = {kind.name: kind for kind in listed.kinds}
    assert list(kinds) == sorted(kinds)
    assert set(kinds) == {"copy", "delete_data", "import", "populateview", "query", "sink", "thumbnail", "reindex"}
    thumbnail = kinds["thumbnail"]
    assert (thumbnail.builtin, thumbnail.cancellable_while_working, thumbnail.concurrency_limit) == (False, True, 2)
    assert (thumbnail.lease_seconds, thumbnail.time_limit_seconds, thumbnail.max_attempts) == (12, 60, 3)
    assert (thumbnail.concurrency_key, thumbnail.retention_hours) == ("workspace", 48)
    reindex = kinds["reindex"]
    assert (reindex.concurrency_key, reindex.needs_datasource, reindex.description) == (
        "target",
        True,
        "rebuild an index",
    )
    assert kinds["import"].builtin and kinds["import"].time_limit_seconds == 86_400


async def test_create_and_claim_accept_declared_kinds_only(server: Server) -> None:
    refused = await rpc_error(server.create(kind="thumbnails"))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details() == (
        "kind: unknown kind 'thumbnails'; expected one of copy, delete_data, import, populateview, query, reindex, "
        "sink, thumbnail"
    )
    assert await server.list_ids() == []  # nothing was written
    claim_refused = await rpc_error(server.claim(kinds=("thumbnail", "thumbnails")))
    assert claim_refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(claim_refused.details()).startswith("kinds: unknown kind 'thumbnails'; expected one of copy, ")

    job = await server.create(kind="thumbnail", params={"images": 4})
    assert job.kind == "thumbnail" and job.concurrency_key == f"{server.workspace_id}:thumbnail"
    claim = await server.claim(kinds=("thumbnail",))
    assert claim.job.id == job.id and claim.heartbeat_interval_seconds == pytest.approx(4.0)
    lease = claim.lease_expires_at.ToDatetime().replace(tzinfo=server.clock.now().tzinfo)
    assert lease == server.clock.now() + timedelta(seconds=12)


async def test_a_declared_cancellable_kind_is_cancellable_while_working(server: Server) -> None:
    job = await server.create(kind="thumbnail")
    claim = await server.claim_job(job.id)
    assert claim.job.is_cancellable
    cancelling = await server.cancel(job.id)
    assert cancelling.status == pb.JOB_STATUS_CANCELLING
    beat = await server.heartbeat(job.id, claim.lease_token)
    assert beat.cancel_requested
    done = await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_CANCELLED)
    assert done.status == pb.JOB_STATUS_CANCELLED


async def test_a_declared_kind_not_cancellable_while_working_says_why(server: Server) -> None:
    job = await server.create(kind="reindex", datasource={"name": "events"})
    await server.claim_job(job.id)
    refused = await rpc_error(server.cancel(job.id))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details() == (
        "Job is not in cancellable status: it is working, and reindex jobs can be cancelled only while waiting"
    )
    assert (await server.get(job.id)).status == pb.JOB_STATUS_WORKING


async def test_the_concurrency_limit_and_key_of_a_declared_kind_hold(server: Server) -> None:
    thumbnails = []
    for _ in range(3):
        thumbnails.append(await server.create(kind="thumbnail"))
        server.clock.advance(timedelta(milliseconds=1))  # FIFO by creation
    claimed = [(await server.claim(kinds=("thumbnail",))).job.id for _ in range(3)]
    assert claimed[:2] == [j.id for j in thumbnails[:2]] and claimed[2] == ""  # two per workspace
    # Keyed by target: one running per data source, the other target is free.
    a1 = await server.create(kind="reindex", datasource={"name": "a"})
    server.clock.advance(timedelta(milliseconds=1))
    a2 = await server.create(kind="reindex", datasource={"name": "a"})
    server.clock.advance(timedelta(milliseconds=1))
    b1 = await server.create(kind="reindex", datasource={"name": "b"})
    assert a1.concurrency_key.endswith(":reindex:a")
    got = [(await server.claim(kinds=("reindex",))).job.id for _ in range(3)]
    assert got == [a1.id, b1.id, ""]
    assert a2.id not in got


async def test_max_attempts_of_a_declared_kind(server: Server) -> None:
    job = await server.create(kind="reindex", datasource={"name": "events"})
    await server.claim_job(job.id)
    server.clock.advance(timedelta(seconds=31))
    assert await server.app.service.sweep_leases() == 1
    ended = await server.get(job.id)
    assert ended.status == pb.JOB_STATUS_ERROR
    assert ended.error.endswith("(max attempts 1 for reindex jobs)")


async def test_retention_of_a_declared_kind(server: Server) -> None:
    job = await server.create(kind="reindex", datasource={"name": "events"})
    server.clock.advance(timedelta(minutes=59))
    assert (await server.get(job.id)).id == job.id
    server.clock.advance(timedelta(minutes=1))
    missing = await rpc_error(server.get(job.id))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


async def test_a_job_past_its_run_time_limit_ends_in_error_and_its_worker_learns_on_its_next_heartbeat(
    server: Server,
) -> None:
    job = await server.create(kind="thumbnail")
    claim = await server.claim_job(job.id)
    # Heartbeats keep it alive, but never past the deadline: the lease stops there.
    for _ in range(5):
        server.clock.advance(timedelta(seconds=10))
        await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=10))
    server.clock.advance(timedelta(seconds=9))
    beat = await server.heartbeat(job.id, claim.lease_token)
    deadline = claim.job.started_at.ToDatetime() + timedelta(seconds=60)
    assert beat.lease_expires_at.ToDatetime() == deadline
    server.clock.advance(timedelta(seconds=1, microseconds=1))  # just past 60 s after the start

    assert await server.app.service.sweep_leases() == 1
    ended = await server.get(job.id)
    assert ended.status == pb.JOB_STATUS_ERROR
    assert ended.error == (
        "Job exceeded the run-time limit of 60 s for thumbnail jobs (time_limit_seconds; JOBSD_TIME_LIMITS)"
    )
    late = await rpc_error(server.heartbeat(job.id, claim.lease_token))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The error is one status change (working -> error), logged once, through the state machine.
    assert [e.status for e in await server.job_log(job.id)] == ["waiting", "working", "error"]
    assert server.app.metrics.run_time_exceeded._value.get() == 1


async def test_a_heartbeat_after_the_deadline_but_before_the_sweep_names_the_limit(server: Server) -> None:
    job = await server.create(kind="thumbnail")
    claim = await server.claim_job(job.id)
    server.clock.advance(timedelta(seconds=61))
    refused = await rpc_error(server.heartbeat(job.id, claim.lease_token))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.details() == f"Job {job.id}: " + (
        "Job exceeded the run-time limit of 60 s for thumbnail jobs (time_limit_seconds; JOBSD_TIME_LIMITS)"
    )


async def test_a_requeued_job_keeps_its_run_time_clock(server: Server) -> None:
    job = await server.create(kind="thumbnail")
    await server.claim_job(job.id)
    server.clock.advance(timedelta(seconds=13))  # the 12 s lease lapsed: requeued, attempt 1 of 3
    assert await server.app.service.sweep_leases() == 1
    again = await server.claim_job(job.id, worker_id="w2")
    remaining = again.lease_expires_at.ToDatetime() - server.clock.now().replace(tzinfo=None)
    assert remaining == timedelta(seconds=12)
    server.clock.advance(timedelta(seconds=47))  # 60 s from the first start
    for _ in range(3):
        await server.app.service.sweep_leases()
    assert (await server.get(job.id)).error.startswith("Job exceeded the run-time limit of 60 s for thumbnail")


async def test_time_limits_override_the_declaration_and_zero_means_none(
    tmp_path: Path, clock: ManualClock, e2e_backend_store: JobStore | None
) -> None:
    async with kinds_server(tmp_path, clock, e2e_backend_store, time_limits={"thumbnail": 0, "import": 5}) as server:
        job = await server.create(kind="thumbnail")
        claim = await server.claim_job(job.id)
        for _ in range(12):  # two minutes of heartbeats, past the declared 60 s
            server.clock.advance(timedelta(seconds=10))
            await server.heartbeat(job.id, claim.lease_token)
        assert (await server.get(job.id)).status == pb.JOB_STATUS_WORKING
        imported = await server.create_kind("import")
        await server.claim_job(imported.id)
        server.clock.advance(timedelta(seconds=5, microseconds=1))
        assert await server.app.service.sweep_leases() == 1
        assert "run-time limit of 5 s for import jobs" in (await server.get(imported.id)).error
