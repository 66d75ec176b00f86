"""Errors a person can act on, from the real `jobsd` and `jobsctl` entry points.

Every start-up failure of `jobsd serve` (a port in use, a data directory another process has, a store out of
reach, a bad setting) is one `error:` line naming the address or the setting, exit status 2, no traceback. A
target of the wrong protocol is named as such by jobsctl; `token create` refuses a workspace that does not exist;
a stop says what it waits for.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.endpoints import bearer_metadata
from tests.support.subprocess_server import spawned

from .cli_processes import ADMIN, JOBSCTL, JOBSD, WORKER, one_error_line, run, served

NO_LISTENERS = {"JOBSD_HTTP_ADDR": "", "JOBSD_EXECUTORS": "off"}
START_WAIT = 60.0
# Minutes of one core: still running when the signal comes.
RUNAWAY = "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = 7"


@contextmanager
def listening() -> Iterator[str]:
    """A port some other program listens on: `127.0.0.1:PORT`."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield f"127.0.0.1:{other.getsockname()[1]}"


def store_of(tmp_path: Path) -> dict[str, str]:
    return {"JOBSD_STORE": f"sqlite:///{tmp_path}/state/jobsd.db", "JOBSD_DATA_DIR": str(tmp_path / "state")}


async def claimed_runaway_query(target: str) -> pb.Job:
    """A RUNAWAY query job created on the server at `target`, once a WatchJob has seen it WORKING (claimed)."""
    async with grpc.aio.insecure_channel(target) as channel:
        jobs = pb_grpc.JobsStub(channel)
        md = bearer_metadata(ADMIN)
        request = pb.CreateJobRequest(kind="query")
        request.params.update({"sql": RUNAWAY})
        job: pb.Job = await jobs.CreateJob(request, metadata=md, timeout=START_WAIT)
        async with asyncio.timeout(START_WAIT):
            async for event in jobs.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=md):
                if event.job.status == pb.JOB_STATUS_WORKING:
                    return job
    raise AssertionError(f"the stream of {job.id} ended before it was WORKING")


async def test_grpc_port_in_use_is_one_line_naming_the_address(tmp_path: Path) -> None:
    with listening() as taken:
        code, out, err = await run(JOBSD, "serve", env={**store_of(tmp_path), **NO_LISTENERS, "JOBSD_GRPC_ADDR": taken})
    line = one_error_line(err)
    assert code == 2 and out == ""
    assert line.startswith(f"error: cannot listen for gRPC on {taken} (JOBSD_GRPC_ADDR / --grpc-addr): address")
    assert "in use" in line and "--grpc-addr" in line


async def test_rest_port_in_use_is_one_line_naming_the_address(tmp_path: Path) -> None:
    with listening() as taken:
        code, _, err = await run(
            JOBSD,
            "serve",
            "--http-addr",
            taken,
            env={**store_of(tmp_path), "JOBSD_GRPC_ADDR": "127.0.0.1:0", "JOBSD_EXECUTORS": "off"},
        )
    line = one_error_line(err)
    assert code == 2
    assert line.startswith(f"error: cannot listen for REST on {taken} (JOBSD_HTTP_ADDR / --http-addr): address")
    # Refused before anything started: the store file was never made.
    assert not (tmp_path / "state" / "jobsd.db").exists()


async def test_jobsd_gateway_on_a_port_in_use_is_one_line_naming_the_address() -> None:
    with listening() as taken:
        code, _, err = await run(JOBSD, "gateway", "--grpc-target", "127.0.0.1:1", "--http-addr", taken)
    line = one_error_line(err)
    assert code == 2
    assert line.startswith(f"error: cannot listen for REST on {taken} (JOBSD_HTTP_ADDR / --http-addr): address")


