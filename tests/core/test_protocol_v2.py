"""Worker protocol v2 against a real server: CreateJobs and the Workers.Connect stream.

Bad input gets a clear error naming the field and changes nothing; a refused item never ends the stream; the
stream's loss is the worker's loss (leases lapse, a reconnecting worker keeps its jobs); cancels are pushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest

from jobsd_client import pb

from .conftest import WAIT, Server, bounded, error_field, rpc_error


class Stream:
    """One raw Workers.Connect stream: send messages, read the server's (skipping empty ones)."""

    def __init__(self, server: Server, token: str | None = None) -> None:
        self._queue: asyncio.Queue[pb.WorkerMessage | None] = asyncio.Queue()
        self.call: Any = server.workers.Connect(self._requests(), metadata=server.md(token or server.worker))

    async def _requests(self) -> AsyncIterator[pb.WorkerMessage]:
        while (message := await self._queue.get()) is not None:
            yield message

    def send(self, message: pb.WorkerMessage) -> None:
        self._queue.put_nowait(message)

    def hello(self, slots: int = 1, kinds: tuple[str, ...] = (), worker_id: str = "w1") -> Stream:
        self.send(pb.WorkerMessage(hello=pb.ConnectHello(worker_id=worker_id, kinds=list(kinds), slots=slots)))
        return self

    async def read(self) -> pb.ServerMessage:
        while True:
            message = await bounded(self.call.read())
            assert message is not grpc.aio.EOF, "the server ended the worker stream"  # type: ignore[attr-defined]  # grpc-stubs does not declare grpc.aio.EOF
            if message.ByteSize():
                return message  # type: ignore[no-any-return]

    async def assignments(self, count: int) -> list[pb.Assignment]:
        got: list[pb.Assignment] = []
        while len(got) < count:
            got += (await self.read()).assignments
        return got

    async def error(self) -> grpc.aio.AioRpcError:
        return await rpc_error(self._drain())

    async def _drain(self) -> None:
        while (await self.call.read()) is not grpc.aio.EOF:  # type: ignore[attr-defined]  # grpc-stubs does not declare grpc.aio.EOF
            pass

    def close(self) -> None:
        self.call.cancel()


async def create_in_order(server: Server, count: int, kind: str = "query", target: str | None = None) -> list[pb.Job]:
    """`count` jobs, each created a millisecond after the one before (claims are FIFO by created_at)."""
    jobs = []
    for _ in range(count):
        jobs.append(await server.create_kind(kind, target=target))
        server.clock.advance(timedelta(milliseconds=1))
    return jobs


def finish(a: pb.Assignment, ref: int, status: pb.JobStatus.ValueType = pb.JOB_STATUS_DONE) -> pb.StreamFinish:
    return pb.StreamFinish(ref=ref, job_id=a.job.id, lease_token=a.lease_token, status=status)


# ---------------------------------------------------------------- CreateJobs


async def test_create_jobs_creates_each_valid_item_and_refuses_a_bad_one_alone(server: Server) -> None:
    good = pb.CreateJobRequest(kind="query", query_sql="SELECT 1")
    bad = pb.CreateJobRequest(kind="nope")
    response = await server.jobs.CreateJobs(
        pb.CreateJobsRequest(jobs=[good, bad, good]), metadata=server.md(server.admin)
    )
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["job", "error", "job"]
    refused = response.results[1].error
    assert refused.code == grpc.StatusCode.INVALID_ARGUMENT.name and refused.field == "jobs[1].kind"
    listed = await server.list_ids()
    assert sorted(listed) == sorted([response.results[0].job.id, response.results[2].job.id])
    for result in (response.results[0], response.results[2]):
        assert (await server.get(result.job.id)).status == pb.JOB_STATUS_WAITING


