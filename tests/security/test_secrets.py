"""Finding 4 — secrets and echoes: a world-readable admin-token file; a new internal executor token stored at every
start; `?token=` copied into `next`; links built from the request's Host; import credentials shown to readers; an
over-long request line or header answered with a plain-text 400 quoting it (a Bearer token included) and an ERROR
traceback per request."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobsd.app import JobsdApp
from jobsd_client import pb

from .conftest import LogRecords, Origin, Stack, stack_settings, start_stack

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "pa55word-of-the-origin"
QUERY_TOKEN = "presigned-signature-9d1c"


# ------------------------------------------------------------------------------------------ token files


def _fake_bin(tmp_path: Path) -> Path:
    """A BIN for the Makefile's run recipe: the real Python, and a `jobsd` that reports what it was given."""
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").symlink_to(sys.executable)
    jobsd = shims / "jobsd"
    jobsd.write_text(
        '#!/bin/sh\necho "root=$JOBSD_IMPORT_FILE_ROOT admin=$JOBSD_ADMIN_TOKEN worker=$JOBSD_WORKER_TOKEN args=$*"\n'
    )
    jobsd.chmod(0o755)
    return shims


def test_make_run_keeps_the_admin_token_private_and_imports_under_examples(tmp_path: Path) -> None:
    """The real Makefile recipe, with `jobsd` replaced by a script that prints what it would have been given."""
    shims = f"BIN={_fake_bin(tmp_path)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSD_")}

    def make_run(workdir: Path) -> str:
        command = ["make", "-s", "-f", str(REPO / "Makefile"), "-C", str(workdir), "-o", "install", "run", shims]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shown = make_run(fresh)
    token = fresh / ".jobsd" / "admin-token"
    worker = fresh / ".jobsd" / "worker-token"
    assert (token.stat().st_mode & 0o777) == 0o600 and (worker.stat().st_mode & 0o777) == 0o600
    assert ((fresh / ".jobsd").stat().st_mode & 0o777) == 0o700
    assert re.fullmatch(r"jobsd_[\w-]{32}", worker.read_text().strip()) and worker.read_text() != token.read_text()
    assert shown == (
        f"root={fresh}/examples admin={token.read_text().strip()} worker={worker.read_text().strip()} "
        "args=serve --banner"
    )
    # Made once: the next run passes the same tokens.
    assert make_run(fresh) == shown

    # A token file an older make run left world-readable is made private.
    older = tmp_path / "older"
    (older / ".jobsd").mkdir(parents=True, mode=0o755)
    (older / ".jobsd" / "admin-token").write_text("jobsd_old-token\n")
    (older / ".jobsd" / "admin-token").chmod(0o644)
    worker_token = make_run(older).split(" worker=")[1].split()[0]
    assert (older / ".jobsd" / "worker-token").read_text().strip() == worker_token
    assert make_run(older) == f"root={older}/examples admin=jobsd_old-token worker={worker_token} args=serve --banner"
    assert ((older / ".jobsd" / "admin-token").stat().st_mode & 0o777) == 0o600
    assert ((older / ".jobsd").stat().st_mode & 0o777) == 0o700


async def test_the_store_file_that_keeps_import_urls_is_private(stack: Stack) -> None:
    for name in ("jobsd.db", "jobsd.db-wal", "jobsd.db-shm"):
        path = stack.state / name
        if path.exists():
            assert (path.stat().st_mode & 0o777) == 0o600, name
    assert ((stack.state / "dataplane").stat().st_mode & 0o777) == 0o700


