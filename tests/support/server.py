"""The one server harness of the end-to-end suites (tests/core, tests/gateway, tests/client, tests/executors).

`running_app` starts a real JobsdApp on ephemeral 127.0.0.1 ports; `running_server` adds gRPC stubs and tokens
(`Server`). The root conftest's `e2e_backend` fixture parametrises them over the backends of
`tests.support.backends` (JOBSD_TEST_E2E_BACKENDS chooses; `sqlite` by default); `e2e_store` makes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import grpc
import pytest
from aiohttp import web

from jobsd.api.codec import JobWireCodec
from jobsd.app import JobsdApp
from jobsd.domain.clock import Clock, ManualClock
from jobsd.settings import Settings
from jobsd.store.base import JobStore
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.backends import BACKENDS
from tests.support.bounded import settle
from tests.support.endpoints import bearer_metadata

__all__ = [
    "T0",
    "WAIT",
    "EventStream",
    "Server",
    "bounded",
    "e2e_store",
    "error_field",
    "executor_settings",
    "make_settings",
    "read_event",
    "read_events",
    "rpc_error",
    "running_app",
    "running_server",
    "serving_http",
    "stop_app",
]

# Where the tests' ManualClock starts.
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

T = TypeVar("T")

# Every wait on the server is bounded by this (seconds): a hang fails the test instead of stalling the suite.
WAIT = 5.0


@dataclass
class Server:
    app: JobsdApp
    clock: ManualClock
    channel: grpc.aio.Channel
    jobs: pb_grpc.JobsAsyncStub
    workers: pb_grpc.WorkersAsyncStub
    admin: str  # ADMIN of workspace "default"
    worker: str  # JOBS:EXECUTE on every workspace
    service: str  # JOBS:CREATE + JOBS:EXECUTE on every workspace
    workspace_id: str

    @property
    def target(self) -> str:
        """The gRPC address of the server."""
        return f"127.0.0.1:{self.app.grpc_port}"

    @staticmethod
    def md(token: str | None) -> tuple[tuple[str, str], ...]:
        return () if token is None else bearer_metadata(token)

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

    async def create_kind(
        self, kind: str, target: str | None = "events", token: str | None = None, **fields: object
    ) -> pb.Job:
        """A valid job of `kind` writing into data source `target` (sql/url/condition filled in as the kind needs)."""
        request = pb.CreateJobRequest(kind=kind, **fields)  # type: ignore[arg-type]
        if target is not None and not request.HasField("datasource"):
            request.datasource.update({"name": target})
        if kind == "import" and not request.url:
            request.url = "https://example.com/data.csv"
        if kind in ("populateview", "copy", "query") and not request.query_sql:
            request.query_sql = "SELECT 1"
        if kind == "delete_data" and not request.HasField("params"):
            request.params.update({"delete_condition": "a = 1"})
        return await self.jobs.CreateJob(request, metadata=self.md(token or self.admin))

    async def claim_job(self, job_id: str, worker_id: str = "w1") -> pb.ClaimJobResponse:
        """Claim and check that the claimed job is `job_id` (the only waiting one in the test)."""
        claim = await self.claim(worker_id=worker_id)
        assert claim.job.id == job_id, f"expected to claim {job_id}, got {claim.job.id or 'nothing'}"
        return claim

    async def get(self, job_id: str, token: str | None = None) -> pb.Job:
        return await self.jobs.GetJob(pb.GetJobRequest(job_id=job_id), metadata=self.md(token or self.admin))

    async def cancel(self, job_id: str, token: str | None = None) -> pb.Job:
        return await self.jobs.CancelJob(pb.CancelJobRequest(job_id=job_id), metadata=self.md(token or self.admin))

    async def retry(self, job_id: str, token: str | None = None) -> pb.Job:
        return await self.jobs.RetryJob(pb.RetryJobRequest(job_id=job_id), metadata=self.md(token or self.admin))

    async def heartbeat(
        self, job_id: str, lease: str, progress: pb.ProgressUpdate | None = None, token: str | None = None
    ) -> pb.HeartbeatResponse:
        request = pb.HeartbeatRequest(job_id=job_id, lease_token=lease)
        if progress is not None:
            request.progress.CopyFrom(progress)
        return await self.workers.Heartbeat(request, metadata=self.md(token or self.worker))

    async def finish(
        self,
        job_id: str,
        lease: str,
        status: pb.JobStatus.ValueType = pb.JOB_STATUS_DONE,
        token: str | None = None,
        **fields: object,
    ) -> pb.Job:
        request = pb.FinishJobRequest(job_id=job_id, lease_token=lease, status=status, **fields)  # type: ignore[arg-type]
        return await self.workers.FinishJob(request, metadata=self.md(token or self.worker))

    async def job_log(self, job_id: str, token: str | None = None) -> list[pb.JobLogEntry]:
        """Every jobs_log row of the job, oldest first."""
        response = await self.jobs.ListJobsLog(
            pb.ListJobsLogRequest(job_id=job_id), metadata=self.md(token or self.admin)
        )
        return sorted(response.entries, key=lambda e: e.revision)

    async def list_ids(self, token: str | None = None, **filters: object) -> list[str]:
        response = await self.jobs.ListJobs(
            pb.ListJobsRequest(**filters),  # type: ignore[arg-type]
            metadata=self.md(token or self.admin),
        )
        return [j.id for j in response.jobs]

    def watch(self, job_id: str, since: int = 0, token: str | None = None) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
        return self.jobs.WatchJob(
            pb.WatchJobRequest(job_id=job_id, since_revision=since), metadata=self.md(token or self.admin)
        )

    async def token(self, workspace: str | None, *scopes: str) -> str:
        """A new token of `workspace` (None: every workspace) with these scopes."""
        return await self.app.create_token(workspace, list(scopes), "test")


@contextlib.asynccontextmanager
async def serving_http(app: web.Application) -> AsyncIterator[str]:
    """Serve `app` on an ephemeral 127.0.0.1 port for the block; yields its base URL (`http://127.0.0.1:PORT`)."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await settle("stopping the test's HTTP server", runner.cleanup())


