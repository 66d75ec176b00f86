"""Kinds the operator declares, end to end with the worker SDK against a real jobsd: a cancel of a working job of
a kind declared cancellable reaches its handler; params keep their integers; `jobsctl kinds` and `jobsctl create`
as subprocesses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd_client import AsyncJobsClient, FailedPrecondition, JobCancelled, JobContext, Worker, pb
from tests.support.server import running_server

from .conftest import PATIENCE, Jobsd, jobsctl, jobsd_settings, running, wait_for_status

KINDS = """
[thumbnail]
description = "render thumbnails"
cancellable_while_working = true
concurrency_limit = 2

[resize]
description = "resize one image"
"""


@pytest.fixture
async def jobsd(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Jobsd]:
    kinds_file = tmp_path / "kinds.toml"
    kinds_file.write_text(KINDS)
    async with running_server(replace(jobsd_settings(tmp_path), kinds_file=str(kinds_file)), clock) as server:
        yield server


async def test_a_declared_cancellable_kind_delivers_cancel_requested_to_its_handler(
    jobsd: Jobsd, client: AsyncJobsClient
) -> None:
    started = asyncio.Event()
    seen: list[JobContext] = []

    async def thumbnail(ctx: JobContext) -> None:
        seen.append(ctx)
        ctx.report(progress_percentage=25)
        await ctx.flush()
        started.set()
        await ctx.wait_cancel_requested()
        assert ctx.cancel_requested
        raise JobCancelled()

    job = await client.create_job("thumbnail", params={"images": 4, "size": 1.5})
    worker = Worker(jobsd.target, jobsd.worker, {"thumbnail": thumbnail}, wait_seconds=1.0)
    async with running(worker):
        async with asyncio.timeout(PATIENCE):
            await started.wait()
        working = await client.get_job(job.id)
        assert working.status == pb.JOB_STATUS_WORKING and working.is_cancellable
        cancelling = await client.cancel_job(job.id)
        assert cancelling.status == pb.JOB_STATUS_CANCELLING
        final = await wait_for_status(client, job.id, pb.JOB_STATUS_CANCELLED)

    assert final.progress_percentage == 25
    # A Struct carries doubles; whole numbers come back as ints, the others stay floats.
    assert seen[0].params == {"images": 4, "size": 1.5}
    assert type(seen[0].params["images"]) is int


async def test_a_declared_kind_that_is_not_cancellable_refuses_while_working(
    jobsd: Jobsd, client: AsyncJobsClient
) -> None:
    started = asyncio.Event()
    finish = asyncio.Event()

    async def resize(ctx: JobContext) -> None:
        started.set()
        await finish.wait()

    job = await client.create_job("resize")
    async with running(Worker(jobsd.target, jobsd.worker, {"resize": resize}, wait_seconds=1.0)):
        async with asyncio.timeout(PATIENCE):
            await started.wait()
        with pytest.raises(FailedPrecondition) as refused:
            await client.cancel_job(job.id)
        finish.set()
        await wait_for_status(client, job.id, pb.JOB_STATUS_DONE)
    assert refused.value.message == (
        "Job is not in cancellable status: it is working, and resize jobs can be cancelled only while waiting"
    )


async def test_jobsctl_kinds_and_create_as_subprocesses(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    code, out, err = await jobsctl("kinds", target=jobsd.target, token=jobsd.admin)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    headers = "KIND ORIGIN CANCELLABLE KEY, LIMIT LEASE ATTEMPTS TIME_LIMIT RETENTION ABOUT"
    assert lines[0].split() == headers.split()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"copy", "delete_data", "import", "populateview", "query", "sink", "thumbnail", "resize"}
    assert rows["thumbnail"].split()[:7] == ["thumbnail", "declared", "yes", "workspace,", "2", "0.6s", "3"]
    assert rows["thumbnail"].endswith("render thumbnails")
    assert rows["import"].split()[:3] == ["import", "built-in", "waiting"]
    assert rows["populateview"].split()[3:5] == ["target,", "1"]

    code, out, err = await jobsctl("kinds", "--json", target=jobsd.target, token=jobsd.worker)
    assert code == 0
    thumbnail = next(k for k in json.loads(out)["kinds"] if k["name"] == "thumbnail")
    assert thumbnail["cancellable_while_working"] is True and thumbnail["concurrency_limit"] == 2

    code, out, err = await jobsctl(
        "create", "thumbnail", "--params", '{"images": 4}', "--json", target=jobsd.target, token=jobsd.admin
    )
    assert (code, err) == (0, "")
    created = json.loads(out)
    assert created["kind"] == "thumbnail" and created["params"] == {"images": 4}
    assert (await client.get_job(created["id"])).kind == "thumbnail"

    code, out, err = await jobsctl("create", "thumbnails", target=jobsd.target, token=jobsd.admin)
    assert (code, out) == (1, "")
    assert err == (
        "error: kind: unknown kind 'thumbnails'; expected one of copy, delete_data, import, populateview, query, "
        "resize, sink, thumbnail\n"
    )
