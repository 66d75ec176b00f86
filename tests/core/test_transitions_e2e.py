"""Every status transition and every refused one, over real gRPC (docs/contract.md #the-job, #queue)."""

from __future__ import annotations

import grpc
import pytest

from jobsd_client import pb

from .conftest import Server, bounded, rpc_error

NOT_CANCELLABLE = "Job is not in cancellable status"
ALREADY_CANCELLING = "Job is already being cancelled"


async def statuses_in_log(server: Server, job_id: str) -> list[str]:
    return [e.status for e in await server.job_log(job_id)]


# ---------------------------------------------------------------- cancel in each status


@pytest.mark.parametrize("kind", ["import", "populateview", "copy", "query", "delete_data", "sink"])
async def test_cancel_waiting_job_is_cancelled_at_once(server: Server, kind: str) -> None:
    job = await server.create_kind(kind)
    cancelled = await server.cancel(job.id)
    assert cancelled.status == pb.JOB_STATUS_CANCELLED and not cancelled.is_cancellable
    assert cancelled.revision == job.revision + 1
    assert (await server.get(job.id)).status == pb.JOB_STATUS_CANCELLED
    assert (await server.claim()).HasField("job") is False, "a cancelled job must never be claimed"
    assert await statuses_in_log(server, job.id) == ["waiting", "cancelled"]


@pytest.mark.parametrize("kind", ["import", "query", "delete_data", "sink"])
async def test_cancel_working_job_of_a_kind_that_cannot_stop_is_refused(server: Server, kind: str) -> None:
    job = await server.create_kind(kind)
    claim = await server.claim_job(job.id)
    assert not claim.job.is_cancellable
    error = await rpc_error(server.cancel(job.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The documented message first (what the Tinybird CLIs match), then the kind, the status and the rule.
    assert error.details() == f"{NOT_CANCELLABLE}: it is working, and {kind} jobs can be cancelled only while waiting"
    after = await server.get(job.id)
    assert after.status == pb.JOB_STATUS_WORKING and after.revision == claim.job.revision


@pytest.mark.parametrize("kind", ["populateview", "copy"])
async def test_cancel_working_populate_goes_through_cancelling_to_cancelled(server: Server, kind: str) -> None:
    job = await server.create_kind(kind, target="events_mv")
    claim = await server.claim_job(job.id)
    assert claim.job.is_cancellable

    beat = await server.heartbeat(job.id, claim.lease_token)
    assert not beat.cancel_requested

    cancelling = await server.cancel(job.id)
    assert cancelling.status == pb.JOB_STATUS_CANCELLING and not cancelling.is_cancellable

    beat = await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=50))
    assert beat.cancel_requested, "the worker must learn of the cancel on its next heartbeat"

    again = await rpc_error(server.cancel(job.id))
    assert again.code() == grpc.StatusCode.FAILED_PRECONDITION and again.details() == ALREADY_CANCELLING

    cancelled = await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_CANCELLED)
    assert cancelled.status == pb.JOB_STATUS_CANCELLED and cancelled.progress_percentage == 50
    assert await statuses_in_log(server, job.id) == ["waiting", "working", "cancelling", "cancelled"]


@pytest.mark.parametrize(
    ("final", "error"),
    [(pb.JOB_STATUS_DONE, ""), (pb.JOB_STATUS_ERROR, "boom"), (pb.JOB_STATUS_CANCELLED, "")],
    ids=["done", "error", "cancelled"],
)
async def test_ended_jobs_are_not_cancellable(server: Server, final: pb.JobStatus.ValueType, error: str) -> None:
    job = await server.create_kind("populateview")
    if final == pb.JOB_STATUS_CANCELLED:
        ended = await server.cancel(job.id)
    else:
        claim = await server.claim_job(job.id)
        ended = await server.finish(job.id, claim.lease_token, final, error=error)
    assert ended.status == final and not ended.is_cancellable
    refused = await rpc_error(server.cancel(job.id))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    status = pb.JobStatus.Name(final).removeprefix("JOB_STATUS_").lower()
    assert refused.details() == (
        f"{NOT_CANCELLABLE}: it is {status}, and populateview jobs can be cancelled while waiting or working"
    )
    assert (await server.get(job.id)).revision == ended.revision


