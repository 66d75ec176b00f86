"""TTL for real, on the wire server (SecantusDB, `mongo-wire`; not mongod): its TTL monitor (a sweep every 60 s)
deletes the documents of jobs whose window ended, while every read hid them at the exact instant it ended.

The jobs were stored when the session started (tests/support/ttl_probe.py); by the time this runs the monitor has
usually deleted them. If not, the change stream shows each deletion as the monitor makes it."""

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
    probe_ids = {"_id": {"$in": ttl_probe.job_ids}}
    deleted_at: list[Any] = []
    try:
        # Nothing but the TTL monitor deletes in the probe's database (its store is closed, nothing purges).
        # Watch from now on first, so a deletion between the count and the watch is not missed.
        pipeline = [{"$match": {"operationType": "delete", "documentKey._id": {"$in": ttl_probe.job_ids}}}]
        async with await jobs.watch(pipeline) as stream:
            left = await jobs.count_documents(probe_ids)

            async def deletions() -> None:
                seen = PROBE_JOBS - left
                async for change in stream:
                    deleted_at.append(change.get("wallTime"))
                    seen += 1
                    if seen >= PROBE_JOBS:
                        return

            if left:
                due = DELETION_DUE - (started - ttl_probe.seeded_monotonic)
                await asyncio.wait_for(deletions(), timeout=max(due, 5.0))
        left = await jobs.count_documents(probe_ids)
        await client.drop_database(ttl_probe.database)
    finally:
        await client.close()
    waited = time.monotonic() - started
    after_expiry = [(when - ttl_probe.expires_at).total_seconds() for when in deleted_at if when is not None]
    when = f"{max(after_expiry):.1f} s after their window ended" if after_expiry else "before this test ran"
    print(
        f"\nttl: {PROBE_JOBS} jobs deleted by the monitor {when}; this test waited {waited:.1f} s, "
        f"{started - ttl_probe.seeded_monotonic:.0f} s after seeding"
    )
    assert left == 0
