"""WatchJob / WatchJobs (docs/contract.md#watch): order, resume, coalescing for slow readers, isolation of slow readers,
filters and scopes, and how streams end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from jobsd.domain.clock import ManualClock
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.server import EventStream, read_event

from .conftest import Server, bounded, make_settings, read_events, rpc_error, running_server

SNAPSHOT, STATUS, PROGRESS, SYNCED = (
    pb.JobEvent.TYPE_SNAPSHOT,
    pb.JobEvent.TYPE_STATUS,
    pb.JobEvent.TYPE_PROGRESS,
    pb.JobEvent.TYPE_SYNCED,
)
Stream = EventStream


async def drain(stream: Stream) -> tuple[list[pb.JobEvent], grpc.StatusCode]:
    """Every remaining event and the status the stream ended with (bounded)."""
    return await bounded(read_to_the_end(stream))


async def read_to_the_end(stream: Stream) -> tuple[list[pb.JobEvent], grpc.StatusCode]:
    """Every remaining event and the status the stream ended with (unbounded: the caller bounds it)."""
    events: list[pb.JobEvent] = []
    try:
        while (event := await read_event(stream)) is not None:
            events.append(event)
    except grpc.aio.AioRpcError as exc:
        return events, exc.code()
    return events, await stream.code()


async def next_event(stream: Stream) -> pb.JobEvent:
    [event] = await bounded(read_events(stream, 1))
    return event


@pytest.fixture
async def slow_channel(server: Server) -> AsyncIterator[pb_grpc.JobsAsyncStub]:
    """A client whose HTTP/2 receive window is tiny and never grows: when it does not read, the server cannot push
    more than a few events into the transport, so backpressure reaches the server's per-subscriber buffer."""
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{server.app.grpc_port}", options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    )
    try:
        yield pb_grpc.JobsStub(channel)
    finally:
        await channel.close(None)


# ---------------------------------------------------------------- WatchJob: order and close


async def test_watch_job_sends_every_revision_in_order_then_closes_ok(server: Server) -> None:
    job = await server.create_kind("populateview", target="mv")
    stream = server.watch(job.id)
    first = await next_event(stream)
    assert (first.type, first.revision, first.job.status) == (SNAPSHOT, 1, pb.JOB_STATUS_WAITING)

    claim = await server.claim_job(job.id)
    expected: list[tuple[int, pb.JobStatus.ValueType]] = [(STATUS, pb.JOB_STATUS_WORKING)]
    seen = [await next_event(stream)]
    for pct in (10.0, 20.0, 30.0):
        await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=pct))
        expected.append((PROGRESS, pb.JOB_STATUS_WORKING))
        seen.append(await next_event(stream))
        assert seen[-1].job.progress_percentage == pct
    await server.cancel(job.id)
    expected.append((STATUS, pb.JOB_STATUS_CANCELLING))
    seen.append(await next_event(stream))
    await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=40))
    expected.append((PROGRESS, pb.JOB_STATUS_CANCELLING))
    seen.append(await next_event(stream))
    final = await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_CANCELLED)
    expected.append((STATUS, pb.JOB_STATUS_CANCELLED))

    rest, code = await drain(stream)
    seen += rest
    assert [(e.type, e.job.status) for e in seen] == expected
    assert [e.revision for e in [first, *seen]] == list(range(1, final.revision + 1))
    assert all(e.revision == e.job.revision for e in seen)
    assert code == grpc.StatusCode.OK


async def test_watch_of_an_ended_job_is_its_snapshot_then_ok(server: Server) -> None:
    job = await server.create_kind("import")
    cancelled = await server.cancel(job.id)
    events, code = await drain(server.watch(job.id))
    assert [(e.type, e.revision, e.job.status) for e in events] == [(SNAPSHOT, 2, pb.JOB_STATUS_CANCELLED)]
    assert events[0].job == cancelled
    assert code == grpc.StatusCode.OK


