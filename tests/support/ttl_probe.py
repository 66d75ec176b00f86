"""Jobs left for the wire server's TTL monitor, seeded when the wire server starts and checked late in the session.

The monitor sweeps every 60 s, so a test that seeds and then waits costs up to a minute of wall time. Instead
`seed_ttl_probe()` runs when the wire server starts (if a test asks for the probe): it stores jobs whose window ends
a few seconds later and checks, right then — while the documents are certainly still stored — that every read
(get, list, claim) already hides them at the instant their window ends. The test that asks for the probe runs
later and only has to see that the monitor deleted them, which by then it has usually done.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import AsyncMongoClient

from jobsd.domain.auth import ReadScope
from jobsd.store.base import JobQuery
from jobsd.store.mongo import MongoStore
from tests.contract.factories import claim_request, new_job, new_workspace_id
from tests.contract.wire import encode_job
from tests.support.wire_server import fresh_database_name

__all__ = ["TtlProbe", "seed_ttl_probe"]

PROBE_JOBS = 5
# Long enough for the seeding to finish on a loaded machine before the first job's window ends.
WINDOW = timedelta(seconds=5)
USEC = timedelta(microseconds=1)


@dataclass
class TtlProbe:
    uri: str
    database: str
    job_ids: list[str]
    expires_at: datetime
    seeded_monotonic: float
    # What each read answered just before and at the instant the window ended (while the documents were stored).
    before: dict[str, Any] = field(default_factory=dict)
    at: dict[str, Any] = field(default_factory=dict)
    stored_when_checked: int = 0


async def _seed(uri: str) -> TtlProbe:
    database = fresh_database_name("jobsd_ttl")
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True)
    store = MongoStore(uri, database=database, encoder=encode_job)
    await store.open()
    try:
        now = datetime.now(UTC)
        ws = new_workspace_id()
        expires_at = now + WINDOW
        jobs = [replace(new_job(ws, created_at=now), expires_at=expires_at) for _ in range(PROBE_JOBS)]
        for job in jobs:
            await store.insert_job(job)
        probe = TtlProbe(uri, database, [j.id for j in jobs], expires_at, time.monotonic())
        for label, instant in (("before", expires_at - USEC), ("at", expires_at)):
            answers = probe.before if label == "before" else probe.at
            answers["get"] = sum([await store.get_job(j.id, instant) is not None for j in jobs])
            page = await store.list_jobs(JobQuery(scope=ReadScope(ws, everything=True), now=instant, limit=100))
            answers["list"] = len(page)
            answers["records"] = len(
                await store.list_records(JobQuery(scope=ReadScope(ws, everything=True), now=instant, limit=100))
            )
        # A claim claims: only at the instant (before it, a claim would take a job and end the probe's window).
        probe.at["claim"] = await store.claim_next(claim_request(expires_at, workspace_id=ws)) is not None
        probe.stored_when_checked = await client.get_database(database).jobs.count_documents(
            {"_id": {"$in": probe.job_ids}}
        )
        return probe
    finally:
        await store.close()
        await client.close()


def seed_ttl_probe(uri: str) -> TtlProbe:
    """Seed from a thread of its own: the session's fixtures run outside any test's event loop."""
    result: list[TtlProbe | BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(_seed(uri)))
        except BaseException as exc:  # handed to the caller
            result.append(exc)

    thread = threading.Thread(target=run, name="ttl-probe-seed")
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
