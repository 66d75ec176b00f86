"""The store contract. Every backend (SQLite, MongoDB) implements `JobStore` and passes tests/contract.

Rules every backend keeps:
- A job write is a compare-and-set on the stored revision: `compare_and_set(old, new)` writes `new` only if the
  stored job still has `old.revision`, and appends a jobs_log row in the same atomic step when the status changed.
- Reads honour the visibility bound: a job whose `expires_at` is not after `now` is never returned.
- `claim_next` is atomic: among waiting, visible jobs of the requested kinds, skipping jobs whose concurrency key
  already has `limit_for(kind)` jobs running, it takes the workspaces in turns and each FIFO by created_at
  (`jobsd.domain.fairshare`: least recently served workspace first, one at its `share` last); no job is ever
  claimed twice, and it returns None only when no workspace has a claimable job.
- Every committed job write is published on `changes()` (in-process for SQLite, change streams for MongoDB).
- The batch writes (`insert_jobs`, `claim_batch`, `compare_and_set_many`) mean exactly what a loop of the single
  writes means, item by item (each item is its own compare-and-set); a backend may commit a batch together, and
  acknowledges (returns, publishes) only what it has committed. `BatchWrites` gives the loop to backends without
  a cheaper way.
- Every job write also stores the job's `wire` form, made by the encoder the store was built with (the API layer
  passes one that serialises the `jobsd.v1.Job` message), in the same atomic write: the read paths
  (`get_record`, `list_records`) answer from those bytes without building a `Job` per row. The store never
  looks inside them; `is_cancellable` and the other derived fields depend on the stored job and its kind's rules,
  so bytes made at write time stay exact until the next write (or a restart that changes the kind's rules).
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import NamedTuple, Protocol

from jobsd.domain.auth import ReadScope
from jobsd.domain.clock import from_micros
from jobsd.domain.fairshare import WorkspaceShare, after_claim
from jobsd.domain.filters import JobFilter
from jobsd.domain.model import Job, LogEntry, TokenRecord, Workspace

__all__ = [
    "BatchWrites",
    "Capability",
    "ChangeEvent",
    "ClaimRequest",
    "FeedReset",
    "JobChanged",
    "JobEncoder",
    "JobQuery",
    "JobRecord",
    "JobStore",
    "LogQuery",
    "missing_encoder",
]

# Job -> its wire form (the API layer's serialised message); the store keeps the bytes, never interprets them.
JobEncoder = Callable[[Job], bytes]


def missing_encoder(job: Job) -> bytes:
    """The encoder of a store built without one: its writes work, its record reads cannot."""
    raise RuntimeError(f"this store was built without a job encoder, so it cannot answer job {job.id} as bytes")


class JobRecord(NamedTuple):
    """A job as the read paths need it: the fields authorisation looks at, and the encoded job (`wire`).

    A named tuple, not a dataclass: a page builds a hundred of them, and a tuple is the cheapest record to make."""

    id: str
    workspace_id: str
    created_at_us: int
    datasource_name: str | None
    pipe_name: str | None
    wire: bytes

    @property
    def created_at(self) -> datetime:
        return from_micros(self.created_at_us)


@dataclass(frozen=True, slots=True)
class JobQuery:
    """A page of jobs, newest first (created_at desc, id desc), within `scope` (which fixes the workspace)."""

    scope: ReadScope
    now: datetime
    limit: int
    # Every field but workspace_id (the scope has it) and job_id (a jobs_log filter) narrows the page.
    filter: JobFilter = field(default_factory=JobFilter)
    # Keyset pagination: only jobs strictly after this (created_at, id) in the newest-first order.
    after: tuple[datetime, str] | None = None
    # Only jobs not in a terminal status (WatchJobs' opening snapshot).
    only_active: bool = False


@dataclass(frozen=True, slots=True)
class LogQuery:
    """A page of jobs_log rows, newest first (updated_at desc, job_id desc, revision desc)."""

    workspace_id: str
    limit: int
    # Every field but workspace_id (above) narrows the page; kind matches the row's job_type.
    filter: JobFilter = field(default_factory=JobFilter)
    after: tuple[datetime, str, int] | None = None


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    now: datetime
    # Empty: every kind.
    kinds: Collection[str]
    workspace_id: str | None
    limit_for: Callable[[str], int]
    # Turns the chosen waiting job into its claimed form (the state machine's CLAIM transition).
    claim: Callable[[Job], Job]
    # The claimer's max-share rule (its slots, what each workspace holds of them); None: turns only.
    share: WorkspaceShare | None = None


@dataclass(frozen=True, slots=True)
class JobChanged:
    job: Job


@dataclass(frozen=True, slots=True)
class FeedReset:
    """The feed lost events (e.g. a MongoDB resume token fell off the oplog): subscribers must re-read."""


ChangeEvent = JobChanged | FeedReset


class Capability(enum.StrEnum):
    """What a backend may or may not do; a store answers `supports(capability)` about itself (once opened)."""

    # changes() carries every job write this process commits.
    CHANGE_FEED = "change_feed"
    # changes() also carries the writes of other processes on the same store (MongoDB change streams).
    CROSS_PROCESS_FEED = "cross_process_feed"


class JobStore(Protocol):
    def supports(self, capability: Capability) -> bool:
        """Whether this store, as opened, provides `capability`."""
        ...

    async def open(self) -> None:
        """Create tables/collections and indexes (idempotent)."""

    async def close(self) -> None:
        """Release connections; safe to call twice."""

    async def ping(self) -> None:
        """Raise `Unavailable` when the store cannot serve."""

    # -- jobs
    async def insert_job(self, job: Job) -> Job:
        """Insert a new job (and its first jobs_log row). If `job.idempotency_key` is set and a visible job of the
        same workspace has that key, return that job instead and insert nothing."""

    async def get_job(self, job_id: str, now: datetime) -> Job | None:
        """The job if it exists and is visible at `now`."""

    async def list_jobs(self, query: JobQuery) -> list[Job]: ...

    async def get_record(self, job_id: str, now: datetime) -> JobRecord | None:
        """`get_job` as a light record carrying the job's stored wire bytes."""

    async def records_by_id_prefix(
        self, prefix: str, workspace_id: str | None, now: datetime, limit: int
    ) -> list[JobRecord]:
        """Up to `limit` visible jobs whose id starts with `prefix`, by id, in `workspace_id` (None: every
        workspace). How a short id (the 8 characters a progress bar prints) finds its job."""
        ...

    async def list_records(self, query: JobQuery) -> list[JobRecord]:
        """`list_jobs` as light records carrying each job's stored wire bytes (same jobs, same order)."""

    async def compare_and_set(self, old: Job, new: Job) -> bool:
        """Write `new` iff the stored revision is still `old.revision`; False if it moved on or vanished."""

    async def claim_next(self, request: ClaimRequest) -> Job | None:
        """Atomically claim the next eligible waiting job (see module rules: turns across workspaces, FIFO within
        one); None if there is none."""

    async def insert_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        """`insert_job` for each job, in order (idempotency keys included); the stored jobs, in order."""

    async def claim_batch(self, request: ClaimRequest, limit: int) -> list[Job]:
        """Up to `limit` claims, as `claim_next` would make them one after another (turns, FIFO, limits counted;
        each claim counts towards its workspace's share for the next ones)."""

    async def compare_and_set_many(self, pairs: Sequence[tuple[Job, Job]]) -> list[bool]:
        """`compare_and_set(old, new)` for each pair (distinct jobs), each on its own; the outcomes, in order."""

    async def lapsed_leases(self, now: datetime, limit: int) -> list[Job]:
        """Running jobs whose lease expired before `now`, oldest lease first."""

    async def purge(self, now: datetime, log_before: datetime) -> int:
        """Delete jobs expired at `now` and log rows updated before `log_before`; the number deleted."""

    # -- jobs_log
    async def list_log(self, query: LogQuery) -> list[LogEntry]: ...

    # -- change feed
    def changes(self) -> AsyncIterator[ChangeEvent]:
        """Every committed job write from now on, in commit order per job."""
        ...

    # -- workspaces and tokens
    async def ensure_workspace(self, name: str, now: datetime) -> Workspace:
        """The workspace with this name, created if missing."""

    async def get_workspace(self, workspace_id: str) -> Workspace | None: ...

    async def find_workspace(self, name: str) -> Workspace | None:
        """The workspace with this name, or None (never creates one)."""

    async def put_token(self, record: TokenRecord) -> None:
        """Insert or replace the token with this hash."""

    async def get_token(self, token_hash: str) -> TokenRecord | None: ...


class _SingleWrites(Protocol):
    async def insert_job(self, job: Job) -> Job: ...

    async def claim_next(self, request: ClaimRequest) -> Job | None: ...

    async def compare_and_set(self, old: Job, new: Job) -> bool: ...


class BatchWrites:
    """The batch writes of `JobStore` as loops of the single writes: for backends with no cheaper batch."""

    async def insert_jobs(self: _SingleWrites, jobs: Sequence[Job]) -> list[Job]:
        return [await self.insert_job(job) for job in jobs]

    async def claim_batch(self: _SingleWrites, request: ClaimRequest, limit: int) -> list[Job]:
        claimed: list[Job] = []
        while len(claimed) < limit:
            job = await self.claim_next(request)
            if job is None:
                break
            claimed.append(job)
            # The job just claimed counts towards its workspace's share for the next claim.
            request = replace(request, share=after_claim(request.share, job.workspace_id))
        return claimed

    async def compare_and_set_many(self: _SingleWrites, pairs: Sequence[tuple[Job, Job]]) -> list[bool]:
        return [await self.compare_and_set(old, new) for old, new in pairs]
