"""A list page never exceeds the message size: `ListJobs` and `GET /v0/jobs` pages are bounded by bytes too.

The attack of the issue: six jobs holding a 3.9 MB `datasource` each made one `ListJobs` page larger than any gRPC
message, so the whole workspace's listing failed. Such jobs can no longer be created (test_struct_limits.py) but
older versions stored them, so they are written here under the limits of then, beside jobs at today's limits and
small ones. The listing is read page by page by a client with gRPC's default 4 MiB receive limit: every page
arrives, stays within `JOBSD_MAX_PAGE_BYTES` (a job larger than that comes alone), and the pages together are
every job exactly once, newest first. The REST pages, followed by their `next` links, are the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from jobsd.domain.validation import StructLimits
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc

from .tenants import Tenants, bounded, tenant_server

PAGE_BYTES = 3 * 1024 * 1024  # the default
DEFAULT_CLIENT_RECEIVE = 4 * 1024 * 1024


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Tenants]:
    async with tenant_server(tmp_path) as started:
        yield started


def request(datasource_bytes: int = 0, params_bytes: int = 0) -> pb.CreateJobRequest:
    made = pb.CreateJobRequest(kind="import", url="https://example.com/a.csv")
    made.datasource.update({"name": "events", "blob": "d" * datasource_bytes})
    if params_bytes:
        params = struct_pb2.Struct()
        params.update({"blob": "p" * params_bytes})
        made.params.CopyFrom(params)
    return made


async def create_batch(s: Tenants, requests: list[pb.CreateJobRequest]) -> list[pb.Job]:
    answer = await bounded(s.jobs.CreateJobs(pb.CreateJobsRequest(jobs=requests), metadata=s.md(s.alpha)))
    assert all(r.WhichOneof("result") == "job" for r in answer.results), answer.results[0].error
    s.clock.advance(timedelta(milliseconds=1))
    return [r.job for r in answer.results]


async def test_a_workspace_of_huge_and_large_jobs_lists_page_by_page_within_the_message_size(server: Tenants) -> None:
    s = server
    limits = s.app.service.struct_limits
    created: list[pb.Job] = []
    # Jobs at today's limits (64 KiB datasource + 64 KiB params, ~128 KiB each), and small ones.
    at_limit = request(datasource_bytes=65_000, params_bytes=65_000)
    for _ in range(3):
        created += await create_batch(s, [at_limit] * 20)
        created += await create_batch(s, [request()] * 5)
    # What an older version stored: 3.9 MB datasources (written here under the limits of then).
    s.app.service.struct_limits = replace(limits, datasource=8 * 1024 * 1024)
    for _ in range(6):
        created += await create_batch(s, [request(datasource_bytes=3_900_000)])
        created += await create_batch(s, [request()] * 2)
    s.app.service.struct_limits = limits
    assert isinstance(limits, StructLimits)
    newest_first = [
        job.id for job in sorted(created, key=lambda j: (j.created_at.ToMicroseconds(), j.id), reverse=True)
    ]

    # A client as gRPC makes it by default (4 MiB received at most).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{s.app.grpc_port}") as channel:
        jobs = pb_grpc.JobsStub(channel)
        seen: list[str] = []
        sizes: list[tuple[int, int]] = []  # (jobs, bytes) of each page
        page_token = ""
        while True:
            page = await bounded(jobs.ListJobs(pb.ListJobsRequest(page_token=page_token), metadata=s.md(s.alpha)))
            size = page.ByteSize()
            assert size <= DEFAULT_CLIENT_RECEIVE
            assert size <= PAGE_BYTES + 1024 or len(page.jobs) == 1, (len(page.jobs), size)
            sizes.append((len(page.jobs), size))
            seen += [job.id for job in page.jobs]
            page_token = page.next_page_token
            if not page_token:
                break

    assert seen == newest_first  # every job exactly once, in order: none lost or repeated at a page's edge
    assert len(seen) == len(set(seen)) == 6 * 3 + 3 * 25
    huge_pages = [count for count, size in sizes if size > PAGE_BYTES]
    assert huge_pages == [1] * 6  # each 3.9 MB job came alone
    assert max(count for count, _ in sizes) < 100  # the bytes, not the count, ended the pages of large jobs
    assert sum(size for _, size in sizes) > 6 * 3_900_000

    # GET /v0/jobs, following `next`: the same jobs, page by page.
    rest_seen: list[str] = []
    url: str | None = f"{s.rest}/v0/jobs"
    pages = 0
    while url is not None:
        async with s.http.get(url, headers=s.bearer(s.alpha)) as listed:
            assert listed.status == 200
            body = await listed.json()
        pages += 1
        rest_seen += [job["id"] for job in body["jobs"]]
        url = body.get("next")
    assert rest_seen == newest_first
    assert pages == len(sizes)
