"""Operating jobsd (docs/contract.md #running, #api, #faults-and-operations): gRPC health and reflection, store loss,
stop, `jobsd serve` as a real process, `jobsd token create`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from jobsd.app import JobsdApp
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.subprocess_server import run_jobsd, serve_process

from .conftest import Server, bounded, make_settings, rpc_error

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = ("", "jobsd.v1.Jobs", "jobsd.v1.Workers")
# A fresh interpreter importing grpc, protobuf and jobsd: generous, because the machine is shared.
PROCESS_START = 60.0


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


# ---------------------------------------------------------------- health


@pytest.mark.parametrize("service", SERVICES, ids=["overall", "Jobs", "Workers"])
async def test_health_is_serving_after_start(server: Server, service: str) -> None:
    assert await bounded(health_of(server.channel, service)) == SERVING


async def test_health_of_an_unknown_service_is_not_found(server: Server) -> None:
    error = await rpc_error(health_of(server.channel, "jobsd.v1.Nope"))
    assert error.code() == grpc.StatusCode.NOT_FOUND


# The SQLite file itself: removed, replaced, or written by another process.
@pytest.mark.backends("sqlite")
async def test_store_gone_means_not_serving_and_unavailable(server: Server, tmp_path: Path) -> None:
    job = await server.create_kind("import")
    (tmp_path / "jobsd.db").unlink()  # the database file is deleted under the running server
    assert await bounded(server.app.probe_health()) is False
    for service in SERVICES:
        assert await bounded(health_of(server.channel, service)) == NOT_SERVING
    error = await rpc_error(server.create_kind("import"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "jobsd.db" in (error.details() or "") and "Traceback" not in (error.details() or "")
    error = await rpc_error(server.cancel(job.id))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


# The SQLite file itself: removed, replaced, or written by another process.
@pytest.mark.backends("sqlite")
async def test_the_health_loop_notices_a_lost_store_by_itself(server: Server, tmp_path: Path) -> None:
    updates = health_pb2_grpc.HealthStub(server.channel).Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await bounded(updates.read())).status == SERVING
    (tmp_path / "jobsd.db").unlink()
    # No probe is triggered here: the background loop must find out and push the change to watchers.
    assert (await bounded(updates.read())).status == NOT_SERVING
    updates.cancel()


# The SQLite file itself: removed, replaced, or written by another process.
@pytest.mark.backends("sqlite")
async def test_health_recovers_when_the_store_answers_again(server: Server, tmp_path: Path) -> None:
    db = tmp_path / "jobsd.db"
    db.rename(tmp_path / "elsewhere.db")  # the file is briefly not where the server expects it
    assert await bounded(server.app.probe_health()) is False
    assert await bounded(health_of(server.channel)) == NOT_SERVING
    assert (await rpc_error(server.create_kind("import"))).code() == grpc.StatusCode.UNAVAILABLE
    (tmp_path / "elsewhere.db").rename(db)  # the same file is back
    assert await bounded(server.app.probe_health()) is True
    assert await bounded(health_of(server.channel)) == SERVING
    job = await server.create_kind("import")
    assert (await server.get(job.id)).status == pb.JOB_STATUS_WAITING


# ---------------------------------------------------------------- reflection


async def reflect(channel: grpc.aio.Channel, request: reflection_pb2.ServerReflectionRequest) -> object:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(request)
    response = await bounded(call.read())
    await call.done_writing()
    return response


async def test_reflection_lists_the_services(server: Server) -> None:
    response = await reflect(server.channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {s.name for s in response.list_services_response.service}  # type: ignore[attr-defined]
    assert {"jobsd.v1.Jobs", "jobsd.v1.Workers", "grpc.health.v1.Health"} <= names


async def test_reflection_describes_the_jobs_api(server: Server) -> None:
    response = await reflect(
        server.channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol="jobsd.v1.Jobs")
    )
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in response.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
    ]
    jobsd_file = next(f for f in files if f.package == "jobsd.v1")
    methods = {m.name for s in jobsd_file.service for m in s.method}
    assert {"CreateJob", "WatchJob", "ClaimJob", "FinishJob"} <= methods


# ---------------------------------------------------------------- stop


async def test_stop_twice_is_safe_and_the_server_is_gone(server: Server) -> None:
    await bounded(server.app.stop())
    await bounded(server.app.stop())
    error = await rpc_error(server.create_kind("import"))
    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_stop_answers_a_long_polling_claim_at_once_instead_of_holding_the_grace(server: Server) -> None:
    # grace_seconds is 0.5 in tests; the claim asks to wait 30 s. Without the shutdown wake-up the claim would be
    # cut off by the grace period with UNAVAILABLE instead of answering "nothing to claim".
    claim = asyncio.ensure_future(server.claim(wait=30))

    async def parked() -> None:  # the claimer is waiting on the queue (a condition, not a fixed delay)
        while not server.app.service._queue_changed._waiters:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    await bounded(parked())
    await bounded(server.app.stop())
    response = await bounded(claim)
    assert not response.HasField("job")


# ---------------------------------------------------------------- the CLI as a real process


async def test_jobsd_serve_comes_up_answers_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    admin = "jobsd_test-admin-token-for-the-serve-test"
    settings = {"http_addr": "", "store": f"sqlite:///{tmp_path}/serve.db", "executors": "off", "admin_token": admin}
    async with (
        serve_process(tmp_path / "serve.log", settings) as serve,
        grpc.aio.insecure_channel(serve.target) as channel,
    ):
        assert await bounded(health_of(channel)) == SERVING
        jobs = pb_grpc.JobsStub(channel)
        workspace = await bounded(
            jobs.GetWorkspace(pb.GetWorkspaceRequest(), metadata=(("authorization", f"Bearer {admin}"),))
        )
        assert workspace.name == "default" and "ADMIN" in workspace.scopes
        job = await bounded(
            jobs.CreateJob(
                pb.CreateJobRequest(kind="query", query_sql="SELECT 1"),
                metadata=(("authorization", f"Bearer {admin}"),),
            )
        )
        assert job.status == pb.JOB_STATUS_WAITING
        code, _ = await serve.terminate(30)
        assert code == 0, serve.log_text()[-2000:]


# The SQLite file itself: removed, replaced, or written by another process.
@pytest.mark.backends("sqlite")
async def test_jobsd_token_create_prints_a_token_that_authenticates(server: Server, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/jobsd.db"  # the running server's own store
    code, out, err = await run_jobsd(
        "token", "create", "--workspace", "default", "--scope", "DATASOURCES:READ:events", "--store", store
    )
    assert code == 0, err
    secret = out.strip()
    assert secret and "\n" not in secret
    mine = await server.create_kind("import", target="events")
    await server.create_kind("import", target="clicks")
    assert await server.list_ids(token=secret) == [mine.id]  # its scope, not more
    workspace = await server.jobs.GetWorkspace(pb.GetWorkspaceRequest(), metadata=server.md(secret))
    assert workspace.id == server.workspace_id and list(workspace.scopes) == ["DATASOURCES:READ:events"]


# The SQLite file itself: removed, replaced, or written by another process.
@pytest.mark.backends("sqlite")
async def test_jobsd_token_create_for_every_workspace(server: Server, tmp_path: Path) -> None:
    code, out, err = await run_jobsd(
        "token", "create", "--all-workspaces", "--scope", "JOBS:EXECUTE", "--store", f"sqlite:///{tmp_path}/jobsd.db"
    )
    assert code == 0, err
    job = await server.create_kind("import")
    claim = await server.workers.ClaimJob(pb.ClaimJobRequest(worker_id="cli"), metadata=server.md(out.strip()))
    assert claim.job.id == job.id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--workspace", "default", "--scope", "SUPERUSER"), "scope"),
        (("--scope", "ADMIN"), "--workspace"),
        (("--workspace", "default", "--all-workspaces", "--scope", "ADMIN"), "--workspace"),
    ],
    ids=["unknown-scope", "no-workspace", "both-workspace-choices"],
)
async def test_jobsd_token_create_refuses_bad_arguments(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    code, out, err = await run_jobsd("token", "create", *args, "--store", f"sqlite:///{tmp_path}/t.db")
    assert code != 0 and out == ""
    assert message in err and "Traceback" not in err


async def test_a_replica_without_the_gateway_serves_metrics_on_its_own_listener(tmp_path: Path) -> None:
    app = JobsdApp(make_settings(tmp_path, metrics_addr="127.0.0.1:0"))
    await app.start()
    try:
        assert app.http_port is None and app.metrics_port
        token = await app.create_token("default", ["ADMIN"], "admin")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            await pb_grpc.JobsStub(channel).ListJobs(
                pb.ListJobsRequest(), metadata=(("authorization", f"Bearer {token}"),)
            )
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.metrics_port}/metrics") as resp:
            body = await resp.text()
        assert resp.status == 200
        assert 'jobsd_rpc_seconds_count{code="OK",method="ListJobs"} 1.0' in body
    finally:
        await app.stop()


async def test_jobsd_worker_with_a_token_that_cannot_execute_exits_1_and_says_why(
    server: Server, tmp_path: Path
) -> None:
    # server.admin is ADMIN of one workspace: no JOBS:EXECUTE, so the executors cannot claim anything.
    code, _, err = await run_jobsd(
        "worker",
        "--grpc-target",
        f"127.0.0.1:{server.app.grpc_port}",
        "--token",
        server.admin,
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert code == 1
    assert "error: The token lacks the JOBS:EXECUTE scope that workers need" in err
