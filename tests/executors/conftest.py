"""Fixtures of the executor tests: a real data plane in tmp_path, a real HTTP file server on 127.0.0.1, and a
recording stand-in for the worker SDK's JobContext (the executors only see its Protocol).

Imports refuse loopback addresses by default; these tests fetch from 127.0.0.1, so they opt in with `LOCAL`, the
policy an operator would get from JOBSD_IMPORT_ALLOW_NETWORKS=127.0.0.1/32."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Unpack

import pytest
from aiohttp import web
from google.protobuf import json_format, struct_pb2

from jobsd.domain.clock import ManualClock
from jobsd.executors.dataplane import DataPlane
from jobsd.executors.outbound import ImportPolicy
from jobsd_client import pb
from jobsd_client.worker import ReportFigures
from tests.support.server import serving_http

WORKSPACE = "8f7d2c1e-0000-4000-8000-000000000001"
LOCAL = ImportPolicy.build(allow_networks=["127.0.0.1/32"])


def struct(values: Mapping[str, Any] | None) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    if values:
        message.update(dict(values))
    return message


def make_job(
    kind: str,
    *,
    datasource: str | None = "events",
    url: str | None = None,
    mode: str | None = None,
    query_sql: str | None = None,
    params: Mapping[str, Any] | None = None,
    workspace: str = WORKSPACE,
) -> pb.Job:
    job = pb.Job(id=str(uuid.uuid4()), workspace_id=workspace, kind=kind, status=pb.JOB_STATUS_WORKING)
    if datasource is not None:
        job.datasource.CopyFrom(struct({"name": datasource}))
    if url is not None:
        job.url = url
    if mode is not None:
        job.mode = mode
    if query_sql is not None:
        job.query_sql = query_sql
    job.params.CopyFrom(struct(params))
    return job


class RecordingContext:
    """Keeps every report, merges them into `figures` (latest value of each), and lets a test decide — from a
    report — when a cancel is requested, the way a heartbeat answer would flip it."""

    def __init__(self, job: pb.Job, on_report: Callable[[RecordingContext, dict[str, Any]], None] | None = None):
        self.job = job
        self.job_id = job.id
        self.kind = job.kind
        self.params: dict[str, Any] = json_format.MessageToDict(job.params)
        self.datasource: dict[str, Any] = json_format.MessageToDict(job.datasource)
        self.worker_id = "test-worker"
        self.reports: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}
        self.flushes = 0
        self._cancel = asyncio.Event()
        self._on_report = on_report

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def request_cancel(self) -> None:
        self._cancel.set()

    async def wait_cancel_requested(self) -> None:
        await self._cancel.wait()

    def report(self, **figures: Unpack[ReportFigures]) -> None:
        unknown = set(figures) - set(ReportFigures.__annotations__)
        assert not unknown, f"report() got unexpected figures {unknown}"
        # Copies as plain lists and dicts, so later changes by the executor cannot alter what was reported.
        update: dict[str, Any] = {}
        for name, value in figures.items():
            if value is None:
                continue
            if isinstance(value, Mapping):
                update[name] = dict(value)
            elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
                update[name] = [dict(item) if isinstance(item, Mapping) else item for item in value]
            else:
                update[name] = value
        self.reports.append(update)
        self.figures.update(update)
        if self._on_report is not None:
            self._on_report(self, update)

    async def flush(self) -> None:
        self.flushes += 1


@pytest.fixture
async def plane(tmp_path: Path, clock: ManualClock) -> AsyncIterator[DataPlane]:
    async with DataPlane(tmp_path / "data" / "dataplane", clock=clock) as opened:
        yield opened


class FileServer:
    """Serves files of `root` on 127.0.0.1: /files/<name> with Content-Length, /chunked/<name> without."""

    def __init__(self, root: Path, base: str) -> None:
        self.root = root
        self.base = base
        self.requests: list[str] = []

    def url(self, name: str, *, chunked: bool = False) -> str:
        return f"{self.base}/{'chunked' if chunked else 'files'}/{name}"

    def write(self, name: str, content: str | bytes) -> str:
        path = self.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return self.url(name)


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[FileServer]:
    root = tmp_path / "served"
    root.mkdir()
    holder: list[FileServer] = []

    async def whole(request: web.Request) -> web.StreamResponse:
        holder[0].requests.append(request.path)
        path = root / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def chunked(request: web.Request) -> web.StreamResponse:
        holder[0].requests.append(request.path)
        path = root / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        with path.open("rb") as handle:
            while chunk := handle.read(64 * 1024):
                await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/files/{name}", whole)
    app.router.add_get("/chunked/{name}", chunked)
    async with serving_http(app) as base:
        server = FileServer(root, base)
        holder.append(server)
        yield server
