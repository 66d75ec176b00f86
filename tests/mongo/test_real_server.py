"""On a server process — the wire server (`mongo-wire`, SecantusDB: not mongod) always, a real MongoDB replica set
(`mongo-real`, JOBSD_TEST_MONGODB_URI) when set: query plans, and two jobsd processes sharing one database
(claims, limits, and watch across them through the change stream)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from jobsd.domain.auth import ReadScope
from jobsd.domain.filters import JobFilter
from jobsd.domain.model import Job
from jobsd.domain.states import Action
from jobsd.store.base import ChangeEvent, JobChanged, JobQuery, LogQuery
from jobsd.store.mongo import MongoStore
from jobsd.store.mongo.queries import (
    FindPlan,
    claim_plan,
    lapsed_plan,
    list_plans,
    log_plan,
    waiting_workspaces_plan,
)
from tests.contract.factories import T0, claim_request, claim_until_none, move, new_job, new_workspace_id

from .test_emulated_queries import QUERIES

pytestmark = pytest.mark.mongo
NOW = T0 + timedelta(minutes=1)
Document = dict[str, Any]


@pytest.fixture
async def replicas(real_database: tuple[str, str]) -> AsyncIterator[tuple[MongoStore, MongoStore]]:
    """Two stores with their own clients on one database: two jobsd processes, as far as the server can tell."""
    uri, name = real_database
    stores = (MongoStore(uri, database=name), MongoStore(uri, database=name))
    for store in stores:
        await store.open()
    yield stores
    for store in stores:
        await store.close()


@pytest.fixture
async def database(real_database: tuple[str, str]) -> AsyncIterator[Any]:
    uri, name = real_database
    client: AsyncMongoClient[Document] = AsyncMongoClient(uri, serverSelectionTimeoutMS=5_000)
    yield client.get_database(name)
    await client.close()


def plan_stages(explained: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Every stage of the winning plan, outermost first (classic or slot-based engine, replica set or sharded)."""
    found: list[Mapping[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if isinstance(node.get("stage"), str):
                found.append(node)
            for key, value in node.items():
                if key != "rejectedPlans":
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(explained["queryPlanner"]["winningPlan"])
    return found


def stages(explained: Mapping[str, Any]) -> list[str]:
    """Every stage name of the winning plan."""
    return [stage["stage"] for stage in plan_stages(explained)]


def index_names(explained: Mapping[str, Any]) -> set[str]:
    """The indexes the winning plan scans."""
    return {
        stage["indexName"]
        for stage in plan_stages(explained)
        if stage["stage"] == "IXSCAN" and isinstance(stage.get("indexName"), str)
    }


async def planner_sorts_served_orders(database: Any) -> bool:
    """Whether this server's planner puts a SORT stage even on the textbook query an index serves in order:
    `find({a: 1}).sort({b: 1})` hinted to the index `{a: 1, b: 1}`. mongod does not (an index supports a sort on
    its keys after those the query fixes by equality); SecantusDB 0.7.0b3 does, on every find. Where the server
    does, a SORT in jobsd's plans says nothing about jobsd, and the other checks (an IXSCAN of the hinted index,
    no COLLSCAN) still hold; on any server that does not, a SORT fails the test."""
    control = database.get_collection("explain_control")
    await control.insert_many([{"a": i % 3, "b": i} for i in range(9)])
    await control.create_index([("a", 1), ("b", 1)], name="a_b")
    return "SORT" in stages(await control.find({"a": 1}, sort=[("b", 1)], hint="a_b").explain())


def assert_index_walk(
    explained: Mapping[str, Any], what: str, hint: str | None = None, *, sort_stage_is_the_servers: bool = False
) -> None:
    plan_stages = stages(explained)
    assert "IXSCAN" in plan_stages, (what, plan_stages)
    assert "COLLSCAN" not in plan_stages, (what, plan_stages)
    if hint is not None and index_names(explained):
        assert index_names(explained) == {hint}, (what, index_names(explained))
    if not sort_stage_is_the_servers:
        assert "SORT" not in plan_stages, (what, plan_stages)


async def explain_find(collection: Any, plan: FindPlan) -> Mapping[str, Any]:
    cursor = collection.find(plan.filter, sort=list(plan.sort), limit=plan.limit, hint=plan.hint)
    explained: Mapping[str, Any] = await cursor.explain()
    return explained


async def explain_claim(database: Any, plan: FindPlan) -> Mapping[str, Any]:
    command = {
        "findAndModify": "jobs",
        "query": plan.filter,
        "sort": dict(plan.sort),
        "update": {"$set": {"claim_lock": "explain"}},
        "hint": plan.hint,
    }
    explained: Mapping[str, Any] = await database.command("explain", command, verbosity="queryPlanner")
    return explained


async def seed(store: MongoStore, ws: str) -> None:
    for i in range(40):
        await store.insert_job(
            new_job(
                ws,
                kind=("copy", "import", "populateview")[i % 3],
                datasource_name=f"ds{i % 4}",
                pipe_name=f"p{i % 5}",
                created_at=T0 + timedelta(seconds=i),
            )
        )


async def test_every_list_query_is_an_index_walk_without_an_in_memory_sort(
    replicas: tuple[MongoStore, MongoStore], database: Any
) -> None:
    await seed(replicas[0], "ws-queries")
    servers_sort = await planner_sorts_served_orders(database)
    for name, query in QUERIES.items():
        for plan in list_plans(query):
            explained = await explain_find(database.jobs, plan)
            assert_index_walk(explained, name, plan.hint, sort_stage_is_the_servers=servers_sort)


async def test_claim_lease_and_log_queries_are_index_walks_without_an_in_memory_sort(
    replicas: tuple[MongoStore, MongoStore], database: Any
) -> None:
    await seed(replicas[0], "ws-queries")
    servers_sort = await planner_sorts_served_orders(database)
    for kinds in ((), ("copy",)):
        plan = claim_plan(claim_request(NOW, kinds=kinds, workspace_id="ws-queries"), ["ws-queries:copy:ds1"], NOW)
        assert_index_walk(await explain_claim(database, plan), f"claim {kinds}", plan.hint)
    # Several kinds: the index yields each kind in order and the server merges them (SORT_MERGE, not SORT).
    plan = claim_plan(claim_request(NOW, kinds=("copy", "import"), workspace_id="ws-queries"), [], NOW)
    assert_index_walk(await explain_claim(database, plan), "claim of two kinds", plan.hint)
    # The workspaces with waiting jobs: a distinct over the claim index (no collection scan).
    for wanted in ((), ("copy",), ("copy", "import")):
        filter_, hint = waiting_workspaces_plan(claim_request(NOW, kinds=wanted))
        explained = await database.command(
            "explain", {"distinct": "jobs", "key": "workspace_id", "query": filter_, "hint": hint}
        )
        plan_stages = stages(explained)
        assert {"IXSCAN", "DISTINCT_SCAN"} & set(plan_stages), (wanted, plan_stages)
        assert "COLLSCAN" not in plan_stages, (wanted, plan_stages)
    lapsed = lapsed_plan(NOW, 100)
    explained = await explain_find(database.jobs, lapsed)
    assert_index_walk(explained, "lapsed leases", lapsed.hint, sort_stage_is_the_servers=servers_sort)
    for query in (
        LogQuery(workspace_id="ws-queries", limit=100),
        LogQuery("ws-queries", 100, filter=JobFilter(job_id="j")),
    ):
        plan = log_plan(query)
        explained = await explain_find(database.jobs_log, plan)
        assert_index_walk(explained, f"log {query}", plan.hint, sort_stage_is_the_servers=servers_sort)


async def test_the_wire_servers_find_planner_sorts_what_an_index_already_orders(
    request: pytest.FixtureRequest, database: Any
) -> None:
    """The one planner difference the tests above allow for, pinned: on the wire server the control query shows
    a SORT over an IXSCAN of the hinted index; on mongod it must not. If a SecantusDB release stops sorting,
    this test fails and the allowance above can go."""
    server = request.node.callspec.params["real_database"]
    sorts = await planner_sorts_served_orders(database)
    assert sorts is (server == "mongo-wire"), f"{server}: the control query's plan has a SORT stage: {sorts}"


async def test_ttl_index_expires_jobs_at_expires_at(replicas: tuple[MongoStore, MongoStore], database: Any) -> None:
    info = await database.jobs.index_information()
    assert info["jobs_expiry"]["expireAfterSeconds"] == 0


async def test_two_processes_claiming_at_once_never_share_a_job_and_hold_the_limits(
    replicas: tuple[MongoStore, MongoStore],
) -> None:
    ws = new_workspace_id()
    jobs = [
        await replicas[i % 2].insert_job(
            new_job(ws, kind="copy", datasource_name=f"t{i % 3}", created_at=T0 + timedelta(seconds=i))
        )
        for i in range(60)
    ]

    requests = [claim_request(NOW, workspace_id=ws, limit_for=lambda kind: 3, worker=f"w{n}") for n in range(12)]
    results = await asyncio.gather(*(claim_until_none(replicas[n % 2], r) for n, r in enumerate(requests)))
    claimed = [job for mine in results for job in mine]
    assert Counter(j.id for j in claimed).most_common(1)[0][1] == 1
    assert Counter(j.datasource_name for j in claimed) == {"t0": 3, "t1": 3, "t2": 3}
    for target in ("t0", "t1", "t2"):
        oldest = [j.id for j in jobs if j.datasource_name == target][:3]
        assert sorted(j.id for j in claimed if j.datasource_name == target) == sorted(oldest)

    # Without limits, every job is claimed exactly once across both processes.
    rest = await asyncio.gather(
        *(
            replicas[n % 2].claim_next(claim_request(NOW, workspace_id=ws, worker=f"x{n}"))
            for n in range(len(jobs) - len(claimed) + 5)
        )
    )
    taken = [j.id for j in claimed] + [j.id for j in rest if j is not None]
    assert sorted(taken) == sorted(j.id for j in jobs)


async def next_change(feed: AsyncIterator[ChangeEvent]) -> ChangeEvent:
    return await asyncio.wait_for(anext(feed), timeout=15)


async def test_a_write_through_one_process_reaches_the_other_processes_watchers(
    replicas: tuple[MongoStore, MongoStore],
) -> None:
    writer, watcher = replicas
    assert not watcher.publishes_locally
    feed = watcher.changes()
    ws = new_workspace_id()
    waiting = await writer.insert_job(new_job(ws))
    claimed = await writer.claim_next(claim_request(NOW, workspace_id=ws))
    assert claimed is not None
    done = move(claimed, Action.FINISH_DONE, NOW + timedelta(seconds=5))
    assert await writer.compare_and_set(claimed, done)
    received = [await next_change(feed) for _ in range(3)]
    assert received == [JobChanged(waiting), JobChanged(claimed), JobChanged(done)]
    # Bookkeeping writes (claim locks, log flags) are not job changes: nothing else arrives.
    await writer.purge(NOW, NOW - timedelta(days=30))
    extra = await writer.insert_job(new_job(ws, created_at=NOW))
    assert await next_change(feed) == JobChanged(extra)


async def test_list_pages_and_log_read_the_same_on_the_real_server(replicas: tuple[MongoStore, MongoStore]) -> None:
    store = replicas[0]
    ws = new_workspace_id()
    await seed(store, ws)
    query = JobQuery(scope=ReadScope(ws, everything=True), now=NOW, limit=15)
    pages: list[Job] = []
    page = await store.list_jobs(query)
    while page:
        pages += page
        page = await store.list_jobs(JobQuery(query.scope, NOW, 15, after=(page[-1].created_at, page[-1].id)))
    assert [j.created_at for j in pages] == sorted((j.created_at for j in pages), reverse=True)
    assert len({j.id for j in pages}) == 40
    assert len(await store.list_log(LogQuery(workspace_id=ws, limit=100))) == 40


class DuplicateKeyReplies(monitoring.CommandListener):
    """Counts the inserts the server refused with a duplicate key (code 11000)."""

    def __init__(self) -> None:
        self.refused = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "insert":
            self.refused += sum(e.get("code") == 11000 for e in event.reply.get("writeErrors", ()))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if event.command_name == "insert" and event.failure.get("code") == 11000:
            self.refused += 1


async def test_creates_racing_for_one_idempotency_key_on_two_processes_all_answer_the_winners_job(
    real_database: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten creates with one key, five through each of two processes (own clients), all past the look-up for the key
    before any of them inserts, so nine inserts lose to the unique index: each loser reads the winner back and
    answers its job. Five rounds."""
    uri, name = real_database
    listener = DuplicateKeyReplies()
    clients: list[AsyncMongoClient[Document]] = [
        AsyncMongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5_000, event_listeners=[listener])
        for _ in range(2)
    ]
    stores = [MongoStore(uri, database=name, client=client) for client in clients]
    creators, rounds = 10, 5
    looked = asyncio.Barrier(creators)
    first_looks = 0

    def all_look_first(original: Callable[[Job], Awaitable[Job | None]]) -> Callable[[Job], Awaitable[Job | None]]:
        async def look(job: Job) -> Job | None:
            nonlocal first_looks
            found = await original(job)
            if first_looks < creators:  # the round's first look of each creator waits for the others'
                first_looks += 1
                await asyncio.wait_for(looked.wait(), 10)
            return found

        return look

    try:
        for store in stores:
            await store.open()
            monkeypatch.setattr(store, "_holder_of_key", all_look_first(store._holder_of_key))
        ws = new_workspace_id()
        for round_ in range(rounds):
            first_looks, refused_before = 0, listener.refused
            key = f"nightly-{round_}"
            jobs = await asyncio.wait_for(
                asyncio.gather(*(stores[i % 2].insert_job(new_job(ws, idempotency_key=key)) for i in range(creators))),
                30,
            )
            assert len({job.id for job in jobs}) == 1, f"round {round_}: {sorted({job.id for job in jobs})}"
            assert listener.refused - refused_before == creators - 1, "the losers did not lose to the unique index"
            for store in stores:  # stored once, logged once, and each process reads the same job
                assert [j.id for j in await store.list_jobs(JobQuery(ReadScope(ws, everything=True), NOW, 50))].count(
                    jobs[0].id
                ) == 1
        listed = await stores[1].list_jobs(JobQuery(ReadScope(ws, everything=True), NOW, 50))
        assert len(listed) == rounds
        assert len(await stores[0].list_log(LogQuery(workspace_id=ws, limit=50))) == rounds
    finally:
        for store in stores:
            await store.close()
        for client in clients:
            await client.close()
