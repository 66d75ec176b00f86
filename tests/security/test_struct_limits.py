"""Size limits of a job's free-form objects: `datasource`, `params` (at creation) and `result` (from a worker).

Each path that accepts them is attacked with an object just under the 4 MiB message limit — CreateJob, CreateJobs,
the REST retry (which creates a job from a stored one), a v1 Heartbeat and FinishJob, and the v2 worker stream —
and each answers INVALID_ARGUMENT naming the field and the limit, while nothing is stored or changed: the
workspace's listing, its jobs_log and the job being worked on are exactly as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest

from jobsd_client import pb
from tests.support.jobs import struct

from .tenants import WAIT, Tenants, bounded, rpc_error, tenant_server, trailer

# 3.9 MB: under the 4 MiB a gRPC message may be, so only jobsd's own limits stand in the way.
HUGE = "x" * 3_900_000


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Tenants]:
    async with tenant_server(tmp_path) as started:
        yield started


async def state_of(s: Tenants, token: str) -> tuple[list[tuple[str, int]], int]:
    """What the workspace shows: every job (id, revision) and its jobs_log rows."""
    jobs, _ = await s.list_all(token)
    log = await bounded(s.jobs.ListJobsLog(pb.ListJobsLogRequest(), metadata=s.md(token)))
    return [(job.id, job.revision) for job in jobs], len(log.entries)


def assert_refused(error: grpc.aio.AioRpcError, field: str, setting: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert trailer(error, "jobsd-field") == field
    details = error.details() or ""
    assert details.startswith(f"{field}: is 3,9") and setting in details, details
    assert "xxxx" not in details  # nothing of the request is echoed


async def test_a_huge_datasource_or_params_is_refused_at_creation_and_nothing_is_stored(server: Tenants) -> None:
    s = server
    kept = await s.create(s.alpha)
    before = await state_of(s, s.alpha)

    started = asyncio.get_running_loop().time()
    big_source = pb.CreateJobRequest(kind="import", url="https://example.com/a.csv")
    big_source.datasource.update({"name": "events", "blob": HUGE})
    error = await rpc_error(s.jobs.CreateJob(big_source, metadata=s.md(s.alpha)))
    refused_after = asyncio.get_running_loop().time() - started
    assert refused_after < WAIT
    assert_refused(error, "datasource", "JOBSD_MAX_DATASOURCE_BYTES=65536")

    big_params = pb.CreateJobRequest(kind="import", url="https://example.com/a.csv", params=struct({"blob": HUGE}))
    big_params.datasource.update({"name": "events"})
    assert_refused(await rpc_error(s.jobs.CreateJob(big_params, metadata=s.md(s.alpha))), "params", "PARAMS_BYTES")

    # CreateJobs: each bad item refused alone, naming its place; the good one created. (1.5 MB each: the batch is
    # one message, which has its own 4 MiB bound.)
    good = pb.CreateJobRequest(kind="import", url="https://example.com/b.csv")
    good.datasource.update({"name": "events"})
    for request in (big_source, big_params):
        field = "datasource" if request is big_source else "params"
        getattr(request, field).update({"blob": HUGE[:1_500_000]})
    both = pb.CreateJobsRequest(jobs=[big_source, good, big_params])
    s.clock.advance(timedelta(milliseconds=1))  # listed newest first: after `kept`
    answer = await bounded(s.jobs.CreateJobs(both, metadata=s.md(s.alpha)))
    kinds = [result.WhichOneof("result") for result in answer.results]
    assert kinds == ["error", "job", "error"]
    assert [answer.results[0].error.field, answer.results[2].error.field] == ["jobs[0].datasource", "jobs[2].params"]
    assert all(answer.results[i].error.code == "INVALID_ARGUMENT" for i in (0, 2))
    created = answer.results[1].job

    # Only the good job was stored; the workspace lists as it did (plus that one), in one small page.
    jobs, log_rows = await state_of(s, s.alpha)
    assert jobs == [(created.id, created.revision), *before[0]]
    assert log_rows == before[1] + 1
    assert kept.id in {job_id for job_id, _ in jobs}
    # Over REST too.
    async with s.http.get(f"{s.rest}/v0/jobs", headers=s.bearer(s.alpha)) as listed:
        assert listed.status == 200
        assert [job["id"] for job in (await listed.json())["jobs"]] == [created.id, kept.id]


async def test_a_retry_of_a_job_stored_with_a_huge_datasource_is_refused(server: Tenants) -> None:
    s = server
    # A job an older jobsd (no size limits) stored: written here under a limit large enough for it.
    limits = s.app.service.struct_limits
    s.app.service.struct_limits = replace(limits, datasource=8 * 1024 * 1024)
    old = await s.create(s.alpha, datasource={"name": "events", "blob": HUGE})
    s.app.service.struct_limits = limits
    await bounded(s.jobs.CancelJob(pb.CancelJobRequest(job_id=old.id), metadata=s.md(s.alpha)))
    before = await state_of(s, s.alpha)

    async with s.http.post(f"{s.rest}/v0/jobs/{old.id}/retry", headers=s.bearer(s.alpha)) as retried:
        body = await retried.json()
    assert retried.status == 400, body
    assert body["error"].startswith("datasource: is 3,9") and "JOBSD_MAX_DATASOURCE_BYTES" in body["error"]
    assert await state_of(s, s.alpha) == before


async def test_a_huge_result_is_refused_from_heartbeats_and_finishes_v1_and_v2(server: Tenants) -> None:
    s = server
    job = await s.create(s.alpha)
    claim = await bounded(
        s.workers.ClaimJob(pb.ClaimJobRequest(worker_id="w1", kinds=["import"]), metadata=s.md(s.worker))
    )
    assert claim.job.id == job.id
    working = await bounded(s.jobs.GetJob(pb.GetJobRequest(job_id=job.id), metadata=s.md(s.alpha)))
    huge = pb.ProgressUpdate(result=struct({"rows": HUGE}))

    beat = pb.HeartbeatRequest(job_id=job.id, lease_token=claim.lease_token, progress=huge)
    assert_refused(
        await rpc_error(s.workers.Heartbeat(beat, metadata=s.md(s.worker))), "progress.result", "RESULT_BYTES=262144"
    )
    finish = pb.FinishJobRequest(job_id=job.id, lease_token=claim.lease_token, status=pb.JOB_STATUS_DONE, progress=huge)
    assert_refused(await rpc_error(s.workers.FinishJob(finish, metadata=s.md(s.worker))), "progress.result", "RESULT")

    # v2: the same finish and heartbeat on the worker stream are refused one by one; the stream goes on.
    queue: asyncio.Queue[pb.WorkerMessage] = asyncio.Queue()

    async def requests() -> AsyncIterator[pb.WorkerMessage]:
        while True:
            yield await queue.get()

    stream: Any = s.workers.Connect(requests(), metadata=s.md(s.worker))
    queue.put_nowait(pb.WorkerMessage(hello=pb.ConnectHello(worker_id="w2", kinds=["import"], slots=0)))
    queue.put_nowait(
        pb.WorkerMessage(
            heartbeats=[pb.StreamHeartbeat(ref=1, job_id=job.id, lease_token=claim.lease_token, progress=huge)]
        )
    )
    queue.put_nowait(
        pb.WorkerMessage(
            finishes=[
                pb.StreamFinish(
                    ref=2, job_id=job.id, lease_token=claim.lease_token, status=pb.JOB_STATUS_DONE, progress=huge
                )
            ]
        )
    )
    heartbeat_answer: pb.HeartbeatAnswer | None = None
    finish_answer: pb.FinishAnswer | None = None
    while heartbeat_answer is None or finish_answer is None:
        message = await bounded(stream.read())
        assert isinstance(message, pb.ServerMessage), message
        heartbeat_answer = heartbeat_answer or next(iter(message.heartbeats), None)
        finish_answer = finish_answer or next(iter(message.finishes), None)
    assert (heartbeat_answer.error.code, heartbeat_answer.error.field) == (
        "INVALID_ARGUMENT",
        "heartbeats[0].progress.result",
    )
    assert (finish_answer.HasField("job"), finish_answer.error.field) == (False, "finishes[0].progress.result")
    assert "JOBSD_MAX_RESULT_BYTES=262144" in finish_answer.error.message

    # Nothing changed: the job is still working, at the same revision, with no result.
    now = await bounded(s.jobs.GetJob(pb.GetJobRequest(job_id=job.id), metadata=s.md(s.alpha)))
    assert (now.status, now.revision, now.HasField("result")) == (pb.JOB_STATUS_WORKING, working.revision, False)
    # A result within the limit is taken, on the same stream.
    queue.put_nowait(
        pb.WorkerMessage(
            finishes=[
                pb.StreamFinish(
                    ref=3,
                    job_id=job.id,
                    lease_token=claim.lease_token,
                    status=pb.JOB_STATUS_DONE,
                    progress=pb.ProgressUpdate(result=struct({"rows": 1.0})),
                )
            ]
        )
    )
    done: pb.FinishAnswer | None = None
    while done is None:
        message = await bounded(stream.read())
        assert isinstance(message, pb.ServerMessage), message
        done = next(iter(message.finishes), None)
    assert done.job.status == pb.JOB_STATUS_DONE and dict(done.job.result) == {"rows": 1.0}
    stream.cancel()
