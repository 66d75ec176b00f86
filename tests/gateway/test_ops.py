"""Operations endpoints (/healthz, /readyz, /metrics, /openapi.json), the workspace and regions answers the CLIs
read, and `run_standalone` (what `jobsd gateway --grpc-target` runs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from jobsd.app import JobsdApp
from jobsd.gateway import run_standalone

from .support import Gateway, make_settings


async def test_health_and_readiness_need_no_token(gw: Gateway) -> None:
    health = await gw.get("/healthz", anonymous=True)
    ready = await gw.get("/readyz", anonymous=True)

    assert (health.status, health.body) == (200, {"status": "ok"})
    assert (ready.status, ready.body) == (200, {"status": "ready"})


async def test_metrics_count_requests_by_route_template_and_status(gw: Gateway) -> None:
    job = await gw.create("import")
    await gw.get(f"/v0/jobs/{job.id}")
    await gw.get("/v0/jobs/missing-one")
    await gw.get("/v0/jobs/missing-two")
    await gw.get("/some/random/path")

    metrics = await gw.get("/metrics", anonymous=True)

    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body
    assert 'jobsd_http_requests_total{method="GET",route="/v0/jobs/{id}",status="200"} 1.0' in text
    assert 'jobsd_http_requests_total{method="GET",route="/v0/jobs/{id}",status="404"} 2.0' in text
    assert 'route="unmatched",status="404"' in text
    assert job.id not in text and "missing-one" not in text  # ids never become label values
    assert "jobsd_http_request_duration_seconds_bucket" in text


async def test_openapi_describes_exactly_the_gateway_endpoints(gw: Gateway) -> None:
    reply = await gw.get("/openapi.json", anonymous=True)

    assert reply.status == 200
    document = reply.body
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {
        "/v0/jobs",
        "/v0/jobs/events",
        "/v0/jobs/{id}",
        "/v0/jobs/{id}/cancel",
        "/v0/jobs/{id}/retry",
        "/v0/jobs/{id}/events",
        "/v0/jobs_log",
        "/v0/workspace",
        "/v1/workspace",
        "/v0/regions",
        "/healthz",
        "/readyz",
        "/metrics",
    }
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert "200" in operation["responses"], (method, path)


async def test_workspace_gives_the_cli_its_id_name_and_scope(gw: Gateway) -> None:
    for path in ("/v0/workspace", "/v1/workspace"):
        reply = await gw.get(path)

        assert reply.status == 200
        assert reply.body["name"] == "default"
        assert reply.body["id"] == await gw.app.workspace_id_of("default")
        assert (reply.body["scope"], reply.body["scopes"]) == ("ADMIN", ["ADMIN"])


async def test_regions_name_this_gateway(gw: Gateway) -> None:
    reply = await gw.get("/v0/regions", anonymous=True)

    assert reply.status == 200
    assert [(r["api_host"], r["host"]) for r in reply.body["regions"]] == [(gw.base, gw.base)]


async def test_run_standalone_serves_until_stopped(app: JobsdApp, tmp_path: Path) -> None:
    admin = await app.create_token("default", ["ADMIN"], "admin")
    stop = asyncio.Event()
    bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(
        run_standalone(make_settings(tmp_path), f"127.0.0.1:{app.grpc_port}", stop, on_listening=bound.set_result)
    )
    port = await asyncio.wait_for(bound, 10)
    base = f"http://127.0.0.1:{port}"

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v0/workspace", headers={"Authorization": f"Bearer {admin}"}) as response:
            workspace = (response.status, (await response.json())["name"])
        async with http.get(f"{base}/readyz") as response:
            ready = response.status
        stop.set()
        await asyncio.wait_for(serving, 10)
        try:
            async with http.get(f"{base}/healthz"):
                still_serving = True
        except aiohttp.ClientConnectionError:
            still_serving = False

    assert workspace == (200, "default")
    assert ready == 200
    assert not still_serving
