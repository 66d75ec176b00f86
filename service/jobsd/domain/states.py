"""The job state machine: the only place a job's status changes.

The table below is the whole life cycle. `transition()` looks the move up, refuses anything not in the table
with the message users see, and applies the bookkeeping that goes with the target status (started_at, leases,
the retention bound). Every result has revision + 1; the store writes it with a compare-and-set on the old
revision, so racing cancel / finish / lease expiry produce exactly one outcome.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from jobsd.domain.kinds import KindSpec
from jobsd.domain.model import RUNNING_STATUSES, Job, JobStatus, Progress, evolve
from jobsd.errors import FailedPrecondition

__all__ = ["TRANSITIONS", "Action", "apply_progress", "transition"]


class Action(enum.StrEnum):
    CLAIM = "claim"  # a worker takes the job
    CANCEL = "cancel"  # a user asks to cancel
    FINISH_DONE = "finish_done"  # the worker succeeded
    FINISH_ERROR = "finish_error"  # the worker failed
    FINISH_CANCELLED = "finish_cancelled"  # the worker stopped after a cancel request
    RELEASE = "release"  # the worker shuts down gracefully and gives the job back
    RELEASE_EXHAUSTED = "release_exhausted"  # ... but the job has come back to the queue too often already
    LEASE_REQUEUE = "lease_requeue"  # the lease lapsed; attempts are left
    LEASE_EXHAUSTED = "lease_exhausted"  # the lease lapsed; no attempts (or returns) are left
    RUN_TIME_EXCEEDED = "run_time_exceeded"  # it ran past its kind's run-time limit


# (from status, action) -> to status. Anything missing is refused.
TRANSITIONS: dict[tuple[JobStatus, Action], JobStatus] = {
    (JobStatus.WAITING, Action.CLAIM): JobStatus.WORKING,
    (JobStatus.WAITING, Action.CANCEL): JobStatus.CANCELLED,
    (
        JobStatus.WORKING,
        Action.CANCEL,
    ): JobStatus.CANCELLING,  # only for kinds cancellable while working (guard below)
    (JobStatus.WORKING, Action.FINISH_DONE): JobStatus.DONE,
    (JobStatus.WORKING, Action.FINISH_ERROR): JobStatus.ERROR,
    (JobStatus.WORKING, Action.RELEASE): JobStatus.WAITING,
    (JobStatus.WORKING, Action.RELEASE_EXHAUSTED): JobStatus.ERROR,
    (JobStatus.WORKING, Action.LEASE_REQUEUE): JobStatus.WAITING,
    (JobStatus.WORKING, Action.LEASE_EXHAUSTED): JobStatus.ERROR,
    (JobStatus.WORKING, Action.RUN_TIME_EXCEEDED): JobStatus.ERROR,
    (JobStatus.CANCELLING, Action.FINISH_DONE): JobStatus.DONE,  # it finished before it noticed the cancel
    (JobStatus.CANCELLING, Action.FINISH_ERROR): JobStatus.ERROR,
    (JobStatus.CANCELLING, Action.FINISH_CANCELLED): JobStatus.CANCELLED,
    (JobStatus.CANCELLING, Action.RELEASE): JobStatus.CANCELLED,  # a cancelling job handed back is simply cancelled
    (JobStatus.CANCELLING, Action.RELEASE_EXHAUSTED): JobStatus.CANCELLED,
    (
        JobStatus.CANCELLING,
        Action.LEASE_REQUEUE,
    ): JobStatus.CANCELLED,  # a cancelling job whose worker died is cancelled
    (JobStatus.CANCELLING, Action.LEASE_EXHAUSTED): JobStatus.CANCELLED,
    (JobStatus.CANCELLING, Action.RUN_TIME_EXCEEDED): JobStatus.CANCELLED,  # it was asked to stop anyway
}

# The figures a worker reports, as a job has them before its first report: what a new run starts from.
_RESTARTED_FIGURES: dict[str, object] = {
    "progress_percentage": 0.0,
    "queries": (),
    "statistics": None,
    "quarantine_rows": 0,
    "invalid_lines": 0,
    "processed_data": None,
    "result": {},
    "errors": (),
}


def _return_note(job: Job, action: Action, kind: KindSpec) -> str:
    """The job's `note` as it goes back to the queue: which run ended, how, and that the next starts over."""
    worker = job.worker_id or "?"
    if action is Action.RELEASE:
        how = f"its worker {worker} released it at a graceful stop (no attempt used)"
    else:
        how = f"its worker {worker} stopped heartbeating (attempt {job.attempt} of {kind.max_attempts})"
    return f"run {job.returns + 1} ended unfinished: {how}; the next run starts over"


