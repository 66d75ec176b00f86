"""`jobsd serve` as a real subprocess, for the faults a process meets: SIGTERM in the middle of an attack, memory
while one runs, a job that keeps coming back across restarts.

`ServeProcess` starts `jobsd serve --banner` on ephemeral ports (read back from its banner) with its own store
and data directory, talks to it over gRPC, reads its peak memory (`VmHWM` in /proc/<pid>/status) and stops it with
SIGTERM, timing how long it takes to exit.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc

ADMIN = "jobsd_faults-admin-token-0123456789abcdef"
# Starting a process (imports, the store, DuckDB) on a loaded machine: generous, a hang still fails.
START = 60.0
WAIT = 30.0
TERMINAL = {pb.JOB_STATUS_DONE, pb.JOB_STATUS_ERROR, pb.JOB_STATUS_CANCELLED}
_BANNER = re.compile(rb"jobsd is serving gRPC on 127\.0\.0\.1:(\d+)")


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


class ServeProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.process = process
        self.port = port
        self.log = log
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.jobs = pb_grpc.JobsStub(self.channel)
        self.md = (("authorization", f"Bearer {ADMIN}"),)

    async def create(self, kind: str, datasource: str | None = None, **fields: Any) -> pb.Job:
        params = fields.pop("params", None)
        request = pb.CreateJobRequest(kind=kind, **fields)
        if datasource is not None:
            request.datasource.CopyFrom(struct({"name": datasource}))
        if params:
            request.params.CopyFrom(struct(params))
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
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout=START)
        return code, time.monotonic() - started

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


class Following:
    """A WatchJob stream opened now: it hears every change, the release at a shutdown included."""

    def __init__(self, serve: ServeProcess, job_id: str) -> None:
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


def _environment(**settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSD_")}
    env.update({f"JOBSD_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@asynccontextmanager
async def serving(state: Path, **settings: object) -> AsyncIterator[ServeProcess]:
    """`jobsd serve` with its state under `state` (reused across calls: a restart) and these JOBSD_ settings."""
    await asyncio.to_thread(state.mkdir, parents=True, exist_ok=True)
    log = state / f"serve-{time.monotonic_ns()}.log"
    defaults: dict[str, object] = {
        "grpc_addr": "127.0.0.1:0",
        "http_addr": "",
        "store": f"sqlite:///{state}/jobsd.db",
        "data_dir": str(state),
        "admin_token": ADMIN,
        "import_allow_networks": "127.0.0.1/32",
        "log_format": "text",
    }
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jobsd.cli",
            "serve",
            "--banner",
            env=_environment(**{**defaults, **settings}),
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    served: ServeProcess | None = None
    try:
        assert process.stdout is not None
        async with asyncio.timeout(START):
            while True:
                line = await process.stdout.readline()
                if not line:
                    raise AssertionError(f"jobsd serve exited before serving:\n{log.read_text()[-3000:]}")
                match = _BANNER.search(line)
                if match:
                    break
        # Whatever else it prints is read, so a full pipe can never block it.
        drain = asyncio.create_task(process.stdout.read())
        served = ServeProcess(process, int(match.group(1)), log)
        await asyncio.wait_for(served.channel.channel_ready(), timeout=START)
        yield served
    finally:
        if served is not None:
            await served.channel.close(grace=None)
            drain.cancel()
        if process.returncode is None:
            process.kill()
            await process.wait()