async def test_two_watchers_see_the_same_sequence(server: Server) -> None:
    job = await server.create_kind("import")
    a, b = server.watch(job.id), server.watch(job.id)
    await next_event(a), await next_event(b)
    claim = await server.claim_job(job.id)
    for pct in range(5):
        await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=pct))
    await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    (ea, ca), (eb, cb) = await drain(a), await drain(b)
    assert [e.revision for e in ea] == [e.revision for e in eb] == list(range(2, 9))
    assert ca == cb == grpc.StatusCode.OK


# ---------------------------------------------------------------- since_revision


async def test_resume_with_since_revision_has_no_gap_and_no_repeat(server: Server) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id)
    await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=10))
    first = server.watch(job.id)
    snapshot = await next_event(first)
    assert (snapshot.type, snapshot.revision) == (SNAPSHOT, 3)
    first.cancel()

    resumed = server.watch(job.id, since=3)
    await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=20))
    event = await next_event(resumed)
    # PROGRESS if the stream was open before the heartbeat landed, else the SNAPSHOT of that same revision.
    assert event.type in (PROGRESS, SNAPSHOT)
    assert (event.revision, event.job.progress_percentage) == (4, 20.0)
    await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    rest, code = await drain(resumed)
    assert [(e.type, e.revision) for e in rest] == [(STATUS, 5)] and code == grpc.StatusCode.OK


async def test_resume_of_an_ended_job_at_its_last_revision_sends_nothing(server: Server) -> None:
    job = await server.create_kind("import")
    cancelled = await server.cancel(job.id)
    events, code = await drain(server.watch(job.id, since=cancelled.revision))
    assert events == [] and code == grpc.StatusCode.OK


async def test_resume_behind_the_current_revision_starts_from_the_current_state(server: Server) -> None:
    job = await server.create_kind("import")
    claim = await server.claim_job(job.id)
    for pct in (10, 20, 30):
        await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=pct))
    stream = server.watch(job.id, since=3)
    event = await next_event(stream)
    assert event.revision == 5 and event.job.progress_percentage == 30
    stream.cancel()


async def test_resume_after_missed_status_changes_delivers_each_of_them(server: Server) -> None:
    job = await server.create_kind("populateview", target="mv")
    stream = server.watch(job.id)
    assert (await next_event(stream)).revision == 1
    stream.cancel()  # the subscriber drops off at revision 1 ...
    claim = await server.claim_job(job.id)  # 2: working
    await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=50))  # 3
    await server.cancel(job.id)  # 4: cancelling
    await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_CANCELLED)  # 5: cancelled
    events, code = await drain(server.watch(job.id, since=1))  # ... and comes back
    changes = [(e.revision, e.job.status) for e in events if e.type in (STATUS, SNAPSHOT)]
    assert changes == [(2, pb.JOB_STATUS_WORKING), (4, pb.JOB_STATUS_CANCELLING), (5, pb.JOB_STATUS_CANCELLED)]
    assert [e.revision for e in events] == sorted({e.revision for e in events}), "no repeat, in order"
    assert all(e.job.revision == e.revision and e.job.id == job.id for e in events)
    assert code == grpc.StatusCode.OK


async def test_resume_from_a_revision_the_job_never_had_is_refused_or_ends(server: Server) -> None:
    job = await server.create_kind("import")
    stream = server.watch(job.id, since=job.revision + 10)
    claim = await server.claim_job(job.id)
    await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    events, code = await drain(stream)  # bounded: a stream that never ends fails here
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert events == []
    else:
        assert code == grpc.StatusCode.OK and events and events[-1].job.status == pb.JOB_STATUS_DONE


# ---------------------------------------------------------------- slow subscribers


