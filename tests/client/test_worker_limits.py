"""The worker SDK stops a job on its own clock: when the kind's run-time limit (sent with the claim) or the
worker's own runs out, and when no heartbeat has reached jobsd for a whole lease — so a runaway handler is
stopped even when jobsd cannot be told. Against a real jobsd; handlers wait on events, never on sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.store.base import JobStore
from jobsd_client import AsyncJobsClient, JobContext, Worker, pb
from jobsd_client.errors import InvalidArgument
from tests.support.server import make_settings, running_server

from .conftest import LEASE_SECONDS, PATIENCE, Jobsd, blocked_until_cancelled, create_import, running, wait_for_status


@pytest.fixture
async def limited(tmp_path: Path, clock: ManualClock, e2e_backend_store: JobStore | None) -> AsyncIterator[Jobsd]:
    """A jobsd whose import jobs may run for half a second (JOBSD_TIME_LIMITS=import=0.5)."""
    settings = make_settings(tmp_path, lease_seconds=LEASE_SECONDS, time_limits={"import": 0.5})
    async with running_server(settings, clock, e2e_backend_store) as server:
        yield server


class Runaway:
    """A handler that never ends by itself, and remembers how it was stopped."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.stopped = asyncio.Event()
        self.contexts: list[JobContext] = []
        self.time_left_at_start: float | None = None

    async def __call__(self, ctx: JobContext) -> None:
        self.contexts.append(ctx)
        self.time_left_at_start = ctx.time_left
        await blocked_until_cancelled(self.started, self.stopped)


async def test_the_kind_s_run_time_limit_stops_the_handler_and_the_job_ends_in_error(limited: Jobsd) -> None:
    handler = Runaway()
    async with AsyncJobsClient(limited.target, limited.admin, timeout=PATIENCE) as client:
        job = await create_import(client)
        async with running(Worker(limited.target, limited.worker, {"import": handler}, wait_seconds=1)):
            final = await wait_for_status(client, job.id, pb.JOB_STATUS_ERROR, pb.JOB_STATUS_DONE)
    assert handler.stopped.is_set()  # cancelled: the executors interrupt their statement then
    assert handler.time_left_at_start is not None and 0 < handler.time_left_at_start <= 0.5
    # The server's clock is a ManualClock that does not move: only the worker's own clock could have stopped it.
    assert final.status == pb.JOB_STATUS_ERROR
    assert final.error == (
        "Job exceeded the run-time limit of 0.5 s for import jobs (time_limit_seconds; JOBSD_TIME_LIMITS)"
    )


async def test_a_worker_s_own_time_limit_applies_too(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    handler = Runaway()
    job = await create_import(client)
    worker = Worker(jobsd.target, jobsd.worker, {"import": handler}, wait_seconds=1, time_limits={"import": 0.3})
    async with running(worker):
        final = await wait_for_status(client, job.id, pb.JOB_STATUS_ERROR, pb.JOB_STATUS_DONE)
    assert handler.stopped.is_set()
    assert final.error == "Job exceeded the run-time limit of 0.3 s this worker sets for import jobs"


def test_a_time_limit_must_be_positive() -> None:
    with pytest.raises(InvalidArgument) as refused:
        Worker("127.0.0.1:1", "t", {"import": Runaway()}, time_limits={"import": 0})
    assert refused.value.field == "time_limits"


async def test_a_handler_is_stopped_once_no_heartbeat_reached_jobsd_for_a_lease(jobsd: Jobsd) -> None:
    """jobsd goes away while a job runs: after one lease without a heartbeat it will give the job to someone
    else, so the worker stops the handler rather than run it twice."""
    handler = Runaway()
    async with AsyncJobsClient(jobsd.target, jobsd.admin, timeout=PATIENCE) as client:
        await create_import(client)
    async with running(Worker(jobsd.target, jobsd.worker, {"import": handler}, wait_seconds=1)):
        async with asyncio.timeout(PATIENCE):
            await handler.started.wait()
            await jobsd.app.stop()  # every heartbeat from now on fails
            await handler.stopped.wait()
    assert handler.contexts[0].lease_lost
