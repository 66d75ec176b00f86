"""`jobsctl` as a person follows work: `watch` with rate and ETA, `ls --follow` (a live table over WatchJobs),
short ids (a unique prefix of 8+ characters, as the bar prints it) on every command that takes an id, and
`details` summarising a populate's queries by status.

Every test runs the real `jobsctl` of the virtual environment as a subprocess against a real jobsd on an
ephemeral port. The server's clock is a ManualClock the test moves, so rates and ETAs are exact.
"""

from __future__ import annotations

import asyncio
import os
import pty
import re
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from jobsd.domain.model import evolve
from jobsd_client import AsyncJobsClient, pb

from .conftest import PATIENCE, Jobsd, create_import

JOBSCTL = str(Path(sys.executable).parent / "jobsctl")


async def jobsctl(jobsd: Jobsd, *args: str) -> tuple[int, str, str]:
    """The venv's `jobsctl` with these arguments; (exit status, stdout, stderr)."""
    env = {**os.environ, "JOBSD_TARGET": jobsd.target, "JOBSD_TOKEN": jobsd.admin}
    process = await asyncio.create_subprocess_exec(
        JOBSCTL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    async with asyncio.timeout(PATIENCE * 2):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def started(jobsd: Jobsd, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "JOBSD_TARGET": jobsd.target, "JOBSD_TOKEN": jobsd.admin}
    return await asyncio.create_subprocess_exec(
        JOBSCTL, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )


async def line_with(process: asyncio.subprocess.Process, *parts: str) -> str:
    """The next line of the process's output that holds every one of `parts` (bounded by PATIENCE)."""
    assert process.stdout is not None
    async with asyncio.timeout(PATIENCE):
        while True:
            line = (await process.stdout.readline()).decode()
            assert line, f"the output ended before a line with {parts}"
            if all(part in line for part in parts):
                return line.rstrip("\n")


@pytest.fixture
async def ended() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    """Processes a test started; each still running at the end is terminated (by its own pid) and reaped."""
    processes: list[asyncio.subprocess.Process] = []
    yield processes
    for process in processes:
        if process.returncode is None:
            process.terminate()
        await process.wait()


async def test_watch_shows_the_rate_and_the_eta_of_a_job_as_it_advances(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient, ended: list[asyncio.subprocess.Process]
) -> None:
    job = await client.create_job("copy", datasource={"name": "target"}, params={"sql": "select 1"})
    process = await started(jobsd, "watch", job.id[:8])
    ended.append(process)
    await line_with(process, job.id[:8], "waiting")
    claim = await worker_client.claim_job("w1", ["copy"])
    await line_with(process, "working", "elapsed")
    for step in (1, 2):
        jobsd.clock.advance(timedelta(seconds=0.4))  # within the test server's 0.6 s lease
        figures = pb.ProgressUpdate(
            progress_percentage=20 * step,
            processed_data=pb.ProcessedData(written_rows=1000 * step, written_bytes=1_000_000 * step),
        )
        await worker_client.heartbeat(job.id, claim.lease_token, figures)
        line = await line_with(process, f"{20.0 * step:.1f}%")
    # The rate and the ETA are measured on the watcher's clock, between the states it saw (exact figures: the
    # render tests, with given times).
    assert re.search(r"  elapsed \d+:\d\d(:\d\d)?  [0-9.]+ [kMGT]?B/s  ETA \d+:\d\d", line), line
    assert "rows 2,000" in line and "bytes 2.0 MB" in line
    await worker_client.finish_job(job.id, claim.lease_token, "done")
    done = await line_with(process, "done", "100.0%")
    assert "ETA" not in done
    assert await line_with(process, "Job", "done") == f"Job {job.id} done"
    assert await process.wait() == 0


async def test_ls_follow_shows_a_new_job_appear_and_its_status_change(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient, ended: list[asyncio.subprocess.Process]
) -> None:
    before = await create_import(client, name="before")
    process = await started(jobsd, "ls", "--follow")
    ended.append(process)
    header = await line_with(process, "ID", "STATUS")
    assert header.split() == ["ID", "KIND", "STATUS", "PROGRESS", "ROWS", "BYTES", "CREATED_AT", "DATASOURCE"]
    assert "waiting" in await line_with(process, before.id)  # the opening table: every job that has not ended

    newcomer = await create_import(client, name="newcomer")
    row = await line_with(process, newcomer.id)
    assert row.split()[1:4] == ["import", "waiting", "0.0%"] and row.endswith("newcomer")
    claimed = await worker_client.claim_job("w1")
    await worker_client.heartbeat(
        claimed.job.id,
        claimed.lease_token,
        pb.ProgressUpdate(progress_percentage=25, processed_data=pb.ProcessedData(read_bytes=4096, written_rows=7)),
    )
    moved = await line_with(process, claimed.job.id, "25.0%")
    assert moved.split()[1:6] == ["import", "working", "25.0%", "7", "4.1"]
    assert process.returncode is None  # it follows until stopped
    process.terminate()
    assert await process.wait() != 0


async def test_every_command_that_takes_an_id_takes_its_first_eight_characters(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient
) -> None:
    job = await create_import(client)
    short = job.id[:8]
    code, out, err = await jobsctl(jobsd, "details", short)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["id:", job.id]
    code, out, err = await jobsctl(jobsd, "log", "--job-id", short)
    assert code == 0 and job.id in out and "waiting" in out, err
    code, out, err = await jobsctl(jobsd, "cancel", short.upper())  # case does not matter
    assert (code, out) == (0, f"Job {job.id}: cancelled\n"), err
    code, out, err = await jobsctl(jobsd, "retry", short)
    assert code == 0 and f"created as a retry of {short}" in out, err
    code, out, err = await jobsctl(jobsd, "watch", short)
    assert code == 1 and out.splitlines()[-1].startswith(short) and "cancelled" in err


async def test_an_ambiguous_prefix_is_refused_naming_every_match(jobsd: Jobsd, client: AsyncJobsClient) -> None:
    job = await create_import(client)
    store = jobsd.app.service.store
    stored = await store.get_job(job.id, jobsd.clock.now())
    assert stored is not None
    # Twins share the first 8 characters only: their 10th differs from the real id's, so 10 characters tell them apart.
    digits = [digit for digit in "123" if digit != job.id[9]][:2]
    twins = [f"{job.id[:8]}-{digit * 4}-4000-8000-00000000000{digit}" for digit in digits]
    for twin in twins:
        await store.insert_job(evolve(stored, id=twin, request_id=twin))
    code, out, err = await jobsctl(jobsd, "details", job.id[:8])
    assert (code, out) == (1, "")
    assert err == (
        f'error: job_id: "{job.id[:8]}" is the start of 3 job ids: '
        f"{', '.join(sorted([job.id, *twins]))}; give more of the id\n"
    )
    code, out, err = await jobsctl(jobsd, "details", twins[0][:10])  # a longer prefix tells them apart
    assert code == 0 and twins[0] in out, err
    code, out, err = await jobsctl(jobsd, "details", job.id[:7])
    assert (code, err) == (
        1,
        f'error: Job with id "{job.id[:7]}" not found (a shortened id needs at least 8 characters)\n',
    )


async def test_details_summarises_a_populate_s_queries_by_status_and_lists_them_all_on_request(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient
) -> None:
    job = await client.create_job(
        "populateview", datasource={"name": "daily"}, pipe_name="p", query_sql="SELECT 1", params={"sql": "SELECT 1"}
    )
    claim = await worker_client.claim_job("w1", ["populateview"])
    statuses = ["done"] * 880 + ["working"] * 15 + ["error"] * 5
    queries = [pb.QueryProgress(query_id=f"q{i:03d}", status=status) for i, status in enumerate(statuses)]
    await worker_client.heartbeat(job.id, claim.lease_token, pb.ProgressUpdate(queries=queries))

    code, out, err = await jobsctl(jobsd, "details", job.id[:8])
    assert code == 0, err
    lines = out.splitlines()
    assert any(line.split(None, 1) == ["queries:", "900 (880 done, 15 working, 5 error)"] for line in lines)
    failed = [line.split()[1:] for line in lines if line.startswith("query:")]
    assert failed == [[f"q{i:03d}", "error"] for i in range(895, 900)]
    code, out, err = await jobsctl(jobsd, "details", job.id, "--queries")
    assert code == 0, err
    assert sum(1 for line in out.splitlines() if line.startswith("query:")) == 900


class Screen:
    """What a process wrote to its terminal (the master side of a pty), frame by frame."""

    CLEAR = "\x1b[H\x1b[2J"

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.text = ""

    def _read(self) -> str:
        try:
            return os.read(self.fd, 65536).decode(errors="replace")
        except OSError:  # EIO: the process's side closed
            return ""

    async def frame_with(self, *parts: str) -> str:
        """The first frame (one redraw of the screen) that holds every one of `parts`."""
        async with asyncio.timeout(PATIENCE):
            while True:
                for frame in self.text.split(self.CLEAR)[1:]:
                    if all(part in frame for part in parts):
                        return frame
                chunk = await asyncio.to_thread(self._read)
                assert chunk, f"the terminal closed before a frame with {parts}"
                self.text += chunk


async def test_ls_follow_on_a_terminal_redraws_the_table_in_place(
    jobsd: Jobsd, client: AsyncJobsClient, worker_client: AsyncJobsClient, ended: list[asyncio.subprocess.Process]
) -> None:
    terminal, process_side = pty.openpty()
    env = {**os.environ, "JOBSD_TARGET": jobsd.target, "JOBSD_TOKEN": jobsd.admin}
    try:
        process = await asyncio.create_subprocess_exec(JOBSCTL, "ls", "--follow", stdout=process_side, env=env)
    finally:
        os.close(process_side)
    ended.append(process)
    try:
        screen = Screen(terminal)
        first = await screen.frame_with("ID", "STATUS", "DATASOURCE")
        assert first.startswith("jobs of the last 48 h that have not ended")
        job = await create_import(client, name="live")
        waiting = await screen.frame_with(job.id, "waiting")
        claimed = await worker_client.claim_job("w1")
        working = await screen.frame_with(job.id, "working")
        assert claimed.job.id == job.id and "waiting" not in working.split(job.id)[1].split("\n")[0]
        assert waiting.count(job.id) == working.count(job.id) == 1  # one row per job, redrawn, not appended
        process.terminate()
        await process.wait()
    finally:
        os.close(terminal)