async def test_the_executors_token_lives_in_memory_and_no_start_stores_a_new_one(tmp_path: Path) -> None:
    settings = stack_settings(tmp_path)
    (tmp_path / "imports").mkdir()
    database = tmp_path / ".jobsd" / "jobsd.db"

    def stored_tokens() -> list[tuple[str, str | None]]:
        with sqlite3.connect(database) as conn:
            return sorted(conn.execute("SELECT name, workspace_id FROM tokens").fetchall())

    counts = []
    for _ in range(3):
        app = JobsdApp(settings)
        await app.start()
        try:
            admin = settings.admin_token
            channel_job = await app.api.create_job(admin, pb.CreateJobRequest(kind="query", query_sql="SELECT 42"))
            async with asyncio.timeout(30):
                async for event in app.api.watch_job(admin, pb.WatchJobRequest(job_id=channel_job.id)):
                    last = event.job
            assert last.status == pb.JOB_STATUS_DONE, last.error  # the executors ran it: their token works
        finally:
            await app.stop()
        counts.append(stored_tokens())
    assert counts[0] == counts[1] == counts[2] == [("admin (JOBSD_ADMIN_TOKEN)", counts[0][0][1])]


# ----------------------------------------------------------------------------------------------- links


async def test_a_token_in_the_query_is_never_copied_into_next(stack: Stack, logs: LogRecords) -> None:
    token = stack.alpha.tokens["admin"]
    for _ in range(3):
        await stack.create(token, "query", query_sql="SELECT 1")
    status, page = await stack.get("/v0/jobs", params={"token": token, "limit": "1"})
    assert status == 200 and "next" in page
    assert token not in page["next"] and "token=" not in page["next"].replace("page_token=", "")
    status, log_page = await stack.get("/v0/jobs_log", params={"token": token, "limit": "1"})
    assert status == 200 and token not in log_page["next"]
    # The link works for whoever holds the token, sent as a header.
    status, second = await stack.get(page["next"], token)
    assert status == 200 and len(second["jobs"]) == 1
    assert token not in logs.text()


async def test_links_never_come_from_an_untrusted_host_header(stack: Stack) -> None:
    token = stack.alpha.tokens["admin"]
    await stack.create(token, "query", query_sql="SELECT 1")
    await stack.create(token, "query", query_sql="SELECT 2")
    own = f"http://127.0.0.1:{stack.app.http_port}"
    hostile = {"Host": "attacker.example"}
    status, page = await stack.get("/v0/jobs", token, params={"limit": "1"}, headers=hostile)
    assert status == 200
    assert page["jobs"][0]["job_url"].startswith(f"{own}/v0/jobs/")
    assert page["next"].startswith(f"{own}/v0/jobs?")
    status, regions = await stack.get("/v0/regions", headers=hostile)
    assert regions["regions"][0]["api_host"] == own
    assert "attacker.example" not in stack.everything_said()


@pytest.fixture
async def behind_a_proxy(tmp_path: Path) -> AsyncIterator[Stack]:
    (tmp_path / "proxied").mkdir()
    async for started in start_stack(tmp_path / "proxied", trusted_hosts=("jobs.example.com",)):
        yield started


async def test_a_trusted_host_is_used_and_any_other_is_not(behind_a_proxy: Stack) -> None:
    stack = behind_a_proxy
    token = stack.alpha.tokens["admin"]
    job = await stack.create(token, "query", query_sql="SELECT 1")
    _, page = await stack.get("/v0/jobs", token, headers={"Host": "jobs.example.com"})
    assert page["jobs"][0]["job_url"] == f"http://jobs.example.com/v0/jobs/{job.id}"
    _, page = await stack.get("/v0/jobs", token, headers={"Host": "jobs.example.com.attacker.example"})
    assert page["jobs"][0]["job_url"] == f"http://127.0.0.1:{stack.app.http_port}/v0/jobs/{job.id}"


# ------------------------------------------------------------------------------- credentials in import URLs


