"""A real jobsd with its REST gateway on ephemeral 127.0.0.1 ports, a ManualClock and tokens.

`gw` talks to the gateway inside the app (in-process API); `remote_gw` to a standalone `GatewayServer` over
`GrpcJobsApi` against the same app's gRPC port; `any_gw` is each of them in turn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from jobsd.api.remote import GrpcJobsApi
from jobsd.app import JobsdApp
from jobsd.domain.clock import ManualClock
from jobsd.gateway.server import GatewayServer
from jobsd.store.base import JobStore
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.server import running_app

from .support import Gateway, make_settings


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module (or with indirect parametrisation) to start the app with other settings."""
    return {}


@pytest.fixture
async def app(
    tmp_path: Path, clock: ManualClock, settings_overrides: dict[str, Any], e2e_backend_store: JobStore | None
) -> AsyncIterator[JobsdApp]:
    async with running_app(make_settings(tmp_path, **settings_overrides), clock, e2e_backend_store) as jobsd:
        yield jobsd


async def _gateway(app: JobsdApp, clock: ManualClock, base: str) -> AsyncIterator[Gateway]:
    admin = await app.create_token("default", ["ADMIN"], "admin")
    worker = await app.create_token(None, ["JOBS:EXECUTE"], "worker")
    other = await app.create_token("other", ["ADMIN"], "other-admin")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    async with aiohttp.ClientSession() as http:
        try:
            yield Gateway(app, clock, http, base, pb_grpc.WorkersStub(channel), admin, worker, other)
        finally:
            await channel.close(None)


@pytest.fixture
async def gw(app: JobsdApp, clock: ManualClock) -> AsyncIterator[Gateway]:
    """The gateway `jobsd serve` runs in-process."""
    assert app.http_port is not None
    async for gateway in _gateway(app, clock, f"http://127.0.0.1:{app.http_port}"):
        yield gateway


@pytest.fixture
async def standalone(app: JobsdApp, tmp_path: Path) -> AsyncIterator[GatewayServer]:
    """`jobsd gateway --grpc-target`: a GatewayServer over GrpcJobsApi against the app's gRPC port."""
    remote = GrpcJobsApi(f"127.0.0.1:{app.grpc_port}")
    server = GatewayServer(remote, make_settings(tmp_path))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        await remote.close()


@pytest.fixture
async def remote_gw(app: JobsdApp, clock: ManualClock, standalone: GatewayServer) -> AsyncIterator[Gateway]:
    async for gateway in _gateway(app, clock, f"http://127.0.0.1:{standalone.port}"):
        yield gateway


@pytest.fixture(params=["in_process", "standalone_grpc"])
def any_gw(request: pytest.FixtureRequest, app: JobsdApp) -> Gateway:
    """Each gateway in turn: the same tests must pass in-process and over gRPC.

    (`app` is named so the end-to-end backend parametrisation reaches the gateway picked at run time.)"""
    name = "gw" if request.param == "in_process" else "remote_gw"
    gateway: Gateway = request.getfixturevalue(name)
    return gateway
