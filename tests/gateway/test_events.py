"""`GET /v0/jobs/{id}/events`: Server-Sent Events of a job's revisions, resumable by Last-Event-ID.

Reads are bounded by a timeout only so that a broken stream fails the test instead of hanging it; every step
waits for the event the previous action caused.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from jobsd.app import JobsdApp
from jobsd.gateway.server import GatewayServer
from jobsd_client import pb

from .support import READ_TIMEOUT, Gateway, make_settings, read_event, struct


def _auth(gw: Gateway) -> dict[str, str]:
    return {"Authorization": f"Bearer {gw.admin}"}


async def test_events_follow_the_job_until_it_is_done(any_gw: Gateway) -> None:
    gw = any_gw
    job = await gw.create("populateview")
    async with gw.http.get(f"{gw.base}/v0/jobs/{job.id}/events", headers=_auth(gw)) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        snapshot = await read_event(stream)
        assert snapshot is not None
        assert (snapshot["event"], snapshot["id"], snapshot["data"]["status"]) == (
            "snapshot",
            str(job.revision),
            "waiting",
        )
        assert snapshot["data"]["id"] == job.id and snapshot["data"]["kind"] == "populateview"

        working, progress, done = await gw.heard_through_a_run("populateview", lambda: read_event(stream))
        end = await read_event(stream)

    assert working is not None and progress is not None and done is not None
    assert (working["event"], working["data"]["status"]) == ("status", "working")
    assert (progress["event"], progress["data"]["status"], progress["data"]["progress_percentage"]) == (
        "progress",
        "working",
        40.0,
    )
    assert (done["event"], done["data"]["status"], done["data"]["progress_percentage"]) == ("status", "done", 100.0)
    revisions = [int(e["id"]) for e in (snapshot, working, progress, done)]
    assert revisions == sorted(set(revisions))
    assert end is None  # the stream closes after the terminal state


@pytest.mark.parametrize("how", ["Last-Event-ID", "since_revision"])
async def test_a_stream_resumes_after_the_last_event_seen(any_gw: Gateway, how: str) -> None:
    gw = any_gw
    job = await gw.create("copy")
    claim = await gw.claim("copy")
    seen = (await gw.app.api.get_job(gw.admin, pb.GetJobRequest(job_id=job.id))).revision
    await gw.heartbeat(claim, pb.ProgressUpdate(progress_percentage=60.0))
    await gw.finish(claim)

    headers = _auth(gw)
    params = {}
    if how == "Last-Event-ID":
        headers["Last-Event-ID"] = str(seen)
    else:
        params["since_revision"] = str(seen)
    events = []
    async with gw.http.get(f"{gw.base}/v0/jobs/{job.id}/events", headers=headers, params=params) as stream:
        assert stream.status == 200
        while (event := await read_event(stream)) is not None:
            events.append(event)

    assert events, "resuming a finished job still tells how it ended"
    assert all(int(e["id"]) > seen for e in events)
    assert events[-1]["data"]["status"] == "done"


async def test_a_finished_job_streams_its_snapshot_and_ends(gw: Gateway) -> None:
    job = await gw.run("import")

    reply = await gw.get(f"/v0/jobs/{job.id}/events")

    assert reply.status == 200
    assert reply.body.startswith(f"id: {job.revision}\nevent: snapshot\ndata: ")
    assert reply.body.count("event: ") == 1


async def test_cancellation_is_streamed_until_the_worker_stops(gw: Gateway) -> None:
    job = await gw.create("populateview")
    claim = await gw.claim("populateview")
    async with gw.http.get(f"{gw.base}/v0/jobs/{job.id}/events", headers=_auth(gw)) as stream:
        snapshot = await read_event(stream)
        await gw.post(f"/v0/jobs/{job.id}/cancel")
        cancelling = await read_event(stream)
        heard = await gw.heartbeat(claim, pb.ProgressUpdate())
        await gw.finish(claim, status=pb.JOB_STATUS_CANCELLED)
        rest = []
        while (event := await read_event(stream)) is not None:
            rest.append(event)

    assert snapshot is not None and snapshot["data"]["status"] == "working"
    assert cancelling is not None and (cancelling["event"], cancelling["data"]["status"]) == ("status", "cancelling")
    assert heard.cancel_requested
    assert (rest[-1]["event"], rest[-1]["data"]["status"]) == ("status", "cancelled")


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "9223372036854775808", "27074771407444662812672"])
async def test_a_bad_last_event_id_is_a_400_naming_it(gw: Gateway, value: str) -> None:
    job = await gw.create("import")

    reply = await gw.get(f"/v0/jobs/{job.id}/events", headers={"Last-Event-ID": value})

    assert reply.status == 400 and reply.error.startswith("Last-Event-ID:")


async def test_stopping_the_gateway_closes_open_streams(app: JobsdApp, tmp_path: Path) -> None:
    admin = await app.create_token("default", ["ADMIN"], "admin")
    job = await app.api.create_job(
        admin,
        pb.CreateJobRequest(kind="import", url="https://example.com/a.csv", datasource=struct({"name": "events"})),
    )
    server = GatewayServer(app.api, make_settings(tmp_path))
    port = await server.start()
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"http://127.0.0.1:{port}/v0/jobs/{job.id}/events", headers={"Authorization": f"Bearer {admin}"}
        ) as stream,
    ):
        snapshot = await read_event(stream)
        stopping = asyncio.ensure_future(server.stop())
        end = await read_event(stream)
        await asyncio.wait_for(stopping, READ_TIMEOUT)

    assert snapshot is not None and snapshot["data"]["status"] == "waiting"
    assert end is None


async def test_open_streams_are_counted_in_the_metrics(gw: Gateway) -> None:
    job = await gw.create("import")
    async with gw.http.get(f"{gw.base}/v0/jobs/{job.id}/events", headers=_auth(gw)) as stream:
        await read_event(stream)
        during = (await gw.get("/metrics", anonymous=True)).body
        await gw.post(f"/v0/jobs/{job.id}/cancel")
        while await read_event(stream) is not None:
            pass
    after = (await gw.get("/metrics", anonymous=True)).body

    assert "jobsd_http_event_streams 1.0" in during
    assert "jobsd_http_event_streams 0.0" in after
