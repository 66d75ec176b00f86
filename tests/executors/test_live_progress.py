"""Live, honest progress of a built-in import: from a slow origin this test controls, a watcher sees the bytes and
the percentage grow while the file arrives (not only when a batch of rows is loaded, nor at heartbeats), with no
jobs_log row per update, and the bytes never go down — while it runs nor at done.

The origin sends the file piece by piece and sends the next piece only once the watcher has seen the last one
counted: the test waits on events, never on time. The server's lease is long (a heartbeat every 200 s), so only
the progress sends (JOBSD_PROGRESS_INTERVAL_SECONDS, 0.05 s here) can bring the figures in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from jobsd.app import JobsdApp
from jobsd_client import pb
from jobsd_client._render import job_figures
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.server import executor_settings, running_app, serving_http

from .conftest import struct
from .test_import import EVENTS_SCHEMA

PIECES = 5
HEADER = "date,user_id,event,amount\n"
PIECE = "".join(f"2024-01-01 10:00:00,{i},view,1.5\n" for i in range(200))
PATIENCE = 30.0


class SlowOrigin:
    """Serves one CSV in PIECES pieces; piece i+1 goes once `counted(i)` was called (the watcher saw piece i)."""

    def __init__(self) -> None:
        self.body = (HEADER + PIECE * PIECES).encode()
        step = len(self.body) // PIECES
        self.ends = [step * (i + 1) for i in range(PIECES - 1)] + [len(self.body)]
        self._counted = [asyncio.Event() for _ in range(PIECES)]

    def counted_up_to(self, size: int) -> None:
        for i, end in enumerate(self.ends):
            if size >= end:
                self._counted[i].set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/csv"})
        response.content_length = len(self.body)
        await response.prepare(request)
        start = 0
        for i, end in enumerate(self.ends):
            await response.write(self.body[start:end])
            start = end
            if i < PIECES - 1:
                await self._counted[i].wait()
        await response.write_eof()
        return response


@pytest.fixture
async def origin() -> AsyncIterator[tuple[SlowOrigin, str]]:
    slow = SlowOrigin()
    app = web.Application()
    app.router.add_get("/events.csv", slow.handle)
    async with serving_http(app) as base:
        yield slow, f"{base}/events.csv"


@pytest.fixture
async def jobsd(tmp_path: Path) -> AsyncIterator[JobsdApp]:
    settings = executor_settings(tmp_path, lease_seconds=600.0, progress_interval_seconds=0.05, grace_seconds=2.0)
    async with running_app(settings) as app:
        yield app


async def test_a_watcher_sees_an_import_grow_as_its_file_arrives_with_only_status_rows_in_the_log(
    jobsd: JobsdApp, origin: tuple[SlowOrigin, str]
) -> None:
    slow, url = origin
    admin = await jobsd.create_token("default", ["ADMIN"], name="admin")
    md = (("authorization", f"Bearer {admin}"),)
    workspace = await jobsd.workspace_id_of("default")
    await jobsd.executors.dataplane.create_datasource("events", EVENTS_SCHEMA, workspace=workspace)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{jobsd.grpc_port}") as channel:
        jobs = pb_grpc.JobsStub(channel)
        request = pb.CreateJobRequest(kind="import", url=url, mode="append")
        request.datasource.CopyFrom(struct({"name": "events"}))
        job: pb.Job = await jobs.CreateJob(request, metadata=md)
        seen: list[pb.Job] = []
        async with asyncio.timeout(PATIENCE):
            async for event in jobs.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=md):
                seen.append(event.job)
                slow.counted_up_to(event.job.processed_data.read_bytes)
        log = await jobs.ListJobsLog(pb.ListJobsLogRequest(job_id=job.id), metadata=md)

    final = seen[-1]
    assert final.status == pb.JOB_STATUS_DONE, final.error
    working = [j for j in seen if j.status == pb.JOB_STATUS_WORKING]
    read = [j.processed_data.read_bytes for j in working if j.processed_data.read_bytes]
    # Every piece was seen counted before the next was sent: at least one distinct, growing figure per piece.
    assert len(set(read)) >= PIECES - 1 and read == sorted(read)
    percentages = [j.progress_percentage for j in working if j.progress_percentage]
    assert len(set(percentages)) >= PIECES - 1 and percentages == sorted(percentages)
    # The bytes the bar shows never go down, done included (it was the written size at done: 8.6 MB -> 7.0 MB).
    shown = [size for size in (job_figures(j)[1] for j in seen) if size is not None]
    assert shown == sorted(shown) and shown[-1] == len(slow.body)
    assert final.processed_data.written_rows == 200 * PIECES
    assert sorted(entry.status for entry in log.entries) == ["done", "waiting", "working"]
    assert final.revision > len(log.entries) + len(set(read)) - 1  # the progress writes left no log rows