@pytest.mark.parametrize(
    ("final", "error"), [(pb.JOB_STATUS_DONE, ""), (pb.JOB_STATUS_ERROR, "it broke")], ids=["done", "error"]
)
async def test_a_cancelling_job_may_still_finish_done_or_error(
    server: Server, final: pb.JobStatus.ValueType, error: str
) -> None:
    job = await server.create_kind("copy", target="snapshot")
    claim = await server.claim_job(job.id)
    await server.cancel(job.id)
    ended = await server.finish(job.id, claim.lease_token, final, error=error)
    assert ended.status == final
    if error:
        assert ended.error == error
    log = await statuses_in_log(server, job.id)
    assert log == ["waiting", "working", "cancelling", "done" if final == pb.JOB_STATUS_DONE else "error"]


# ---------------------------------------------------------------- finishing


async def test_finish_cancelled_without_a_cancel_request_is_refused(server: Server) -> None:
    job = await server.create_kind("populateview")
    claim = await server.claim_job(job.id)
    error = await rpc_error(server.finish(job.id, claim.lease_token, pb.JOB_STATUS_CANCELLED))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = await server.get(job.id)
    assert after.status == pb.JOB_STATUS_WORKING and after.revision == claim.job.revision


async def test_finish_error_records_the_reason_and_final_figures(server: Server) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id)
    progress = pb.ProgressUpdate(quarantine_rows=3, invalid_lines=2, errors=["row 7: bad date"])
    ended = await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_ERROR, error="bad file", progress=progress)
    assert ended.status == pb.JOB_STATUS_ERROR and ended.error == "bad file"
    assert (ended.quarantine_rows, ended.invalid_lines, list(ended.errors)) == (3, 2, ["row 7: bad date"])
    log = await server.job_log(job.id)
    assert log[-1].status == "error" and log[-1].error == "bad file"


async def test_release_gives_the_job_back_to_the_queue(server: Server) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id, worker_id="w1")
    assert claim.job.attempt == 1
    released = await server.finish(job.id, claim.lease_token, release=True)
    assert released.status == pb.JOB_STATUS_WAITING and released.is_cancellable
    assert not released.HasField("worker_id") and not released.HasField("lease_expires_at")
    again = await server.claim_job(job.id, worker_id="w2")
    assert again.job.worker_id == "w2" and again.job.attempt == 1, "a graceful release does not use an attempt"
    assert again.job.started_at == claim.job.started_at
    stale = await rpc_error(server.heartbeat(job.id, claim.lease_token))
    assert stale.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await statuses_in_log(server, job.id) == ["waiting", "working", "waiting", "working"]


async def test_release_of_a_cancelling_job_cancels_it(server: Server) -> None:
    job = await server.create_kind("populateview")
    claim = await server.claim_job(job.id)
    await server.cancel(job.id)
    released = await server.finish(job.id, claim.lease_token, release=True)
    assert released.status == pb.JOB_STATUS_CANCELLED
    assert not (await server.claim()).HasField("job")


# ---------------------------------------------------------------- retry


@pytest.mark.parametrize("how", ["error", "cancelled-waiting", "cancelled-working"])
async def test_retry_creates_a_new_job_with_the_same_parameters(server: Server, how: str) -> None:
    original = await server.create_kind(
        "populateview", target="events_mv", pipe_id="t_pipe1", pipe_name="by_day", query_sql="SELECT 2"
    )
    if how == "cancelled-waiting":
        await server.cancel(original.id)
    else:
        claim = await server.claim_job(original.id)
        if how == "error":
            await server.finish(original.id, claim.lease_token, pb.JOB_STATUS_ERROR, error="x")
        else:
            await server.cancel(original.id)
            await server.finish(original.id, claim.lease_token, pb.JOB_STATUS_CANCELLED)

    retried = await server.retry(original.id)
    assert retried.id != original.id
    assert retried.status == pb.JOB_STATUS_WAITING and retried.revision == 1 and retried.attempt == 0
    for field in ("kind", "workspace_id", "pipe_id", "pipe_name", "query_sql", "datasource", "concurrency_key"):
        assert getattr(retried, field) == getattr(original, field), field
    assert not retried.HasField("started_at") and not retried.HasField("error")
    # The original is untouched and the new job runs like any other.
    assert (await server.get(original.id)).status in (pb.JOB_STATUS_ERROR, pb.JOB_STATUS_CANCELLED)
    assert (await server.claim()).job.id == retried.id


