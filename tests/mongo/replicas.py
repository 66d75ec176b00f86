"""Real `jobsd serve` processes on one database of the wire server: the scale-out shape, as a deployment runs it.

Each replica is its own OS process with its own gRPC and HTTP ports (ephemeral, 127.0.0.1), its own MongoDB
client and change stream; nothing is shared but the database. Replicas run with the executors off: the tests
are the workers, through the public gRPC API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.subprocess_server import ServeProcess, serve_process

ADMIN = "jobsd_replicas-admin-token-0123456789"
SERVICE = "jobsd_replicas-service-token-0123456789"
# A bounded wait on the server; a hang fails the test instead of stalling the suite.
WAIT = 30.0


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


class Replica:
    """One replica: its process (`tests.support.subprocess_server`) and gRPC stubs on its own channel."""

    def __init__(self, name: str, served: ServeProcess) -> None:
        self.name = name
        self.served = served
        self.process = served.process
        self.grpc_port = served.grpc_port
        self.log = served.log
        self.channel = grpc.aio.insecure_channel(served.target)
        self.jobs = pb_grpc.JobsStub(self.channel)
        self.workers = pb_grpc.WorkersStub(self.channel)

    @property
    def http(self) -> str:
        return self.served.http

    async def create_copy(self, target: str) -> pb.Job:
        request = pb.CreateJobRequest(kind="copy", query_sql="SELECT 1")
        request.datasource.update({"name": target})
        return await asyncio.wait_for(self.jobs.CreateJob(request, metadata=md(ADMIN)), timeout=WAIT)

    async def claim(self, worker: str, wait: float = 0) -> pb.ClaimJobResponse:
        request = pb.ClaimJobRequest(worker_id=worker, wait_seconds=wait)
        return await asyncio.wait_for(self.workers.ClaimJob(request, metadata=md(SERVICE)), timeout=WAIT)

    async def finish(self, claim: pb.ClaimJobResponse) -> pb.Job:
        request = pb.FinishJobRequest(job_id=claim.job.id, lease_token=claim.lease_token, status=pb.JOB_STATUS_DONE)
        return await asyncio.wait_for(self.workers.FinishJob(request, metadata=md(SERVICE)), timeout=WAIT)

    async def get(self, job_id: str) -> pb.Job:
        return await asyncio.wait_for(self.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=md(ADMIN)), WAIT)

    async def rest_list(self, **params: str) -> list[Mapping[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{self.http}/v0/jobs", params={"token": ADMIN, **params}) as response,
        ):
            assert response.status == 200, await response.text()
            body = await response.json()
        jobs: list[Mapping[str, Any]] = body["jobs"]
        return jobs

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, no goodbye to the database."""
        self.served.kill()

    async def stop(self) -> None:
        await self.channel.close(None)
        await self.served.stop()


@asynccontextmanager
async def replicas(store_uri: str, count: int, log_dir: Path, **settings: str) -> AsyncIterator[list[Replica]]:
    """`count` replicas of `jobsd serve` on `store_uri`, ready (SERVING) when yielded, stopped afterwards.

    `settings` are JOBSD_ variables (`JOBSD_LEASE_SECONDS="3"`)."""
    common = {"admin_token": ADMIN, "service_token": SERVICE, "executors": "off", "store": store_uri}
    common.update({name.removeprefix("JOBSD_").lower(): value for name, value in settings.items()})
    async with AsyncExitStack() as stack:
        # Started side by side; if one does not come up, the others are cancelled (and stopped) with it.
        async with asyncio.TaskGroup() as group:
            starting = [
                group.create_task(
                    stack.enter_async_context(
                        serve_process(log_dir / f"replica-{n}.log", {**common, "data_dir": str(log_dir / f"data-{n}")})
                    )
                )
                for n in range(count)
            ]
        started = [Replica(f"replica-{n}", task.result()) for n, task in enumerate(starting)]
        for replica in started:
            stack.push_async_callback(replica.stop)
        yield started
