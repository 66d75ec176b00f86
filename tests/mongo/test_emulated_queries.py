"""The query documents the MongoDB store sends: every job read carries the retention bound, every list query is
led by workspace_id and walks an index in page order (the emulation refuses a sorted query its hinted index cannot
serve in order; tests/mongo/test_real_server.py confirms the plans with explain() on a real server)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from jobsd.domain.auth import ReadScope
from jobsd.domain.filters import JobFilter
from jobsd.domain.states import Action
from jobsd.store.base import JobQuery, LogQuery
from jobsd.store.mongo import MongoStore
from jobsd.store.mongo.queries import (
    claim_plan,
    collection_indexes,
    lapsed_plan,
    list_plans,
    log_plan,
    visible_at,
    waiting_workspaces_plan,
)
from tests.contract.factories import T0, claim_request, move, new_job, new_workspace_id
from tests.support.mongo_emulation import EmulatedAsyncMongoClient, sort_problem

NOW = T0 + timedelta(minutes=1)
WS = "ws-queries"
INDEXES = {spec.name: spec.keys for specs in collection_indexes(timedelta(days=30)).values() for spec in specs}

QUERIES: dict[str, JobQuery] = {
    "no filter": JobQuery(scope=ReadScope(WS, everything=True), now=NOW, limit=100),
    "kind": JobQuery(scope=ReadScope(WS, everything=True), now=NOW, limit=100, filter=JobFilter(kind="copy")),
    "status": JobQuery(scope=ReadScope(WS, everything=True), now=NOW, limit=100, filter=JobFilter(status="done")),
    "pipe_id": JobQuery(scope=ReadScope(WS, everything=True), now=NOW, limit=100, filter=JobFilter(pipe_id="p1")),
    "pipe_name": JobQuery(scope=ReadScope(WS, everything=True), now=NOW, limit=100, filter=JobFilter(pipe_name="pipe")),
    "every filter": JobQuery(
        scope=ReadScope(WS, everything=True),
        now=NOW,
        limit=100,
        filter=JobFilter(
            kind="copy", status="done", pipe_id="p1", pipe_name="pipe", created_after=T0, created_before=NOW
        ),
    ),
    "dates only": JobQuery(
        scope=ReadScope(WS, everything=True), now=NOW, limit=100, filter=JobFilter(created_after=T0, created_before=NOW)
    ),
    "next page": JobQuery(scope=ReadScope(WS, everything=True), now=NOW, limit=100, after=(T0, "job-9")),
    "active only": JobQuery(scope=ReadScope(WS, everything=True), now=NOW, limit=100, only_active=True),
    "narrow scope": JobQuery(
        scope=ReadScope(WS, everything=False, datasource_names=frozenset({"a", "b"}), pipe_names=frozenset({"p"})),
        now=NOW,
        limit=100,
        filter=JobFilter(status="working"),
    ),
}


def bound_of(filter_: dict[str, Any]) -> bool:
    return visible_at(NOW) in filter_.get("$and", [])


@pytest.mark.parametrize("name", list(QUERIES))
def test_each_list_query_is_led_by_workspace_bounded_and_served_in_order_by_its_index(name: str) -> None:
    plans = list_plans(QUERIES[name])
    assert plans
    for plan in plans:
        assert next(iter(plan.filter)) == "workspace_id"
        assert plan.filter["workspace_id"] == WS
        assert bound_of(plan.filter)
        assert sort_problem(plan.filter, plan.sort, INDEXES[plan.hint]) == ""


def test_the_most_selective_filter_picks_the_index() -> None:
    assert [p.hint for p in list_plans(QUERIES["every filter"])] == ["jobs_by_pipe_id"]
    assert [p.hint for p in list_plans(QUERIES["status"])] == ["jobs_by_status"]
    assert [p.hint for p in list_plans(QUERIES["narrow scope"])] == [
        "jobs_by_datasource_name",
        "jobs_by_datasource_name",
        "jobs_by_pipe_name",
    ]


def test_a_scope_that_reads_nothing_runs_no_query() -> None:
    nothing = replace(QUERIES["no filter"], scope=ReadScope(WS, everything=False))
    assert list_plans(nothing) == []


def test_claim_lapsed_and_log_queries_are_served_in_order_by_their_indexes() -> None:
    plans = [
        claim_plan(claim_request(NOW, workspace_id=WS), [], NOW),
        claim_plan(claim_request(NOW, kinds={"copy"}, workspace_id=WS), ["ws:copy:t"], NOW),
        claim_plan(claim_request(NOW, kinds={"copy", "import"}, workspace_id=WS), [], NOW),
        lapsed_plan(NOW, 10),
        log_plan(LogQuery(workspace_id=WS, limit=10)),
        log_plan(LogQuery(workspace_id=WS, limit=10, after=(NOW, "j", 3), filter=JobFilter(job_id="j"))),
        log_plan(LogQuery(workspace_id=WS, limit=10, filter=JobFilter(kind="copy", status="done", created_after=T0))),
    ]
    for plan in plans:
        assert sort_problem(plan.filter, plan.sort, INDEXES[plan.hint]) == "", plan
    # The distinct that finds the workspaces with waiting jobs: workspace_id right after the fixed keys.
    for kinds in ((), ("copy",), ("copy", "import")):
        filter_, hint = waiting_workspaces_plan(claim_request(NOW, kinds=kinds))
        assert sort_problem(filter_, (("workspace_id", 1),), INDEXES[hint]) == "", kinds


def test_a_claim_plan_is_for_one_workspace() -> None:
    with pytest.raises(ValueError, match="one workspace"):
        claim_plan(claim_request(NOW), [], NOW)


def test_a_sort_the_index_cannot_serve_is_reported() -> None:
    keys = INDEXES["jobs_by_kind"]
    assert "does not fix" in sort_problem({"workspace_id": WS}, (("created_at_us", -1), ("_id", -1)), keys)
    assert "mixes directions" in sort_problem(
        {"workspace_id": WS, "kind": "copy"}, (("created_at_us", -1), ("_id", 1)), keys
    )


async def test_every_job_read_of_the_store_carries_the_retention_bound(
    emulated_client: EmulatedAsyncMongoClient, emulated_store: MongoStore
) -> None:
    ws = new_workspace_id()
    # A waiting job elsewhere, so the claim below reads jobs (a claim of an empty queue reads no job at all).
    await emulated_store.insert_job(new_job(new_workspace_id()))
    job = await emulated_store.insert_job(new_job(ws, idempotency_key="k"))
    running = move(job, Action.CLAIM, T0)
    assert await emulated_store.compare_and_set(job, running)
    reads = {
        "get_job": emulated_store.get_job(job.id, NOW),
        "list_jobs": emulated_store.list_jobs(replace(QUERIES["no filter"], scope=ReadScope(ws, everything=True))),
        "claim_next": emulated_store.claim_next(claim_request(NOW)),
        "lapsed_leases": emulated_store.lapsed_leases(NOW, 10),
        "insert_job with a key": emulated_store.insert_job(new_job(ws, idempotency_key="k", created_at=NOW)),
    }
    for name, read in reads.items():
        emulated_client.calls.clear()
        await read
        job_reads = [
            c for c in emulated_client.calls if c.collection == "jobs" and c.operation in ("find", "find_one")
        ] + [c for c in emulated_client.calls if c.collection == "jobs" and c.sort]
        assert job_reads, name
        for call in job_reads:
            assert call.filter is not None and bound_of(dict(call.filter)), (name, call)


@pytest.mark.parametrize("name", list(QUERIES))
async def test_the_emulated_server_runs_each_list_query_without_an_in_memory_sort(
    name: str, emulated_store: MongoStore
) -> None:
    # The emulation raises EmulationRefused for a sorted query its hinted index cannot serve in order.
    assert await emulated_store.list_jobs(QUERIES[name]) == []