async def test_import_credentials_reach_the_origin_and_no_reader(
    allowing_loopback: Stack, origin: Origin, logs: LogRecords
) -> None:
    stack = allowing_loopback
    (origin.root / "events.csv").write_text("id,label\n1,a\n2,b\n")
    host = origin.base.removeprefix("http://")
    url = f"http://importer:{PASSWORD}@{host}/files/events.csv?format=csv&access_token={QUERY_TOKEN}"
    missing = f"http://importer:{PASSWORD}@{host}/files/missing.csv?X-Amz-Signature={QUERY_TOKEN}"
    creator = stack.alpha.tokens["creator"]
    done = await stack.run(creator, "import", "events", url=url)
    failed = await stack.run(creator, "import", "events", url=missing)
    assert done.status == pb.JOB_STATUS_DONE, done.error
    assert failed.status == pb.JOB_STATUS_ERROR
    # The worker used the real URL: the origin got the credentials.
    expected = "Basic " + base64.b64encode(f"importer:{PASSWORD}".encode()).decode()
    assert [r.headers.get("Authorization") for r in origin.requests] == [expected, expected]
    assert origin.requests[0].query["access_token"] == QUERY_TOKEN

    shown = f"http://***@{host}/files/events.csv?format=csv&access_token=***"
    assert (
        failed.error == f"Could not fetch http://***@{host}/files/missing.csv?X-Amz-Signature=***: HTTP 404 Not Found"
    )
    reader = stack.alpha.tokens["reader"]  # DATASOURCES:READ:events: sees these jobs, never their secrets
    stack.said.clear()
    _, detail = await stack.get(f"/v0/jobs/{done.id}", reader)
    assert detail["url"] == shown
    await stack.get("/v0/jobs", reader)
    await stack.get(f"/v0/jobs/{failed.id}", reader)
    async with stack.http.get(
        f"{stack.rest}/v0/jobs/{done.id}/events", headers={"Authorization": f"Bearer {reader}"}
    ) as events:
        stack.said.append(await events.text())
    md = stack.md(reader)
    stack.said.append(str(await stack.jobs.GetJob(pb.GetJobRequest(job_id=done.id), metadata=md)))
    stack.said.append(str(await stack.jobs.GetJob(pb.GetJobRequest(job_id=failed.id), metadata=md)))
    stack.said.append(str(await stack.jobs.ListJobs(pb.ListJobsRequest(), metadata=md)))
    # jobs_log needs ADMIN: even the workspace's admin never sees the credentials.
    admin = stack.alpha.tokens["admin"]
    await stack.get("/v0/jobs_log", admin)
    stack.said.append(str(await stack.jobs.ListJobsLog(pb.ListJobsLogRequest(), metadata=stack.md(admin))))
    stack.said.append(str(await stack.jobs.GetJob(pb.GetJobRequest(job_id=failed.id), metadata=stack.md(admin))))
    await stack.finished(reader, done.id)
    said = stack.everything_said()
    assert shown in said
    for secret in (PASSWORD, QUERY_TOKEN):
        assert secret not in said
        assert secret not in logs.text()


# ------------------------------------------------------------------------------------- malformed requests


async def _raw_exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), timeout=10)
    finally:
        writer.close()


async def test_a_malformed_request_gets_a_json_400_that_quotes_nothing(stack: Stack, logs: LogRecords) -> None:
    token = stack.alpha.tokens["admin"]
    bearer = f"Authorization: Bearer {token}\r\n".encode()
    attempts = [
        b"GET /v0/jobs?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n" + bearer + b"\r\n",
        b"GET /v0/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() + b"b" * 9000 + b"\r\n\r\n",
        b"GET /v0/jobs HTTP/1.1\r\nHost: x\r\n" + bearer + b"X-Big: " + b"c" * 9000 + b"\r\n\r\n",
        b"GET /v0/jobs HTTP/1.1\r\nHost: x\r\n" + bearer + b"Content-Length: banana\r\n\r\n",
        b"BEARER " + token.encode() + b" IS NOT HTTP\r\n\r\n",
    ]
    for attempt in attempts:
        assert stack.app.http_port is not None
        answer = await _raw_exchange(stack.app.http_port, attempt)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert re.match(rb"HTTP/1\.[01] 400 ", head), head
        assert b"Content-Type: application/json" in head
        assert body.startswith(b'{"error": "Bad request: the request line or its headers could not be read')
        assert b'"documentation": "https://' in body
        assert token.encode() not in answer and b"aaaa" not in answer and b"cccc" not in answer
    assert logs.errors() == []
    assert token not in logs.text()
    assert "Traceback" not in logs.text()
    status, _ = await stack.get("/healthz")
    assert status == 200