async def test_slow_subscriber_gets_progress_coalesced_but_every_status_change(
    server: Server, slow_channel: pb_grpc.JobsAsyncStub
) -> None:
    job = await server.create_kind("populateview", target="mv")
    slow = slow_channel.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=server.md(server.admin))
    assert (await next_event(slow)).type == SNAPSHOT

    claim = await server.claim_job(job.id)
    for i in range(100):
        await bounded(server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=i / 4)))
    cancelling = await server.cancel(job.id)
    for i in range(100, 200):
        await bounded(server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=i / 4)))
    final = await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_CANCELLED)
    assert final.revision == 204

    events, code = await drain(slow)
    assert code == grpc.StatusCode.OK
    revisions = [e.revision for e in events]
    assert revisions == sorted(set(revisions)), "revisions must strictly increase"
    assert len(events) < final.revision - 1, "nothing was coalesced: the subscriber was not slow"
    status_rows = {e.revision: e.status for e in await server.job_log(job.id) if e.revision > 1}
    got_status = {e.revision: e.job.status for e in events if e.type == STATUS}
    assert sorted(got_status) == sorted(status_rows) == [2, cancelling.revision, final.revision]
    assert got_status[cancelling.revision] == pb.JOB_STATUS_CANCELLING
    # Coalescing keeps the latest progress and never moves it across a status change.
    progress = [e for e in events if e.type == PROGRESS]
    before = [e for e in progress if e.revision < cancelling.revision]
    after = [e for e in progress if e.revision > cancelling.revision]
    assert before and before[-1].job.progress_percentage == 99 / 4 and before[-1].revision == cancelling.revision - 1
    assert after and after[-1].job.progress_percentage == 199 / 4 and after[-1].revision == final.revision - 1
    assert all(e.job.revision == e.revision for e in events)


async def test_slow_subscriber_does_not_block_writers_or_a_fast_subscriber(
    server: Server, slow_channel: pb_grpc.JobsAsyncStub
) -> None:
    job = await server.create_kind("import")
    slow = slow_channel.WatchJob(pb.WatchJobRequest(job_id=job.id), metadata=server.md(server.admin))
    fast = server.watch(job.id)
    assert (await next_event(slow)).type == (await next_event(fast)).type == SNAPSHOT
    fast_reader = asyncio.create_task(read_to_the_end(fast))  # bounded below, once the writes are done

    # The slow subscriber reads nothing all this time; each write is bounded (a blocked writer fails the test),
    # not the 200 together (on the wire server under load, they take longer than one bound).
    claim = await bounded(server.claim_job(job.id))
    for i in range(200):
        await bounded(server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=i / 2)))
    final = await bounded(server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE))
    fast_events, fast_code = await bounded(fast_reader)
    assert fast_code == grpc.StatusCode.OK
    assert fast_events[-1].revision == final.revision and fast_events[-1].job.status == pb.JOB_STATUS_DONE
    assert [e.revision for e in fast_events] == sorted({e.revision for e in fast_events})

    slow_events, slow_code = await drain(slow)
    assert slow_code == grpc.StatusCode.OK and slow_events[-1].revision == final.revision


@pytest.fixture
async def small_buffers(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path, watch_buffer=8), clock) as srv:
        yield srv


async def test_a_subscriber_too_far_behind_on_status_changes_is_closed_with_a_status(small_buffers: Server) -> None:
    server = small_buffers
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{server.app.grpc_port}", options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    )
    try:
        slow = pb_grpc.JobsStub(channel).WatchJobs(pb.WatchJobsRequest(), metadata=server.md(server.admin))
        assert (await next_event(slow)).type == SYNCED
        # New jobs are status changes, which are never coalesced: the bounded buffer overflows.
        created = [await bounded(server.create_kind("import")) for _ in range(100)]
        events, code = await drain(slow)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert 0 < len(events) < len(created)
        assert [e.job.id for e in events] == [j.id for j in created[: len(events)]], "delivered in order, no gap"
    finally:
        await channel.close(None)
    # The server goes on serving new watchers.
    fresh = server.watch(created[-1].id)
    assert (await next_event(fresh)).job.id == created[-1].id
    fresh.cancel()


# ---------------------------------------------------------------- WatchJobs