async def test_retry_keeps_an_imports_url_and_mode(server: Server) -> None:
    original = await server.create_kind("import", url="https://example.com/x.ndjson", mode="replace")
    await server.cancel(original.id)
    retried = await server.retry(original.id)
    assert (retried.url, retried.mode, retried.kind) == ("https://example.com/x.ndjson", "replace", "import")
    assert retried.import_id == retried.id != original.import_id


@pytest.mark.parametrize("status", ["waiting", "working", "done"])
async def test_retry_is_refused_unless_error_or_cancelled(server: Server, status: str) -> None:
    job = await server.create_kind("import")
    if status != "waiting":
        claim = await server.claim_job(job.id)
        if status == "done":
            await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    before = await server.list_ids()
    error = await rpc_error(server.retry(job.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await server.list_ids() == before, "a refused retry must not create a job"


# ---------------------------------------------------------------- idempotent create


async def test_idempotent_create_returns_the_same_job(server: Server) -> None:
    first = await server.create_kind("import", idempotency_key="import-2026-06-01")
    second = await server.create_kind("import", idempotency_key="import-2026-06-01")
    assert second.id == first.id and second.revision == first.revision
    other = await server.create_kind("import", idempotency_key="import-2026-06-02")
    assert other.id != first.id
    plain = [await server.create_kind("import"), await server.create_kind("import")]
    assert plain[0].id != plain[1].id
    assert sorted(await server.list_ids()) == sorted([first.id, other.id, plain[0].id, plain[1].id])


async def test_idempotency_key_is_per_workspace(server: Server) -> None:
    theirs = await server.token("other", "ADMIN")
    mine = await server.create_kind("import", idempotency_key="k1")
    other = await server.create_kind("import", idempotency_key="k1", token=theirs)
    assert other.id != mine.id and other.workspace_id != mine.workspace_id


async def test_idempotent_create_returns_the_job_even_after_it_ended(server: Server) -> None:
    job = await server.create_kind("import", idempotency_key="once")
    claim = await server.claim_job(job.id)
    await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    again = await server.create_kind("import", idempotency_key="once")
    assert again.id == job.id and again.status == pb.JOB_STATUS_DONE


# ---------------------------------------------------------------- stale leases


async def test_wrong_lease_token_is_refused_and_changes_nothing(server: Server) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id)
    for call in (
        server.heartbeat(job.id, "not-the-lease"),
        server.finish(job.id, "not-the-lease", pb.JOB_STATUS_DONE),
        server.finish(job.id, "not-the-lease", release=True),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = await server.get(job.id)
    assert after.status == pb.JOB_STATUS_WORKING and after.revision == claim.job.revision


@pytest.mark.parametrize("final", [pb.JOB_STATUS_DONE, pb.JOB_STATUS_ERROR], ids=["done", "error"])
async def test_lease_is_stale_after_finish(server: Server, final: pb.JobStatus.ValueType) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id)
    ended = await server.finish(job.id, claim.lease_token, final)
    for call in (
        server.heartbeat(job.id, claim.lease_token),
        server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE),
        server.finish(job.id, claim.lease_token, pb.JOB_STATUS_ERROR),
    ):
        error = await rpc_error(call)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = await server.get(job.id)
    assert after.status == final and after.revision == ended.revision
    terminal = pb.JobStatus.Name(final).removeprefix("JOB_STATUS_").lower()
    assert (await statuses_in_log(server, job.id)).count(terminal) == 1


async def test_a_second_worker_cannot_claim_a_working_job(server: Server) -> None:
    job = await server.create_kind("import")
    await server.claim_job(job.id, worker_id="w1")
    nothing = await bounded(server.claim(worker_id="w2"))
    assert not nothing.HasField("job") and not nothing.lease_token
