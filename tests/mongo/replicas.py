"""Real `jobsd serve` processes on one database of the wire server: the scale-out shape, as a deployment runs it.

Each replica is its own OS process with its own gRPC and HTTP ports (ephemeral, 127.0.0.1), its own MongoDB
client and change stream; nothing is shared but the database. Replicas run with the executors off: the tests
are the workers, through the public gRPC API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc

ADMIN = "jobsd_replicas-admin-token-0123456789"
SERVICE = "jobsd_replicas-service-token-0123456789"
# A process start or a bounded wait on the server; a hang fails the test instead of stalling the suite.
START_TIMEOUT = 60.0
WAIT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Replica:
    name: str
    process: asyncio.subprocess.Process
    grpc_port: int
    http_port: int
    log: Path
    channel: grpc.aio.Channel = field(init=False)
    jobs: pb_grpc.JobsAsyncStub = field(init=False)
    workers: pb_grpc.WorkersAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.jobs = pb_grpc.JobsStub(self.channel)
        self.workers = pb_grpc.WorkersStub(self.channel)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def ready(self) -> None:
        await asyncio.wait_for(self.channel.channel_ready(), timeout=START_TIMEOUT)
        health = health_pb2_grpc.HealthStub(self.channel)
        while True:
            answer = await asyncio.wait_for(health.Check(health_pb2.HealthCheckRequest()), timeout=WAIT)
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.1)  # polling a subprocess's readiness: there is no event to wait on

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
        if self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        await self.channel.close(None)
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@asynccontextmanager
async def replicas(store_uri: str, count: int, log_dir: Path, **settings: str) -> AsyncIterator[list[Replica]]:
    """`count` replicas of `jobsd serve` on `store_uri`, ready (SERVING) when yielded, stopped afterwards."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSD_")}
    env.update(JOBSD_ADMIN_TOKEN=ADMIN, JOBSD_SERVICE_TOKEN=SERVICE, JOBSD_EXECUTORS="off", **settings)
    started: list[Replica] = []
    try:
        for n in range(count):
            grpc_port, http_port = free_port(), free_port()
            log = log_dir / f"replica-{n}.log"
            with log.open("wb") as sink:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "jobsd.cli",
                    "serve",
                    "--grpc-addr",
                    f"127.0.0.1:{grpc_port}",
                    "--http-addr",
                    f"127.0.0.1:{http_port}",
                    "--store",
                    store_uri,
                    "--data-dir",
                    str(log_dir / f"data-{n}"),
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=sink,
                    stderr=asyncio.subprocess.STDOUT,
                )
            started.append(Replica(f"replica-{n}", process, grpc_port, http_port, log))
        for replica in started:
            try:
                await replica.ready()
            except Exception:
                raise AssertionError(f"{replica.name} did not come up: {replica.log.read_text()[-3000:]}") from None
        yield started
    finally:
        for replica in started:
            await replica.stop()
