"""`GET /v0/jobs/events`: the live list (the REST face of WatchJobs) — filters, resume, and who may open it.

The stream opens with the matching jobs not yet finished (`snapshot`), then `synced`, then every change of a
matching job; it stays open until the client leaves. Each step waits for the event the previous action caused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from jobsd_client import pb

from .support import INVALID_TOKEN, NO_ACCESS, Gateway, read_event

Event = dict[str, Any]


@asynccontextmanager
async def list_stream(
    gw: Gateway,
    *,
    token: str | None = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    sent = {"Authorization": f"Bearer {token or gw.admin}", **(headers or {})}
    async with gw.http.get(f"{gw.base}/v0/jobs/events", params=params, headers=sent) as response:
        yield response


async def until_synced(stream: aiohttp.ClientResponse) -> tuple[list[Event], Event]:
    """The events before `synced`, and `synced` itself."""
    before: list[Event] = []
    while (event := await read_event(stream)) is not None:
        if event["event"] == "synced":
            return before, event
        before.append(event)
    raise AssertionError(f"the stream ended before synced, after {before}")


async def next_event(stream: aiohttp.ClientResponse) -> Event:
    event = await read_event(stream)
    assert event is not None, "the list stream ended; it must stay open"
    return event


def summary(event: Event) -> tuple[str, str, str]:
    return event["event"], event["data"]["id"], event["data"]["status"]


async def test_the_stream_opens_with_the_active_jobs_then_follows_every_change(any_gw: Gateway) -> None:
    gw = any_gw
    waiting = await gw.create("import")
    finished = await gw.run("query")
    async with list_stream(gw) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        opening, synced = await until_synced(stream)
        created = await gw.create("populateview")
        on_create = await next_event(stream)
        on_claim, on_progress, on_finish = await gw.heard_through_a_run("populateview", lambda: next_event(stream))

    assert [summary(e) for e in opening] == [("snapshot", waiting.id, "waiting")]
    assert finished.id not in str(opening)  # finished jobs are listed by GET /v0/jobs, not streamed
    assert synced["data"] == {} and int(synced["id"]) > 0
    assert summary(on_create) == ("status", created.id, "waiting")
    assert summary(on_claim) == ("status", created.id, "working")
    assert (on_progress["event"], on_progress["data"]["progress_percentage"]) == ("progress", 40.0)
    assert (summary(on_finish), on_finish["data"]["progress_percentage"]) == (("status", created.id, "done"), 100.0)
    item = on_finish["data"]
    assert item["job_url"].endswith(f"/v0/jobs/{created.id}") and item["pipe_name"] == "top_product_per_day"
    assert item["datasource"] == {"id": "t_events", "name": "events"} and item["kind"] == "populateview"
    revisions = [e["data"]["revision"] for e in (on_create, on_claim, on_progress, on_finish)]
    assert revisions == sorted(set(revisions))
    ids = [int(e["id"]) for e in (synced, on_create, on_claim, on_progress, on_finish)]
    assert ids == sorted(ids), "resume points never go back"


@pytest.mark.parametrize(
    ("params", "expected_kinds"),
    [
        ({"kind": "copy"}, ["copy"]),
        ({"pipe_name": "copy_pipe"}, ["copy"]),
        ({"pipe_id": "t_sink"}, ["sink"]),
        ({"kind": ""}, ["import", "copy", "sink"]),  # an empty filter is ignored, as in GET /v0/jobs
    ],
)
async def test_filters_are_those_of_the_list(gw: Gateway, params: dict[str, str], expected_kinds: list[str]) -> None:
    for kind in ("import", "copy", "sink"):
        await gw.create(kind)
    async with list_stream(gw, params=params) as stream:
        assert stream.status == 200
        opening, _ = await until_synced(stream)
        for kind in ("sink", "copy", "import"):
            await gw.create(kind)
        live = [await next_event(stream) for _ in expected_kinds]
        # Whatever else was wrongly sent would come before this one, made last and matching the filter.
        marker = await gw.create(expected_kinds[0])
        after = await next_event(stream)

    assert sorted(e["data"]["kind"] for e in opening) == sorted(expected_kinds)
    assert sorted(e["data"]["kind"] for e in live) == sorted(expected_kinds)
    assert after["data"]["id"] == marker.id


async def test_an_unknown_kind_matches_nothing(gw: Gateway) -> None:
    await gw.create("import")
    async with list_stream(gw, params={"kind": "no_such_kind"}) as stream:
        assert stream.status == 200
        opening, _ = await until_synced(stream)

    assert opening == []


async def test_a_status_filter_sends_one_last_event_for_a_job_that_leaves_it(gw: Gateway) -> None:
    async with list_stream(gw, params={"status": "waiting"}) as stream:
        await until_synced(stream)
        job = await gw.create("copy")
        entered = await next_event(stream)
        claim = await gw.claim("copy")
        left = await next_event(stream)
        await gw.heartbeat(claim, pb.ProgressUpdate(progress_percentage=10.0))
        other = await gw.create("import")
        after_leaving = await next_event(stream)

    assert summary(entered) == ("status", job.id, "waiting")
    assert summary(left) == ("status", job.id, "working")
    assert summary(after_leaving) == ("status", other.id, "waiting"), "no progress of a job that left the filter"


async def test_date_filters_bound_the_creation_time(gw: Gateway) -> None:
    early = await gw.create("import")
    gw.clock.advance(timedelta(hours=2))
    late = await gw.create("import")
    middle = (gw.clock.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    async with list_stream(gw, params={"created_after": middle}) as stream:
        after, _ = await until_synced(stream)
    async with list_stream(gw, params={"created_before": middle}) as stream:
        before, _ = await until_synced(stream)
        gw.clock.advance(timedelta(seconds=1))
        await gw.post(f"/v0/jobs/{late.id}/cancel")  # a change of a job outside the bound: not sent
        await gw.post(f"/v0/jobs/{early.id}/cancel")
        change = await next_event(stream)

    assert [e["data"]["id"] for e in after] == [late.id]
    assert [e["data"]["id"] for e in before] == [early.id]
    assert summary(change) == ("status", early.id, "cancelled")


async def test_a_bad_date_is_the_documented_400(gw: Gateway) -> None:
    reply = await gw.get("/v0/jobs/events", params={"created_after": "yesterday"})

    assert reply.status == 400
    assert reply.error == "The date provided is an invalid isoformat string: 'yesterday'"


@pytest.mark.parametrize("value", ["abc", "-1", "9223372036854775808"])
async def test_a_bad_last_event_id_is_a_400_naming_it(gw: Gateway, value: str) -> None:
    reply = await gw.get("/v0/jobs/events", headers={"Last-Event-ID": value})

    assert reply.status == 400 and reply.error.startswith("Last-Event-ID:")


async def test_resuming_tells_what_changed_while_away(any_gw: Gateway) -> None:
    gw = any_gw
    stays_waiting = await gw.create("import")
    ends_while_away = await gw.create("copy")
    async with list_stream(gw) as stream:
        await until_synced(stream)
        gw.clock.advance(timedelta(seconds=1))
        stays_working = await gw.create("populateview")
        last_seen = await next_event(stream)
    resume_from = last_seen["id"]

    gw.clock.advance(timedelta(minutes=10))  # well past the overlap a resume replays
    await gw.finish(await gw.claim("copy"), status=pb.JOB_STATUS_ERROR, error="boom")
    await gw.claim("populateview")
    came_and_went = await gw.run("query")
    also_came_and_went = await gw.run("sink")
    async with list_stream(gw, headers={"Last-Event-ID": resume_from}) as stream:
        assert stream.status == 200
        resumed, synced = await until_synced(stream)
        gw.clock.advance(timedelta(seconds=1))
        await gw.post(f"/v0/jobs/{stays_waiting.id}/cancel")
        live = await next_event(stream)

    by_id = {e["data"]["id"]: e for e in resumed}
    assert set(by_id) == {
        stays_waiting.id,
        stays_working.id,
        ends_while_away.id,
        came_and_went.id,
        also_came_and_went.id,
    }
    assert summary(by_id[stays_waiting.id]) == ("snapshot", stays_waiting.id, "waiting")
    assert summary(by_id[stays_working.id]) == ("snapshot", stays_working.id, "working")
    assert summary(by_id[ends_while_away.id]) == ("status", ends_while_away.id, "error")
    assert summary(by_id[came_and_went.id]) == ("status", came_and_went.id, "done")
    assert int(synced["id"]) >= int(resume_from)
    assert summary(live) == ("status", stays_waiting.id, "cancelled")


async def test_resuming_replays_only_jobs_of_the_filter(gw: Gateway) -> None:
    async with list_stream(gw, params={"kind": "copy"}) as stream:
        _, synced = await until_synced(stream)
    gw.clock.advance(timedelta(minutes=1))
    copy = await gw.run("copy")
    await gw.run("import")
    await gw.cancelled("copy", pipe_name="another_pipe")

    async with list_stream(
        gw, params={"kind": "copy", "pipe_name": "copy_pipe"}, headers={"Last-Event-ID": synced["id"]}
    ) as stream:
        resumed, _ = await until_synced(stream)

    assert [summary(e) for e in resumed] == [("status", copy.id, "done")]


async def test_a_resume_from_before_the_overlap_replays_nothing_older(gw: Gateway) -> None:
    await gw.run("import")  # ended a minute before the stream that is resumed
    gw.clock.advance(timedelta(minutes=1))
    async with list_stream(gw) as stream:
        _, synced = await until_synced(stream)
    recent = await gw.run("copy")

    async with list_stream(gw, headers={"Last-Event-ID": synced["id"]}) as stream:
        resumed, _ = await until_synced(stream)

    assert [e["data"]["id"] for e in resumed] == [recent.id]


CALLERS = {
    "none": (403, INVALID_TOKEN, None),
    "invalid": (403, INVALID_TOKEN, None),
    "other_workspace": (200, None, False),
    "narrow_other": (200, None, False),
    "narrow_same": (200, None, True),
    "no_read_scope": (403, "scope to read jobs", None),
    "right": (200, None, True),
}


async def _token_of(gw: Gateway, caller: str) -> str | None:
    scopes = {
        "narrow_other": "DATASOURCES:READ:elsewhere",
        "narrow_same": "DATASOURCES:READ:events",
        "no_read_scope": "JOBS:EXECUTE",
    }
    if caller in scopes:
        return await gw.app.create_token("default", [scopes[caller]], caller)
    return {"none": None, "invalid": "jobsd_not-a-token-anyone-made", "other_workspace": gw.other, "right": gw.admin}[
        caller
    ]


@pytest.mark.parametrize("carrier", ["bearer", "query"])
@pytest.mark.parametrize("caller", list(CALLERS))
async def test_auth_matrix(gw: Gateway, caller: str, carrier: str) -> None:
    status, message, sees_job = CALLERS[caller]
    job = await gw.create("import")  # waiting: in the opening snapshot of whoever may read it
    token = await _token_of(gw, caller)
    headers = {"Authorization": f"Bearer {token}"} if token is not None and carrier == "bearer" else {}
    params = {"token": token} if token is not None and carrier == "query" else {}

    async with gw.http.get(f"{gw.base}/v0/jobs/events", headers=headers, params=params) as stream:
        assert stream.status == status
        if status == 403:
            body = await stream.json()
            assert message is not None and message in body["error"]
            return
        opening, _ = await until_synced(stream)
        await gw.post(f"/v0/jobs/{job.id}/cancel")
        await gw.create("import", datasource={"id": "t_elsewhere", "name": "elsewhere"})
        first_change = await next_event(stream) if sees_job or caller == "narrow_other" else None

    assert any(e["data"]["id"] == job.id for e in opening) is sees_job
    if sees_job:
        assert first_change is not None and summary(first_change) == ("status", job.id, "cancelled")
    if caller == "narrow_other":  # sees the job on its own data source, never the other one's
        assert first_change is not None and first_change["data"]["datasource"]["name"] == "elsewhere"


async def test_a_narrow_reader_reads_the_jobs_log_of_a_job_it_may_read(gw: Gateway) -> None:
    mine = await gw.run("import")
    theirs = await gw.run("import", datasource={"id": "t_elsewhere", "name": "elsewhere"})
    narrow = await gw.app.create_token("default", ["DATASOURCES:READ:events"], "narrow")

    own = await gw.get("/v0/jobs_log", token=narrow, params={"job_id": mine.id})
    other = await gw.get("/v0/jobs_log", token=narrow, params={"job_id": theirs.id})
    everything = await gw.get("/v0/jobs_log", token=narrow)

    assert own.status == 200
    assert [(row["job_id"], row["status"]) for row in own.body["data"]] == [
        (mine.id, "done"),
        (mine.id, "working"),
        (mine.id, "waiting"),
    ]
    assert other.status == 403 and other.error == NO_ACCESS
    assert everything.status == 403 and "ADMIN" in everything.error
