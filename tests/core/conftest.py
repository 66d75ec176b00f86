"""A real jobsd (gRPC on an ephemeral port, SQLite file in tmp_path) with a ManualClock, and tokens for it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from jobsd.app import JobsdApp
from jobsd.domain.clock import ManualClock
from jobsd.settings import Settings
from jobsd_client._proto import jobs_pb2 as pb
from jobsd_client._proto import jobs_pb2_grpc as pb_grpc


@dataclass
class Server:
    app: JobsdApp
    clock: ManualClock
    channel: grpc.aio.Channel
    jobs: pb_grpc.JobsStub
    workers: pb_grpc.WorkersStub
    admin: str  # ADMIN of workspace "default"
    worker: str  # JOBS:EXECUTE on every workspace
    service: str  # JOBS:CREATE + JOBS:EXECUTE on every workspace
    workspace_id: str

    @staticmethod
    def md(token: str | None) -> tuple[tuple[str, str], ...]:
        return () if token is None else (("authorization", f"Bearer {token}"),)

    async def create(self, token: str | None = None, **fields: object) -> pb.Job:
        request = pb.CreateJobRequest(**fields)  # type: ignore[arg-type]
        if not request.kind:
            request.kind = "import"
            request.url = "https://example.com/data.csv"
        if not request.HasField("datasource") and request.kind != "query":
            request.datasource.update({"name": "events"})
        return await self.jobs.CreateJob(request, metadata=self.md(token or self.admin))

    async def claim(self, kinds: tuple[str, ...] = (), worker_id: str = "w1", wait: float = 0) -> pb.ClaimJobResponse:
        return await self.workers.ClaimJob(
            pb.ClaimJobRequest(worker_id=worker_id, kinds=list(kinds), wait_seconds=wait), metadata=self.md(self.worker)
        )


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    base = Settings(
        grpc_addr="127.0.0.1:0",
        http_addr="",
        store=f"sqlite:///{tmp_path}/jobsd.db",
        executors=False,
        sweep_interval_seconds=3600,  # tests sweep explicitly after moving the clock
        grace_seconds=0.5,
    )
    return base.with_changes(**overrides)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Server]:
    app = JobsdApp(make_settings(tmp_path), clock=clock)
    await app.start()
    admin = await app.create_token("default", ["ADMIN"], "admin")
    worker = await app.create_token(None, ["JOBS:EXECUTE"], "worker")
    service = await app.create_token(None, ["JOBS:CREATE", "JOBS:EXECUTE"], "service")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    try:
        yield Server(
            app,
            clock,
            channel,
            pb_grpc.JobsStub(channel),
            pb_grpc.WorkersStub(channel),
            admin,
            worker,
            service,
            await app.workspace_id_of("default"),
        )
    finally:
        await channel.close()
        await app.stop()


async def read_events(stream: grpc.aio.UnaryStreamCall, count: int | None = None) -> list[pb.JobEvent]:  # type: ignore[type-arg]
    """Read `count` events (or until the server closes the stream)."""
    events: list[pb.JobEvent] = []
    while count is None or len(events) < count:
        event = await stream.read()
        if event is grpc.aio.EOF:
            break
        events.append(event)
    return events
