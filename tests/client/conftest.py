"""A real jobsd for the client tests: gRPC on an ephemeral 127.0.0.1 port, SQLite in tmp_path, a ManualClock.

Leases are short (0.6 s, so the server asks for a heartbeat every 0.2 s of real time) to keep the worker tests
fast; the ManualClock only moves when a test moves it, so a lease lapses only when a test wants it to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobsd.app import JobsdApp
from jobsd.domain.clock import ManualClock
from jobsd.settings import Settings
from jobsd_client import AsyncJobsClient, Worker, pb

LEASE_SECONDS = 0.6
HEARTBEAT_SECONDS = LEASE_SECONDS / 3
# Upper bound for anything that should happen "promptly"; only reached when a test is about to fail.
PATIENCE = 15.0


def jobsd_settings(tmp_path: Path, grpc_addr: str = "127.0.0.1:0") -> Settings:
    return Settings(
        grpc_addr=grpc_addr,
        http_addr="",
        store=f"sqlite:///{tmp_path}/jobsd.db",
        executors=False,
        lease_seconds=LEASE_SECONDS,
        sweep_interval_seconds=3600,  # tests sweep explicitly after moving the clock
        grace_seconds=0.5,
    )


@dataclass
class Jobsd:
    app: JobsdApp
    clock: ManualClock
    admin: str  # ADMIN of workspace "default"
    worker: str  # JOBS:EXECUTE on every workspace
    workspace_id: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def jobsd(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Jobsd]:
    app = JobsdApp(jobsd_settings(tmp_path), clock=clock)
    await app.start()
    try:
        admin = await app.create_token("default", ["ADMIN"], "admin")
        worker = await app.create_token(None, ["JOBS:EXECUTE"], "worker")
        yield Jobsd(app, clock, admin, worker, await app.workspace_id_of("default"))
    finally:
        await app.stop()


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
    """Run `python -m jobsd_client.cli` as a real subprocess; (exit status, stdout, stderr)."""
    env = {**os.environ, "JOBSD_TARGET": target, "JOBSD_TOKEN": token, **(extra_env or {})}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobsd_client.cli",
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