async def test_watch_jobs_opens_with_active_matching_jobs_then_synced_then_changes(server: Server) -> None:
    working = await server.create_kind("import", target="clicks")
    server.clock.advance(timedelta(microseconds=1))
    waiting = await server.create_kind("import")
    claim = await server.claim_job(working.id)
    running_id, idle_id = working.id, waiting.id
    ended = await server.create_kind("import")
    await server.cancel(ended.id)
    other_kind = await server.create_kind("query", target=None)

    stream = server.jobs.WatchJobs(pb.WatchJobsRequest(kind="import"), metadata=server.md(server.admin))
    opening = await bounded(read_events(stream, 3))
    assert [e.type for e in opening] == [SNAPSHOT, SNAPSHOT, SYNCED]
    assert {e.job.id for e in opening[:2]} == {running_id, idle_id}
    assert other_kind.id not in {e.job.id for e in opening}

    new = await server.create_kind("import")
    event = await next_event(stream)
    assert (event.type, event.job.id, event.job.status) == (STATUS, new.id, pb.JOB_STATUS_WAITING)
    await server.create_kind("query", target=None)  # not matching: never sent
    await server.heartbeat(running_id, claim.lease_token, pb.ProgressUpdate(progress_percentage=5))
    event = await next_event(stream)
    assert (event.type, event.job.id, event.job.progress_percentage) == (PROGRESS, running_id, 5)
    await server.finish(running_id, claim.lease_token, pb.JOB_STATUS_DONE)
    event = await next_event(stream)
    assert (event.type, event.job.id, event.job.status) == (STATUS, running_id, pb.JOB_STATUS_DONE)
    stream.cancel()


async def test_watch_jobs_honours_every_filter(server: Server) -> None:
    by_day = await server.create_kind("populateview", target="mv", pipe_id="t_1", pipe_name="by_day")
    await server.create_kind("populateview", target="mv2", pipe_id="t_2", pipe_name="by_week")
    await server.create_kind("import")
    cases = {
        "pipe_name": pb.WatchJobsRequest(pipe_name="by_day"),
        "pipe_id": pb.WatchJobsRequest(pipe_id="t_1"),
        "kind+status": pb.WatchJobsRequest(kind="populateview", status="waiting", pipe_name="by_day"),
    }
    for name, request in cases.items():
        stream = server.jobs.WatchJobs(request, metadata=server.md(server.admin))
        opening = await bounded(read_events(stream, 2))
        assert [(e.type, e.job.id) for e in opening] == [(SNAPSHOT, by_day.id), (SYNCED, "")], name
        stream.cancel()
    nothing = server.jobs.WatchJobs(pb.WatchJobsRequest(status="working"), metadata=server.md(server.admin))
    assert [e.type for e in await bounded(read_events(nothing, 1))] == [SYNCED]
    claim = await server.claim(kinds=("import",))
    event = await next_event(nothing)
    assert (event.job.id, event.job.status) == (claim.job.id, pb.JOB_STATUS_WORKING)
    nothing.cancel()


async def test_watch_jobs_tells_when_a_job_leaves_the_filter(server: Server) -> None:
    stream = server.jobs.WatchJobs(pb.WatchJobsRequest(status="waiting"), metadata=server.md(server.admin))
    assert [e.type for e in await bounded(read_events(stream, 1))] == [SYNCED]
    job = await server.create_kind("import")
    assert (await next_event(stream)).job.status == pb.JOB_STATUS_WAITING
    await server.claim_job(job.id)
    leaving = await next_event(stream)
    assert (leaving.type, leaving.job.id, leaving.job.status) == (STATUS, job.id, pb.JOB_STATUS_WORKING)
    stream.cancel()


async def test_watch_jobs_sends_nothing_more_about_a_job_that_left_the_filter(server: Server) -> None:
    stream = server.jobs.WatchJobs(pb.WatchJobsRequest(status="waiting"), metadata=server.md(server.admin))
    assert [e.type for e in await bounded(read_events(stream, 1))] == [SYNCED]
    job = await server.create_kind("import")
    await next_event(stream)
    claim = await server.claim_job(job.id)
    await next_event(stream)  # it left the filter
    await server.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(progress_percentage=3))
    await server.finish(job.id, claim.lease_token, pb.JOB_STATUS_DONE)
    newcomer = await server.create_kind("import")
    event = await next_event(stream)
    assert (event.job.id, event.job.status) == (newcomer.id, pb.JOB_STATUS_WAITING), (
        f"got {pb.JobEvent.Type.Name(event.type)} of a {pb.JobStatus.Name(event.job.status)} job"
    )
    stream.cancel()


