"""The attacks of tests/security run against a real jobsd laid out as `make run` lays it out.

`stack`: `jobsd serve` in-process (gRPC and the REST gateway on ephemeral 127.0.0.1 ports, the SQLite store, the
built-in executors) with its state in `<tmp>/.jobsd/` — the store, the data plane and an `admin-token` file — and
file imports allowed under `<tmp>/imports/`. Two workspaces, `alpha` (the victim: a data source `secrets` holding
SECRET_ROW) and `beta` (the attacker), each with real tokens of several scopes. `origin`: a real HTTP server on
127.0.0.1 that records every request it gets. `logs`: every log record of the process, formatted with its
traceback, so a test can assert that a secret appears in none.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from jobsd.app import JobsdApp
from jobsd.settings import Settings
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.bounded import settle
from tests.support.endpoints import AppEndpoints, bearer_header
from tests.support.jobs import TERMINAL, create_request
from tests.support.server import running_app

WAIT = 30.0
ADMIN_SECRET = "jobsd_the-admin-token-nobody-may-read-0123456789"
SECRET_ROW = "alpha-private-row-7f3c"
# A column of alpha's that no attack names: if it shows up, a catalog leaked it.
ALPHA_COLUMN = "alpha_only_column_q9"


class LogRecords(logging.Handler):
    """Every record any logger emits while the test runs, at every level, with its traceback text."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self) -> str:
        return "\n".join(self.format(record) for record in self.records)

    def errors(self) -> list[logging.LogRecord]:
        return [record for record in self.records if record.levelno >= logging.ERROR]


@pytest.fixture
def logs() -> Iterator[LogRecords]:
    handler = LogRecords()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@dataclass
class Tenant:
    name: str
    workspace_id: str
    tokens: dict[str, str]  # role -> secret


@dataclass
class Stack(AppEndpoints):
    app: JobsdApp
    state: Path  # <tmp>/.jobsd: store, data plane, admin-token
    imports: Path  # the file-import root
    jobs: pb_grpc.JobsAsyncStub
    channel: grpc.aio.Channel
    http: aiohttp.ClientSession
    alpha: Tenant
    beta: Tenant
    said: list[str] = field(default_factory=list)  # every response body and error this test received

    async def create(self, token: str, kind: str, datasource: str | None = None, **fields: Any) -> pb.Job:
        job: pb.Job = await self.jobs.CreateJob(
            create_request(kind, datasource, **fields), metadata=self.md(token), timeout=WAIT
        )
        self.said.append(str(job))
        return job

    async def finished(self, token: str, job_id: str) -> pb.Job:
        """Follow the job (WatchJob) to its end; every event is remembered in `said`."""
        last: pb.Job | None = None
        async with asyncio.timeout(WAIT):
            async for event in self.jobs.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=self.md(token)):
                self.said.append(str(event))
                last = event.job
        assert last is not None and last.status in TERMINAL, last
        return last

    async def run(self, token: str, kind: str, datasource: str | None = None, **fields: Any) -> pb.Job:
        created = await self.create(token, kind, datasource, **fields)
        return await self.finished(token, created.id)

    async def get(self, path: str, token: str | None = None, **kwargs: Any) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers.update(bearer_header(token))
        url = path if path.startswith("http") else self.rest + path
        async with self.http.get(url, headers=headers, **kwargs) as response:
            text = await response.text()
            self.said.append(text)
            body = await response.json(content_type=None) if text else None
            return response.status, body

    async def post(self, path: str, token: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {**bearer_header(token), **kwargs.pop("headers", {})}
        async with self.http.post(self.rest + path, headers=headers, **kwargs) as response:
            text = await response.text()
            self.said.append(text)
            return response.status, (await response.json(content_type=None) if text else None)

    def everything_said(self) -> str:
        return "\n".join(self.said)


def stack_settings(tmp_path: Path, **overrides: Any) -> Settings:
    state = tmp_path / ".jobsd"
    return Settings(
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        store=f"sqlite:///{state}/jobsd.db",
        data_dir=str(state),
        admin_token=ADMIN_SECRET,
        executors=True,
        import_file_root=str(tmp_path / "imports"),
        grace_seconds=1.0,
    ).with_changes(**overrides)


async def start_stack(tmp_path: Path, **overrides: Any) -> AsyncIterator[Stack]:
    state = tmp_path / ".jobsd"
    state.mkdir(mode=0o700, exist_ok=True)
    token_file = state / "admin-token"
    token_file.write_text(ADMIN_SECRET + "\n")
    os.chmod(token_file, 0o600)
    imports = tmp_path / "imports"
    imports.mkdir(exist_ok=True)
    async with running_app(stack_settings(tmp_path, **overrides)) as app:
        tenants = {}
        for name in ("alpha", "beta"):
            tokens = {
                "admin": await app.create_token(name, ["ADMIN"], f"{name}-admin"),
                "creator": await app.create_token(name, ["JOBS:CREATE"], f"{name}-creator"),
                "reader": await app.create_token(name, ["DATASOURCES:READ:events"], f"{name}-reader"),
            }
            tenants[name] = Tenant(name, await app.workspace_id_of(name), tokens)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        # Every request of the test within WAIT (aiohttp's own default is 5 minutes).
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT))
        try:
            jobs = pb_grpc.JobsStub(channel)
            yield Stack(app, state, imports, jobs, channel, http, tenants["alpha"], tenants["beta"])
        finally:
            await settle("closing the test's HTTP client", http.close())
            await settle("closing the test's gRPC channel", channel.close(grace=None))