async def test_a_data_directory_in_use_is_refused_at_start(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    first = {"JOBSD_STORE": f"sqlite:///{tmp_path}/one/jobsd.db", "JOBSD_DATA_DIR": str(shared)}
    async with served(tmp_path, first) as serve:
        second = {
            "JOBSD_STORE": f"sqlite:///{tmp_path}/two/jobsd.db",
            "JOBSD_DATA_DIR": str(shared),
            "JOBSD_GRPC_ADDR": "127.0.0.1:0",
            "JOBSD_HTTP_ADDR": "",
            "JOBSD_LOG_LEVEL": "warning",
        }
        code, _, err = await run(JOBSD, "serve", env=second)
        line = one_error_line(err)
        assert code == 2
        assert line == (
            f"error: the data directory {shared} (JOBSD_DATA_DIR / --data-dir) is in use by process "
            f"{serve.process.pid}: give each jobsd process its own, e.g. --data-dir .jobsd/worker-2"
        )
        code, _ = await serve.terminate()
        assert code == 0
    # The lock went with the process: the same directory serves again.
    async with served(tmp_path, first, stderr_name="again.err") as again:
        code, _ = await again.terminate()
        assert code == 0


async def test_an_unreachable_store_is_one_line_without_credentials(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    uri = f"mongodb://jobsd:s3cret-pass@127.0.0.1:{port}/jobs?serverSelectionTimeoutMS=300&tlsCertificateKeyFilePassword=x"
    code, _, err = await run(JOBSD, "serve", env={**NO_LISTENERS, "JOBSD_STORE": uri, "JOBSD_GRPC_ADDR": "127.0.0.1:0"})
    line = one_error_line(err)
    assert code == 2
    assert line.startswith(f"error: cannot open the store mongodb://…@127.0.0.1:{port}/jobs (JOBSD_STORE): ")
    assert "s3cret" not in err and "Password=x" not in err and "Topology" not in err
    assert line.endswith(" (gave up after 0.3s)")


async def test_a_bad_store_uri_and_a_bad_setting_name_their_variable_or_flag(tmp_path: Path) -> None:
    env = {**store_of(tmp_path), **NO_LISTENERS, "JOBSD_GRPC_ADDR": "127.0.0.1:0"}
    code, _, err = await run(JOBSD, "serve", env={**env, "JOBSD_STORE": "mongodb://bad host:x/"})
    assert code == 2 and one_error_line(err).startswith("error: JOBSD_STORE: is not a usable MongoDB URI: ")
    code, _, err = await run(JOBSD, "serve", env={**env, "JOBSD_LEASE_SECONDS": "soon"})
    assert (code, one_error_line(err)) == (2, "error: JOBSD_LEASE_SECONDS: expected a number, got 'soon'")
    code, _, err = await run(JOBSD, "serve", "--lease-seconds", "-1", env=env)
    assert (code, one_error_line(err)) == (2, "error: --lease-seconds: must be at least 0.1, got '-1'")
    code, _, err = await run(JOBSD, "serve", env={**env, "JOBSD_LOG_FORMAT": "xml"})
    assert (code, one_error_line(err)) == (2, "error: JOBSD_LOG_FORMAT: expected one of text, json, got 'xml'")
    code, _, err = await run(JOBSD, "serve", env={**env, "JOBSD_GRPC_ADDR": "127.0.0.1:99999"})
    assert (code, one_error_line(err)) == (2, "error: JOBSD_GRPC_ADDR: expected HOST:PORT, got '127.0.0.1:99999'")


async def test_token_create_refuses_a_workspace_that_does_not_exist(tmp_path: Path) -> None:
    env = store_of(tmp_path)
    store = env["JOBSD_STORE"]
    code, out, err = await run(
        JOBSD, "token", "create", "--workspace", "default", "--scope", "ADMIN", "--create-workspace", env=env
    )
    assert code == 0 and out.startswith("jobsd_") and err == ""
    code, out, err = await run(JOBSD, "token", "create", "--workspace", "defualt", "--scope", "JOBS:EXECUTE", env=env)
    assert (code, out) == (2, "")
    assert one_error_line(err) == (
        f"error: workspace 'defualt' does not exist in {store}; check the name, or pass --create-workspace to create it"
    )
    # An existing one needs no flag; a new one is made when asked for.
    code, out, _ = await run(JOBSD, "token", "create", "--workspace", "default", "--scope", "JOBS:EXECUTE", env=env)
    assert code == 0 and out.startswith("jobsd_")
    code, out, _ = await run(
        JOBSD, "token", "create", "--workspace", "team-b", "--scope", "ADMIN", "--create-workspace", env=env
    )
    assert code == 0
    # Nothing was made for the refused name.
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "jobsd.db")) as db:
        names = sorted(name for (name,) in db.execute("SELECT name FROM workspaces"))
    assert names == ["default", "team-b"]
    code, _, err = await run(JOBSD, "token", "create", "--workspace", "defualt", "--scope", "ADMIN", env=env)
    assert code == 2 and "does not exist" in err


