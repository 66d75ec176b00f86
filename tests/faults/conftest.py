"""`jobsd serve` as a real subprocess, for the faults a process meets: SIGTERM in the middle of an attack, memory
while one runs, a job that keeps coming back across restarts.

`serving` starts `jobsd serve` (`tests.support.subprocess_server`) with its own store and data directory; `Served`
talks to it over gRPC, reads its peak memory (`VmHWM` in /proc/<pid>/status) and stops it with SIGTERM, timing how
long it takes to exit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.jobs import TERMINAL, create_request
from tests.support.subprocess_server import START, ServeProcess, serve_process

ADMIN = "jobsd_faults-admin-token-0123456789abcdef"
WAIT = 30.0


class Served:
    """A `jobsd serve` of these tests: the process (`tests.support.subprocess_server`) and a gRPC channel to it."""

    def __init__(self, served: ServeProcess, channel: grpc.aio.Channel) -> None:
        self.served = served
        self.process = served.process
        self.log = served.log
        self.channel = channel
        self.jobs = pb_grpc.JobsStub(self.channel)
        self.md = (("authorization", f"Bearer {ADMIN}"),)

    async def create(self, kind: str, datasource: str | None = None, **fields: Any) -> pb.Job:
        request = create_request(kind, datasource, **fields)
        job: pb.Job = await self.jobs.CreateJob(request, metadata=self.md, timeout=WAIT)
        return job

    async def get(self, job_id: str) -> pb.Job:
        job: pb.Job = await self.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self.md, timeout=WAIT)
        return job

    def follow(self, job_id: str) -> Following:
        return Following(self, job_id)

    async def finished(self, job_id: str) -> pb.Job:
        following = self.follow(job_id)
        async with asyncio.timeout(WAIT):
            async for job in following.events():
                if job.status in TERMINAL:
                    return job
        raise AssertionError(f"job {job_id} did not end: {following.seen[-1:]}")

    def peak_rss_bytes(self) -> int:
        """VmHWM: the most resident memory the process has had so far."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds until the process had exited)."""
        return await self.served.terminate(START)

    def log_text(self) -> str:
        return self.served.log_text()


class Following:
    """A WatchJob stream opened now: it hears every change, the release at a shutdown included."""

    def __init__(self, serve: Served, job_id: str) -> None:
        self.seen: list[pb.Job] = []
        self._call = serve.jobs.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=serve.md)

    async def events(self) -> AsyncIterator[pb.Job]:
        async for event in self._call:
            self.seen.append(event.job)
            yield event.job

    async def until(self, status: int) -> pb.Job:
        async with asyncio.timeout(WAIT):
            async for job in self.events():
                if job.status == status:
                    return job
        raise AssertionError(f"the job never became {status}: {self.seen[-1:]}")

    async def rest(self) -> list[pb.Job]:
        """Every event until the stream ends (the server closes it when it stops)."""
        try:
            async with asyncio.timeout(WAIT):
                async for _ in self.events():
                    pass
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        return self.seen

    def cancel(self) -> None:
        self._call.cancel()


@asynccontextmanager
async def serving(state: Path, **settings: object) -> AsyncIterator[Served]:
    """`jobsd serve` with its state under `state` (reused across calls: a restart) and these JOBSD_ settings.

    What the test leaves running is killed at the end (the tests that measure a shutdown SIGTERM it themselves)."""
    await asyncio.to_thread(state.mkdir, parents=True, exist_ok=True)
    defaults: dict[str, object] = {
        "http_addr": "",
        "store": f"sqlite:///{state}/jobsd.db",
        "data_dir": str(state),
        "admin_token": ADMIN,
        "import_allow_networks": "127.0.0.1/32",
        "log_format": "text",
    }
    log = state / f"serve-{time.monotonic_ns()}.log"
    async with serve_process(log, {**defaults, **settings}, on_exit="kill") as served:
        channel = grpc.aio.insecure_channel(served.target)
        try:
            yield Served(served, channel)
        finally:
            await channel.close(grace=None)
