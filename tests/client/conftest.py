"""A real jobsd for the client tests (the shared harness, tests.support.server), with a ManualClock.

Leases are short (0.6 s, so the server asks for a heartbeat every 0.2 s of real time) to keep the worker tests
fast; the ManualClock only moves when a test moves it, so a lease lapses only when a test wants it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.settings import Settings
from jobsd.store.base import JobStore
from jobsd_client import AsyncJobsClient, Worker, pb
from tests.support.server import Server, make_settings, running_server

LEASE_SECONDS = 0.6
HEARTBEAT_SECONDS = LEASE_SECONDS / 3
# Upper bound for anything that should happen "promptly"; only reached when a test is about to fail.
PATIENCE = 15.0


def jobsd_settings(tmp_path: Path, grpc_addr: str = "127.0.0.1:0") -> Settings:
    return make_settings(tmp_path, grpc_addr=grpc_addr, lease_seconds=LEASE_SECONDS)


# The client tests' handle on their server: the shared harness's (app, clock, tokens, `target`).
Jobsd = Server


@pytest.fixture
async def jobsd(tmp_path: Path, clock: ManualClock, e2e_backend_store: JobStore | None) -> AsyncIterator[Jobsd]:
    async with running_server(jobsd_settings(tmp_path), clock, e2e_backend_store) as server:
        yield server


@pytest.fixture
async def client(jobsd: Jobsd) -> AsyncIterator[AsyncJobsClient]:
    async with AsyncJobsClient(jobsd.target, jobsd.admin, timeout=PATIENCE) as admin_client:
        yield admin_client


@pytest.fixture
async def worker_client(jobsd: Jobsd) -> AsyncIterator[AsyncJobsClient]:
    async with AsyncJobsClient(jobsd.target, jobsd.worker, timeout=PATIENCE) as executor_client:
        yield executor_client


async def create_import(client: AsyncJobsClient, name: str = "events", **fields: object) -> pb.Job:
    return await client.create_job(
        "import",
        url=f"https://example.com/{name}.csv",
        datasource={"name": name},
        **fields,  # type: ignore[arg-type]
    )


async def blocked_until_cancelled(started: asyncio.Event, cancelled: asyncio.Event) -> None:
    """What a handler that never ends by itself does: set `started`, wait, and set `cancelled` once it is."""
    started.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.set()
        raise


async def wait_for_status(client: AsyncJobsClient, job_id: str, *statuses: int) -> pb.Job:
    """Follow the job's watch stream until it reaches one of `statuses` (no polling, no sleeps)."""
    async with asyncio.timeout(PATIENCE):
        async for event in client.watch_job(job_id):
            if event.HasField("job") and event.job.status in statuses:
                return event.job
    job = await client.get_job(job_id)
    assert job.status in statuses, f"job ended {job.status}, expected one of {statuses}"
    return job


@contextlib.asynccontextmanager
async def running(worker: Worker, *, grace: float = 5.0) -> AsyncIterator[asyncio.Task[None]]:
    """Run the worker for the duration of the block, then stop it and check that run() ended cleanly."""
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        await worker.stop(grace=grace)
        async with asyncio.timeout(PATIENCE):
            await task


async def jobsctl(*args: str, target: str, token: str, extra_env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m jobsd_client._cli` as a real subprocess; (exit status, stdout, stderr)."""
    env = {**os.environ, "JOBSD_TARGET": target, "JOBSD_TOKEN": token, **(extra_env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobsd_client._cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(PATIENCE * 2):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def ids(jobs: Sequence[pb.Job]) -> list[str]:
    return [job.id for job in jobs]
