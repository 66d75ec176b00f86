"""A tenant's statement in flight is interrupted — on its run-time limit and on cancel — and the executor slot it
held is free again at once (the review: a runaway cross join ran on at one core with no limit, and a working
copy could not be stopped). Real jobsd with its executors, real SQL on the workspace's DuckDB file.

Each test runs with one executor slot, so the job after the runaway can only run once the runaway's thread has
really stopped: the executor waits for its statement to return before it gives the slot back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from jobsd_client import pb

from .conftest import WAIT, Stack, start_stack

# About 10^16 rows: it never ends by itself within a test.
RUNAWAY = "SELECT a.range AS x FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = 7"
TIME_LIMIT = 1.0


@pytest.fixture
async def one_slot(tmp_path: Path) -> AsyncIterator[Stack]:
    """One executor slot; deletes limited to TIME_LIMIT. Queries are not limited here: the tests read their results
    with a query, which a loaded machine must not be able to push past a 1 s limit of its own."""
    async for started in start_stack(tmp_path, executor_concurrency=1, time_limits={"delete_data": TIME_LIMIT}):
        yield started


@pytest.fixture
async def limited_queries(tmp_path: Path) -> AsyncIterator[Stack]:
    """One executor slot; queries limited to TIME_LIMIT (the runaway-query test's stack)."""
    async for started in start_stack(tmp_path, executor_concurrency=1, time_limits={"query": TIME_LIMIT}):
        yield started


def seconds(start: Timestamp, end: Timestamp) -> float:
    return (end.ToMicroseconds() - start.ToMicroseconds()) / 1e6


async def until_working(stack: Stack, token: str, job_id: str) -> pb.Job:
    async with asyncio.timeout(WAIT):
        async for event in stack.jobs.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=stack.md(token)):
            if event.job.status == pb.JOB_STATUS_WORKING:
                return event.job
    raise AssertionError("never working")


async def seed(stack: Stack, token: str, name: str) -> None:
    status, body = await stack.post("/v0/datasources", token, json={"name": name, "schema": "x Int64"})
    assert status == 200, body
    created = await stack.run(token, "copy", name, query_sql="SELECT range AS x FROM range(10)")
    assert created.status == pb.JOB_STATUS_DONE, created.error


async def test_a_runaway_query_ends_at_its_run_time_limit_and_frees_its_slot(limited_queries: Stack) -> None:
    token = limited_queries.alpha.tokens["admin"]
    runaway = await limited_queries.run(token, "query", params={"sql": RUNAWAY})
    took = seconds(runaway.started_at, runaway.updated_at)
    print(f"runaway query: {pb.JobStatus.Name(runaway.status)} after {took:.2f} s ({runaway.error})")
    assert runaway.status == pb.JOB_STATUS_ERROR
    assert runaway.error == (
        "Job exceeded the run-time limit of 1 s for query jobs (time_limit_seconds; JOBSD_TIME_LIMITS)"
    )
    assert TIME_LIMIT <= took < TIME_LIMIT + 5
    # The next job can only run in the slot the runaway held. It is a copy, a kind without the 1 s limit, so a
    # loaded machine cannot make it trip a limit of its own: what it shows is that the slot was given back.
    other = limited_queries.beta.tokens["admin"]
    status, body = await limited_queries.post("/v0/datasources", other, json={"name": "answers", "schema": "x Int64"})
    assert status == 200, body
    after = await limited_queries.run(other, "copy", "answers", query_sql="SELECT 42 AS x")
    assert after.status == pb.JOB_STATUS_DONE, after.error
    print(f"the next job (the only slot): done {seconds(runaway.updated_at, after.updated_at):.2f} s later")


async def test_a_runaway_delete_is_interrupted_and_changes_nothing(one_slot: Stack) -> None:
    token = one_slot.alpha.tokens["admin"]
    await seed(one_slot, token, "kept")
    # A condition that scans 10^8 rows per row of the table: it never ends by itself.
    condition = "x IN (SELECT a.range FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = -1)"
    ended = await one_slot.run(token, "delete_data", "kept", params={"delete_condition": condition})
    assert ended.status == pb.JOB_STATUS_ERROR and "run-time limit of 1 s" in ended.error
    counted = await one_slot.run(token, "query", params={"sql": "SELECT count(*) AS n FROM kept"})
    assert counted.status == pb.JOB_STATUS_DONE and counted.statistics.row_count == 1
    assert counted.result["preview"] == [[10.0]]


async def test_cancelling_a_working_copy_interrupts_its_statement(one_slot: Stack) -> None:
    token = one_slot.alpha.tokens["admin"]
    await seed(one_slot, token, "target")
    copy = await one_slot.create(token, "copy", "target", query_sql=RUNAWAY, mode="append")
    await until_working(one_slot, token, copy.id)
    cancelling = await one_slot.jobs.CancelJob(pb.CancelJobRequest(job_id=copy.id), metadata=one_slot.md(token))
    assert cancelling.status == pb.JOB_STATUS_CANCELLING
    final = await one_slot.finished(token, copy.id)
    took = seconds(cancelling.updated_at, final.updated_at)
    print(f"copy cancelled mid-statement: {pb.JobStatus.Name(final.status)} {took:.2f} s after the request")
    assert final.status == pb.JOB_STATUS_CANCELLED
    # The copy was one transaction, rolled back: the target holds its 10 rows and nothing more.
    counted = await one_slot.run(token, "query", params={"sql": "SELECT count(*) AS n FROM target"})
    assert counted.result["preview"] == [[10.0]]


async def test_cancelling_a_populate_interrupts_the_partition_in_flight(one_slot: Stack) -> None:
    token = one_slot.alpha.tokens["admin"]
    await seed(one_slot, token, "source")
    sql = "SELECT s.x FROM source s, range(100000000) a, range(100000000) b WHERE a.range + b.range = s.x - 100"
    populate = await one_slot.create(token, "populateview", "dest", query_sql=sql, params={"source": "source"})
    working = await until_working(one_slot, token, populate.id)
    async with asyncio.timeout(WAIT):
        async for event in one_slot.jobs.WatchJob(
            pb.WatchJobRequest(job_id=populate.id, since_revision=working.revision), metadata=one_slot.md(token)
        ):
            if [q.status for q in event.job.queries] == ["working"]:
                break  # its only partition's statement is under way
    await one_slot.jobs.CancelJob(pb.CancelJobRequest(job_id=populate.id), metadata=one_slot.md(token))
    final = await one_slot.finished(token, populate.id)
    assert final.status == pb.JOB_STATUS_CANCELLED
    assert [q.status for q in final.queries] == ["waiting"]  # rolled back: as if it had not started
    counted = await one_slot.run(token, "query", params={"sql": "SELECT count(*) AS n FROM dest"})
    assert counted.result["preview"] == [[0.0]]