async def test_wrong_protocol_targets_are_named(tmp_path: Path) -> None:
    async with served(tmp_path, {**store_of(tmp_path), "JOBSD_EXECUTORS": "off"}) as serve:
        assert serve.http is not None
        grpc_port = serve.target.rsplit(":", 1)[1]
        token = {"JOBSD_TOKEN": ADMIN}

        code, _, err = await run(JOBSCTL, "--target", f"http://127.0.0.1:{grpc_port}", "ls", env=token)
        assert (code, one_error_line(err)) == (
            1,
            f"error: --target (JOBSD_TARGET): expected HOST:PORT (jobsd's gRPC address), got the URL "
            f"'http://127.0.0.1:{grpc_port}': give 127.0.0.1:{grpc_port} (the REST gateway's http:// URL is "
            "--http-target / JOBSD_HTTP_TARGET)",
        )

        rest = serve.http.removeprefix("http://")
        code, _, err = await run(JOBSCTL, "--target", rest, "ls", env=token)
        assert code == 1
        assert one_error_line(err) == (
            f"error: cannot reach jobsd at {rest}: an HTTP/1.1 server answered, not gRPC: is this the REST "
            "gateway's port? The target is jobsd's gRPC address (JOBSD_GRPC_ADDR, default 127.0.0.1:50051); REST "
            "URLs go to --http-target / JOBSD_HTTP_TARGET"
        )

        code, out, err = await run(JOBSCTL, "--http-target", f"http://{serve.target}", "datasource", "ls", env=token)
        assert (code, out) == (1, "")
        line = one_error_line(err)
        assert line.startswith(f"error: http://{serve.target} answered in binary (HTTP/2) frames, not HTTP/1.1:")
        assert line.isprintable()

        # The right ones work.
        code, out, _ = await run(JOBSCTL, "--target", serve.target, "ls", env=token)
        assert (code, out) == (0, "No jobs found.\n")
        code, _ = await serve.terminate()
        assert code == 0


async def test_a_stop_says_what_it_waits_for(tmp_path: Path) -> None:
    settings = {**store_of(tmp_path), "JOBSD_GRACE_SECONDS": "1", "JOBSD_HTTP_ADDR": ""}
    async with served(tmp_path, settings) as serve:
        job = await claimed_runaway_query(serve.target)
        # WORKING is written at the claim; the executors hold the job once they log its start (a stop in between
        # has, rightly, no running job to wait for).
        await serve.logged(f"job {job.id} (query): started")
        code, _ = await serve.terminate()
        assert code == 0
    notice = [line for line in serve.log_text().splitlines() if "stopping:" in line]
    assert len(notice) == 1, serve.log_text()
    assert notice[0].endswith(
        f"stopping: waiting up to 1 s for 1 running job (query {job.id[:8]}…) to finish; then they are released to "
        "the queue (JOBSD_GRACE_SECONDS)"
    )


async def test_jobsd_worker_says_what_its_stop_waits_for(tmp_path: Path) -> None:
    settings = {**store_of(tmp_path), "JOBSD_EXECUTORS": "off", "JOBSD_HTTP_ADDR": "", "JOBSD_WORKER_TOKEN": WORKER}
    async with served(tmp_path, settings) as serve:
        async with spawned(
            JOBSD,
            "worker",
            "--grpc-target",
            serve.target,
            "--data-dir",
            str(tmp_path / "worker"),
            env={
                "JOBSD_WORKER_TOKEN": WORKER,
                "JOBSD_GRACE_SECONDS": "1",
                "JOBSD_LOG_FORMAT": "text",
                "JOBSD_LOG_LEVEL": "info",
            },
            stderr=asyncio.subprocess.PIPE,
        ) as worker:
            job = await claimed_runaway_query(serve.target)
            # WORKING is written at the claim; the worker holds the job once it logs its start (a stop in between
            # has, rightly, no running job to wait for).
            assert worker.stderr is not None
            before = b""
            async with asyncio.timeout(START_WAIT):
                while f"job {job.id} (query): started".encode() not in before:
                    line = await worker.stderr.readline()
                    assert line, before.decode()
                    before += line
            worker.send_signal(signal.SIGTERM)
            async with asyncio.timeout(START_WAIT):
                _, rest = await worker.communicate()
            err = before + rest
            assert worker.returncode == 0, err.decode()
        notice = [line for line in err.decode().splitlines() if "stopping:" in line]
        assert len(notice) == 1 and notice[0].endswith(
            f"stopping: waiting up to 1 s for 1 running job (query {job.id[:8]}…) to finish; then they are released "
            "to the queue (JOBSD_GRACE_SECONDS)"
        ), err.decode()
        code, _ = await serve.terminate()
        assert code == 0
