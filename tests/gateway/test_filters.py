"""`GET /v0/jobs` filters, the 48 h window, order and paging; `GET /v0/jobs_log`."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from jobsd_client import pb

from .support import INVALID_TOKEN, Gateway

USEC = timedelta(microseconds=1)


async def test_a_job_is_listed_until_48_hours_after_creation_and_gone_at_that_instant(gw: Gateway) -> None:
    job = await gw.create("import")

    gw.clock.advance(timedelta(hours=48) - USEC)
    assert await gw.list_ids() == [job.id]
    assert (await gw.get(f"/v0/jobs/{job.id}")).status == 200

    gw.clock.advance(USEC)
    assert await gw.list_ids() == []
    gone = await gw.get(f"/v0/jobs/{job.id}")
    assert (gone.status, gone.error) == (404, f'Job with id "{job.id}" not found')


@pytest.fixture
async def three_jobs(gw: Gateway) -> list[str]:
    """Imports created at 12:00:00, 12:00:10.5 and 12:00:20 on 2026-06-01 (UTC)."""
    ids = [(await gw.create("import")).id]
    for step in (10.5, 9.5):
        gw.clock.advance(timedelta(seconds=step))
        ids.append((await gw.create("import")).id)
    return ids


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"created_after": "2026-06-01T12:00:10.500000Z"}, [2, 1]),
        ({"created_after": "2026-06-01T12:00:10.5Z"}, [2, 1]),
        ({"created_after": "2026-06-01T12:00:10.500001Z"}, [2]),
        ({"created_before": "2026-06-01T12:00:10.500Z"}, [1, 0]),
        ({"created_before": "2026-06-01T12:00:10.499999Z"}, [0]),
        ({"created_after": "2026-06-01T12:00:10.5Z", "created_before": "2026-06-01T12:00:10.5Z"}, [1]),
        ({"created_after": "2026-06-01T14:00:10.5+02:00"}, [2, 1]),
        ({"created_after": "2026-06-01 12:00:10.5"}, [2, 1]),  # no zone: UTC
        ({"created_after": "2026-06-01"}, [2, 1, 0]),
        ({"created_after": "2026-06-02"}, []),
        ({"created_before": "2026-06-01"}, [2, 1, 0]),  # a date as the upper bound covers the whole day
        ({"created_before": "2026-05-31"}, []),
        ({"created_after": "", "created_before": ""}, [2, 1, 0]),  # empty: ignored
    ],
)
async def test_created_bounds_are_inclusive_iso_8601(
    gw: Gateway, three_jobs: list[str], params: dict[str, str], expected: list[int]
) -> None:
    assert await gw.list_ids(**params) == [three_jobs[i] for i in expected]


@pytest.mark.parametrize("field", ["created_after", "created_before"])
@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-01", "2026-06-01T25:00:00Z", "06/01/2026", "9999-12-31T23:30-01:00"]
)
async def test_a_bad_date_is_the_documented_400(gw: Gateway, field: str, value: str) -> None:
    await gw.create("import")

    reply = await gw.get("/v0/jobs", params={field: value})

    assert (reply.status, reply.error) == (400, f"The date provided is an invalid isoformat string: '{value}'")


@pytest.fixture
async def mixed_jobs(gw: Gateway) -> dict[str, str]:
    """An import that is done, a waiting populate and a waiting copy, created in that order."""
    done = await gw.run("import")
    gw.clock.advance(timedelta(seconds=1))
    populate = await gw.create("populateview")
    gw.clock.advance(timedelta(seconds=1))
    copy = await gw.create("copy")
    return {"import": done.id, "populateview": populate.id, "copy": copy.id}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["copy", "populateview", "import"]),
        ({"kind": "populateview"}, ["populateview"]),
        ({"kind": "copy"}, ["copy"]),
        ({"kind": "nonsense"}, []),  # unknown: matches nothing, not a 400
        ({"kind": ""}, ["copy", "populateview", "import"]),  # empty: ignored
        ({"status": "done"}, ["import"]),
        ({"status": "waiting"}, ["copy", "populateview"]),
        ({"status": "DONE"}, []),  # exact match
        ({"status": "finished"}, []),
        ({"pipe_id": "t_pipe"}, ["copy", "populateview"]),
        ({"pipe_name": "copy_pipe"}, ["copy"]),
        ({"pipe_name": "copy"}, []),  # exact, not a prefix
        ({"status": "waiting", "kind": "copy"}, ["copy"]),
        ({"debug": "true", "cli_version": "6.5.5", "from": "cli"}, ["copy", "populateview", "import"]),  # ignored
    ],
)
async def test_filters_match_exactly(
    gw: Gateway, mixed_jobs: dict[str, str], params: dict[str, str], expected: list[str]
) -> None:
    assert await gw.list_ids(**params) == [mixed_jobs[kind] for kind in expected]


@pytest.mark.parametrize("params", [{"kind": "nonsense"}, {"status": "finished"}])
async def test_an_unknown_filter_value_still_needs_a_valid_token(gw: Gateway, params: dict[str, str]) -> None:
    reply = await gw.get("/v0/jobs", params=params, token="not-a-token")

    assert (reply.status, reply.error) == (403, INVALID_TOKEN)


async def _walk(gw: Gateway, first: str, params: dict[str, str]) -> list[list[str]]:
    pages: list[list[str]] = []
    url: str | None = first
    query: dict[str, str] | None = params
    while url is not None:
        reply = await gw.get(url, params=query)
        assert reply.status == 200, reply.body
        pages.append([item["id"] for item in reply.body["jobs"]])
        url, query = reply.body.get("next"), None  # the next link carries every parameter
        assert url is None or url.startswith(gw.base + "/v0/jobs")
        assert len(pages) < 20
    return pages


async def test_limit_pages_newest_first_through_absolute_next_links(gw: Gateway) -> None:
    created = []
    for _ in range(5):
        created.append((await gw.create("import")).id)
        gw.clock.advance(timedelta(seconds=1))

    pages = await _walk(gw, "/v0/jobs", {"limit": "2"})

    assert pages == [created[4:2:-1], created[2:0:-1], created[0:1]]


async def test_next_link_keeps_the_filters(gw: Gateway) -> None:
    imports = []
    for _ in range(3):
        imports.append((await gw.create("import")).id)
        await gw.create("query")
        gw.clock.advance(timedelta(seconds=1))

    pages = await _walk(gw, "/v0/jobs/", {"kind": "import", "limit": "1"})

    assert pages == [[imports[2]], [imports[1]], [imports[0]]]


@pytest.mark.parametrize("value", ["0", "101", "-1", "abc", "1.5", ""])
async def test_a_bad_limit_is_a_400_naming_limit(gw: Gateway, value: str) -> None:
    reply = await gw.get("/v0/jobs", params={"limit": value})

    assert reply.status == 400
    assert reply.error.startswith("limit:") and value in reply.error


async def test_a_bad_page_token_is_a_400_naming_it(gw: Gateway) -> None:
    reply = await gw.get("/v0/jobs", params={"page_token": "forged"})

    assert reply.status == 400
    assert "page_token" in reply.error


async def test_at_most_100_jobs_a_page_and_filters_search_the_whole_window(gw: Gateway) -> None:
    oldest_copy = await gw.create("copy")
    for _ in range(101):
        gw.clock.advance(timedelta(milliseconds=1))
        await gw.create("import")

    first = await gw.get("/v0/jobs")
    assert len(first.body["jobs"]) == 100
    assert oldest_copy.id not in [item["id"] for item in first.body["jobs"]]
    rest = await gw.get(first.body["next"])
    assert len(rest.body["jobs"]) == 2 and "next" not in rest.body

    # Unlike Tinybird, a filter finds a job older than the newest 100.
    assert await gw.list_ids(kind="copy") == [oldest_copy.id]


@pytest.mark.parametrize("settings_overrides", [{"public_url": "https://jobs.example.com/"}])
async def test_job_url_and_next_use_the_public_url(gw: Gateway, settings_overrides: dict[str, Any]) -> None:
    jobs = [await gw.create("import")]
    gw.clock.advance(timedelta(seconds=1))
    jobs.append(await gw.create("import"))

    reply = await gw.get("/v0/jobs", params={"limit": "1"})

    assert reply.body["jobs"][0]["job_url"] == f"https://jobs.example.com/v0/jobs/{jobs[1].id}"
    assert reply.body["next"].startswith("https://jobs.example.com/v0/jobs?")


async def test_jobs_log_has_one_row_per_status_change_newest_first(gw: Gateway) -> None:
    job = await gw.create("import", request_id="req-42")
    claim = await gw.claim("import")
    gw.clock.advance(timedelta(seconds=5))
    await gw.finish(claim, progress=pb.ProgressUpdate(statistics=pb.Statistics(bytes=10, row_count=2)))
    await gw.create("query")

    reply = await gw.get("/v0/jobs_log", params={"job_id": job.id})

    assert reply.status == 200, reply.body
    assert [column["name"] for column in reply.body["meta"]][:12] == [
        "job_id",
        "job_type",
        "status",
        "error",
        "workspace_id",
        "request_id",
        "pipe_id",
        "datasource_id",
        "created_at",
        "started_at",
        "updated_at",
        "job_metadata",
    ]
    rows = reply.body["data"]
    assert reply.body["rows"] == len(rows) == 3
    assert [row["status"] for row in rows] == ["done", "working", "waiting"]
    assert {(row["job_id"], row["job_type"], row["request_id"], row["datasource_id"]) for row in rows} == {
        (job.id, "import", "req-42", "t_events")
    }
    assert rows[0]["started_at"] is not None and rows[-1]["started_at"] is None
    assert json.loads(rows[0]["job_metadata"])["statistics"] == {"bytes": 10, "row_count": 2}


async def test_jobs_log_filters_and_pages(gw: Gateway) -> None:
    for _ in range(3):
        await gw.create("import")
        gw.clock.advance(timedelta(seconds=1))
    await gw.run("query")

    only_done = await gw.get("/v0/jobs_log", params={"status": "done"})
    assert [(row["job_type"], row["status"]) for row in only_done.body["data"]] == [("query", "done")]
    assert (await gw.get("/v0/jobs_log", params={"kind": "sink"})).body["data"] == []

    first = await gw.get("/v0/jobs_log", params={"kind": "import", "limit": "2"})
    assert len(first.body["data"]) == 2
    second = await gw.get(first.body["next"])
    assert len(second.body["data"]) == 1 and "next" not in second.body
    seen = [row["job_id"] for row in first.body["data"] + second.body["data"]]
    assert len(set(seen)) == 3
