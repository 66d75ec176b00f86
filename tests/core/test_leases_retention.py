"""Leases (docs/contract.md#queue) and the 48 h retention bound and jobs_log (docs/contract.md#retention), with the
clock moved by hand."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest

from jobsd_client import pb

from .conftest import Server, bounded, read_events, rpc_error

LEASE = timedelta(seconds=30)
PAST_LEASE = LEASE + timedelta(seconds=1)
USEC = timedelta(microseconds=1)
RETENTION = timedelta(hours=48)


async def lapse(server: Server) -> int:
    server.clock.advance(PAST_LEASE)
    return await server.app.service.sweep_leases()


# ---------------------------------------------------------------- leases


async def test_lapsed_lease_requeues_then_errors_after_max_attempts(server: Server) -> None:
    job = await server.create_kind("import")
    for attempt in (1, 2, 3):
        claim = await server.claim_job(job.id, worker_id=f"w{attempt}")
        assert claim.job.attempt == attempt and claim.job.worker_id == f"w{attempt}"
        assert await lapse(server) == 1
        after = await server.get(job.id)
        if attempt < 3:
            assert after.status == pb.JOB_STATUS_WAITING, f"attempt {attempt} should be requeued"
            assert not after.HasField("worker_id") and not after.HasField("lease_expires_at")
    assert after.status == pb.JOB_STATUS_ERROR
    assert "stopped heartbeating" in after.error and "3" in after.error and "w3" in after.error
    assert not (await server.claim()).HasField("job")
    log = await server.job_log(job.id)
    assert [e.status for e in log] == ["waiting", "working", "waiting", "working", "waiting", "working", "error"]
    assert log[-1].error == after.error


async def test_heartbeats_keep_the_lease_alive(server: Server) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id)
    for _ in range(5):
        server.clock.advance(timedelta(seconds=20))
        beat = await server.heartbeat(job.id, claim.lease_token)
        assert beat.lease_expires_at.ToDatetime() > server.clock.now().replace(tzinfo=None)
        assert await server.app.service.sweep_leases() == 0
    assert (await server.get(job.id)).status == pb.JOB_STATUS_WORKING  # 100 s, five times the lease


async def test_lease_is_exact_at_its_expiry(server: Server) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id)
    server.clock.advance(LEASE - USEC)
    await server.heartbeat(job.id, claim.lease_token)  # just in time: renewed
    server.clock.advance(LEASE)
    error = await rpc_error(server.heartbeat(job.id, claim.lease_token))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "lease" in (error.details() or "")


async def test_heartbeat_and_finish_after_the_lapse_are_refused(server: Server) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id)
    server.clock.advance(PAST_LEASE)
    # Before the sweeper got to it: the lease is already gone.
    early = await rpc_error(server.heartbeat(job.id, claim.lease_token))
    assert early.code() == grpc.StatusCode.FAILED_PRECONDITION
    late_finish = await rpc_error(server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE))
    assert late_finish.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await server.app.service.sweep_leases() == 1
    # After the sweep requeued it, and after another worker took it.
    for call in (server.heartbeat(job.id, claim.lease_token), server.finish(job.id, claim.lease_token)):
        assert (await rpc_error(call)).code() == grpc.StatusCode.FAILED_PRECONDITION
    second = await server.claim_job(job.id, worker_id="w2")
    stale = await rpc_error(server.heartbeat(job.id, claim.lease_token))
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = await server.finish(job.id, second.lease_token, pb.JOB_STATUS_DONE)
    assert done.status == pb.JOB_STATUS_DONE and done.attempt == 2


async def test_a_cancelling_job_whose_lease_lapses_is_cancelled(server: Server) -> None:
    job = await server.create_kind("populateview")
    claim = await server.claim_job(job.id)
    await server.cancel(job.id)
    assert await lapse(server) == 1
    after = await server.get(job.id)
    assert after.status == pb.JOB_STATUS_CANCELLED and not after.HasField("lease_expires_at")
    assert not (await server.claim()).HasField("job"), "a cancelled job is never requeued"
    error = await rpc_error(server.heartbeat(job.id, claim.lease_token))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_sweep_leaves_live_leases_alone(server: Server) -> None:
    lapsed = await server.create_kind("import")
    await server.claim_job(lapsed.id, worker_id="gone")
    server.clock.advance(timedelta(seconds=20))
    alive = await server.create_kind("query", target=None)
    alive_claim = await server.claim_job(alive.id, worker_id="alive")
    server.clock.advance(timedelta(seconds=15))  # the first lease lapsed, the second has 15 s left
    assert await server.app.service.sweep_leases() == 1
    assert (await server.get(lapsed.id)).status == pb.JOB_STATUS_WAITING
    assert (await server.get(alive.id)).status == pb.JOB_STATUS_WORKING
    assert not (await server.heartbeat(alive.id, alive_claim.lease_token)).cancel_requested


# ---------------------------------------------------------------- the 48 h bound


async def assert_visible(server: Server, job_id: str) -> None:
    assert (await server.get(job_id)).id == job_id
    assert job_id in await server.list_ids()


async def assert_gone(server: Server, job_id: str) -> None:
    error = await rpc_error(server.get(job_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND and job_id in (error.details() or "")
    assert job_id not in await server.list_ids()
    assert (await rpc_error(server.cancel(job_id))).code() == grpc.StatusCode.NOT_FOUND
    stream = server.watch(job_id)
    assert (await rpc_error(stream.read())).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("state", ["waiting", "done", "cancelled"])
async def test_a_job_vanishes_at_exactly_created_plus_48h(server: Server, state: str) -> None:
    job = await server.create_kind("import")
    created = server.clock.now()
    other = await server.create_kind("query", target=None)  # same instant: must vanish together
    if state == "done":
        claim = await server.claim(kinds=("import",))
        assert claim.job.id == job.id
        server.clock.advance(timedelta(seconds=20))
        await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    elif state == "cancelled":
        await server.cancel(job.id)
    server.clock.set(created + RETENTION - USEC)
    await assert_visible(server, job.id)
    server.clock.set(created + RETENTION)
    await assert_gone(server, job.id)
    await assert_gone(server, other.id)
    assert not (await server.claim()).HasField("job"), "an expired waiting job must not be claimed"


async def test_a_job_running_at_48h_stays_until_an_hour_after_it_ends(server: Server) -> None:
    job = await server.create_kind("import")
    created = server.clock.now()
    server.clock.set(created + RETENTION - timedelta(seconds=10))
    claim = await server.claim_job(job.id)
    server.clock.set(created + RETENTION)
    await server.heartbeat(job.id, claim.lease_token)
    await assert_visible(server, job.id)
    server.clock.advance(timedelta(seconds=25))
    await server.heartbeat(job.id, claim.lease_token)
    await server.app.service.sweep_retention()
    await assert_visible(server, job.id)
    server.clock.advance(timedelta(seconds=5))
    ended_at = server.clock.now()
    done = await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    assert done.status == pb.JOB_STATUS_DONE
    server.clock.set(ended_at + timedelta(hours=1) - USEC)
    await assert_visible(server, job.id)
    server.clock.set(ended_at + timedelta(hours=1))
    await assert_gone(server, job.id)


async def test_a_cancelling_job_at_48h_stays_until_it_ends(server: Server) -> None:
    job = await server.create_kind("copy", target="snap")
    created = server.clock.now()
    server.clock.set(created + RETENTION - timedelta(seconds=10))
    claim = await server.claim_job(job.id)
    await server.cancel(job.id)
    server.clock.set(created + RETENTION + timedelta(seconds=5))
    await assert_visible(server, job.id)
    beat = await server.heartbeat(job.id, claim.lease_token)
    assert beat.cancel_requested
    await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_CANCELLED)
    server.clock.advance(timedelta(hours=1) - USEC)
    await assert_visible(server, job.id)
    server.clock.advance(USEC)
    await assert_gone(server, job.id)


async def test_a_watch_opened_just_before_48h_gets_the_snapshot(server: Server) -> None:
    job = await server.create_kind("import")
    server.clock.set(server.clock.now() + RETENTION - USEC)
    stream = server.watch(job.id)
    [snapshot] = await bounded(read_events(stream, 1))
    assert snapshot.type == pb.JobEvent.TYPE_SNAPSHOT and snapshot.job.id == job.id
    stream.cancel()


# ---------------------------------------------------------------- jobs_log outlives the job


async def test_jobs_log_keeps_every_status_change_after_the_job_is_purged(server: Server) -> None:
    job = await server.create_kind("populateview", target="mv", pipe_id="t_p", pipe_name="by_day")
    created = server.clock.now()
    claim = await server.claim_job(job.id)
    server.clock.advance(timedelta(seconds=20))
    await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=30))
    await server.cancel(job.id)
    server.clock.advance(timedelta(seconds=20))
    await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    before = await server.job_log(job.id)

    server.clock.set(created + RETENTION + timedelta(minutes=5))
    purged = await server.app.service.sweep_retention()
    assert purged >= 1
    # Gone from the store, not just hidden: even at a time it would be visible, it is not found.
    server.clock.set(created + timedelta(hours=1))
    assert (await rpc_error(server.get(job.id))).code() == grpc.StatusCode.NOT_FOUND
    server.clock.set(created + RETENTION + timedelta(minutes=5))

    log = await server.job_log(job.id)
    assert log == before
    assert [e.status for e in log] == ["waiting", "working", "cancelling", "done"]
    assert [e.revision for e in log] == sorted({e.revision for e in log})
    for entry in log:
        assert entry.job_id == job.id and entry.job_type == "populateview" and entry.workspace_id == server.workspace_id
        assert entry.pipe_id == "t_p" and entry.datasource_id == job.datasource_ref.id
        assert entry.created_at == job.created_at
    assert log[-1].started_at.ToDatetime() == created.replace(tzinfo=None)


async def test_jobs_log_rows_are_kept_for_the_log_retention_only(server: Server) -> None:
    job = await server.create_kind("import")
    await server.cancel(job.id)
    server.clock.advance(timedelta(days=29))
    await server.app.service.sweep_retention()
    assert [e.status for e in await server.job_log(job.id)] == ["waiting", "cancelled"]
    server.clock.advance(timedelta(days=1, seconds=1))
    await server.app.service.sweep_retention()
    assert await server.job_log(job.id) == []
