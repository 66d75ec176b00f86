"""The worker SDK against a real jobsd: lifecycle, progress, cancellation, failures, graceful stop, lease loss,
concurrency, restarts. Handlers are driven by asyncio.Events the tests set, never by sleeping."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

import grpc.aio
import pytest

from jobsd.app import JobsdApp
from jobsd_client import (
    AsyncJobsClient,
    Handler,
    JobCancelled,
    JobContext,
    JobFailed,
    Worker,
    pb,
    run_until_signalled,
    status_name,
)
from jobsd_client.errors import InvalidArgument, Unauthenticated
from jobsd_client.worker import MAX_ERROR_CHARS, _WorkerStream

from .conftest import (
    HEARTBEAT_SECONDS,
    PATIENCE,
    Jobsd,
    blocked_until_cancelled,
    create_import,
    jobsd_settings,
    running,
    wait_for_status,
)


def make_worker(jobsd: Jobsd, handlers: Mapping[str, Handler], *, concurrency: int = 1, worker_id: str = "") -> Worker:
    return Worker(
        jobsd.target, jobsd.worker, handlers, worker_id=worker_id or None, concurrency=concurrency, wait_seconds=1.0
    )


async def test_a_job_runs_to_done_and_a_watcher_sees_its_progress(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    proceed = asyncio.Event()
    seen: list[JobContext] = []

    async def handle(ctx: JobContext) -> None:
        seen.append(ctx)
        ctx.report(progress_percentage=40, statistics={"row_count": 7})
        ctx.report(statistics={"bytes": 700})  # merges with the row count reported above
        await ctx.flush()
        await proceed.wait()
        ctx.report(progress_percentage=100, statistics={"row_count": 10, "bytes": 1000}, invalid_lines=1)

    job = await create_import(client, params={"format": "csv"})
    watch = client.watch_job(job.id)
    assert (await anext(watch)).job.status == pb.JOB_STATUS_WAITING

    async with running(make_worker(jobsd, {"import": handle}, worker_id="w-life")):
        events = []
        async for event in watch:
            events.append(event)
            if event.job.progress_percentage == 40:
                proceed.set()
        # The watch ends by itself with the terminal state.

    progress = [(status_name(e.job.status), e.job.progress_percentage, e.job.statistics.row_count) for e in events]
    assert progress[0] == ("working", 0.0, 0)
    assert ("working", 40.0, 7) in progress
    assert progress[-1] == ("done", 100.0, 10)
    final = events[-1].job
    assert final.statistics.bytes == 1000 and final.invalid_lines == 1 and final.worker_id == "w-life"

    ctx = seen[0]
    assert (ctx.job_id, ctx.kind, ctx.worker_id) == (job.id, "import", "w-life")
    assert ctx.params == {"format": "csv"} and ctx.datasource["name"] == "events"


async def test_a_cancel_reaches_the_handler_within_a_heartbeat_period(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    started = asyncio.Event()
    noticed_after: list[float] = []
    loop = asyncio.get_running_loop()
    cancel_sent_at = 0.0

    async def populate(ctx: JobContext) -> None:
        ctx.report(queries=[{"query_id": "p1", "status": "done"}, {"query_id": "p2", "status": "working"}])
        started.set()
        await ctx.wait_cancel_requested()
        noticed_after.append(loop.time() - cancel_sent_at)
        assert ctx.cancel_requested
        raise JobCancelled()

    job = await client.create_job("populateview", datasource={"name": "target"}, params={"sql": "select 1"})
    async with running(make_worker(jobsd, {"populateview": populate})):
        async with asyncio.timeout(PATIENCE):
            await started.wait()
        cancel_sent_at = loop.time()
        cancelling = await client.cancel_job(job.id)
        assert cancelling.status == pb.JOB_STATUS_CANCELLING
        final = await wait_for_status(client, job.id, pb.JOB_STATUS_CANCELLED)

    # One heartbeat period, plus generous room for a loaded machine; a worker that never heartbeats fails this.
    assert noticed_after and noticed_after[0] < HEARTBEAT_SECONDS + 1.0
    assert [q.status for q in final.queries] == ["done", "working"]  # figures reported before the cancel stay


async def test_handler_failures_end_the_job_in_error_with_a_message(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    async def fails_cleanly(ctx: JobContext) -> None:
        ctx.report(quarantine_rows=3)
        raise JobFailed("2 rows did not match the schema", errors=["line 4: 'x' is not an Int32"])

    async def crashes(ctx: JobContext) -> None:
        ctx.report(statistics={"row_count": 5})
        raise ValueError("boom")

    async def rambles(ctx: JobContext) -> None:
        raise JobFailed("Parser Error: " + "x" * 50_000)

    clean = await create_import(client, "clean")
    crash = await client.create_job("query", params={"sql": "select 1"})
    long = await client.create_job("copy", datasource={"name": "target"}, params={"sql": "select 1"})
    handlers = {"import": fails_cleanly, "query": crashes, "copy": rambles}
    async with running(make_worker(jobsd, handlers, concurrency=3)):
        clean_end = await wait_for_status(client, clean.id, pb.JOB_STATUS_ERROR)
        crash_end = await wait_for_status(client, crash.id, pb.JOB_STATUS_ERROR)
        long_end = await wait_for_status(client, long.id, pb.JOB_STATUS_ERROR)

    assert clean_end.error == "2 rows did not match the schema"
    assert list(clean_end.errors) == ["line 4: 'x' is not an Int32"] and clean_end.quarantine_rows == 3
    assert crash_end.error == "ValueError: boom"
    assert crash_end.statistics.row_count == 5  # pending figures travel with FinishJob
    # An error longer than jobsd accepts is cut to fit, not refused (which would leave the job running).
    assert long_end.error.startswith("Parser Error: xxx") and long_end.error.endswith("[... truncated]")
    assert len(long_end.error) == MAX_ERROR_CHARS


async def test_graceful_stop_releases_a_running_job_back_to_waiting(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    started = asyncio.Event()
    handler_cancelled = asyncio.Event()

    async def endless(ctx: JobContext) -> None:
        await blocked_until_cancelled(started, handler_cancelled)

    job = await create_import(client)
    worker = make_worker(jobsd, {"import": endless})
    run = asyncio.create_task(worker.run())
    async with asyncio.timeout(PATIENCE):
        await started.wait()
    assert worker.running_job_ids == [job.id]

    await worker.stop(grace=0.05)
    await worker.stop(grace=0.05)  # safe twice
    async with asyncio.timeout(PATIENCE):
        await run
    assert handler_cancelled.is_set()
    released = await client.get_job(job.id)
    assert released.status == pb.JOB_STATUS_WAITING and not released.HasField("worker_id")
    assert released.attempt == 0  # a graceful release does not use up an attempt


async def test_stop_waits_for_a_job_that_finishes_within_the_grace(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    started, proceed = asyncio.Event(), asyncio.Event()

    async def short(ctx: JobContext) -> None:
        started.set()
        await proceed.wait()

    job = await create_import(client)
    worker = make_worker(jobsd, {"import": short})
    run = asyncio.create_task(worker.run())
    async with asyncio.timeout(PATIENCE):
        await started.wait()
    stopping = asyncio.create_task(worker.stop(grace=PATIENCE))
    proceed.set()
    async with asyncio.timeout(PATIENCE):
        await stopping
        await run
    assert (await client.get_job(job.id)).status == pb.JOB_STATUS_DONE


async def test_a_lost_lease_cancels_the_handler_and_the_job_is_left_to_its_next_owner(
    jobsd: Jobsd, client: AsyncJobsClient
) -> None:
    first_started = asyncio.Event()
    first_cancelled = asyncio.Event()
    attempts: list[int] = []

    async def handle(ctx: JobContext) -> None:
        attempts.append(ctx.job.attempt)
        if len(attempts) == 1:
            await blocked_until_cancelled(first_started, first_cancelled)
        ctx.report(statistics={"row_count": 1})

    job = await create_import(client)
    async with running(make_worker(jobsd, {"import": handle})):
        async with asyncio.timeout(PATIENCE):
            await first_started.wait()
        # The lease lapses on the server's clock; the sweeper gives the job back to the queue.
        jobsd.clock.advance(timedelta(minutes=1))
        assert await jobsd.app.service.sweep_leases() == 1
        async with asyncio.timeout(PATIENCE):
            await first_cancelled.wait()
        final = await wait_for_status(client, job.id, pb.JOB_STATUS_DONE)

    assert attempts == [1, 2]
    assert final.attempt == 2 and final.statistics.row_count == 1


async def test_concurrency_runs_that_many_jobs_at_once(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    both_running = asyncio.Barrier(3)

    async def handle(ctx: JobContext) -> None:
        await both_running.wait()

    first, second = await create_import(client, "one"), await create_import(client, "two")
    async with running(make_worker(jobsd, {"import": handle}, concurrency=2)):
        async with asyncio.timeout(PATIENCE):
            await both_running.wait()  # only passes if both handlers run at the same time
        for job in (first, second):
            await wait_for_status(client, job.id, pb.JOB_STATUS_DONE)


async def test_a_worker_with_a_bad_token_fails_loudly(jobsd: Jobsd) -> None:
    async def handle(ctx: JobContext) -> None:
        raise AssertionError("never claimed")

    worker = Worker(jobsd.target, "jobsd_not-a-token", {"import": handle})
    with pytest.raises(Unauthenticated):
        async with asyncio.timeout(PATIENCE):
            await worker.run()
    await worker.stop()  # still safe after run() failed


# A replacement server opens the same SQLite file.
@pytest.mark.backends("sqlite")
async def test_the_worker_survives_a_server_restart(tmp_path: Path, jobsd: Jobsd) -> None:
    done = asyncio.Event()

    async def handle(ctx: JobContext) -> None:
        done.set()

    port = jobsd.app.grpc_port
    async with running(make_worker(jobsd, {"query": handle})):
        await jobsd.app.stop()  # the worker's long poll breaks; it backs off and retries
        replacement = JobsdApp(jobsd_settings(tmp_path, f"127.0.0.1:{port}"), clock=jobsd.clock)
        await replacement.start()
        try:
            # A client on its own connection: channels with equal options share gRPC's subchannels, and the
            # worker's is still in reconnect backoff, failing fast (what the worker's own retries are for).
            channel = grpc.aio.insecure_channel(jobsd.target, options=[("grpc.use_local_subchannel_pool", 1)])
            async with channel, AsyncJobsClient(jobsd.target, jobsd.admin, channel=channel) as after_restart:
                job = await after_restart.create_job("query", params={"sql": "select 1"})
                async with asyncio.timeout(PATIENCE):
                    await done.wait()
                await wait_for_status(after_restart, job.id, pb.JOB_STATUS_DONE)
        finally:
            await replacement.stop()


async def test_run_until_signalled_stops_gracefully_on_sigterm(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    started = asyncio.Event()

    async def endless(ctx: JobContext) -> None:
        started.set()
        await asyncio.Event().wait()

    job = await create_import(client)
    serving = asyncio.create_task(run_until_signalled(make_worker(jobsd, {"import": endless}), grace=0.05))
    async with asyncio.timeout(PATIENCE):
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await serving
    assert (await client.get_job(job.id)).status == pb.JOB_STATUS_WAITING


async def test_report_refuses_bad_figures_naming_the_field_and_keeps_the_rest(jobsd: Jobsd) -> None:
    async with AsyncJobsClient(jobsd.target, jobsd.worker) as unused:
        job = pb.Job(id="j", kind="import")
        ctx = JobContext(job=job, lease_token="l", worker_id="w", client=unused, heartbeat_interval=1)
    ctx.report(progress_percentage=10)
    bad_calls: list[tuple[dict[str, object], str]] = [
        ({"progress_percentage": 101}, "progress_percentage"),
        ({"progress_percentage": float("nan")}, "progress_percentage"),
        ({"statistics": {"rows": 1}}, "statistics"),
        ({"statistics": {"bytes": -1}}, "statistics.bytes"),
        ({"queries": [{"query_id": "q", "status": "finished"}]}, "queries[0].status"),
        ({"processed_data": {"read_rows": 1.5}}, "processed_data.read_rows"),
        ({"invalid_lines": True}, "invalid_lines"),
        ({"errors": "one string"}, "errors"),
        ({"result": {"rows": object()}}, "result"),
        ({"progress_percentage": 50, "quarantine_rows": -2}, "quarantine_rows"),
    ]
    for call, field in bad_calls:
        with pytest.raises(InvalidArgument) as refused:
            ctx.report(**call)  # type: ignore[arg-type]
        assert refused.value.field == field, call
    pending = ctx._figures.everything()
    assert pending is not None and pending.progress_percentage == 10  # the half-good last call changed nothing


def test_worker_options_are_checked_up_front() -> None:
    with pytest.raises(InvalidArgument) as no_handlers:
        Worker("127.0.0.1:1", "t", {})
    assert no_handlers.value.field == "handlers"
    with pytest.raises(InvalidArgument) as concurrency:
        Worker("127.0.0.1:1", "t", {"import": lambda ctx: asyncio.sleep(0)}, concurrency=0)
    assert concurrency.value.field == "concurrency"


def test_a_worker_built_before_the_event_loop_runs_works(tmp_path: Path) -> None:
    """`worker = Worker(...)` then `asyncio.run(...)`: the gRPC channel must bind to the loop that runs it."""
    with socket.socket() as probe:  # a free port to give the server and the worker before either exists
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = asyncio.Event()

    async def handle(ctx: JobContext) -> None:
        done.set()

    service_token = "jobsd_test-service-token"  # JOBS:CREATE and JOBS:EXECUTE on every workspace
    app = JobsdApp(jobsd_settings(tmp_path, f"127.0.0.1:{port}").with_changes(service_token=service_token))
    worker = Worker(f"127.0.0.1:{port}", service_token, {"query": handle}, wait_seconds=1)
    service_client = AsyncJobsClient(f"127.0.0.1:{port}", service_token, timeout=PATIENCE)

    async def scenario() -> None:
        await app.start()
        try:
            async with running(worker), service_client:
                workspace_id = await app.workspace_id_of("default")
                job = await service_client.create_job("query", params={"sql": "select 1"}, workspace_id=workspace_id)
                async with asyncio.timeout(PATIENCE):
                    await done.wait()
                assert (await wait_for_status(service_client, job.id, pb.JOB_STATUS_DONE)).id == job.id
        finally:
            await app.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", ["v2", "v1"])
async def test_the_worker_speaks_v2_by_default_and_v1_when_asked(
    jobsd: Jobsd, client: AsyncJobsClient, protocol: str
) -> None:
    ran: list[str] = []

    async def handle(ctx: JobContext) -> None:
        ran.append(ctx.job_id)
        ctx.report(progress_percentage=60)
        await ctx.flush()  # a heartbeat over the protocol in use

    jobs = [await create_import(client, name=f"t{i}") for i in range(3)]
    worker = Worker(
        jobsd.target,
        jobsd.worker,
        {"import": handle},
        concurrency=2,
        wait_seconds=1.0,
        protocol="auto" if protocol == "v2" else "v1",
    )
    async with running(worker):
        for job in jobs:
            done = await wait_for_status(client, job.id, pb.JOB_STATUS_DONE)
            assert done.progress_percentage == 60
        assert worker.protocol_in_use == protocol
    assert sorted(ran) == sorted(j.id for j in jobs)
    assert jobsd.app.dispatcher.session_count == 0  # the stream ended with the worker


async def test_a_cancel_reaches_a_v2_handler_and_the_job_ends_cancelled(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    started = asyncio.Event()

    async def handle(ctx: JobContext) -> None:
        started.set()
        await ctx.wait_cancel_requested()
        raise JobCancelled()

    job = await client.create_job("copy", query_sql="SELECT 1", mode="append", datasource={"name": "t"})
    async with running(make_worker(jobsd, {"copy": handle})):
        async with asyncio.timeout(PATIENCE):
            await started.wait()
        await client.cancel_job(job.id)
        finished = await wait_for_status(client, job.id, pb.JOB_STATUS_CANCELLED)
    assert finished.status == pb.JOB_STATUS_CANCELLED


def test_an_unknown_protocol_is_refused_up_front() -> None:
    with pytest.raises(InvalidArgument) as refused:
        Worker("127.0.0.1:1", "t", {"import": _noop}, protocol="v3")
    assert refused.value.field == "protocol"


async def _noop(ctx: JobContext) -> None:
    return None


async def test_a_heartbeat_cancelled_as_its_answer_arrives_is_cancelled(jobsd: Jobsd) -> None:
    """A job's progress task is cancelled when its handler ends; if a heartbeat answer lands in the same loop turn,
    the task must still end. (Under Python 3.11's wait_for the answer won and the cancellation was lost: the task
    went on waiting for figures that never came, so the job was never finished and the worker never stopped.)"""
    worker = make_worker(jobsd, {"import": _never_called})
    stream = _WorkerStream(worker)
    beat = asyncio.create_task(stream.heartbeat("a-job", "a-lease", None))
    await asyncio.sleep(0)  # the heartbeat waits for its answer
    stream.answer(1, pb.HeartbeatAnswer(ref=1, job_id="a-job"))
    beat.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(beat, PATIENCE)
    await worker.stop(grace=0)


async def _never_called(ctx: JobContext) -> None:
    raise AssertionError("no job is claimed in this test")
