"""Jobs for the contract suite, built and moved through the real domain functions (the state machine, the rules)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta

from jobsd.domain.kinds import BUILTIN_KINDS
from jobsd.domain.model import Job
from jobsd.domain.rules import concurrency_key
from jobsd.domain.states import Action, transition
from jobsd.store.base import ClaimRequest, JobStore
from tests.support.jobs import waiting_job

__all__ = [
    "LEASE",
    "RETENTION",
    "T0",
    "USEC",
    "claim_request",
    "claim_until_none",
    "move",
    "new_job",
    "new_workspace_id",
    "no_limits",
]

# Noon (UTC) of the day the suite runs, not a fixed date: a real server's TTL monitor deletes every job whose
# expires_at (created_at + 48 h) has passed on *its* wall clock, whatever time the test injects. Jobs made at a fixed
# past date vanished mid-test on the wire server (about once a minute, when its monitor swept), which is how the
# 500-claimer test came to find "no job" while it still expected some.
T0 = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
USEC = timedelta(microseconds=1)
RETENTION = timedelta(hours=48)
LEASE = timedelta(seconds=30)


def new_workspace_id() -> str:
    """A workspace of its own per test, so tests never see each other's jobs even on a shared real database."""
    return f"ws-{uuid.uuid4().hex[:12]}"


def new_job(
    workspace_id: str,
    *,
    kind: str = "import",
    created_at: datetime = T0,
    datasource_name: str | None = None,
    pipe_name: str | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """A job as CreateJob makes it: waiting, revision 1, visible for RETENTION."""
    return waiting_job(
        created_at,
        workspace_id=workspace_id,
        kind=kind,
        concurrency_key=concurrency_key(workspace_id, kind, datasource_name),
        expires_at=created_at + RETENTION,
        datasource=None if datasource_name is None else {"id": f"t_{datasource_name}", "name": datasource_name},
        pipe_id=None if pipe_name is None else f"id_{pipe_name}",
        pipe_name=pipe_name,
        idempotency_key=idempotency_key,
        request_id=f"req-{uuid.uuid4().hex[:8]}",
    )


def move(job: Job, action: Action, now: datetime, *, worker: str = "worker-1", error: str | None = None) -> Job:
    """The job after `action` at `now`, as the service computes it (a claim takes a LEASE-long lease)."""
    return transition(
        job,
        action,
        now,
        kind=BUILTIN_KINDS.get(job.kind),
        worker_id=worker,
        lease_token=f"lease-{uuid.uuid4().hex[:8]}",
        lease_expires_at=now + LEASE,
        error=error,
    )


def no_limits(kind: str) -> int:
    return 1_000_000


def claim_request(
    now: datetime,
    *,
    kinds: Collection[str] = (),
    workspace_id: str | None = None,
    limit_for: Callable[[str], int] = no_limits,
    worker: str = "worker-1",
) -> ClaimRequest:
    return ClaimRequest(
        now=now,
        kinds=kinds,
        workspace_id=workspace_id,
        limit_for=limit_for,
        claim=lambda job: move(job, Action.CLAIM, now, worker=worker),
    )


async def claim_until_none(store: JobStore, request: ClaimRequest) -> list[Job]:
    """What one claimer takes: `request` again and again until the store has no job for it."""
    mine: list[Job] = []
    while (job := await store.claim_next(request)) is not None:
        mine.append(job)
    return mine
