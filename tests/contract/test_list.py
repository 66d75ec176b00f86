"""Contract: list_jobs filters, read scopes, newest-first order and keyset pagination.

Expected pages come from a reference model written with the domain's own rules (`is_visible`, `ReadScope.allows`),
so every query below is checked against what a user of ListJobs would expect to see.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta

import pytest

from jobsd.domain.auth import ReadScope
from jobsd.domain.filters import JobFilter
from jobsd.domain.model import TERMINAL_STATUSES, Job
from jobsd.domain.rules import is_visible
from jobsd.domain.states import Action
from jobsd.store.base import JobQuery, JobStore

from .factories import RETENTION, T0, move, new_job, new_workspace_id

NOW = T0 + RETENTION + timedelta(minutes=30)
KINDS = ("import", "populateview", "copy", "query")
DATASOURCES = ("events", "users", None)
PIPES = ("p1", "p2", None)


def expected(jobs: list[Job], query: JobQuery) -> list[Job]:
    """What list_jobs must return: the reference model."""
    matching = [
        j
        for j in jobs
        if query.scope.allows(j)
        and is_visible(j, query.now)
        and (query.filter.kind is None or j.kind == query.filter.kind)
        and (query.filter.status is None or j.status.value == query.filter.status)
        and (query.filter.pipe_id is None or j.pipe_id == query.filter.pipe_id)
        and (query.filter.pipe_name is None or j.pipe_name == query.filter.pipe_name)
        and (query.filter.created_after is None or j.created_at >= query.filter.created_after)
        and (query.filter.created_before is None or j.created_at <= query.filter.created_before)
        and (query.after is None or (j.created_at, j.id) < query.after)
        and not (query.only_active and j.status in TERMINAL_STATUSES)
    ]
    matching.sort(key=lambda j: (j.created_at, j.id), reverse=True)
    return matching[: query.limit]


async def _populate(store: JobStore, ws: str) -> list[Job]:
    """~50 jobs of every kind, status and target in `ws` (some past their window), plus look-alikes elsewhere."""
    jobs: list[Job] = []
    for i in range(48):
        # Minutes apart, the first ones old enough to have left the window at NOW; every 7th pair shares an instant.
        created = T0 + timedelta(minutes=i - (i % 7 == 1))
        job = await store.insert_job(
            new_job(
                ws,
                kind=KINDS[i % 4],
                created_at=created,
                datasource_name=DATASOURCES[i % 3],
                pipe_name=PIPES[(i // 3) % 3],
            )
        )
        at = created + timedelta(seconds=30)
        if i % 5 in (1, 2, 3):  # working, then done / error for some
            claimed = move(job, Action.CLAIM, at)
            assert await store.compare_and_set(job, claimed)
            job = claimed
            if i % 5 != 1:
                finish = Action.FINISH_DONE if i % 5 == 2 else Action.FINISH_ERROR
                finished = move(job, finish, at + timedelta(seconds=1), error="failed")
                assert await store.compare_and_set(job, finished)
                job = finished
        elif i % 5 == 4:
            cancelled = move(job, Action.CANCEL, at)
            assert await store.compare_and_set(job, cancelled)
            job = cancelled
        jobs.append(job)
    other = new_workspace_id()
    for i in range(6):
        await store.insert_job(new_job(other, kind=KINDS[i % 4], created_at=NOW - timedelta(minutes=i), pipe_name="p1"))
    return jobs


@pytest.fixture
async def population(store: JobStore) -> tuple[str, list[Job]]:
    ws = new_workspace_id()
    return ws, await _populate(store, ws)


async def test_everything_newest_first_and_nothing_past_the_window(
    store: JobStore, population: tuple[str, list[Job]]
) -> None:
    ws, jobs = population
    page = await store.list_jobs(JobQuery(scope=ReadScope(ws, True), now=NOW, limit=100))
    assert page == expected(jobs, JobQuery(scope=ReadScope(ws, True), now=NOW, limit=100))
    # Waiting/terminal jobs created more than 48 h before NOW are gone; running ones stay.
    assert any(not is_visible(j, NOW) for j in jobs)
    assert len(page) < len(jobs)
    assert [j.created_at for j in page] == sorted((j.created_at for j in page), reverse=True)


@pytest.mark.parametrize(
    "filters",
    [
        {"kind": "populateview"},
        {"kind": "sink"},  # a kind with no jobs
        {"kind": "no-such-kind"},
        {"status": "waiting"},
        {"status": "working"},
        {"status": "done"},
        {"status": "error"},
        {"status": "cancelled"},
        {"pipe_id": "id_p2"},
        {"pipe_name": "p1"},
        {"pipe_name": "unknown"},
        {"only_active": True},
        {"created_after": T0 + timedelta(minutes=30)},
        {"created_before": T0 + timedelta(minutes=30)},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()),
)
async def test_each_filter_alone(
    store: JobStore, population: tuple[str, list[Job]], filters: dict[str, object]
) -> None:
    ws, jobs = population
    wanted = dict(filters)
    only_active = bool(wanted.pop("only_active", False))
    query = JobQuery(
        scope=ReadScope(ws, True),
        now=NOW,
        limit=100,
        filter=JobFilter(**wanted),  # type: ignore[arg-type]
        only_active=only_active,
    )
    assert await store.list_jobs(query) == expected(jobs, query)


async def test_created_bounds_are_inclusive(store: JobStore, population: tuple[str, list[Job]]) -> None:
    ws, jobs = population
    visible = expected(jobs, JobQuery(scope=ReadScope(ws, True), now=NOW, limit=100))
    newest, oldest = visible[0], visible[-1]
    query = JobQuery(
        scope=ReadScope(ws, True),
        now=NOW,
        limit=100,
        filter=JobFilter(created_after=oldest.created_at, created_before=newest.created_at),
    )
    page = await store.list_jobs(query)
    assert page == visible
    exact = replace(
        query, filter=replace(query.filter, created_after=newest.created_at, created_before=newest.created_at)
    )
    assert [j.created_at for j in await store.list_jobs(exact)] == [newest.created_at] * sum(
        1 for j in visible if j.created_at == newest.created_at
    )


async def test_filters_combined(store: JobStore, population: tuple[str, list[Job]]) -> None:
    ws, jobs = population
    combos = itertools.product(
        (None, "import", "copy"),
        (None, "waiting", "done", "working"),
        (None, "id_p1"),
        (None, "p1", "p2"),
        (None, (T0 + timedelta(minutes=35), T0 + timedelta(minutes=45))),
        (False, True),
    )
    checked = 0
    for kind, status, pipe_id, pipe_name, bounds, only_active in combos:
        query = JobQuery(
            scope=ReadScope(ws, True),
            now=NOW,
            limit=100,
            only_active=only_active,
            filter=JobFilter(
                kind=kind,
                status=status,
                pipe_id=pipe_id,
                pipe_name=pipe_name,
                created_after=None if bounds is None else bounds[0],
                created_before=None if bounds is None else bounds[1],
            ),
        )
        assert await store.list_jobs(query) == expected(jobs, query), query
        checked += 1
    assert checked == 3 * 4 * 2 * 3 * 2 * 2


@pytest.mark.parametrize(
    ("datasources", "pipes"),
    [({"events"}, set()), (set(), {"p2"}), ({"users"}, {"p1"}), ({"events", "users"}, {"p1", "p2"}), ({"x"}, set())],
    ids=["one-datasource", "one-pipe", "datasource-or-pipe", "several", "nothing-readable"],
)
async def test_a_narrow_scope_sees_only_its_data_sources_and_pipes(
    store: JobStore, population: tuple[str, list[Job]], datasources: set[str], pipes: set[str]
) -> None:
    ws, jobs = population
    scope = ReadScope(ws, everything=False, datasource_names=frozenset(datasources), pipe_names=frozenset(pipes))
    for filters in ({}, {"kind": "import"}, {"status": "waiting"}, {"pipe_name": "p1"}):
        query = JobQuery(scope=scope, now=NOW, limit=100, filter=JobFilter(**filters))  # type: ignore[arg-type]
        page = await store.list_jobs(query)
        assert page == expected(jobs, query)
        assert len({j.id for j in page}) == len(page)


async def test_another_workspace_sees_none_of_these_jobs(store: JobStore, population: tuple[str, list[Job]]) -> None:
    assert await store.list_jobs(JobQuery(scope=ReadScope(new_workspace_id(), True), now=NOW, limit=100)) == []


async def _walk(store: JobStore, query: JobQuery) -> list[list[Job]]:
    pages: list[list[Job]] = []
    while True:
        page = await store.list_jobs(query)
        if not page:
            return pages
        pages.append(page)
        assert len(pages) < 100, "pagination does not end"
        query = replace(query, after=(page[-1].created_at, page[-1].id))


@pytest.mark.parametrize("page_size", [1, 7, 100])
async def test_pages_cover_everything_without_gap_or_repeat(
    store: JobStore, population: tuple[str, list[Job]], page_size: int
) -> None:
    ws, jobs = population
    for scope, filters in (
        (ReadScope(ws, True), {}),
        (ReadScope(ws, True), {"status": "waiting"}),
        (ReadScope(ws, False, frozenset({"events"}), frozenset({"p2"})), {}),
    ):
        query = JobQuery(scope=scope, now=NOW, limit=page_size, filter=JobFilter(**filters))  # type: ignore[arg-type]
        pages = await _walk(store, query)
        assert [j for page in pages for j in page] == expected(jobs, replace(query, limit=1000))
        assert all(len(page) == page_size for page in pages[:-1])


async def test_ties_on_created_at_are_ordered_by_id_across_pages(store: JobStore) -> None:
    ws = new_workspace_id()
    same: datetime = T0 + timedelta(seconds=1)
    jobs = [await store.insert_job(new_job(ws, created_at=same)) for _ in range(9)]
    query = JobQuery(scope=ReadScope(ws, True), now=T0 + timedelta(minutes=1), limit=4)
    pages = await _walk(store, query)
    assert [j.id for page in pages for j in page] == sorted((j.id for j in jobs), reverse=True)
