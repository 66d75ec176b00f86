"""The harness of the per-tenant limit attacks (watch caps, Struct sizes, page bytes, rate limits).

`tenant_server`: a real `JobsdApp` (gRPC and the REST gateway on ephemeral 127.0.0.1 ports, a real SQLite file,
no executors: the limits under attack are the service's, not the data plane's) on a `ManualClock`, so the rate
limiter's time is moved by the test instead of waited for. Two workspaces, `alpha` (the attacker) and `beta` (the
bystander), each with an ADMIN token; a worker token that spans every workspace.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc

from jobsd.app import JobsdApp
from jobsd.domain.clock import ManualClock
from jobsd.service.hub import Watcher, WatchHub
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.bounded import settle
from tests.support.endpoints import AppEndpoints, bearer_header
from tests.support.server import T0, make_settings, stop_app

T = TypeVar("T")

# Every wait on the server is bounded by this (seconds): a hang fails the test instead of stalling the suite.
WAIT = 10.0


@dataclass
class Tenants(AppEndpoints):
    app: JobsdApp
    clock: ManualClock
    channel: grpc.aio.Channel
    jobs: pb_grpc.JobsAsyncStub
    workers: pb_grpc.WorkersAsyncStub
    http: aiohttp.ClientSession
    alpha: str  # ADMIN of workspace alpha (the attacker)
    beta: str  # ADMIN of workspace beta (the bystander)
    worker: str  # JOBS:EXECUTE on every workspace
    alpha_id: str
    beta_id: str
    hub: HubChanges

    bearer = staticmethod(bearer_header)

    async def create(self, token: str, **fields: Any) -> pb.Job:
        """A waiting import job (the URL is never fetched: no executors run)."""
        request = pb.CreateJobRequest(kind="import", url="https://example.com/data.csv")
        request.datasource.update(fields.pop("datasource", {"name": "events"}))
        if "params" in fields:
            request.params.update(fields.pop("params"))
        for name, value in fields.items():
            setattr(request, name, value)
        job: pb.Job = await bounded(self.jobs.CreateJob(request, metadata=self.md(token)))
        return job

    async def list_all(self, token: str, page_size: int = 0) -> tuple[list[pb.Job], int]:
        """Every job ListJobs shows `token`, page by page; and how many pages it took."""
        jobs: list[pb.Job] = []
        page_token, pages = "", 0
        while True:
            page = await bounded(
                self.jobs.ListJobs(
                    pb.ListJobsRequest(page_size=page_size, page_token=page_token), metadata=self.md(token)
                )
            )
            pages += 1
            jobs.extend(page.jobs)
            page_token = page.next_page_token
            if not page_token:
                return jobs, pages


@asynccontextmanager
async def tenant_server(tmp_path: Path, **overrides: Any) -> AsyncIterator[Tenants]:
    settings = make_settings(tmp_path, http_addr="127.0.0.1:0", **overrides)
    clock = ManualClock(T0)
    app = JobsdApp(settings, clock=clock)
    try:
        await app.start()
        alpha = await app.create_token("alpha", ["ADMIN"], "alpha-admin")
        beta = await app.create_token("beta", ["ADMIN"], "beta-admin")
        worker = await app.create_token(None, ["JOBS:EXECUTE"], "worker")
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{app.grpc_port}", options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        try:
            async with aiohttp.ClientSession() as http:
                yield Tenants(
                    app,
                    clock,
                    channel,
                    pb_grpc.JobsStub(channel),
                    pb_grpc.WorkersStub(channel),
                    http,
                    alpha,
                    beta,
                    worker,
                    await app.workspace_id_of("alpha"),
                    await app.workspace_id_of("beta"),
                    HubChanges(app.hub),
                )
        finally:
            await settle("closing the test's gRPC channel", channel.close(None))
    finally:
        await stop_app(app)


async def bounded(awaitable: Awaitable[T]) -> T:
    """`awaitable`, failing the test if it takes longer than WAIT seconds (a hang, not a slow machine)."""
    return await asyncio.wait_for(awaitable, timeout=WAIT)


async def rpc_error(awaitable: Any) -> grpc.aio.AioRpcError:
    """The gRPC error `awaitable` fails with (the test fails if it succeeds); bounded by WAIT."""
    try:
        result = await asyncio.wait_for(awaitable, timeout=WAIT)
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"expected a gRPC error, got {type(result).__name__}: {str(result)[:200]}")


async def next_event(stream: Any) -> pb.JobEvent:
    """The next event of a WatchJob / WatchJobs call (bounded); the test fails if the stream ended."""
    event = await bounded(stream.read())
    assert isinstance(event, pb.JobEvent), f"the stream ended: {event!r}"
    return event


def trailer(error: grpc.aio.AioRpcError, key: str) -> str | None:
    trailing: Iterable[Any] = error.trailing_metadata() or ()
    for name, value in trailing:
        if name == key:
            return str(value)
    return None


class HubChanges:
    """Wakes a waiting test each time the server's watch hub gives a place back (wraps `WatchHub.unsubscribe`,
    which the server calls on its own loop when it has handled a stream's end)."""

    def __init__(self, hub: WatchHub) -> None:
        self._changed = asyncio.Event()
        real = hub.unsubscribe

        def unsubscribe(sub: Watcher) -> None:
            real(sub)
            self._changed.set()

        hub.unsubscribe = unsubscribe  # type: ignore[method-assign]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait (bounded) until `condition()` holds, re-checking it at each place given back."""
        try:
            async with asyncio.timeout(WAIT):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not within {WAIT} s: {what}") from None
