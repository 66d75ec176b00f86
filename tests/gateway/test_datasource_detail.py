"""The `datasource` of a job detail: the data plane's full object once the executors ran the job, else the creator's.

A real jobsd with its executors on (DuckDB data plane in tmp_path) imports a CSV served by a local HTTP server,
the way `jobsctl import URL --datasource events` asks for it (a name only); the detail then shows the full
Tinybird data-source object of the reference example, with current statistics, and one id everywhere (the rendering
rules themselves: test_datasource_render.py). Run against the in-process gateway and the standalone one over gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from jobsd.domain.model import datasource_id_for
from jobsd_client import pb
from tests.support.server import serving_http

from .support import Gateway, load_golden
from .test_golden import shape

_WAIT = 30.0
# 3 rows of (Int64, String): 8 bytes + the text.
EVENTS_CSV = "user_id,event\n1,view\n2,buy\n3,view\n"
EVENTS_BYTES = 3 * 8 + len("view") + len("buy") + len("view")


@pytest.fixture
def settings_overrides(tmp_path: Path) -> dict[str, Any]:
    # The CSV is served on 127.0.0.1, which imports refuse unless the operator allows it.
    return {"executors": True, "data_dir": str(tmp_path / "data"), "import_allow_networks": ("127.0.0.1/32",)}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[str]:
    """Base URL of a local HTTP server with /events.csv (and nothing else: other paths are 404)."""
    (tmp_path / "events.csv").write_text(EVENTS_CSV)
    app = web.Application()
    app.router.add_static("/", tmp_path, show_index=False)
    async with serving_http(app) as base:
        yield base


async def run_to_the_end(gw: Gateway, **fields: Any) -> pb.Job:
    """Create an import as the CLI does (datasource by name only) and follow it until the executors end it."""
    created = await gw.create("import", **fields)
    last: pb.Job | None = None
    async with asyncio.timeout(_WAIT):
        async for event in gw.app.api.watch_job(gw.admin, pb.WatchJobRequest(job_id=created.id)):
            if event.HasField("job"):
                last = event.job
    assert last is not None and last.status in (pb.JOB_STATUS_DONE, pb.JOB_STATUS_ERROR), last
    return last


def _in_process(gw: Gateway, path: str) -> str:
    """The data-source routes live on the in-process gateway (where the data plane is), whichever `gw` is."""
    return f"http://127.0.0.1:{gw.app.http_port}{path}"


async def test_a_detail_after_a_real_import_shows_the_full_reference_object(any_gw: Gateway, served: str) -> None:
    job = await run_to_the_end(any_gw, datasource={"name": "events"}, url=f"{served}/events.csv")
    assert job.status == pb.JOB_STATUS_DONE, job.error

    body = (await any_gw.get(f"/v0/jobs/{job.id}")).body

    reference = load_golden("import")["example"]["datasource"]
    datasource = body["datasource"]
    # Every key of the reference's object, with its types and nesting, plus the data source's current statistics.
    assert shape({k: v for k, v in datasource.items() if k != "statistics"}) == shape(reference)
    assert list(datasource)[:2] == ["id", "name"]
    assert datasource["statistics"] == body["statistics"] == {"bytes": EVENTS_BYTES, "row_count": 3}
    assert (datasource["name"], datasource["type"], datasource["headers"]) == (
        "events",
        "csv",
        {"cached_delimiter": ","},
    )
    # The rest of the detail keeps the reference's shape too.
    assert shape({k: v for k, v in body.items() if k != "datasource"}) == shape(
        {k: v for k, v in load_golden("import")["example"].items() if k != "datasource"}
    )


async def test_one_data_source_id_in_the_list_the_detail_and_the_data_source_route(
    any_gw: Gateway, served: str
) -> None:
    job = await run_to_the_end(any_gw, datasource={"name": "events"}, url=f"{served}/events.csv")
    workspace = await any_gw.app.workspace_id_of("default")

    detail = (await any_gw.get(f"/v0/jobs/{job.id}")).body
    items = (await any_gw.get("/v0/jobs")).body["jobs"]
    source = (await any_gw.get(_in_process(any_gw, "/v0/datasources/events"))).body

    expected = datasource_id_for(workspace, "events")
    assert [item["datasource"] for item in items] == [{"id": expected, "name": "events"}]
    assert detail["datasource"]["id"] == source["id"] == expected
    # The detail's object is the data source as the route shows it, without the columns.
    assert detail["datasource"] == {k: v for k, v in source.items() if k != "columns"}


async def test_a_failed_import_shows_the_creator_s_object(any_gw: Gateway, served: str) -> None:
    job = await run_to_the_end(any_gw, datasource={"name": "events"}, url=f"{served}/missing.csv")
    assert job.status == pb.JOB_STATUS_ERROR

    body = (await any_gw.get(f"/v0/jobs/{job.id}")).body

    workspace = await any_gw.app.workspace_id_of("default")
    assert body["datasource"] == {"id": datasource_id_for(workspace, "events"), "name": "events"}
    assert body["statistics"] is None
