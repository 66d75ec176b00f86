"""Per-workspace watch caps: one workspace holding its whole share of watch streams leaves the others theirs.

The attacker (alpha) opens its cap of streams over every face a watch has — `WatchJob`, `WatchJobs`, the REST
list stream `GET /v0/jobs/events` and a job's `GET /v0/jobs/{id}/events` — and its next one is refused at once
(RESOURCE_EXHAUSTED / 429, naming the limit), taking no place; the bystander (beta) watches its own job and hears
of its change; a stream the attacker closes gives its place back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from jobsd_client import pb
from tests.support.sse import read_sse_event

from .tenants import WAIT, Tenants, bounded, next_event, rpc_error, tenant_server

CAP = 3
LIMIT_NAME = f"JOBSD_MAX_WATCH_STREAMS_PER_WORKSPACE={CAP}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Tenants]:
    async with tenant_server(tmp_path, max_watch_streams_per_workspace=CAP) as started:
        yield started


async def test_a_workspace_at_its_watch_cap_is_refused_and_another_still_watches(server: Tenants) -> None:
    s = server
    mine = await s.create(s.alpha)
    theirs = await s.create(s.beta)
    # The attacker's streams, one of each kind, each confirmed open by its first event.
    one = s.jobs.WatchJob(pb.WatchJobRequest(job_id=mine.id), metadata=s.md(s.alpha))
    assert (await next_event(one)).type == pb.JobEvent.TYPE_SNAPSHOT
    wide = s.jobs.WatchJobs(pb.WatchJobsRequest(), metadata=s.md(s.alpha))
    assert (await next_event(wide)).type == pb.JobEvent.TYPE_SNAPSHOT
    async with s.http.get(f"{s.rest}/v0/jobs/events", headers=s.bearer(s.alpha)) as sse:
        assert sse.status == 200
        first = await read_sse_event(sse, WAIT)
        assert first is not None and first["event"] == "snapshot"
        assert s.app.hub.workspace_count(s.alpha_id) == CAP

        # Every further watch of alpha's is refused, naming the limit, over every face.
        refused = await rpc_error(s.jobs.WatchJob(pb.WatchJobRequest(job_id=mine.id), metadata=s.md(s.alpha)).read())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert LIMIT_NAME in (refused.details() or "")
        refused_wide = await rpc_error(s.jobs.WatchJobs(pb.WatchJobsRequest(), metadata=s.md(s.alpha)).read())
        assert refused_wide.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for path in ("/v0/jobs/events", f"/v0/jobs/{mine.id}/events"):
            async with s.http.get(f"{s.rest}{path}", headers=s.bearer(s.alpha)) as over:
                body = await over.json()
                assert over.status == 429, (path, body)
                assert LIMIT_NAME in body["error"]
        # The refusals took no place, and the open streams still work.
        assert s.app.hub.workspace_count(s.alpha_id) == CAP

        # The bystander watches its own job and hears of its change.
        watch = s.jobs.WatchJob(pb.WatchJobRequest(job_id=theirs.id), metadata=s.md(s.beta))
        assert (await next_event(watch)).job.id == theirs.id
        await bounded(s.jobs.CancelJob(pb.CancelJobRequest(job_id=theirs.id), metadata=s.md(s.beta)))
        changed = await next_event(watch)
        assert (changed.type, changed.job.id, changed.job.status) == (
            pb.JobEvent.TYPE_STATUS,
            theirs.id,
            pb.JOB_STATUS_CANCELLED,
        )
        # Beta's streams never counted against alpha's cap (nor alpha's against beta's).
        assert s.app.hub.workspace_count(s.alpha_id) == CAP

        # Alpha's own streams still deliver: its job's change reaches the three it holds.
        await bounded(s.jobs.CancelJob(pb.CancelJobRequest(job_id=mine.id), metadata=s.md(s.alpha)))
        assert (await next_event(one)).job.status == pb.JOB_STATUS_CANCELLED
        assert (await next_event(wide)).type == pb.JobEvent.TYPE_SYNCED
        assert (await next_event(wide)).job.status == pb.JOB_STATUS_CANCELLED
        seen = await read_sse_event(sse, WAIT)
        while seen is not None and seen["event"] != "status":
            seen = await read_sse_event(sse, WAIT)
        assert seen is not None and seen["data"]["status"] == "cancelled"

    # The REST stream closed by the client and the job stream that ended give their places back.
    await s.hub.until(lambda: s.app.hub.workspace_count(s.alpha_id) == 1, "alpha's closed streams released")
    wide.cancel()
    await s.hub.until(lambda: s.app.hub.workspace_count(s.alpha_id) == 0, "alpha's cancelled WatchJobs released")
    # All its places are usable again.
    again = [s.jobs.WatchJobs(pb.WatchJobsRequest(), metadata=s.md(s.alpha)) for _ in range(CAP)]
    for stream in again:
        assert (await next_event(stream)).type == pb.JobEvent.TYPE_SYNCED
    assert s.app.hub.workspace_count(s.alpha_id) == CAP
    for stream in again:
        stream.cancel()
    await s.hub.until(lambda: s.app.hub.subscriber_count == 0, "every stream released")


async def test_the_process_cap_still_holds_across_workspaces(tmp_path: Path) -> None:
    async with tenant_server(tmp_path, max_watch_streams=2, max_watch_streams_per_workspace=CAP) as s:
        mine = await s.create(s.alpha)
        theirs = await s.create(s.beta)
        held = [
            s.jobs.WatchJob(pb.WatchJobRequest(job_id=mine.id), metadata=s.md(s.alpha)),
            s.jobs.WatchJob(pb.WatchJobRequest(job_id=theirs.id), metadata=s.md(s.beta)),
        ]
        for stream in held:
            assert (await next_event(stream)).type == pb.JobEvent.TYPE_SNAPSHOT
        refused = await rpc_error(s.jobs.WatchJob(pb.WatchJobRequest(job_id=theirs.id), metadata=s.md(s.beta)).read())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "JOBSD_MAX_WATCH_STREAMS=2" in (refused.details() or "")
        assert s.app.hub.workspace_count(s.beta_id) == 1  # the refusal took no place
        for stream in held:
            stream.cancel()
        await s.hub.until(lambda: s.app.hub.subscriber_count == 0, "every stream released")
