"""The change-stream pump's resume logic, on scripted change streams (no MongoDB server can run here; the real
stream is exercised by test_real_server.py). A script is what a server would send: events, then an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from jobsd.domain.model import Job
from jobsd.store.base import ChangeEvent, FeedReset, JobChanged
from jobsd.store.mongo.codec import job_document, job_from_document
from jobsd.store.mongo.feed import ChangeFanout, ChangeStream, ChangeStreamPump
from tests.contract.factories import new_job, new_workspace_id

HISTORY_LOST = OperationFailure("Resume of change stream was not possible", code=286)
NOT_A_REPLICA_SET = OperationFailure("The $changeStream stage is only supported on replica sets", code=40573)
Step = Mapping[str, Any] | BaseException


def insert_of(job: Job, token: str) -> dict[str, Any]:
    return {"_id": {"_data": token}, "operationType": "insert", "fullDocument": job_document(job, [])}


class ScriptedStream:
    """Replays its steps like pymongo's AsyncChangeStream, then waits for more (as an idle stream does)."""

    def __init__(self, steps: list[Step]) -> None:
        self._steps = steps
        self.resume_token: Mapping[str, Any] | None = None
        self.closed = False

    def __aiter__(self) -> AsyncIterator[Mapping[str, Any]]:
        return self

    async def __anext__(self) -> Mapping[str, Any]:
        if not self._steps:
            await asyncio.Event().wait()
        step = self._steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        self.resume_token = step["_id"]
        return step

    async def close(self) -> None:
        self.closed = True


class ScriptedServer:
    """Each open() gets the next script (or raises the next error); records the resume token it was given."""

    def __init__(self, *scripts: list[Step] | BaseException) -> None:
        self._scripts = list(scripts)
        self.opened_with: list[Mapping[str, Any] | None] = []

    async def open(self, resume_after: Mapping[str, Any] | None) -> ChangeStream:
        self.opened_with.append(resume_after)
        script = self._scripts.pop(0) if self._scripts else []
        if isinstance(script, BaseException):
            raise script
        return ScriptedStream(list(script))


class Published:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[ChangeEvent] = asyncio.Queue()

    async def next(self) -> ChangeEvent:
        return await asyncio.wait_for(self.queue.get(), timeout=5)


async def started(server: ScriptedServer, published: Published) -> ChangeStreamPump:
    pump = ChangeStreamPump(server.open, published.queue.put_nowait, job_from_document, retry_delay=0)
    assert await pump.start()
    return pump


@pytest.fixture
def jobs() -> list[Job]:
    ws = new_workspace_id()
    return [new_job(ws) for _ in range(3)]


async def test_each_job_write_is_published_in_stream_order(jobs: list[Job]) -> None:
    server = ScriptedServer([insert_of(jobs[0], "t1"), insert_of(jobs[1], "t2")])
    published = Published()
    pump = await started(server, published)
    assert [await published.next(), await published.next()] == [JobChanged(jobs[0]), JobChanged(jobs[1])]
    assert pump.resume_token == {"_data": "t2"}
    await pump.stop()


async def test_a_lost_connection_resumes_after_the_last_event_without_a_reset(jobs: list[Job]) -> None:
    server = ScriptedServer(
        [insert_of(jobs[0], "t1"), AutoReconnect("connection reset")],
        AutoReconnect("primary stepped down"),  # the first reopen fails too: retried
        [insert_of(jobs[1], "t2")],
    )
    published = Published()
    pump = await started(server, published)
    assert [await published.next(), await published.next()] == [JobChanged(jobs[0]), JobChanged(jobs[1])]
    assert server.opened_with == [None, {"_data": "t1"}, {"_data": "t1"}]
    await pump.stop()


async def test_history_lost_restarts_from_now_and_tells_subscribers_to_re_read(jobs: list[Job]) -> None:
    server = ScriptedServer([insert_of(jobs[0], "t1"), HISTORY_LOST], [insert_of(jobs[1], "t9")])
    published = Published()
    pump = await started(server, published)
    events = [await published.next(), await published.next(), await published.next()]
    assert events == [JobChanged(jobs[0]), FeedReset(), JobChanged(jobs[1])]
    assert server.opened_with == [None, None]
    await pump.stop()


async def test_a_token_that_can_no_longer_be_resumed_also_resets(jobs: list[Job]) -> None:
    server = ScriptedServer(
        [insert_of(jobs[0], "t1"), AutoReconnect("network")], HISTORY_LOST, [insert_of(jobs[1], "t5")]
    )
    published = Published()
    pump = await started(server, published)
    events = [await published.next(), await published.next(), await published.next()]
    assert events == [JobChanged(jobs[0]), FeedReset(), JobChanged(jobs[1])]
    assert server.opened_with == [None, {"_data": "t1"}, None]
    await pump.stop()


async def test_an_invalidated_stream_restarts_from_now_with_a_reset(jobs: list[Job]) -> None:
    invalidate = {"_id": {"_data": "t2"}, "operationType": "invalidate"}
    server = ScriptedServer([insert_of(jobs[0], "t1"), invalidate], [insert_of(jobs[1], "t3")])
    published = Published()
    pump = await started(server, published)
    events = [await published.next(), await published.next(), await published.next()]
    assert events == [JobChanged(jobs[0]), FeedReset(), JobChanged(jobs[1])]
    await pump.stop()


async def test_an_unreadable_document_is_skipped_and_the_feed_goes_on(jobs: list[Job]) -> None:
    broken = {"_id": {"_data": "t1"}, "operationType": "insert", "fullDocument": {"_id": "x", "status": "weird"}}
    server = ScriptedServer([broken, insert_of(jobs[1], "t2")])
    published = Published()
    pump = await started(server, published)
    assert await published.next() == JobChanged(jobs[1])
    await pump.stop()


@pytest.mark.parametrize("error", [NOT_A_REPLICA_SET, NotImplementedError("no change streams")])
async def test_a_server_without_change_streams_is_reported_not_raised(error: BaseException) -> None:
    pump = ChangeStreamPump(ScriptedServer(error).open, lambda event: None, job_from_document)
    assert await pump.start() is False


async def test_an_unreachable_server_at_start_raises() -> None:
    pump = ChangeStreamPump(ScriptedServer(AutoReconnect("down")).open, lambda event: None, job_from_document)
    with pytest.raises(AutoReconnect):
        await pump.start()


async def test_stopping_closes_the_stream(jobs: list[Job]) -> None:
    streams: list[ScriptedStream] = []

    async def open_stream(resume_after: Mapping[str, Any] | None) -> ChangeStream:
        streams.append(ScriptedStream([insert_of(replace(jobs[0], revision=2), "t1")]))
        return streams[-1]

    published = Published()
    pump = ChangeStreamPump(open_stream, published.queue.put_nowait, job_from_document)
    assert await pump.start()
    await published.next()
    await pump.stop()
    assert streams[0].closed


async def test_a_subscriber_gets_no_stream_event_of_a_write_acknowledged_before_it_subscribed(
    jobs: list[Job],
) -> None:
    fanout = ChangeFanout()
    feed = fanout.subscribe(since=5)
    fanout.publish(JobChanged(jobs[0]), acknowledged=5)  # written and acknowledged here before subscribing
    fanout.publish(JobChanged(jobs[1]), acknowledged=6)  # acknowledged after
    fanout.publish(JobChanged(jobs[2]))  # written by another process: no number
    fanout.close()
    assert [event async for event in feed] == [JobChanged(jobs[1]), JobChanged(jobs[2])]
