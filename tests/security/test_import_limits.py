"""Imports from a hostile origin end in `error` within their limits, naming the limit and its setting.

A real jobsd laid out as `make run` lays it out (`start_stack`) fetches from a real HTTP origin on 127.0.0.1
(`tests.support.hostile_origin`) that trickles, goes silent, never ends, lies about its size, sends a gzip bomb
(as a .gz file and as Content-Encoding), a 20,000-column CSV or NDJSON object, or a line that never ends. The
limits are set small, as an operator could, so each attack meets its limit within seconds. For each: the job
ends in `error` naming the setting and its value, within the limit (measured on the server: `started_at` to the
error), nothing is written (the data source does not exist), and jobsd lets go of the origin's connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobsd_client import pb
from tests.support.hostile_origin import WIDE_COLUMNS, HostileOrigin, hostile_origin

from .conftest import WAIT, Stack, start_stack

KiB = 1024
MiB = 1024 * KiB
# The rate window also bounds how long an origin's response headers may take; a hop that misses it gets the one
# "could not be reached" message (no port scanning), not its attack's limit. Every origin here answers at once, but
# twelve imports and the origin share one event loop on a loaded 2-core machine: at 1 s, 1 import in ~160 saw its
# headers late. 3 s leaves that room and still ends the trickles within seconds.
RATE_WINDOW = 3.0
# The steady origin (a fair rate) must meet this limit, not JOBSD_IMPORT_MAX_BYTES: it sends at most 160 KB/s, so
# at most ~800 KB in 5 s, under the 1 MiB. The endless origin must meet the 1 MiB first: at 3 s, a loaded machine
# once read less than that in time; 5 s gives it more room.
TIMEOUT = 5.0
# Small limits, so every attack meets one within seconds (the defaults are in README's settings table).
LIMITS: dict[str, object] = {
    "import_allow_networks": ("127.0.0.1/32",),
    "import_min_bytes_per_second": 10_000,
    "import_rate_window_seconds": RATE_WINDOW,
    "import_timeout_seconds": TIMEOUT,
    "import_max_bytes": 1 * MiB,
    "import_max_decompressed_bytes": 2 * MiB,
    "import_max_line_bytes": 512 * KiB,
    # Every attack of the test at once.
    "executor_concurrency": 12,
    "kind_limits": {"import": 12, "query": 4},
}


@dataclass(frozen=True)
class Attack:
    path: str
    # What the error must say: the setting, with its value as set above.
    names: str
    # The refusal must come within this many seconds of the job's start (the limit plus a margin for a loaded
    # machine), and, for limits of time, not before the limit.
    within: float
    not_before: float = 0.0


ATTACKS = [
    Attack("trickle.csv", "JOBSD_IMPORT_MIN_BYTES_PER_SECOND=10000", RATE_WINDOW + 8, not_before=RATE_WINDOW),
    Attack("silent.csv", "JOBSD_IMPORT_MIN_BYTES_PER_SECOND=10000", RATE_WINDOW + 8, not_before=RATE_WINDOW),
    Attack("steady.csv", f"JOBSD_IMPORT_TIMEOUT_SECONDS={TIMEOUT:g}", TIMEOUT + 8, not_before=TIMEOUT),
    Attack("endless.csv", f"JOBSD_IMPORT_MAX_BYTES={1 * MiB}", 8),
    Attack("huge.csv", f"JOBSD_IMPORT_MAX_BYTES={1 * MiB}", 8),
    Attack("bomb.csv.gz", f"JOBSD_IMPORT_MAX_DECOMPRESSED_BYTES={2 * MiB}", 8),
    Attack("bomb.csv", f"JOBSD_IMPORT_MAX_DECOMPRESSED_BYTES={2 * MiB}", 8),
    Attack("wide.csv", "JOBSD_MAX_COLUMNS=500", 8),
    Attack("wide.ndjson", "JOBSD_MAX_COLUMNS=500", 8),
    Attack("endless-line.csv", f"JOBSD_IMPORT_MAX_LINE_BYTES={512 * KiB}", 8),
]


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[Stack]:
    async for started in start_stack(tmp_path, **LIMITS):
        yield started


@pytest.fixture
async def origin() -> AsyncIterator[HostileOrigin]:
    async with hostile_origin() as served:
        yield served


async def until_working(stack: Stack, token: str, job_id: str) -> None:
    async with asyncio.timeout(WAIT):
        async for event in stack.jobs.WatchJob(pb.WatchJobRequest(job_id=job_id), metadata=stack.md(token)):
            if event.job.status != pb.JOB_STATUS_WAITING:
                return


def seconds_running(job: pb.Job) -> float:
    """From the job's start to its end, on the server's clock."""
    return (job.updated_at.ToMicroseconds() - job.started_at.ToMicroseconds()) / 1e6


async def test_every_hostile_origin_ends_its_import_in_error_within_its_limit(
    limited: Stack, origin: HostileOrigin
) -> None:
    token = limited.alpha.tokens["admin"]
    names = {attack.path: f"attack_{index}" for index, attack in enumerate(ATTACKS)}
    created = {
        attack.path: await limited.create(token, "import", names[attack.path], url=origin.url(attack.path))
        for attack in ATTACKS
    }
    finals = dict(
        zip(
            created,
            await asyncio.gather(*(limited.finished(token, job.id) for job in created.values())),
            strict=True,
        )
    )

    print("\n".join(f"{path}: {seconds_running(job):.2f} s: {job.error}" for path, job in finals.items()))
    for attack in ATTACKS:
        final = finals[attack.path]
        took = seconds_running(final)
        assert final.status == pb.JOB_STATUS_ERROR, (attack.path, final)
        assert f"({attack.names})" in final.error, (attack.path, final.error)
        assert attack.not_before <= took < attack.within, (attack.path, took, final.error)
        # Nothing was written: the import's data source was never created.
        status, _ = await limited.get(f"/v0/datasources/{names[attack.path]}", token)
        assert status == 404, attack.path
    # And jobsd let go of every connection the origin was still writing to.
    async with asyncio.timeout(WAIT):
        await origin.no_stream_open()
    assert sum(origin.requests.values()) == len(ATTACKS)


async def test_rounds_of_hostile_imports_each_end_in_error_and_leave_nothing_running(
    limited: Stack, origin: HostileOrigin
) -> None:
    """The attacks whose jobs once never finished (1 test run in 10 or 20 on a loaded machine): the import's
    progress task, cancelled as its handler ended, lost the cancellation when a heartbeat answer landed in the same
    loop turn (Python 3.11's wait_for), so the job stayed `working` and the executors' stop waited for it forever.
    Round after round every job ends in error within its limit, and the executors hold no job afterwards."""
    token = limited.alpha.tokens["admin"]
    attacks = {attack.path: attack for attack in ATTACKS}
    paths = ["endless.csv", "trickle.csv", "wide.csv", "endless-line.csv"] * 3
    for round_ in range(3):
        created = [
            await limited.create(token, "import", f"round_{round_}_{i}", url=origin.url(path))
            for i, path in enumerate(paths)
        ]
        finals = await asyncio.gather(*(limited.finished(token, job.id) for job in created))
        for path, final in zip(paths, finals, strict=True):
            assert final.status == pb.JOB_STATUS_ERROR, (path, final)
            assert f"({attacks[path].names})" in final.error, (path, final.error)
            assert seconds_running(final) < attacks[path].within, (path, seconds_running(final), final.error)
    assert limited.app.executors.running_jobs() == []
    async with asyncio.timeout(WAIT):
        await origin.no_stream_open()


async def test_the_messages_say_what_was_too_large(limited: Stack, origin: HostileOrigin) -> None:
    token = limited.alpha.tokens["admin"]
    wide = await limited.run(token, "import", "wide", url=origin.url("wide.csv"))
    assert wide.error == (
        f"The CSV header has {WIDE_COLUMNS} columns, more than the 500 a data source may have (JOBSD_MAX_COLUMNS=500)"
    )
    line = await limited.run(token, "import", "line", url=origin.url("endless-line.csv"))
    assert line.error == (
        "Line 1 is longer than 512 KiB: this does not look like a CSV or NDJSON file "
        f"(JOBSD_IMPORT_MAX_LINE_BYTES={512 * KiB})"
    )
    huge = await limited.run(token, "import", "huge", url=origin.url("huge.csv"))
    url = origin.url("huge.csv")
    assert huge.error == f"Could not fetch {url}: it is larger than 1 MiB (JOBSD_IMPORT_MAX_BYTES={MiB})"


async def test_trickling_origins_holding_every_slot_let_go_and_another_workspace_runs(
    tmp_path: Path, origin: HostileOrigin
) -> None:
    """The starvation of the review: four trickles held all four executor slots for good. Now each ends at its
    rate window, and the other workspace's query runs right after."""
    async for stack in start_stack(
        tmp_path, **{**LIMITS, "executor_concurrency": 4, "kind_limits": {"import": 4, "query": 4}}
    ):
        attacker = stack.beta.tokens["admin"]
        trickles = [
            await stack.create(attacker, "import", f"slow_{i}", url=origin.url("trickle.csv")) for i in range(4)
        ]
        # Every executor slot taken: all four are working.
        await asyncio.gather(*(until_working(stack, attacker, job.id) for job in trickles))
        victim = await stack.run(stack.alpha.tokens["admin"], "query", params={"sql": "SELECT 42 AS answer"})
        assert victim.status == pb.JOB_STATUS_DONE, victim.error
        waited = (victim.updated_at.ToMicroseconds() - victim.created_at.ToMicroseconds()) / 1e6
        print(f"SELECT 42 of another workspace behind four trickles: done {waited:.2f} s after it was created")
        assert waited < RATE_WINDOW + 8  # the rate window, plus a margin for a loaded machine
        for job in trickles:
            final = await stack.finished(attacker, job.id)
            assert final.status == pb.JOB_STATUS_ERROR and "JOBSD_IMPORT_MIN_BYTES_PER_SECOND" in final.error
