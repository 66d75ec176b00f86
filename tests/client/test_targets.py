"""The SDK names a target of the wrong protocol: a URL where HOST:PORT is expected (refused before any call), an
HTTP/1 server answering as the gRPC target, a gRPC server answering the REST client."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from jobsd_client import AsyncJobsClient, InvalidArgument, JobsClient, Unavailable
from jobsd_client._datasources import DataSourcesClient, DataSourcesError
from jobsd_client.errors import WRONG_PROTOCOL_GRPC
from tests.support.server import serving_http

from .conftest import Jobsd


@pytest.mark.parametrize("url", ["http://127.0.0.1:50051", "https://jobs.example.com:443/", "grpc://10.0.0.1:50051"])
def test_a_url_as_the_grpc_target_is_refused_naming_the_host_and_port(url: str) -> None:
    hostport = url.split("://", 1)[1].rstrip("/")
    for client in (AsyncJobsClient, JobsClient):
        with pytest.raises(InvalidArgument) as refused:
            client(url, "token")
        assert refused.value.field == "target"
        assert f"got the URL {url!r}: give {hostport}" in str(refused.value)


def test_grpc_target_schemes_still_pass() -> None:
    for target in ("127.0.0.1:50051", "dns:///jobs.internal:50051", "unix:///run/jobsd.sock", "[::1]:50051"):
        JobsClient(target, "token").close()


async def test_an_http1_server_as_the_grpc_target_is_named() -> None:
    async with serving_http(web.Application()) as base:
        client = AsyncJobsClient(base.removeprefix("http://"), "token", timeout=30)
        try:
            with pytest.raises(Unavailable) as refused:
                await client.get_workspace()
        finally:
            await client.close()
    assert refused.value.message == WRONG_PROTOCOL_GRPC


async def test_the_grpc_port_as_the_rest_gateway_is_named(jobsd: Jobsd) -> None:
    rest = DataSourcesClient(f"http://{jobsd.target}", jobsd.admin, timeout=30)
    with pytest.raises(DataSourcesError) as refused:
        await asyncio.to_thread(rest.list)
    message = str(refused.value)
    assert message.startswith(f"http://{jobsd.target} answered in binary (HTTP/2) frames, not HTTP/1.1:")
    assert message.isprintable()