@pytest.mark.parametrize(("count", "problem"), [(0, "at least one"), (501, "at most 500")])
async def test_create_jobs_refuses_an_empty_or_oversized_batch_and_creates_nothing(
    server: Server, count: int, problem: str
) -> None:
    jobs = [pb.CreateJobRequest(kind="query", query_sql="SELECT 1")] * count
    error = await rpc_error(server.jobs.CreateJobs(pb.CreateJobsRequest(jobs=jobs), metadata=server.md(server.admin)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error_field(error) == "jobs"
    assert problem in (error.details() or "")
    assert await server.list_ids() == []


async def test_create_jobs_keeps_idempotency_keys_within_a_batch(server: Server) -> None:
    keyed = pb.CreateJobRequest(kind="query", query_sql="SELECT 1", idempotency_key="once")
    response = await server.jobs.CreateJobs(pb.CreateJobsRequest(jobs=[keyed, keyed]), metadata=server.md(server.admin))
    assert response.results[0].job.id == response.results[1].job.id
    assert len(await server.list_ids()) == 1


# ---------------------------------------------------------------- the stream: bad input


@pytest.mark.parametrize(
    ("first", "field"),
    [
        (pb.WorkerMessage(add_slots=1), "hello"),
        (pb.WorkerMessage(hello=pb.ConnectHello(worker_id="", slots=1)), "worker_id"),
        (pb.WorkerMessage(hello=pb.ConnectHello(worker_id="w", kinds=["nope"], slots=1)), "kinds"),
        (pb.WorkerMessage(hello=pb.ConnectHello(worker_id="w", slots=257)), "hello.slots"),
        (pb.WorkerMessage(hello=pb.ConnectHello(worker_id="w", slots=-1)), "hello.slots"),
    ],
)
async def test_a_bad_hello_ends_the_stream_naming_the_field_and_claims_nothing(
    server: Server, first: pb.WorkerMessage, field: str
) -> None:
    job = await server.create()
    stream = Stream(server)
    stream.send(first)
    error = await stream.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (error.details() or "")
    assert (await server.get(job.id)).status == pb.JOB_STATUS_WAITING


@pytest.mark.parametrize(
    ("later", "field"),
    [
        (pb.WorkerMessage(hello=pb.ConnectHello(worker_id="w", slots=1)), "hello"),
        (pb.WorkerMessage(add_slots=-1), "add_slots"),
        (pb.WorkerMessage(add_slots=300), "add_slots"),
    ],
)
async def test_a_bad_later_message_ends_the_stream_naming_the_field(
    server: Server, later: pb.WorkerMessage, field: str
) -> None:
    stream = Stream(server).hello(slots=0)
    stream.send(later)
    error = await stream.error()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (error.details() or "")


async def test_a_refused_item_is_answered_with_its_error_and_the_stream_goes_on(server: Server) -> None:
    first, second = await server.create(), await server.create()
    stream = Stream(server).hello(slots=1)
    (a,) = await stream.assignments(1)
    stale = pb.StreamHeartbeat(ref=1, job_id=a.job.id, lease_token="not-the-lease")
    bad_figure = pb.StreamHeartbeat(ref=2, job_id=a.job.id, lease_token=a.lease_token)
    bad_figure.progress.progress_percentage = 101
    no_status = pb.StreamFinish(ref=3, job_id=a.job.id, lease_token=a.lease_token)
    stream.send(pb.WorkerMessage(heartbeats=[stale, bad_figure], finishes=[no_status]))
    answer = await stream.read()
    by_ref = {h.ref: h for h in answer.heartbeats}
    assert by_ref[1].error.code == grpc.StatusCode.FAILED_PRECONDITION.name
    assert by_ref[2].error.code == grpc.StatusCode.INVALID_ARGUMENT.name
    assert by_ref[2].error.field == "heartbeats[1].progress.progress_percentage"
    assert answer.finishes[0].error.field == "finishes[0].status"
    job = await server.get(a.job.id)
    assert job.status == pb.JOB_STATUS_WORKING and job.revision == a.job.revision  # nothing changed
    # The stream still works: finish the job, give the slot back, get the next one.
    stream.send(pb.WorkerMessage(finishes=[finish(a, 4)], add_slots=1))
    (b,) = await stream.assignments(1)
    assert {a.job.id, b.job.id} == {first.id, second.id}
    stream.close()


async def test_a_token_without_execute_cannot_open_a_stream(server: Server) -> None:
    await server.create()
    stream = Stream(server, token=server.admin).hello()
    error = await stream.error()
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------- the stream: the queue's rules


async def test_assignments_never_exceed_the_free_slots_and_batched_finishes_all_land(server: Server) -> None:
    created = await create_in_order(server, 5)
    stream = Stream(server).hello(slots=2, kinds=("query",))
    batch = await stream.assignments(2)
    await asyncio.sleep(0.1)  # the server has had its chance to over-assign
    assert [a.job.id for a in batch] == [j.id for j in created[:2]]  # FIFO
    stream.send(pb.WorkerMessage(finishes=[finish(a, i) for i, a in enumerate(batch)], add_slots=2))
    more = await stream.assignments(2)
    assert [j.job.id for j in more] == [j.id for j in created[2:4]]
    for a in batch:
        assert (await server.get(a.job.id)).status == pb.JOB_STATUS_DONE
        assert [e.status for e in await server.job_log(a.job.id)] == ["waiting", "working", "done"]
    stream.close()


async def test_concurrency_limits_hold_on_the_stream(server: Server) -> None:
    jobs = await create_in_order(server, 2, "populateview", "events")
    stream = Stream(server).hello(slots=5)
    (a,) = await stream.assignments(1)
    await asyncio.sleep(0.1)
    assert (await server.get(jobs[1].id)).status == pb.JOB_STATUS_WAITING  # same target: limit 1
    stream.send(pb.WorkerMessage(finishes=[finish(a, 1)]))
    (b,) = await stream.assignments(1)
    assert b.job.id == jobs[1].id
    stream.close()


async def test_a_cancel_is_pushed_to_the_stream_that_holds_the_job(server: Server) -> None:
    job = await server.create_kind("populateview", target="events")
    stream = Stream(server).hello(slots=1)
    (a,) = await stream.assignments(1)
    assert (await server.cancel(job.id)).status == pb.JOB_STATUS_CANCELLING
    message = await stream.read()
    assert [c.job_id for c in message.cancels] == [job.id]
    stream.send(pb.WorkerMessage(finishes=[finish(a, 1, pb.JOB_STATUS_CANCELLED)]))
    answer = await stream.read()
    assert answer.finishes[0].job.status == pb.JOB_STATUS_CANCELLED
    stream.close()


async def test_a_slow_worker_does_not_hold_up_the_others(server: Server) -> None:
    jobs = [await server.create() for _ in range(3)]
    slow = Stream(server).hello(slots=1, worker_id="slow")  # takes one job and never reads again
    await asyncio.sleep(0.1)
    fast = Stream(server).hello(slots=3, worker_id="fast")
    got = await fast.assignments(2)
    assert len({a.job.id for a in got} | {j.id for j in jobs}) == 3
    slow.close()
    fast.close()


# ---------------------------------------------------------------- faults


async def test_a_dropped_stream_leaves_its_jobs_to_their_leases(server: Server) -> None:
    job = await server.create()
    stream = Stream(server).hello(slots=1)
    (a,) = await stream.assignments(1)
    stream.close()  # the worker vanishes mid-job
    await asyncio.sleep(0.1)
    assert (await server.get(job.id)).status == pb.JOB_STATUS_WORKING  # until its lease lapses
    server.clock.advance(server.app.settings.kind_registry.get("import").lease + timedelta(seconds=1))
    assert await server.app.service.sweep_leases() == 1
    again = await server.get(job.id)
    assert again.status == pb.JOB_STATUS_WAITING and again.attempt == 1
    # The old lease is dead everywhere: a reconnected worker that heartbeats with it is refused.
    other = Stream(server).hello(slots=0)
    other.send(pb.WorkerMessage(heartbeats=[pb.StreamHeartbeat(ref=1, job_id=job.id, lease_token=a.lease_token)]))
    assert (await other.read()).heartbeats[0].error.code == grpc.StatusCode.FAILED_PRECONDITION.name
    other.close()


async def test_a_worker_that_reconnects_keeps_its_job_by_heartbeating_it(server: Server) -> None:
    job = await server.create()
    first = Stream(server).hello(slots=1)
    (a,) = await first.assignments(1)
    first.close()
    second = Stream(server).hello(slots=0)
    second.send(pb.WorkerMessage(heartbeats=[pb.StreamHeartbeat(ref=7, job_id=job.id, lease_token=a.lease_token)]))
    beat = (await second.read()).heartbeats[0]
    assert beat.ref == 7 and not beat.HasField("error") and beat.revision == a.job.revision + 1
    second.send(pb.WorkerMessage(finishes=[finish(a, 8)]))
    assert (await second.read()).finishes[0].job.status == pb.JOB_STATUS_DONE
    second.close()


async def test_a_server_stop_ends_the_stream_unavailable(server: Server) -> None:
    await server.create()
    stream = Stream(server).hello(slots=1)
    await stream.assignments(1)
    stop = asyncio.create_task(server.app.stop())
    error = await stream.error()
    await asyncio.wait_for(stop, WAIT)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