def executor_settings(tmp_path: Path, **overrides: object) -> Settings:
    """`make_settings` for a server that runs its executors: the gateway on (data-source routes), the data plane
    in tmp_path, real-time sweeps, and imports allowed to fetch from 127.0.0.1 (where the tests serve files)."""
    base: dict[str, object] = {
        "http_addr": "127.0.0.1:0",
        "executors": True,
        "data_dir": str(tmp_path / "data"),
        "import_allow_networks": ("127.0.0.1/32",),
        "sweep_interval_seconds": Settings().sweep_interval_seconds,
    }
    return make_settings(tmp_path, **{**base, **overrides})


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    """Settings of a test server: ephemeral 127.0.0.1 port, SQLite in tmp_path, no gateway or executors unless
    asked, no background sweeps (tests sweep after moving the clock), a short shutdown grace."""
    base = Settings(
        grpc_addr="127.0.0.1:0",
        http_addr="",
        store=f"sqlite:///{tmp_path}/jobsd.db",
        executors=False,
        sweep_interval_seconds=3600,  # tests sweep explicitly after moving the clock
        grace_seconds=0.5,
    )
    return base.with_changes(**overrides)


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, clock: Clock | None = None, store: JobStore | None = None
) -> AsyncIterator[JobsdApp]:
    """A started JobsdApp (on `store`, else on `settings.store`), stopped on exit (TeardownHung if it does not stop)."""
    app = JobsdApp(settings, clock=clock, store=store)
    try:
        await app.start()
        yield app
    finally:
        await stop_app(app)


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, clock: ManualClock, store: JobStore | None = None
) -> AsyncIterator[Server]:
    """A started JobsdApp with these settings, its stubs and tokens; stopped on exit."""
    async with running_app(settings, clock, store) as app:
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
            await settle("closing the test's gRPC channel", channel.close(None))


async def stop_app(app: JobsdApp) -> None:
    """`app.stop()`, which ends within its grace and shutdown margin; TeardownHung (naming where) if it does not."""
    settings = app.settings
    await settle("stopping jobsd", app.stop(), settings.grace_seconds + settings.shutdown_margin_seconds + 10.0)


@contextlib.asynccontextmanager
async def e2e_store(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> AsyncIterator[JobStore | None]:
    """The store an end-to-end server runs on: None for `sqlite` (the app opens settings.store, as `jobsd serve`
    does), else a fresh one of the backend (the app opens and closes it)."""
    if backend == "sqlite":
        yield None
        return
    async with BACKENDS[backend].make(request, tmp_path, JobWireCodec()) as store:
        yield store


# A WatchJob / WatchJobs call of the async stub.
EventStream: TypeAlias = "grpc.aio.UnaryStreamCall[Any, pb.JobEvent]"


async def read_event(stream: EventStream) -> pb.JobEvent | None:
    """The next event, or None once the server closed the stream."""
    event = await stream.read()
    if event is grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc-stubs does not declare grpc.aio.EOF
        return None
    assert isinstance(event, pb.JobEvent), event
    return event


async def read_events(stream: EventStream, count: int | None = None) -> list[pb.JobEvent]:
    """Read `count` events (or until the server closes the stream)."""
    events: list[pb.JobEvent] = []
    while count is None or len(events) < count:
        event = await read_event(stream)
        if event is None:
            break
        events.append(event)
    return events


async def bounded(awaitable: Awaitable[T]) -> T:
    """`awaitable`, failing the test if it takes longer than WAIT seconds (a hang, not a slow machine)."""
    return await asyncio.wait_for(awaitable, timeout=WAIT)


async def rpc_error(awaitable: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The gRPC error `awaitable` fails with (the test fails if it succeeds); bounded by WAIT."""
    try:
        result = await asyncio.wait_for(awaitable, timeout=WAIT)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"expected a gRPC error, got {type(result).__name__}: {result}")


def error_field(error: grpc.aio.AioRpcError) -> str | None:
    """The request field an INVALID_ARGUMENT names (trailing metadata `jobsd-field`)."""
    trailing: Iterable[Any] = error.trailing_metadata() or ()
    for key, value in trailing:
        if key == "jobsd-field":
            return str(value)
    return None