@pytest.mark.parametrize("scope", ["DATASOURCES:READ:events", "PIPES:READ:by_day"])
async def test_watch_jobs_with_a_narrow_token_sees_only_its_jobs(server: Server, scope: str) -> None:
    mine = await server.create_kind("populateview", target="events", pipe_name="by_day")
    await server.create_kind("populateview", target="other", pipe_name="by_week")
    token = await server.token("default", scope)
    stream = server.jobs.WatchJobs(pb.WatchJobsRequest(), metadata=server.md(token))
    opening = await bounded(read_events(stream, 2))
    assert [(e.type, e.job.id) for e in opening] == [(SNAPSHOT, mine.id), (SYNCED, "")]
    await server.create_kind("import", target="other")  # not readable with this token
    mine_too = await server.create_kind("populateview", target="events", pipe_name="by_day")
    event = await next_event(stream)
    assert event.job.id == mine_too.id
    stream.cancel()


async def test_watch_jobs_of_another_workspace_is_denied(server: Server) -> None:
    theirs = await server.token("other", "ADMIN")
    stream = server.jobs.WatchJobs(pb.WatchJobsRequest(workspace_id=server.workspace_id), metadata=server.md(theirs))
    assert (await rpc_error(stream.read())).code() == grpc.StatusCode.PERMISSION_DENIED


async def test_watch_jobs_of_the_other_workspace_sees_none_of_ours(server: Server) -> None:
    theirs = await server.token("other", "ADMIN")
    stream = server.jobs.WatchJobs(pb.WatchJobsRequest(), metadata=server.md(theirs))
    assert [e.type for e in await bounded(read_events(stream, 1))] == [SYNCED]
    await server.create_kind("import")  # ours
    their_job = await server.create_kind("import", token=theirs)
    event = await next_event(stream)
    assert event.job.id == their_job.id
    stream.cancel()


# ---------------------------------------------------------------- access


async def test_watch_of_another_workspaces_job_is_permission_denied(server: Server) -> None:
    job = await server.create_kind("import")
    theirs = await server.token("other", "ADMIN")
    error = await rpc_error(server.watch(job.id, token=theirs).read())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_watch_with_a_narrow_token_of_another_datasource_is_permission_denied(server: Server) -> None:
    job = await server.create_kind("import", target="events")
    narrow = await server.token("default", "DATASOURCES:READ:clicks")
    error = await rpc_error(server.watch(job.id, token=narrow).read())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    allowed = await server.token("default", "DATASOURCES:READ:events")
    stream = server.watch(job.id, token=allowed)
    assert (await next_event(stream)).job.id == job.id
    stream.cancel()


async def test_watch_of_a_job_that_expires_and_is_purged_ends(server: Server) -> None:
    job = await server.create_kind("import")
    stream = server.watch(job.id)
    assert (await next_event(stream)).type == SNAPSHOT
    server.clock.advance(timedelta(hours=49))
    assert await server.app.service.sweep_retention() >= 1
    assert (await rpc_error(server.get(job.id))).code() == grpc.StatusCode.NOT_FOUND
    events, code = await drain(stream)  # bounded: a stream that never ends fails here
    assert events == [] and code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK)


# ---------------------------------------------------------------- shutdown


async def test_server_stop_ends_open_streams_with_a_status(server: Server) -> None:
    job = await server.create_kind("populateview", target="mv")
    one = server.watch(job.id)
    many = server.jobs.WatchJobs(pb.WatchJobsRequest(), metadata=server.md(server.admin))
    await next_event(one)
    await bounded(read_events(many, 2))
    await bounded(server.app.stop())
    for stream in (one, many):
        events, code = await drain(stream)
        assert events == []
        # Not OK: OK promises the job reached its end; the client must reconnect and resume instead.
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "since_revision" in await stream.details()
