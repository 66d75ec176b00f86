"""Errors: the documented messages and statuses, the `{"error", "documentation"}` body, clear 4xx for oversized and
malformed requests, a generic 500 for the unexpected, 503 when the service behind the gateway is unreachable."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jobsd.api.remote import GrpcJobsApi
from jobsd.app import JobsdApp
from jobsd.gateway.server import GatewayServer
from jobsd_client import pb

from .support import Gateway, make_settings


async def test_unknown_job_is_404_with_the_documented_message(gw: Gateway) -> None:
    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry"), ("GET", "/events")):
        reply = await gw.call(method, f"/v0/jobs/no-such-job{suffix}")

        assert (reply.status, reply.error) == (404, 'Job with id "no-such-job" not found'), suffix
        assert reply.body["documentation"].startswith("https://")


async def test_cancelling_a_finished_job_is_400_not_cancellable(gw: Gateway) -> None:
    job = await gw.run("import")

    reply = await gw.post(f"/v0/jobs/{job.id}/cancel")

    # The documented message as it is (clients compare it); why, in its own field.
    assert (reply.status, reply.error) == (400, "Job is not in cancellable status")
    assert reply.body["detail"] == "it is done, and import jobs can be cancelled only while waiting"
    assert "cancel" in reply.body["documentation"]


async def test_cancelling_a_working_import_is_400_not_cancellable(gw: Gateway) -> None:
    job = await gw.create("import")
    await gw.claim("import")

    reply = await gw.post(f"/v0/jobs/{job.id}/cancel")

    assert (reply.status, reply.error) == (400, "Job is not in cancellable status")
    assert reply.body["detail"] == "it is working, and import jobs can be cancelled only while waiting"
    assert (await gw.get(f"/v0/jobs/{job.id}")).body["status"] == "working"


async def test_cancelling_twice_is_400_already_being_cancelled(gw: Gateway) -> None:
    job = await gw.create("populateview")
    await gw.claim("populateview")
    first = await gw.post(f"/v0/jobs/{job.id}/cancel")

    second = await gw.post(f"/v0/jobs/{job.id}/cancel")

    assert (first.status, first.body["status"], first.body["is_cancellable"]) == (200, "cancelling", False)
    assert (second.status, second.error) == (400, "Job is already being cancelled")


async def test_retrying_a_job_that_has_not_failed_is_400_and_creates_nothing(gw: Gateway) -> None:
    job = await gw.create("import")

    reply = await gw.post(f"/v0/jobs/{job.id}/retry")

    assert reply.status == 400
    assert "retried" in reply.error
    assert await gw.list_ids() == [job.id]


async def test_unknown_route_and_wrong_method_answer_json_errors(gw: Gateway) -> None:
    missing = await gw.get("/v0/nothing-here")
    wrong_method = await gw.call("DELETE", "/v0/jobs")

    assert missing.status == 404 and "/v0/nothing-here" in missing.error
    assert wrong_method.status == 405 and "DELETE" in wrong_method.error
    assert "GET" in wrong_method.headers["Allow"]


@pytest.mark.parametrize("settings_overrides", [{"max_request_bytes": 1024}])
async def test_an_oversized_body_is_413_and_changes_nothing(gw: Gateway, settings_overrides: dict[str, Any]) -> None:
    job = await gw.create("import")

    declared = await gw.post(f"/v0/jobs/{job.id}/cancel", data=b"x" * 2048)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"y" * 512

    async with gw.http.post(
        f"{gw.base}/v0/jobs/{job.id}/cancel", data=chunks(), headers={"Authorization": f"Bearer {gw.admin}"}
    ) as response:
        chunked = (response.status, await response.json())

    assert declared.status == 413 and "1024 bytes" in declared.error
    assert chunked[0] == 413 and set(chunked[1]) == {"error", "documentation"}
    assert (await gw.get(f"/v0/jobs/{job.id}")).body["status"] == "waiting"
    # A small body is fine (the Tinybird CLIs send an empty one).
    assert (await gw.post(f"/v0/jobs/{job.id}/cancel", data=b"")).status == 200


async def _raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /v0/jobs?q=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", id="url-too-long"),
        pytest.param(
            b"GET /v0/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n", id="header-too-long"
        ),
        pytest.param(b"THIS IS NOT HTTP\r\n\r\n", id="garbage-request-line"),
        pytest.param(b"GET /v0/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: banana\r\n\r\n", id="bad-content-length"),
    ],
)
async def test_malformed_or_oversized_requests_get_a_clear_4xx(gw: Gateway, request_bytes: bytes) -> None:
    assert gw.app.http_port is not None

    answer = await _raw_exchange(gw.app.http_port, request_bytes)

    status_line = answer.split(b"\r\n", 1)[0]
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", status_line), status_line
    assert b"Traceback" not in answer
    # The server is still serving.
    assert (await gw.get("/healthz", anonymous=True)).status == 200


class _ExplodingApi:
    """A JobsApi whose every call fails the way a bug would: no real component can be made to do that on purpose."""

    def __getattr__(self, name: str) -> Any:
        async def explode(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internal detail /srv/jobsd/store.py line 42")

        return explode


async def test_an_unexpected_exception_is_a_generic_500_and_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = GatewayServer(_ExplodingApi(), make_settings(tmp_path))
    port = await server.start()
    try:
        with caplog.at_level(logging.ERROR, logger="jobsd.gateway"):
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/v0/jobs/x") as response:
                status, body = response.status, await response.json()
    finally:
        await server.stop()

    assert status == 500
    assert set(body) == {"error", "documentation"}
    assert "secret" not in body["error"] and "Traceback" not in body["error"]
    assert any("/v0/jobs/x" in record.getMessage() for record in caplog.records)


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_an_unreachable_jobsd_is_503_and_not_ready_while_the_gateway_stays_alive(tmp_path: Path) -> None:
    remote = GrpcJobsApi(f"127.0.0.1:{_unused_port()}")
    server = GatewayServer(remote, make_settings(tmp_path))
    port = await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            replies = {}
            for path in ("/v0/jobs", "/readyz", "/healthz"):
                async with http.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": "Bearer t"}) as r:
                    replies[path] = (r.status, await r.json())
    finally:
        await server.stop()
        await remote.close()

    assert replies["/v0/jobs"][0] == 503 and set(replies["/v0/jobs"][1]) == {"error", "documentation"}
    assert replies["/readyz"][0] == 503
    assert replies["/healthz"] == (200, {"status": "ok"})


async def test_errors_over_grpc_keep_their_status_message_and_field(remote_gw: Gateway) -> None:
    done = await remote_gw.run("import")

    not_found = await remote_gw.get("/v0/jobs/nope")
    not_cancellable = await remote_gw.post(f"/v0/jobs/{done.id}/cancel")
    bad_page = await remote_gw.get("/v0/jobs", params={"page_token": "forged"})
    no_token = await remote_gw.get("/v0/jobs", anonymous=True)

    assert (not_found.status, not_found.error) == (404, 'Job with id "nope" not found')
    assert (not_cancellable.status, not_cancellable.error) == (400, "Job is not in cancellable status")
    assert not_cancellable.body["detail"] == "it is done, and import jobs can be cancelled only while waiting"
    assert bad_page.status == 400 and bad_page.error.startswith("page_token:")
    assert (no_token.status, no_token.error) == (403, "invalid authentication token")


async def test_stop_is_safe_twice_and_start_reports_the_bound_port(app: JobsdApp, tmp_path: Path) -> None:
    server = GatewayServer(app.api, make_settings(tmp_path))
    port = await server.start()
    assert port > 0 and server.port == port

    await server.stop()
    await server.stop()

    assert server.port is None
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz"):
            pass


async def test_a_job_created_with_a_bad_argument_is_refused_by_name_over_the_api(gw: Gateway) -> None:
    # The gateway creates no jobs itself; this documents that argument errors keep their field on the way out.
    reply = await gw.get("/v0/jobs", params={"limit": "1000"})

    assert reply.status == 400 and reply.error.startswith("limit:")
    assert await gw.list_ids() == []
    assert pb.ListJobsRequest().page_size == 0
