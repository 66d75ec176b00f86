"""End to end: a real jobsd (gRPC + REST gateway, SQLite store) running the built-in executors in-process.

Jobs are created over gRPC, run by the ExecutorRunner through the worker SDK, watched to their end, and read back
from the REST gateway as a Tinybird client would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from jobsd.app import JobsdApp
from jobsd.executors.datasources_http import add_routes
from jobsd.gateway.server import GatewayServer
from jobsd.store.base import JobStore
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.jobs import TERMINAL, create_request
from tests.support.server import executor_settings, running_app

from .conftest import FileServer
from .test_import import EVENTS_CSV, EVENTS_SCHEMA, GOOD_BYTES

WAIT = 30.0


@dataclass
class Jobsd:
    app: JobsdApp
    jobs: pb_grpc.JobsAsyncStub
    admin: str
    http: aiohttp.ClientSession

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin}"),)

    async def workspace_id(self) -> str:
        workspace: pb.Workspace = await self.jobs.GetWorkspace(pb.GetWorkspaceRequest(), metadata=self.md)
        return workspace.id

    async def create(self, kind: str, datasource: str | None, **fields: Any) -> pb.Job:
        job: pb.Job = await self.jobs.CreateJob(create_request(kind, datasource, **fields), metadata=self.md)
        return job

    async def events(self, job_id: str) -> list[pb.Job]:
        """Every state the job goes through, until it ends (the stream closes after the terminal one)."""
        seen: list[pb.Job] = []
        async with asyncio.timeout(WAIT):
            async for event in self.jobs.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=self.md):
                seen.append(event.job)
        assert seen and seen[-1].status in TERMINAL
        return seen

    async def detail(self, job_id: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.app.http_port}/v0/jobs/{job_id}"
        async with self.http.get(url, headers={"Authorization": f"Bearer {self.admin}"}) as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body


@pytest.fixture
async def jobsd(tmp_path: Path, files: FileServer, e2e_backend_store: JobStore | None) -> AsyncIterator[Jobsd]:
    # The executors run on real time (SystemClock).
    settings = executor_settings(tmp_path, grace_seconds=2.0)
    async with running_app(settings, None, e2e_backend_store) as app:
        admin = await app.create_token("default", ["ADMIN"], name="admin")
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        async with aiohttp.ClientSession() as http:
            yield Jobsd(app, pb_grpc.JobsStub(channel), admin, http)
        await channel.close(grace=None)


async def test_an_import_over_http_shows_its_figures_in_the_job_detail(jobsd: Jobsd, files: FileServer) -> None:
    url = files.write("events.csv", EVENTS_CSV)
    workspace = await jobsd.workspace_id()
    await jobsd.app.executors.dataplane.create_datasource("events", EVENTS_SCHEMA, workspace=workspace)
    created = await jobsd.create("import", "events", url=url, mode="append")
    history = await jobsd.events(created.id)

    assert [pb.JobStatus.Name(j.status) for j in history][-1] == "JOB_STATUS_DONE"
    detail = await jobsd.detail(created.id)
    assert detail["status"] == "done"
    assert detail["import_id"] == created.id
    assert detail["statistics"] == {"bytes": GOOD_BYTES, "row_count": 5}
    assert detail["quarantine_rows"] == 3
    assert detail["invalid_lines"] == 2
    assert detail["errors"][0].startswith("There was an error with file contents: 3 rows in quarantine")
    assert detail["started_at"] is not None


async def test_an_import_of_a_missing_url_ends_in_error_and_changes_nothing(jobsd: Jobsd, files: FileServer) -> None:
    url = files.url("nowhere.csv")
    created = await jobsd.create("import", "events", url=url)
    history = await jobsd.events(created.id)

    assert history[-1].status == pb.JOB_STATUS_ERROR
    assert history[-1].error == f"Could not fetch {url}: HTTP 404 Not Found"
    assert (await jobsd.detail(created.id))["error"] == f"Could not fetch {url}: HTTP 404 Not Found"
    plane = jobsd.app.executors.dataplane
    assert await plane.find_datasource("events", workspace=created.workspace_id) is None


DAYS_CSV = "day,amount\n" + "".join(f"2024-01-0{1 + i % 4},{i}\n" for i in range(40))
POPULATE_SQL = "SELECT day, count(*) AS n FROM events GROUP BY day"


async def import_days(jobsd: Jobsd, files: FileServer) -> pb.Job:
    created = await jobsd.create("import", "events", url=files.write("days.csv", DAYS_CSV))
    assert (await jobsd.events(created.id))[-1].status == pb.JOB_STATUS_DONE
    return created


async def test_a_populate_reports_every_partition_and_reaches_100(jobsd: Jobsd, files: FileServer) -> None:
    await import_days(jobsd, files)
    created = await jobsd.create(
        "populateview",
        "daily",
        query_sql=POPULATE_SQL,
        pipe_name="daily_pipe",
        params={"source": "events", "partition_by": "day"},
    )
    history = await jobsd.events(created.id)

    final = history[-1]
    assert final.status == pb.JOB_STATUS_DONE, final.error
    assert [q.status for q in final.queries] == ["done"] * 4
    assert final.progress_percentage == 100.0
    detail = await jobsd.detail(created.id)
    assert detail["progress_percentage"] == 100.0
    assert len(detail["queries"]) == 4
    rows = await jobsd.app.executors.dataplane.query("SELECT sum(n) FROM daily", workspace=final.workspace_id)
    assert rows == [(40,)]


async def test_cancelling_a_populate_midway_keeps_the_finished_partitions(jobsd: Jobsd, files: FileServer) -> None:
    await import_days(jobsd, files)
    plane = jobsd.app.executors.dataplane
    async with plane.writes_paused(await jobsd.workspace_id()):
        created = await jobsd.create(
            "populateview", "daily", query_sql=POPULATE_SQL, params={"source": "events", "partition_by": "day"}
        )
        # Wait until the executor has listed its queries; it then blocks on its first write.
        async with asyncio.timeout(WAIT):
            async for event in jobsd.jobs.WatchJob(pb.WatchJobRequest(job_id=created.id), metadata=jobsd.md):
                if len(event.job.queries) == 4:
                    break
        cancelling = await jobsd.jobs.CancelJob(pb.CancelJobRequest(job_id=created.id), metadata=jobsd.md)
        assert cancelling.status == pb.JOB_STATUS_CANCELLING
    history = await jobsd.events(created.id)

    final = history[-1]
    assert final.status == pb.JOB_STATUS_CANCELLED
    statuses = [q.status for q in final.queries]
    done = statuses.count("done")
    assert done < 4
    assert statuses == ["done"] * done + ["waiting"] * (4 - done)
    # The partitions that finished stay (the reference: cancelling does not roll back).
    rows = await plane.query("SELECT count(*) FROM daily", workspace=final.workspace_id)
    assert rows == [(done,)]


async def test_copy_query_and_delete_run_through_the_server(jobsd: Jobsd, files: FileServer) -> None:
    imported = await import_days(jobsd, files)
    copy = await jobsd.create("copy", "big_amounts", query_sql="SELECT * FROM events WHERE amount >= 20")
    query = await jobsd.create("query", None, query_sql="SELECT count(*) AS n FROM events")

    copied = (await jobsd.events(copy.id))[-1]
    assert copied.status == pb.JOB_STATUS_DONE, copied.error
    assert copied.processed_data.written_rows == 20
    assert copied.processed_data.read_rows == 40
    queried = (await jobsd.events(query.id))[-1]
    assert queried.status == pb.JOB_STATUS_DONE, queried.error
    assert queried.statistics.row_count == 1
    # Created only now: jobs on one data source run side by side (different concurrency keys), so a delete created
    # with the copy could commit before the copy reads and the copy would see 30 rows.
    delete = await jobsd.create("delete_data", "events", params={"delete_condition": "amount < 10"})
    deleted = (await jobsd.events(delete.id))[-1]
    assert deleted.status == pb.JOB_STATUS_DONE, deleted.error
    assert (await jobsd.detail(delete.id))["rows_affected"] == 10
    stats = await jobsd.app.executors.dataplane.stats("events", workspace=imported.workspace_id)
    assert stats.row_count == 30


async def test_a_bad_sql_ends_in_error(jobsd: Jobsd) -> None:
    created = await jobsd.create("query", None, query_sql="SELECT * FROM no_such_table")
    final = (await jobsd.events(created.id))[-1]
    assert final.status == pb.JOB_STATUS_ERROR
    assert final.error.startswith("Invalid SQL in params.sql: Catalog Error: Table with name no_such_table")


async def test_data_source_routes_mount_on_the_gateway(jobsd: Jobsd) -> None:
    app = jobsd.app
    gateway = GatewayServer(
        app.api,
        app.settings,
        extra_routes=lambda web_app: add_routes(web_app, app.executors.dataplane, app.service.authenticate),
    )
    port = await gateway.start()
    base = f"http://127.0.0.1:{port}/v0/datasources"
    auth = {"Authorization": f"Bearer {jobsd.admin}"}
    try:
        async with jobsd.http.post(
            base, json={"name": "sales", "schema": "day Date, `shop id` Int32, amount Nullable(Float64)"}, headers=auth
        ) as response:
            assert response.status == 200, await response.text()
            created = (await response.json())["datasource"]
        assert created["name"] == "sales"
        assert created["id"].startswith("t_") and len(created["id"]) == 34
        assert created["columns"] == [
            {"name": "day", "type": "Date"},
            {"name": "shop id", "type": "Int32"},
            {"name": "amount", "type": "Nullable(Float64)"},
        ]
        assert created["statistics"] == {"bytes": 0, "row_count": 0}
        async with jobsd.http.get(base, headers=auth) as response:
            assert [d["name"] for d in (await response.json())["datasources"]] == ["sales"]
        async with jobsd.http.get(f"{base}/sales", headers=auth) as response:
            assert (await response.json())["id"] == created["id"]
        async with jobsd.http.post(base, json={"name": "sales", "schema": "a Int64"}, headers=auth) as response:
            assert response.status == 409
        async with jobsd.http.post(base, json={"name": "bad", "schema": "a Decimal"}, headers=auth) as response:
            assert response.status == 400
            assert (await response.json())["error"].startswith("schema[0]: column 'a': unknown type 'Decimal'")
        async with jobsd.http.get(f"{base}/nothing", headers=auth) as response:
            assert response.status == 404
            assert (await response.json())["error"] == 'Data source "nothing" not found'
        async with jobsd.http.get(base) as response:
            assert response.status == 403
    finally:
        await gateway.stop()
