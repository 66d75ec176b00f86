"""The embedded store's commits and WAL checkpoints on `/metrics`, scraped from a real server over HTTP: what an
operator reads to see group commit at work and a WAL that a long read keeps from shrinking."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import aiohttp
import grpc

from jobsd.app import JobsdApp
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.server import WAIT, make_settings, running_app

CREATES = 40


async def scrape(app: JobsdApp) -> dict[str, float]:
    """The unlabelled samples of the `jobsd_sqlite_` families, by name."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{app.metrics_port}/metrics") as resp:
        assert resp.status == 200
        body = await resp.text()
    samples: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith("jobsd_sqlite_"):
            name, value = line.split(" ")
            samples[name] = float(value)
    return samples


async def after_checkpoints(app: JobsdApp, seen: float, runs: int = 2) -> dict[str, float]:
    """The samples once `runs` more checkpoints than `seen` ran (the thread runs one every half second)."""
    deadline = time.monotonic() + WAIT
    while True:
        samples = await scrape(app)
        if samples["jobsd_sqlite_checkpoints_total"] >= seen + runs:
            return samples
        assert time.monotonic() < deadline, f"no checkpoint in {WAIT} s: {samples}"
        await asyncio.sleep(0.1)


async def create_jobs(app: JobsdApp, token: str, count: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        jobs = pb_grpc.JobsStub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        request = pb.CreateJobRequest(kind="import", url="https://example.com/data.csv")
        request.datasource.update({"name": "events"})
        await asyncio.gather(*(jobs.CreateJob(request, metadata=metadata) for _ in range(count)))


async def test_commits_and_the_writes_they_carried_are_counted(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path, metrics_addr="127.0.0.1:0")) as app:
        token = await app.create_token("default", ["ADMIN"], "admin")
        before = await scrape(app)
        await create_jobs(app, token, CREATES)
        after_rpcs = await scrape(app)
        # Writes started in the same event-loop turn (as many calls arriving together are): one group commit.
        request = pb.CreateJobRequest(kind="import", url="https://example.com/data.csv")
        request.datasource.update({"name": "events"})
        await asyncio.gather(*(app.api.create_job(token, request) for _ in range(CREATES)))
        after_burst = await scrape(app)

    def grew(samples: dict[str, float], since: dict[str, float], name: str) -> float:
        return samples[f"jobsd_sqlite_{name}_total"] - since[f"jobsd_sqlite_{name}_total"]

    assert grew(after_rpcs, before, "committed_writes") == CREATES
    assert 1 <= grew(after_rpcs, before, "commits") <= CREATES
    assert grew(after_burst, after_rpcs, "committed_writes") == CREATES
    commits = grew(after_burst, after_rpcs, "commits")
    assert 1 <= commits < CREATES / 4, f"{commits} commits for {CREATES} writes made together"


async def test_a_long_read_keeps_the_wal_behind_until_it_ends(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path, metrics_addr="127.0.0.1:0")) as app:
        token = await app.create_token("default", ["ADMIN"], "admin")
        await create_jobs(app, token, 5)
        idle = await after_checkpoints(app, (await scrape(app))["jobsd_sqlite_checkpoints_total"])
        assert idle["jobsd_sqlite_wal_frames"] > 0 and idle["jobsd_sqlite_wal_frames_behind"] == 0, idle
        assert idle["jobsd_sqlite_checkpoint_failures_total"] == 0
        # A few jobs stay far below the WAL limit: no write was ever held.
        assert idle["jobsd_sqlite_wal_restarts_total"] == 0 and idle["jobsd_sqlite_write_hold_seconds_total"] == 0

        # Another process's read (a backup, say) holds a snapshot: the pages written after it began cannot be
        # copied back into the database file while it lasts.
        reader = sqlite3.connect(tmp_path / "jobsd.db", isolation_level=None)
        try:
            reader.execute("BEGIN")
            assert reader.execute("SELECT count(*) FROM jobs").fetchone() == (5,)
            await create_jobs(app, token, 5)
            pinned = await after_checkpoints(app, idle["jobsd_sqlite_checkpoints_total"])
            assert pinned["jobsd_sqlite_wal_frames_behind"] > 0, pinned
            # The server itself was not held up: its own reads and writes went on.
            await create_jobs(app, token, 1)
        finally:
            reader.execute("ROLLBACK")
            reader.close()
        freed = await after_checkpoints(app, pinned["jobsd_sqlite_checkpoints_total"])
        assert freed["jobsd_sqlite_wal_frames_behind"] == 0, freed
        assert freed["jobsd_sqlite_checkpoint_failures_total"] == 0
