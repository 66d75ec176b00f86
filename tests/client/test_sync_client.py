"""JobsClient, the blocking twin: same calls, same errors. It runs in a thread here because the server under
test shares this test's event loop (a blocking call on the loop's own thread would starve the server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

import pytest

from jobsd_client import JobsClient, pb, status_name
from jobsd_client.errors import InvalidArgument, NotFound, Unauthenticated

from .conftest import PATIENCE, Jobsd

T = TypeVar("T")


async def blocking(call: Callable[[], T]) -> T:
    return await asyncio.to_thread(call)


async def test_sync_client_runs_a_whole_job(jobsd: Jobsd) -> None:
    with (
        JobsClient(jobsd.target, jobsd.admin, timeout=PATIENCE) as admin,
        JobsClient(jobsd.target, jobsd.worker, timeout=PATIENCE) as executor,
    ):
        job = await blocking(lambda: admin.create_job("query", params={"sql": "select 1"}, request_id="sync-1"))
        assert status_name(job.status) == "waiting"
        assert [j.id for j in await blocking(lambda: list(admin.iter_jobs(kind="query")))] == [job.id]
        assert (await blocking(lambda: admin.list_jobs(status="waiting"))).jobs[0].id == job.id

        claim = await blocking(lambda: executor.claim_job("sync-worker", ["query"], wait_seconds=1))
        assert claim.job.id == job.id
        beat = await blocking(
            lambda: executor.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=10))
        )
        assert not beat.cancel_requested
        await blocking(lambda: executor.finish_job(job.id, claim.lease_token, "done"))

        events = await blocking(lambda: list(admin.watch_job(job.id)))
        assert status_name(events[-1].job.status) == "done"
        assert (await blocking(lambda: admin.get_job(job.id))).status == pb.JOB_STATUS_DONE
        log = await blocking(lambda: admin.list_jobs_log(job_id=job.id))
        assert sorted(entry.status for entry in log.entries) == ["done", "waiting", "working"]
        assert (await blocking(admin.get_workspace)).name == "default"

        retried_from = await blocking(lambda: admin.create_job("query", params={"sql": "select 2"}))
        await blocking(lambda: admin.cancel_job(retried_from.id))
        retried = await blocking(lambda: admin.retry_job(retried_from.id))
        assert retried.id != retried_from.id and dict(retried.params) == {"sql": "select 2"}


async def test_sync_client_raises_the_same_typed_errors(jobsd: Jobsd) -> None:
    with JobsClient(jobsd.target, jobsd.admin, timeout=PATIENCE) as admin:
        with pytest.raises(NotFound):
            await blocking(lambda: admin.get_job("no-such-job"))
        with pytest.raises(InvalidArgument) as bad:
            await blocking(lambda: admin.create_job("import", datasource={"name": "events"}))
        assert bad.value.field == "url"
    with JobsClient(jobsd.target, "jobsd_wrong") as stranger, pytest.raises(Unauthenticated):
        await blocking(lambda: stranger.list_jobs())


def test_the_sync_client_refuses_a_misspelt_keyword_before_anything_is_sent() -> None:
    # Nothing listens on port 1: a call that reached the transport would fail with Unavailable instead.
    with JobsClient("127.0.0.1:1", "token", timeout=PATIENCE) as client:
        with pytest.raises(TypeError, match="list_jobs\\(\\) got an unexpected keyword argument 'knd'"):
            client.list_jobs(knd="import")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'page_token'"):
            client.iter_jobs(page_token="x")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'stauts'"):
            client.watch_jobs(stauts="waiting")  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="'data_source'"):
            client.create_job("import", data_source={"name": "events"})  # type: ignore[call-arg]
