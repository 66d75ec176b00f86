"""403 or 404 for another workspace's job id: what an outsider learns, decided and pinned.

The REST gateway keeps the reference's codes: another workspace's job is 403 "The token you have provided doesn't
have access to this resource", an unknown id 404 `Job with id "<id>" not found` (gRPC: PERMISSION_DENIED /
NOT_FOUND). So a token of another workspace can tell that an id it already holds exists — and nothing else: not its
workspace, kind, status or data, and it cannot change it. Ids are random UUIDv4 (122 random bits), so existence
cannot be probed by guessing; an id has to be leaked first, and then this answer adds only "it exists".
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from jobsd_client import pb

from .conftest import LogRecords, Stack

NO_ACCESS = "The token you have provided doesn't have access to this resource"


async def test_another_workspace_s_job_is_403_an_unknown_one_404_and_neither_tells_more(
    stack: Stack, logs: LogRecords
) -> None:
    victim = await stack.create(stack.alpha.tokens["admin"], "copy", "target", query_sql="SELECT 1 AS secret_column")
    unknown = str(uuid.uuid4())
    attacker = stack.beta.tokens["admin"]
    stack.said.clear()

    for path in (f"/v0/jobs/{victim.id}", f"/v0/jobs/{victim.id}/events"):
        status, body = await stack.get(path, attacker)
        assert (status, body["error"]) == (403, NO_ACCESS), path
        assert set(body) == {"error", "documentation"}
    for action in ("cancel", "retry"):
        status, body = await stack.post(f"/v0/jobs/{victim.id}/{action}", attacker)
        assert (status, body["error"]) == (403, NO_ACCESS), action
    status, body = await stack.get(f"/v0/jobs/{unknown}", attacker)
    assert (status, body["error"]) == (404, f'Job with id "{unknown}" not found')

    md = stack.md(attacker)
    for call in (
        stack.jobs.GetJob(pb.GetJobRequest(job_id=victim.id), metadata=md),
        stack.jobs.CancelJob(pb.CancelJobRequest(job_id=victim.id), metadata=md),
        stack.jobs.RetryJob(pb.RetryJobRequest(job_id=victim.id), metadata=md),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.jobs.GetJob(pb.GetJobRequest(job_id=unknown), metadata=md)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    said = stack.everything_said()
    for private in ("secret_column", "target", stack.alpha.workspace_id, "copy"):
        assert private not in said, private
    # Not cancelled, not retried: the victim's job is as it was.
    mine = await stack.jobs.GetJob(pb.GetJobRequest(job_id=victim.id), metadata=stack.md(stack.alpha.tokens["admin"]))
    assert mine.status != pb.JOB_STATUS_CANCELLED
    listed = await stack.jobs.ListJobs(pb.ListJobsRequest(), metadata=stack.md(stack.alpha.tokens["admin"]))
    assert [job.id for job in listed.jobs] == [victim.id]
    assert logs.errors() == []


async def test_a_short_id_finds_only_the_caller_s_own_jobs_and_never_tells_of_another_workspace_s(
    stack: Stack, logs: LogRecords
) -> None:
    """Ids may be shortened to a unique prefix (8+ characters, what `jobsctl watch` prints), resolved by the server
    within the caller's workspace and read scope only: to another workspace's token (or a reader that may not see
    the job) a prefix of the job's id is simply not found — not 403, no id, no count — and nothing changes."""
    victim = await stack.create(stack.alpha.tokens["admin"], "copy", "target", query_sql="SELECT 1 AS secret_column")
    owner = stack.alpha.tokens["admin"]
    stack.said.clear()

    for prefix in (victim.id[:8], victim.id[:23], victim.id[:35]):
        for attacker in (stack.beta.tokens["admin"], stack.beta.tokens["reader"], stack.alpha.tokens["reader"]):
            md = stack.md(attacker)
            for call in (
                stack.jobs.GetJob(pb.GetJobRequest(job_id=prefix), metadata=md),
                stack.jobs.CancelJob(pb.CancelJobRequest(job_id=prefix), metadata=md),
                stack.jobs.RetryJob(pb.RetryJobRequest(job_id=prefix), metadata=md),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                stack.said.append(str(refused.value.details()))
                assert refused.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)
                if refused.value.code() == grpc.StatusCode.NOT_FOUND:
                    assert refused.value.details() == f'Job with id "{prefix}" not found'
            try:  # the log: no rows (a workspace admin reads its own log), or not found (a reader)
                rows = await stack.jobs.ListJobsLog(pb.ListJobsLogRequest(job_id=prefix), metadata=md)
                stack.said.append(str(rows))
                assert not rows.entries
            except grpc.aio.AioRpcError as refused_log:
                assert refused_log.code() == grpc.StatusCode.NOT_FOUND, refused_log.details()
            with pytest.raises(grpc.aio.AioRpcError) as watched:
                async for event in stack.jobs.WatchJob(pb.WatchJobRequest(job_id=prefix), metadata=md):
                    stack.said.append(str(event))
            assert watched.value.code() == grpc.StatusCode.NOT_FOUND
            status, body = await stack.get(f"/v0/jobs/{prefix}", attacker)
            assert (status, body["error"]) == (404, f'Job with id "{prefix}" not found')
            status, body = await stack.post(f"/v0/jobs/{prefix}/cancel", attacker)
            assert status == 404, body

    said = stack.everything_said()
    for private in (victim.id, "secret_column", "target", stack.alpha.workspace_id):
        assert private not in said, private
    # The owner's own prefix finds it; the job is as it was (not cancelled, not retried by anyone).
    mine = await stack.jobs.GetJob(pb.GetJobRequest(job_id=victim.id[:8]), metadata=stack.md(owner))
    assert mine.id == victim.id and mine.status != pb.JOB_STATUS_CANCELLED
    listed = await stack.jobs.ListJobs(pb.ListJobsRequest(kind="copy"), metadata=stack.md(owner))
    assert [job.id for job in listed.jobs] == [victim.id]  # no retry was created


