"""AsyncJobsClient against a real jobsd: every RPC of both services, paging, streaming and the error mapping."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import json_format

from jobsd.app import JobsdApp
from jobsd_client import AsyncJobsClient, EventType, pb, status_name
from jobsd_client.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

from .conftest import PATIENCE, Jobsd, create_import, ids, jobsd_settings


async def test_create_then_get_returns_every_field_the_creator_set(client: AsyncJobsClient) -> None:
    created = await client.create_job(
        "import",
        url="https://example.com/events.csv",
        datasource={"name": "events", "columns": [{"name": "a", "type": "Int32"}]},
        mode="replace",
        params={"format": "csv", "skip": 1},
        request_id="req-1",
    )
    assert status_name(created.status) == "waiting" and created.is_cancellable

    fetched = await client.get_job(created.id)
    assert fetched.id == created.id and fetched.kind == "import"
    assert fetched.url == "https://example.com/events.csv" and fetched.mode == "replace"
    assert fetched.datasource_ref.name == "events" and fetched.datasource_ref.id
    assert json_format.MessageToDict(fetched.datasource)["columns"] == [{"name": "a", "type": "Int32"}]
    assert dict(fetched.params) == {"format": "csv", "skip": 1.0}


async def test_idempotency_key_returns_the_same_job(client: AsyncJobsClient) -> None:
    first = await create_import(client, idempotency_key="nightly-2026-06-01")
    again = await create_import(client, idempotency_key="nightly-2026-06-01")
    assert again.id == first.id


async def test_list_pages_iter_follows_them_and_filters_apply(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    created = []
    for name in ("a", "b", "c", "d", "e"):
        created.append(await create_import(client, name))
        jobsd.clock.advance(timedelta(seconds=1))
    newest_first = list(reversed(ids(created)))

    page = await client.list_jobs(page_size=2)
    assert ids(page.jobs) == newest_first[:2] and page.next_page_token
    second = await client.list_jobs(page_size=2, page_token=page.next_page_token)
    assert ids(second.jobs) == newest_first[2:4]

    assert [job.id async for job in client.iter_jobs(page_size=2)] == newest_first
    assert [job.id async for job in client.iter_jobs(limit=3)] == newest_first[:3]

    await client.cancel_job(created[0].id)
    assert [job.id async for job in client.iter_jobs(status="cancelled")] == [created[0].id]
    assert [job.id async for job in client.iter_jobs(status=pb.JOB_STATUS_WAITING)] == newest_first[:4]
    assert [job.id async for job in client.iter_jobs(kind="copy")] == []
    window = client.iter_jobs(
        created_after=created[1].created_at.ToDatetime(), created_before=created[3].created_at.ToDatetime()
    )
    assert [job.id async for job in window] == newest_first[1:4]


async def test_cancel_a_waiting_job_then_cancelling_again_is_refused(client: AsyncJobsClient) -> None:
    job = await create_import(client)
    cancelled = await client.cancel_job(job.id)
    assert cancelled.status == pb.JOB_STATUS_CANCELLED and not cancelled.is_cancellable

    with pytest.raises(FailedPrecondition) as refused:
        await client.cancel_job(job.id)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "not in cancellable status" in refused.value.message


async def test_retry_creates_a_new_job_with_the_same_parameters(client: AsyncJobsClient) -> None:
    job = await create_import(client, mode="replace")
    await client.cancel_job(job.id)
    retried = await client.retry_job(job.id)
    assert retried.id != job.id and retried.status == pb.JOB_STATUS_WAITING
    assert (retried.kind, retried.url, retried.mode) == (job.kind, job.url, job.mode)


async def test_watch_job_streams_each_revision_and_ends_with_the_terminal_state(
    client: AsyncJobsClient, worker_client: AsyncJobsClient
) -> None:
    job = await create_import(client)
    stream = client.watch_job(job.id)
    snapshot = await anext(stream)
    assert snapshot.type is EventType.SNAPSHOT and snapshot.job.status == pb.JOB_STATUS_WAITING

    claim = await worker_client.claim_job("w1", ["import"])
    await worker_client.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=50))
    await worker_client.finish_job(job.id, claim.lease_token, "done")

    rest = [event async for event in stream]
    assert [(status_name(e.job.status), e.job.progress_percentage) for e in rest] == [
        ("working", 0.0),
        ("working", 50.0),
        ("done", 50.0),
    ]
    assert [e.revision for e in rest] == [2, 3, 4]

    # Resuming repeats nothing up to revision 2; progress-only revisions may be coalesced into the latest state.
    resumed = [event.revision async for event in client.watch_job(job.id, since_revision=2)]
    assert resumed[-1] == 4 and min(resumed) > 2


async def test_watch_jobs_opens_with_active_jobs_then_synced_then_changes(client: AsyncJobsClient) -> None:
    active = await create_import(client, "active")
    ended = await create_import(client, "ended")
    await client.cancel_job(ended.id)

    stream = client.watch_jobs(kind="import")
    opening = [await anext(stream), await anext(stream)]
    assert [e.type for e in opening] == [EventType.SNAPSHOT, EventType.SYNCED]
    assert opening[0].job.id == active.id

    newcomer = await create_import(client, "newcomer")
    change = await anext(stream)
    assert change.job.id == newcomer.id and change.type is EventType.STATUS
    await stream.aclose()


async def test_jobs_log_has_a_row_per_status_change(client: AsyncJobsClient) -> None:
    job = await create_import(client)
    await client.cancel_job(job.id)
    log = await client.list_jobs_log(job_id=job.id)
    assert sorted(entry.status for entry in log.entries) == ["cancelled", "waiting"]
    assert {entry.job_type for entry in log.entries} == {"import"}


async def test_jobs_log_filters_by_pipe_name(client: AsyncJobsClient) -> None:
    """Once a bug: ListJobsLogRequest.pipe_name was sent, but the server dropped it and answered every pipe."""
    p1 = await client.create_job("copy", pipe_name="p1", datasource={"name": "t1"}, query_sql="SELECT 1")
    p2 = await client.create_job("copy", pipe_name="p2", datasource={"name": "t2"}, query_sql="SELECT 1")
    await client.cancel_job(p2.id)
    every_pipe = await client.list_jobs_log()
    assert {e.job_id for e in every_pipe.entries} == {p1.id, p2.id}
    only_p1 = await client.list_jobs_log(pipe_name="p1")
    assert [(e.job_id, e.status) for e in only_p1.entries] == [(p1.id, "waiting")]
    assert (await client.list_jobs_log(pipe_name="no-such-pipe")).entries == []


async def test_get_workspace_names_the_tokens_workspace_and_scopes(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    workspace = await client.get_workspace()
    assert workspace.name == "default" and workspace.id == jobsd.workspace_id
    assert list(workspace.scopes) == ["ADMIN"]


async def test_worker_rpcs_claim_heartbeat_finish(client: AsyncJobsClient, worker_client: AsyncJobsClient) -> None:
    nothing = await worker_client.claim_job("w1", ["import"], wait_seconds=0)
    assert not nothing.HasField("job")

    job = await create_import(client)
    claim = await worker_client.claim_job("w1", ["import"], wait_seconds=1)
    assert claim.job.id == job.id and claim.lease_token
    assert claim.heartbeat_interval_seconds == pytest.approx(0.2)

    progress = pb.ProgressUpdate(statistics=pb.Statistics(bytes=10, row_count=2), invalid_lines=1)
    beat = await worker_client.heartbeat(job.id, claim.lease_token, progress)
    assert not beat.cancel_requested and beat.revision == 3

    finished = await worker_client.finish_job(job.id, claim.lease_token, pb.JOB_STATUS_ERROR, error="bad file")
    assert finished.status == pb.JOB_STATUS_ERROR and finished.error == "bad file"
    assert finished.statistics.row_count == 2 and finished.invalid_lines == 1


async def test_release_hands_a_claimed_job_back(client: AsyncJobsClient, worker_client: AsyncJobsClient) -> None:
    job = await create_import(client)
    claim = await worker_client.claim_job("w1")
    released = await worker_client.finish_job(job.id, claim.lease_token, release=True)
    assert released.status == pb.JOB_STATUS_WAITING


async def test_errors_are_typed_and_carry_the_servers_message(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient
) -> None:
    with pytest.raises(NotFound) as missing:
        await client.get_job("00000000-0000-4000-8000-000000000000")
    assert "not found" in missing.value.message

    with pytest.raises(InvalidArgument) as bad_kind:
        await client.create_job("teleport", datasource={"name": "events"})
    assert bad_kind.value.field == "kind" and "teleport" in bad_kind.value.message

    with pytest.raises(InvalidArgument) as bad_name:
        await client.create_job("import", url="https://example.com/a.csv", datasource={"name": "no spaces"})
    assert bad_name.value.field == "datasource.name"

    async with AsyncJobsClient(jobsd.target, "jobsd_not-a-token") as stranger:
        with pytest.raises(Unauthenticated):
            await stranger.list_jobs()

    async with AsyncJobsClient(jobsd.target, jobsd.worker) as executor:
        with pytest.raises(PermissionDenied):
            await executor.create_job("query", params={"sql": "select 1"}, workspace_id=jobsd.workspace_id)

    with pytest.raises(FailedPrecondition):
        await worker_client.heartbeat((await create_import(client)).id, "not-the-lease")


async def test_bad_input_is_refused_locally_naming_the_field(client: AsyncJobsClient) -> None:
    with pytest.raises(InvalidArgument) as page:
        await client.list_jobs(page_size=101)
    assert page.value.field == "page_size"
    with pytest.raises(InvalidArgument) as status:
        await client.list_jobs(status="finished")
    assert status.value.field == "status"
    with pytest.raises(InvalidArgument) as params:
        await client.create_job("query", params={"sql": object()})
    assert params.value.field == "params"
    with pytest.raises(InvalidArgument) as finish:
        await client.finish_job("job", "lease")
    assert finish.value.field == "status"
    assert [job async for job in client.iter_jobs()] == []  # nothing was created by the refused calls


async def test_a_misspelt_keyword_is_a_type_error_before_anything_is_sent(client: AsyncJobsClient) -> None:
    # The keyword arguments are typed as TypedDicts; a caller without a type checker still gets a TypeError.
    await client.create_job("query", params={"sql": "select 1"})
    with pytest.raises(TypeError, match="list_jobs\\(\\) got an unexpected keyword argument 'knd'"):
        await client.list_jobs(knd="import")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'page_token'"):
        client.iter_jobs(page_token="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'job'"):
        await client.list_jobs_log(job="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'stauts'"):
        client.watch_jobs(stauts="waiting")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'data_source'"):
        await client.create_job("import", data_source={"name": "events"})  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'reason'"):
        await client.finish_job("job", "lease", "error", reason="boom")  # type: ignore[call-arg]
    assert [job.kind async for job in client.iter_jobs()] == ["query"]  # the refused create made nothing


async def test_unreachable_server_raises_unavailable() -> None:
    async with AsyncJobsClient("127.0.0.1:1", "token", timeout=PATIENCE) as client:
        with pytest.raises(Unavailable) as down:
            await client.get_job("x")
    assert down.value.code == grpc.StatusCode.UNAVAILABLE


async def test_a_supplied_channel_stays_open_after_the_client_closes(jobsd: Jobsd) -> None:
    channel = grpc.aio.insecure_channel(jobsd.target)
    try:
        async with AsyncJobsClient(jobsd.target, jobsd.admin, channel=channel) as first:
            await first.get_workspace()
        async with AsyncJobsClient(jobsd.target, jobsd.admin, channel=channel) as second:
            assert (await second.get_workspace()).name == "default"
    finally:
        await channel.close(None)


# A replacement server opens the same SQLite file.
@pytest.mark.backends("sqlite")
async def test_follow_job_resumes_after_a_server_restart(tmp_path: Path, jobsd: Jobsd, client: AsyncJobsClient) -> None:
    job = await create_import(client)
    follow = client.follow_job(job.id)
    assert (await anext(follow)).type is EventType.SNAPSHOT

    port = jobsd.app.grpc_port
    await jobsd.app.stop()  # the watch stream breaks with UNAVAILABLE
    replacement = JobsdApp(jobsd_settings(tmp_path, f"127.0.0.1:{port}"), clock=jobsd.clock)
    await replacement.start()
    try:
        # Someone cancels it through the restarted server (in-process, so this test needs no second channel).
        await replacement.api.cancel_job(jobsd.admin, pb.CancelJobRequest(job_id=job.id))
        async with asyncio.timeout(PATIENCE):
            rest = [event async for event in follow]
    finally:
        await replacement.stop()
    assert [(e.revision, e.job.status) for e in rest] == [(2, pb.JOB_STATUS_CANCELLED)]


async def test_follow_job_gives_up_after_its_reconnect_budget(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    job = await create_import(client)
    follow = client.follow_job(job.id, reconnect_seconds=0.3)
    await anext(follow)
    await jobsd.app.stop()
    with pytest.raises(Unavailable):
        async with asyncio.timeout(PATIENCE):
            await anext(follow)
