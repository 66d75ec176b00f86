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


_JOBS_API_PATHS = {
    "/v0/jobs",
    "/v0/jobs/events",
    "/v0/jobs/{id}",
    "/v0/jobs/{id}/cancel",
    "/v0/jobs/{id}/retry",
    "/v0/jobs/{id}/events",
    "/v0/jobs_log",
    "/v0/workspace",
    "/v1/workspace",
    "/v0/kinds",
    "/v0/regions",
    "/healthz",
    "/readyz",
    "/metrics",
}


async def _served_operations(http: aiohttp.ClientSession, port: int) -> dict[str, set[str]]:
    async with http.get(f"http://127.0.0.1:{port}/openapi.json") as reply:
        assert reply.status == 200
        document = await reply.json()
    assert document["openapi"].startswith("3.")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert {"200", "204"} & set(operation["responses"]), (method, path)
    return {path: set(operations) for path, operations in document["paths"].items()}


# The dashboard's page and its static assets: HTML, JS and CSS for a browser, not operations of the API.
_NOT_API = ("/", "/ui/{name}")


def _routed(app: JobsdApp) -> dict[str, set[str]]:
    """Every (path, method) of the API the running gateway answers, from its router (HEAD beside GET left out)."""
    routed: dict[str, set[str]] = {}
    assert app._gateway is not None and app._gateway._runner is not None
    for route in app._gateway._runner.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and route.method != "HEAD" and path not in ("/openapi.json", "/v0/jobs/", *_NOT_API):
            routed.setdefault(path, set()).add(route.method.lower())
    return routed


async def test_openapi_describes_exactly_the_gateway_endpoints(gw: Gateway) -> None:
    served = await _served_operations(gw.http, gw.app.http_port or 0)

    assert set(served) == _JOBS_API_PATHS
    assert served == _routed(gw.app)


async def test_with_the_executors_openapi_lists_the_datasource_routes_too(tmp_path: Path) -> None:
    app = JobsdApp(make_settings(tmp_path, executors=True, data_dir=str(tmp_path / "data")))
    await app.start()
    try:
        async with aiohttp.ClientSession() as http:
            served = await _served_operations(http, app.http_port or 0)
        routed = _routed(app)
    finally:
        await app.stop()

    assert served["/v0/datasources"] == {"get", "post"}
    assert served["/v0/datasources/{name}"] == {"get", "delete"}
    assert set(served) == _JOBS_API_PATHS | {"/v0/datasources", "/v0/datasources/{name}"}
    assert served == routed


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