async def seed_alpha_secrets(stack: Stack) -> None:
    """The victim's data: a data source `secrets` with SECRET_ROW, made by a real import of a real file."""
    (stack.imports / "secrets.csv").write_text(
        f"id,secret,{ALPHA_COLUMN}\n1,{SECRET_ROW},x\n2,another-{SECRET_ROW},y\n"
    )
    done = await stack.run(
        stack.alpha.tokens["admin"], "import", "secrets", url=f"file://{stack.imports}/secrets.csv", mode="append"
    )
    assert done.status == pb.JOB_STATUS_DONE, done.error
    (stack.imports / "secrets.csv").unlink()
    # What the victim itself was told is not what the attacker learns.
    stack.said.clear()


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for started in start_stack(tmp_path):
        yield started


@pytest.fixture
async def allowing_loopback(tmp_path: Path) -> AsyncIterator[Stack]:
    """A second stack, of an operator who allows imports from 127.0.0.1/32 (e.g. an internal file server):
    everything else stays refused."""
    (tmp_path / "allowing").mkdir()
    async for started in start_stack(tmp_path / "allowing", import_allow_networks=("127.0.0.1/32",)):
        yield started


class Origin:
    """A real HTTP server on 127.0.0.1: /files/<name> from a directory, /to?url= redirects; it keeps every request."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = ""
        self.requests: list[web.Request] = []
        self.paths: list[str] = []

    def url(self, name: str) -> str:
        return f"{self.base}/files/{name}"


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[Origin]:
    root = tmp_path / "served"
    root.mkdir()
    served = Origin(root)

    async def files(request: web.Request) -> web.StreamResponse:
        served.requests.append(request)
        served.paths.append(request.path_qs)
        path = root / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def redirect(request: web.Request) -> web.StreamResponse:
        served.requests.append(request)
        served.paths.append(request.path_qs)
        raise web.HTTPFound(request.query["url"])

    app = web.Application()
    app.router.add_get("/files/{name}", files)
    app.router.add_get("/to", redirect)
    # No access log: the origin is the attacker's (or a third party's) server, its logs are not jobsd's.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        served.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield served
    finally:
        await settle("stopping the test's origin", runner.cleanup())
