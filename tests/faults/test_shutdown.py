"""SIGTERM in the middle of each attack: a real `jobsd serve` stops within its grace period plus a small margin,
hands its running job back, and exits 0 — and a job that keeps coming back across restarts ends in `error`.

What used to happen: an import thread only looked at its abort flag between batches and a statement in flight
ran on, so the process kept serving for minutes after SIGTERM (kill -9 needed), and the job it had released came
back after every restart. Now the statement is interrupted once the grace runs out, every blocking read watches
the abort flag, and each release or lapsed lease counts as a return (`JOBSD_MAX_RETURNS`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jobsd_client import pb
from tests.support.hostile_origin import hostile_origin

from .conftest import WAIT, serving

GRACE = 1.0
MARGIN = 5.0
MiB = 1024 * 1024
# Every scenario: a short grace, heartbeats every second (progress is seen soon), the defaults for the rest.
SETTINGS: dict[str, object] = {"grace_seconds": GRACE, "shutdown_margin_seconds": MARGIN, "lease_seconds": 3}


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str
    path: str = ""  # the hostile origin's path, for imports
    params: dict[str, object] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    # Wait for rows to be read before the signal (the import is loading, not just connecting).
    loading: bool = False


SCENARIOS = [
    # A cross join of 10^16 rows: minutes of one core at least.
    Scenario(
        "runaway cross join",
        "query",
        params={"sql": "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = 7"},
    ),
    # One byte every 0.2 s, with a rate window long enough that the limit does not end it first.
    Scenario("trickling origin", "import", "trickle.csv", settings={"import_rate_window_seconds": 600}),
    # 256 MiB of 6-byte rows in a 1.7 MiB gzip file: 45 M rows, the defaults let it load for minutes.
    Scenario("gzip bomb", "import", "bomb.csv.gz", loading=True),
    # Rows as fast as they are read, forever (the default limits stop it at 4 GiB).
    Scenario("endless origin", "import", "endless.csv", loading=True),
    # The review's 20,000-column CSV, with the column limit raised so that it is let in: the slow path itself.
    Scenario("20,000 columns", "import", "wide.csv", settings={"max_columns": 20_000}),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
async def test_sigterm_mid_attack_exits_within_the_grace_and_releases_the_job(
    tmp_path: Path, scenario: Scenario
) -> None:
    async with (
        hostile_origin(bomb_bytes=256 * MiB, bomb_row=b"1,abc\n") as origin,
        serving(tmp_path / "state", **{**SETTINGS, **scenario.settings}) as serve,
    ):
        job = await serve.create("import", "target", url=origin.url(scenario.path)) if scenario.path else None
        if job is None:
            job = await serve.create(scenario.kind, params=scenario.params)
        following = serve.follow(job.id)
        await following.until(pb.JOB_STATUS_WORKING)
        if scenario.path:
            await origin.asked("/" + scenario.path)
        if scenario.loading:
            async with asyncio.timeout(WAIT):
                async for progress in following.events():
                    if progress.processed_data.read_rows > 0:
                        break
        peak = serve.peak_rss_bytes()
        code, took = await serve.terminate()
        seen = await following.rest()
    print(f"{scenario.name}: SIGTERM -> exit {code} in {took:.2f} s (grace {GRACE:g} s); peak RSS {peak / MiB:.0f} MiB")
    assert code == 0, serve.log_text()[-3000:]
    assert took < GRACE + MARGIN, serve.log_text()[-3000:]
    # Handed back to the queue, not left `working` for its lease to lapse.
    assert seen[-1].status == pb.JOB_STATUS_WAITING, seen[-1]
    assert "shutdown did not finish" not in serve.log_text()
    # Memory stayed bounded while it ran (the review saw 1.7 GB for the bomb, 2.9 GB for the wide CSV).
    assert peak < 1024 * MiB


async def test_a_job_that_keeps_coming_back_ends_in_error(tmp_path: Path) -> None:
    """Lapsed leases and releases both count: the process is killed (its lease lapses), restarted (the job is
    requeued, claimed again), stopped with SIGTERM (released); with JOBSD_MAX_RETURNS=1 that second return ends
    it."""
    state = tmp_path / "state"
    runaway = {"sql": "SELECT count(*) FROM range(100000000) a, range(100000000) b WHERE a.range + b.range = 7"}
    settings = {**SETTINGS, "max_returns": 1, "lease_seconds": 1}
    async with serving(state, **settings) as first:
        job = await first.create("query", params=runaway)
        following = first.follow(job.id)
        await following.until(pb.JOB_STATUS_WORKING)
        first.process.kill()  # a crash: no release, the lease will lapse
        await first.process.wait()
    async with serving(state, **settings) as second:
        following = second.follow(job.id)
        # The snapshot still says working (attempt 1); the sweep finds the lapsed lease (return 1: back to
        # waiting) and the executors claim it again (attempt 2).
        statuses = []
        async with asyncio.timeout(WAIT):
            async for seen_job in following.events():
                statuses.append((seen_job.status, seen_job.attempt))
                if (seen_job.status, seen_job.attempt) == (pb.JOB_STATUS_WORKING, 2):
                    break
        assert statuses == [(pb.JOB_STATUS_WORKING, 1), (pb.JOB_STATUS_WAITING, 1), (pb.JOB_STATUS_WORKING, 2)]
        code, took = await second.terminate()
        seen = await following.rest()
    assert code == 0 and took < GRACE + MARGIN
    final = seen[-1]
    assert final.status == pb.JOB_STATUS_ERROR, final
    assert final.error.startswith("Job came back to the queue 2 times without finishing (its worker released it")
    assert final.error.endswith("(JOBSD_MAX_RETURNS=1)")
    async with serving(state, **{**settings, "executors": "off"}) as third:
        assert (await third.get(job.id)).status == pb.JOB_STATUS_ERROR  # and it stays ended
