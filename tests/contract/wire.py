"""The wire side of the contract: every job a store returns must have, as its stored `wire`, the job's encoding.

`encode_job` is the encoder the contract stores are built with (the one `JobsdApp` uses). `WireChecked` wraps a
store so that every job any contract test reads through `get_job` / `list_jobs` / `claim_next` / `insert_job` is
also read through `get_record` / `list_records`, and the two must agree: same jobs, same order, and each record's
wire decoding to exactly the job's message.
"""

from __future__ import annotations

from typing import Any

from jobsd.api.codec import job_to_pb
from jobsd.domain.model import Job
from jobsd.store.base import ClaimRequest, JobQuery, JobRecord, JobStore
from jobsd_client import pb

__all__ = ["WireChecked", "assert_record_of", "encode_job"]


def encode_job(job: Job) -> bytes:
    return job_to_pb(job).SerializeToString()


def assert_record_of(record: JobRecord | None, job: Job) -> None:
    assert record is not None, f"no record for job {job.id}"
    assert (record.id, record.workspace_id, record.created_at, record.datasource_name, record.pipe_name) == (
        job.id,
        job.workspace_id,
        job.created_at,
        job.datasource_name,
        job.pipe_name,
    )
    # Compared as messages: a Struct's map entries may serialise in any order.
    assert pb.Job.FromString(record.wire) == job_to_pb(job), f"the wire of job {job.id} is not its encoding"


class WireChecked:
    """A JobStore whose job reads are cross-checked against its record reads (see the module doc)."""

    def __init__(self, store: JobStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_job(self, job_id: str, now: Any) -> Job | None:
        job = await self._store.get_job(job_id, now)
        record = await self._store.get_record(job_id, now)
        if job is None:
            assert record is None
        else:
            assert_record_of(record, job)
        return job

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        jobs = await self._store.list_jobs(query)
        records = await self._store.list_records(query)
        assert [r.id for r in records] == [j.id for j in jobs]
        for record, job in zip(records, jobs, strict=True):
            assert_record_of(record, job)
        return jobs

    async def _check_stored(self, job: Job) -> None:
        # Read at the job's own creation instant, when it is surely visible.
        assert_record_of(await self._store.get_record(job.id, job.created_at), job)

    async def insert_job(self, job: Job) -> Job:
        stored = await self._store.insert_job(job)
        await self._check_stored(stored)
        return stored

    async def claim_next(self, request: ClaimRequest) -> Job | None:
        claimed = await self._store.claim_next(request)
        if claimed is not None:
            assert_record_of(await self._store.get_record(claimed.id, request.now), claimed)
        return claimed

    async def compare_and_set(self, old: Job, new: Job) -> bool:
        written = await self._store.compare_and_set(old, new)
        if written:
            record = await self._store.get_record(new.id, new.updated_at)
            if record is not None:  # a write may make the job invisible at that instant
                assert_record_of(record, new)
        return written
