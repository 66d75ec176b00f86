"""Live progress from SDK workers: what a handler reports reaches a watcher within the worker's progress interval
(not only at heartbeats), on both worker protocols, without a jobs_log row per report; a job that reports and
ends at once costs no write more than before; a run after a lost lease starts its figures over and says so.

The server's lease is long (600 s: a heartbeat every 200 s), so only the progress sends can carry the figures in
time; every wait is on an event the watcher sets, bounded by PATIENCE (reached only when a test is about to fail).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd_client import AsyncJobsClient, JobContext, Worker, pb, status_name
from tests.support.server import Server, make_settings, running_server

from .conftest import PATIENCE, create_import, running, wait_for_status

LONG_LEASE = 600.0


@pytest.fixture
async def slow_beats(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, lease_seconds=LONG_LEASE), clock) as server:
        yield server


@pytest.fixture
async def admin(slow_beats: Server) -> AsyncIterator[AsyncJobsClient]:
    async with AsyncJobsClient(slow_beats.target, slow_beats.admin, timeout=PATIENCE) as client:
        yield client


def worker_of(server: Server, handle: object, protocol: str, **options: object) -> Worker:
    return Worker(
        server.target,
        server.worker,
        {"import": handle},  # type: ignore[dict-item]
        wait_seconds=1.0,
        protocol=protocol,
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("protocol", ["v2", "v1"])
async def test_reports_reach_a_watcher_between_heartbeats_and_write_no_log_rows(
    slow_beats: Server, admin: AsyncJobsClient, protocol: str
) -> None:
    steps = [10.0, 20.0, 30.0, 40.0, 50.0]
    reached = {step: asyncio.Event() for step in steps}
    seen: list[tuple[str, float, int]] = []
    job = await create_import(admin)

    async def watch() -> None:
        async for event in admin.watch_job(job.id):
            figures = event.job
            seen.append((status_name(figures.status), figures.progress_percentage, figures.processed_data.read_bytes))
            if figures.progress_percentage in reached:
                reached[figures.progress_percentage].set()

    async def handle(ctx: JobContext) -> None:
        for step in steps:
            # No flush(): the worker sends the figures by itself within its progress interval.
            ctx.report(progress_percentage=step, processed_data={"read_bytes": int(step) * 1000})
            await reached[step].wait()

    watcher = asyncio.create_task(watch())
    try:
        async with asyncio.timeout(PATIENCE), running(worker_of(slow_beats, handle, protocol, progress_interval=0.05)):
            final = await wait_for_status(admin, job.id, pb.JOB_STATUS_DONE)
            await watcher
    finally:
        watcher.cancel()

    working = [(percentage, size) for status, percentage, size in seen if status == "working"]
    assert [p for p, _ in working if p] == steps  # each step seen while working, in order, none twice
    sizes = [size for _, size in working]
    assert sizes == sorted(sizes) and final.processed_data.read_bytes == 50_000
    log = await slow_beats.job_log(job.id)
    assert sorted(entry.status for entry in log) == ["done", "waiting", "working"]  # the status changes only
    assert final.revision == 3 + len(steps)  # created, claimed, one write per step, finished


async def test_a_job_that_reports_and_ends_at_once_costs_no_extra_write(
    slow_beats: Server, admin: AsyncJobsClient
) -> None:
    job = await create_import(admin)

    async def handle(ctx: JobContext) -> None:
        for percentage in range(1, 101):
            ctx.report(progress_percentage=percentage, processed_data={"read_rows": percentage})

    # The default interval (1 s) counts from the claim: a job over before it goes sends its figures with its finish.
    async with running(worker_of(slow_beats, handle, "auto")):
        final = await wait_for_status(admin, job.id, pb.JOB_STATUS_DONE)
    assert final.revision == 3  # created, claimed, finished: the 100 reports added no write
    assert final.progress_percentage == 100 and final.processed_data.read_rows == 100


async def test_a_run_after_a_lost_lease_starts_its_figures_over_and_says_why(
    slow_beats: Server, admin: AsyncJobsClient
) -> None:
    job = await create_import(admin)
    claimed = await slow_beats.claim_job(job.id, worker_id="w-lost")
    progress = pb.ProgressUpdate(progress_percentage=47.0)
    progress.processed_data.read_bytes = 8_600_000
    await slow_beats.heartbeat(job.id, claimed.lease_token, progress)
    slow_beats.clock.advance(timedelta(seconds=LONG_LEASE + 1))
    assert await slow_beats.app.service.sweep_leases() == 1

    requeued = await admin.get_job(job.id)
    assert status_name(requeued.status) == "waiting" and requeued.returns == 1
    assert requeued.note == (
        "run 1 ended unfinished: its worker w-lost stopped heartbeating (attempt 1 of 3); the next run starts over"
    )
    again = await slow_beats.claim_job(job.id, worker_id="w-next")
    assert again.job.progress_percentage == 0 and not again.job.HasField("processed_data")
    assert again.job.returns == 1 and again.job.attempt == 2 and again.job.note == requeued.note
