"""TTL for real, on the wire server (SecantusDB, `mongo-wire`; not mongod): its TTL monitor (a sweep every 60 s)
deletes the documents of jobs whose window ended, while every read hid them at the exact instant it ended.

The jobs were stored when the session started (tests/support/ttl_probe.py); by the time this runs the monitor has
usually deleted them, and the change stream, replayed from before they were stored, shows each deletion."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from tests.support.ttl_probe import PROBE_JOBS, TtlProbe

pytestmark = pytest.mark.mongo
# The window ends 5 s after seeding, the monitor sweeps every 60 s: a deletion is due within ~65 s of seeding.
DELETION_DUE = 150.0


async def test_the_ttl_monitor_deletes_expired_jobs_that_every_read_hid_at_the_instant(ttl_probe: TtlProbe) -> None:
    # While the documents were still stored, reads showed them up to the last microsecond and hid them at the end.
    assert ttl_probe.stored_when_checked == PROBE_JOBS
    assert ttl_probe.before == {"get": PROBE_JOBS, "list": PROBE_JOBS, "records": PROBE_JOBS}
    assert ttl_probe.at == {"get": 0, "list": 0, "records": 0, "claim": False}

    started = time.monotonic()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(ttl_probe.uri, tz_aware=True)
    jobs = client.get_database(ttl_probe.database).jobs
    deleted: dict[str, Any] = {}

    async def deletions() -> None:
        pipeline = [{"$match": {"operationType": "delete"}}]
        async with await jobs.watch(pipeline, start_at_operation_time=ttl_probe.seeded_at) as stream:
            async for change in stream:
                deleted[change["documentKey"]["_id"]] = change.get("wallTime")
                if set(ttl_probe.job_ids) <= set(deleted):
                    return

    try:
        remaining = DELETION_DUE - (started - ttl_probe.seeded_monotonic)
        await asyncio.wait_for(deletions(), timeout=max(remaining, 1.0))
        left = await jobs.count_documents({"_id": {"$in": ttl_probe.job_ids}})
        await client.drop_database(ttl_probe.database)
    finally:
        await client.close()
    waited = time.monotonic() - started
    after_expiry = [(when - ttl_probe.expires_at).total_seconds() for when in deleted.values() if when is not None]
    print(
        f"\nttl: {len(deleted)} of {PROBE_JOBS} deleted by the monitor "
        f"{min(after_expiry, default=float('nan')):.1f}-{max(after_expiry, default=float('nan')):.1f} s after "
        f"their window ended; this test waited {waited:.1f} s, "
        f"{started - ttl_probe.seeded_monotonic:.0f} s after seeding"
    )
    assert left == 0