async def test_a_purged_jobs_log_rows_stay_out_of_another_workspaces_reach(stack: Stack) -> None:
    # Once a job is purged its log rows are found by its id through the store's record of purged jobs, not through
    # the job: that record must not open them to another workspace.
    owner = stack.alpha.tokens["admin"]
    victim = await stack.create(owner, "copy", "target", query_sql="SELECT 1 AS secret_column")
    await stack.jobs.CancelJob(pb.CancelJobRequest(job_id=victim.id), metadata=stack.md(owner))
    await stack.finished(owner, victim.id)  # the executors may have claimed it: it ends, so it may be purged
    by_id = pb.ListJobsLogRequest(job_id=victim.id)
    before = list((await stack.jobs.ListJobsLog(by_id, metadata=stack.md(owner))).entries)
    assert before and before[-1].status == "waiting"
    now = datetime.now(UTC)
    # The retention sweep's purge, at a time past the job's 48 hours; the log keeps its rows (30 days).
    assert await stack.app.store.purge(now + timedelta(days=3), log_before=now - timedelta(days=1)) == 1
    stack.said.clear()

    for attacker in (stack.beta.tokens["admin"], stack.beta.tokens["reader"]):
        try:  # a workspace admin reads its own log (no rows of this id), a narrow reader is told not found
            rows = await stack.jobs.ListJobsLog(by_id, metadata=stack.md(attacker))
            assert not rows.entries
        except grpc.aio.AioRpcError as refused:
            assert refused.code() == grpc.StatusCode.NOT_FOUND, refused.details()
        status, body = await stack.get("/v0/jobs_log", attacker, params={"job_id": victim.id})
        assert status in (200, 404), body
        if status == 200:
            assert body["data"] == []
    said = stack.everything_said()
    for private in ("secret_column", "target", stack.alpha.workspace_id, '"copy"'):
        assert private not in said, private
    # The owner still reads them, unchanged, though the job itself is gone.
    assert list((await stack.jobs.ListJobsLog(by_id, metadata=stack.md(owner))).entries) == before
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stack.jobs.GetJob(pb.GetJobRequest(job_id=victim.id), metadata=stack.md(owner))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
