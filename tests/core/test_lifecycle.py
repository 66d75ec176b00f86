"""The whole life of a job over real gRPC: create -> claim -> heartbeat -> finish, watched all the way."""

from __future__ import annotations

import grpc
import pytest

from jobsd_client import pb
from tests.support.server import read_event

from .conftest import Server, read_events


async def test_create_claim_heartbeat_finish_seen_by_a_watcher(server: Server) -> None:
    job = await server.create()
    assert job.status == pb.JOB_STATUS_WAITING
    assert job.revision == 1 and job.is_cancellable and not job.HasField("started_at")

    stream = server.jobs.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=server.md(server.admin))
    first = await read_event(stream)
    assert first is not None
    assert first.type == pb.JobEvent.TYPE_SNAPSHOT and first.revision == 1

    claim = await server.claim()
    assert claim.job.id == job.id and claim.job.status == pb.JOB_STATUS_WORKING and claim.lease_token
    assert claim.heartbeat_interval_seconds == pytest.approx(10.0)

    progress = pb.ProgressUpdate(progress_percentage=40.0, statistics=pb.Statistics(bytes=100, row_count=7))
    beat = await server.workers.Heartbeat(
        pb.HeartbeatRequest(job_id=job.id, lease_token=claim.lease_token, progress=progress),
        metadata=server.md(server.worker),
    )
    assert not beat.cancel_requested and beat.revision == 3

    done = await server.workers.FinishJob(
        pb.FinishJobRequest(job_id=job.id, lease_token=claim.lease_token, status=pb.JOB_STATUS_DONE),
        metadata=server.md(server.worker),
    )
    assert done.status == pb.JOB_STATUS_DONE and done.statistics.row_count == 7

    events = [first, *await read_events(stream)]
    assert [e.revision for e in events] == [1, 2, 3, 4]
    assert [e.type for e in events[1:]] == [pb.JobEvent.TYPE_STATUS, pb.JobEvent.TYPE_PROGRESS, pb.JobEvent.TYPE_STATUS]
    assert events[-1].job.status == pb.JOB_STATUS_DONE
    assert await stream.code() == grpc.StatusCode.OK

    fetched = await server.jobs.GetJob(pb.GetJobRequest(job_id=job.id), metadata=server.md(server.admin))
    assert fetched.status == pb.JOB_STATUS_DONE and fetched.HasField("started_at")
