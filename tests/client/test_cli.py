"""jobsctl run as a real subprocess (`python -m jobsd_client._cli`) against a real jobsd."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from datetime import timedelta

from jobsd_client import AsyncJobsClient, JobContext, Worker, pb

from .conftest import PATIENCE, Jobsd, create_import, jobsctl, running


async def test_ls_prints_a_table_and_filters(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    older = await create_import(client, "events")
    jobsd.clock.advance(timedelta(seconds=1))
    newer = await client.create_job("query", params={"sql": "select 1"})
    await client.cancel_job(older.id)

    code, out, err = await jobsctl("ls", target=jobsd.target, token=jobsd.admin)
    assert (code, err) == (0, "")
    header, first, second = out.splitlines()
    assert header.split() == ["ID", "KIND", "STATUS", "CREATED_AT", "DATASOURCE"]
    assert first.split()[:3] == [newer.id, "query", "waiting"]
    assert second.split()[:3] == [older.id, "import", "cancelled"] and second.split()[-1] == "events"
    assert "2026-06-01 12:00:00" in second

    code, out, _ = await jobsctl(
        "ls", "--status", "cancelled", "--kind", "import", target=jobsd.target, token=jobsd.admin
    )
    assert code == 0 and older.id in out and newer.id not in out

    code, out, _ = await jobsctl(
        "ls", "--created-after", "2026-06-01T12:00:01Z", target=jobsd.target, token=jobsd.admin
    )
    assert code == 0 and newer.id in out and older.id not in out

    code, out, _ = await jobsctl("ls", "--kind", "copy", target=jobsd.target, token=jobsd.admin)
    assert (code, out) == (0, "No jobs found.\n")


async def test_json_output_of_ls_and_details(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    job = await create_import(client, "events", params={"format": "csv"})

    code, out, _ = await jobsctl("--json", "ls", target=jobsd.target, token=jobsd.admin)
    assert code == 0
    listed = json.loads(out)["jobs"]
    assert [(j["id"], j["status"], j["revision"]) for j in listed] == [(job.id, "waiting", 1)]

    code, out, _ = await jobsctl("details", job.id, "--json", target=jobsd.target, token=jobsd.admin)
    assert code == 0
    detail = json.loads(out)
    assert detail["id"] == job.id and detail["kind"] == "import" and detail["is_cancellable"] is True
    assert detail["datasource_ref"]["name"] == "events" and detail["params"] == {"format": "csv"}


async def test_details_prints_what_a_person_asks(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    job = await client.create_job(
        "populateview", datasource={"name": "target"}, pipe_name="by_day", params={"sql": "select 1", "source": "raw"}
    )
    code, out, err = await jobsctl("details", job.id, target=jobsd.target, token=jobsd.admin)
    assert (code, err) == (0, "")
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["id"].strip() == job.id
    assert fields["status"].strip() == "waiting (cancellable)"
    assert fields["pipe_name"].strip() == "by_day"
    assert fields["datasource"].strip().startswith("target (t_")
    assert json.loads(fields["params"]) == {"source": "raw", "sql": "select 1"}


async def test_cancel_and_retry(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    job = await create_import(client)
    code, out, _ = await jobsctl("cancel", job.id, target=jobsd.target, token=jobsd.admin)
    assert (code, out) == (0, f"Job {job.id}: cancelled\n")
    assert (await client.get_job(job.id)).status == pb.JOB_STATUS_CANCELLED

    code, _, err = await jobsctl("cancel", job.id, target=jobsd.target, token=jobsd.admin)
    assert (code, err) == (
        1,
        "error: Job is not in cancellable status: it is cancelled, and import jobs can be cancelled only while "
        "waiting\n",
    )

    code, out, _ = await jobsctl("retry", job.id, "--json", target=jobsd.target, token=jobsd.admin)
    retried = json.loads(out)
    assert code == 0 and retried["id"] != job.id and retried["status"] == "waiting"
    assert (await client.get_job(retried["id"])).url == job.url


async def _watch_process(jobsd: Jobsd, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "JOBSD_TARGET": jobsd.target, "JOBSD_TOKEN": jobsd.admin}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobsd_client._cli",
        "watch",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def test_watch_prints_each_change_until_the_job_is_done(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient
) -> None:
    job = await client.create_job("copy", datasource={"name": "target"}, params={"sql": "select 1"})
    process = await _watch_process(jobsd, job.id)
    assert process.stdout is not None
    async with asyncio.timeout(PATIENCE):
        first = (await process.stdout.readline()).decode()  # the snapshot: the watch is open before we move on
    assert "waiting" in first and "0.0%" in first

    claim = await worker_client.claim_job("w1", ["copy"])
    figures = pb.ProgressUpdate(
        progress_percentage=50, processed_data=pb.ProcessedData(written_rows=1234, written_bytes=56_000)
    )
    await worker_client.heartbeat(job.id, claim.lease_token, figures)
    final = pb.ProgressUpdate(progress_percentage=100)
    await worker_client.finish_job(job.id, claim.lease_token, "done", progress=final)
    async with asyncio.timeout(PATIENCE):
        rest, err = await process.communicate()
    lines = rest.decode().splitlines()
    assert process.returncode == 0, err
    assert "\r" not in rest.decode()  # not a terminal: plain lines, no redrawing
    assert any("working" in line and "50.0%" in line and "rows 1,234" in line and "56.0 kB" in line for line in lines)
    assert "done" in lines[-2] and "100.0%" in lines[-2]
    assert lines[-1] == f"Job {job.id} done"


async def test_watch_of_a_failed_job_exits_1_with_its_error(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient
) -> None:
    job = await create_import(client)
    claim = await worker_client.claim_job("w1")
    await worker_client.finish_job(job.id, claim.lease_token, "error", error="HTTP 404 fetching the URL")
    code, out, err = await jobsctl("watch", job.id, target=jobsd.target, token=jobsd.admin)
    assert code == 1 and "error" in out.splitlines()[-1]
    assert err == f"error: job {job.id} ended error: HTTP 404 fetching the URL\n"


async def test_watch_json_prints_one_event_per_line(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    job = await create_import(client)
    await client.cancel_job(job.id)
    code, out, _ = await jobsctl("watch", job.id, "--json", target=jobsd.target, token=jobsd.admin)
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # cancelled is not success
    assert [(e["type"], e["job"]["status"]) for e in events] == [("TYPE_SNAPSHOT", "cancelled")]


async def test_create_commands_build_the_jobs_the_executors_expect(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    def run(*args: str) -> asyncio.Future[tuple[int, str, str]]:
        return asyncio.ensure_future(jobsctl(*args, "--json", target=jobsd.target, token=jobsd.admin))

    results = await asyncio.gather(
        run("import", "https://example.com/e.ndjson", "--datasource", "events", "--mode", "replace",
            "--format", "ndjson"),
        run("populate", "--pipe", "by_day", "--datasource", "daily", "--sql", "select d from raw", "--source", "raw",
            "--partition-by", "d"),
        run("copy", "--sql", "select 1 as a", "--datasource", "snapshot", "--mode", "replace"),
        run("query", "--sql", "select 42"),
    )  # fmt: skip
    assert [code for code, _, _ in results] == [0, 0, 0, 0], [err for _, _, err in results]
    imported, populate, copy, query = [await client.get_job(json.loads(out)["id"]) for _, out, _ in results]

    assert (imported.kind, imported.url, imported.mode) == ("import", "https://example.com/e.ndjson", "replace")
    assert imported.datasource_ref.name == "events" and dict(imported.params) == {"format": "ndjson"}
    assert (populate.kind, populate.pipe_name, populate.datasource_ref.name) == ("populateview", "by_day", "daily")
    assert dict(populate.params) == {"sql": "select d from raw", "source": "raw", "partition_by": "d"}
    assert (copy.kind, copy.query_sql, copy.mode, copy.datasource_ref.name) == (
        "copy",
        "select 1 as a",
        "replace",
        "snapshot",
    )
    assert (query.kind, dict(query.params)) == ("query", {"sql": "select 42"})


async def test_create_prints_the_id_and_how_to_follow_it(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    code, out, _ = await jobsctl("query", "--sql", "select 1", target=jobsd.target, token=jobsd.admin)
    first, second = out.splitlines()
    job_id = first.split()[1]
    assert code == 0 and first == f"Job {job_id} (query) created: waiting"
    assert second == f"Follow it with: jobsctl watch {job_id}"
    assert (await client.get_job(job_id)).kind == "query"


async def test_errors_are_one_clean_line_on_stderr(jobsd: Jobsd) -> None:
    target, admin = jobsd.target, jobsd.admin
    # Independent invocations, run side by side to keep the test quick.
    bad_token, missing, bad_url, unreachable, no_token, token_create, bad_date = await asyncio.gather(
        jobsctl("ls", target=target, token="jobsd_wrong-token"),
        jobsctl("details", "no-such-job", target=target, token=admin),
        jobsctl("import", "ftp://example.com/x.csv", "--datasource", "events", target=target, token=admin),
        jobsctl("ls", target="127.0.0.1:1", token=admin),
        jobsctl("ls", target=target, token=""),
        jobsctl("token", "create", target=target, token=admin),
        jobsctl("ls", "--created-after", "yesterday", target=target, token=admin),
    )
    code, out, err = bad_token
    assert (code, out) == (1, "")
    assert err.startswith("error: ") and "token" in err and "Traceback" not in err and err.count("\n") == 1
    assert missing[0::2] == (1, 'error: Job with id "no-such-job" not found\n')
    assert bad_url[0] == 1 and bad_url[2].startswith("error: url: ")
    assert unreachable[0] == 1 and unreachable[2].startswith("error: cannot reach jobsd at 127.0.0.1:1")
    assert no_token[0::2] == (1, "error: no token: pass --token or set JOBSD_TOKEN\n")
    assert token_create[0] == 1 and "jobsd token create" in token_create[2]
    assert bad_date[0] == 2
    assert bad_date[2].splitlines()[-1] == "error: argument --created-after: invalid ISO 8601 date 'yesterday'"


async def test_flags_override_the_environment(jobsd: Jobsd) -> None:
    code, out, _ = await jobsctl(
        "workspace", "--target", jobsd.target, "--token", jobsd.admin, target="127.0.0.1:1", token="jobsd_wrong"
    )
    assert code == 0 and "default" in out and "ADMIN" in out


def _read_until_closed(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other side closed (the process ended)
            return data
        if not chunk:
            return data
        data += chunk


async def test_watch_on_a_terminal_redraws_one_line_in_place(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient
) -> None:
    job = await create_import(client)
    claim = await worker_client.claim_job("w1")
    final = pb.ProgressUpdate(progress_percentage=100, statistics=pb.Statistics(row_count=3, bytes=2048))
    await worker_client.finish_job(job.id, claim.lease_token, "done", progress=final)

    terminal, process_side = pty.openpty()
    env = {**os.environ, "JOBSD_TARGET": jobsd.target, "JOBSD_TOKEN": jobsd.admin}
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jobsd_client._cli", "watch", job.id, stdout=process_side, env=env
        )
    finally:
        os.close(process_side)
    try:
        async with asyncio.timeout(PATIENCE):
            shown = (await asyncio.to_thread(_read_until_closed, terminal)).decode()
            assert await process.wait() == 0
    finally:
        os.close(terminal)
    bar, summary = shown.split("\r\n")[:2]
    assert bar.startswith("\r") and bar.endswith("\x1b[K")  # drawn over itself, then cleared to the end
    assert "100.0%" in bar and "done" in bar and "rows 3" in bar and "2.0 kB" in bar
    assert summary == f"Job {job.id} done"


async def test_create_with_watch_follows_the_job_to_its_end(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    async def handle(ctx: JobContext) -> None:
        ctx.report(statistics={"row_count": 1, "bytes": 8})

    worker = Worker(jobsd.target, jobsd.worker, {"query": handle}, wait_seconds=1)
    async with running(worker):
        code, out, err = await jobsctl("query", "--sql", "select 1", "--watch", target=jobsd.target, token=jobsd.admin)
    lines = out.splitlines()
    job_id = lines[0].split()[1]
    assert (code, err) == (0, "")
    assert lines[0] == f"Job {job_id} (query) created: waiting"
    assert "done" in lines[-2] and "rows 1" in lines[-2] and lines[-1] == f"Job {job_id} done"