# How long a job that ends after its 48 h window stays visible.
LINGER_AFTER_END = timedelta(hours=1)


# The start of the refusal the Tinybird API documents (its CLIs match on it); the rest says why.
NOT_CANCELLABLE = "Job is not in cancellable status"


def _refuse(job: Job, action: Action, kind: KindSpec) -> FailedPrecondition:
    if action is Action.CANCEL:
        if job.status is JobStatus.CANCELLING:
            return FailedPrecondition("Job is already being cancelled")
        return FailedPrecondition(f"{NOT_CANCELLABLE}: it is {job.status.value}, and {kind.cancel_rule()}")
    return FailedPrecondition(f"Job {job.id} cannot {action.value.replace('_', ' ')} while {job.status.value}")


def transition(
    job: Job,
    action: Action,
    now: datetime,
    *,
    kind: KindSpec,
    worker_id: str | None = None,
    lease_token: str | None = None,
    lease_expires_at: datetime | None = None,
    error: str | None = None,
    progress: Progress | None = None,
) -> Job:
    """The job after `action`, or FailedPrecondition if the table does not allow it. `kind` is the registry's
    entry for the job's kind: whether a working job may be cancelled, and its retention."""
    if kind.name != job.kind:
        raise ValueError(f"the rules of kind {kind.name!r} were given for a {job.kind!r} job")
    target = TRANSITIONS.get((job.status, action))
    if target is None or (
        action is Action.CANCEL and job.status is JobStatus.WORKING and not kind.cancellable_while_working
    ):
        raise _refuse(job, action, kind)
    retention = kind.retention
    # One new job for the whole move (progress included), not one per step.
    changes: dict[str, object] = {} if progress is None else _progress_changes(progress)
    changes |= {
        "status": target,
        "updated_at": now,
        "revision": job.revision + 1,
        "status_revision": job.revision + 1,
    }
    if target is JobStatus.WORKING:
        if job.returns:
            # A run after a return starts over (the worker before it may have got anywhere): its figures too, so
            # the bar restarts at 0 beside the job's `note` instead of silently jumping back (47 % -> 27 %).
            changes.update(_RESTARTED_FIGURES)
        changes.update(
            started_at=job.started_at or now,
            attempt=job.attempt + 1,  # attempt counts claims
            worker_id=worker_id,
            lease_token=lease_token,
            lease_expires_at=lease_expires_at,
            expires_at=None,  # a running job stays visible until it ends
        )
    elif target is JobStatus.WAITING:
        changes.update(
            worker_id=None,
            lease_token=None,
            lease_expires_at=None,
            # A graceful release does not use up an attempt; a lapsed lease does. Both are a return.
            attempt=job.attempt - 1 if action is Action.RELEASE else job.attempt,
            returns=job.returns + 1,
            expires_at=max(job.created_at + retention, now + LINGER_AFTER_END),
            note=_return_note(job, action, kind),
        )
    elif target is JobStatus.CANCELLING:
        changes.update(cancel_requested_at=now)
    else:  # terminal
        ends_in_window = now < job.created_at + retention
        changes.update(
            lease_token=None,
            lease_expires_at=None,
            expires_at=job.created_at + retention if ends_in_window else now + LINGER_AFTER_END,
        )
        if target is JobStatus.CANCELLED and job.cancel_requested_at is None:
            changes.update(cancel_requested_at=now)
        if target is JobStatus.ERROR:
            changes.update(error=error or job.error or "Job failed")
        queries = changes.get("queries", job.queries)
        if target is JobStatus.DONE and job.kind in ("populateview", "copy") and not queries:
            changes.update(progress_percentage=100.0)
    return evolve(job, **changes)


def apply_progress(job: Job, progress: Progress, now: datetime) -> Job:
    """A progress-only change: same status, revision + 1. Only a running job takes progress."""
    if job.status not in RUNNING_STATUSES:
        raise FailedPrecondition(f"Job {job.id} is {job.status.value}; progress is only taken while it runs")
    return evolve(job, **_progress_changes(progress), revision=job.revision + 1)


def _progress_changes(p: Progress) -> dict[str, object]:
    """The fields `p` sets on a job: each one it gives; the percentage, when it gives none, from its queries."""
    changes: dict[str, object] = p.given()
    if p.queries and p.progress_percentage is None:
        done = sum(1 for q in p.queries if q.status == "done")
        changes["progress_percentage"] = round(100.0 * done / len(p.queries), 2)
    return changes
