"""The watch streams (docs/contract.md#watch): WatchJob and WatchJobs over the process's WatchHub.

A stream subscribes first and reads the store after, so no change falls between its snapshot and the feed; it
replays missed status changes from jobs_log on resume, and closes after the terminal state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from jobsd.domain.auth import Principal, ReadScope
from jobsd.domain.clock import Clock
from jobsd.domain.filters import JobFilter
from jobsd.domain.model import Job, JobStatus
from jobsd.errors import InvalidArgument
from jobsd.metrics import Metrics
from jobsd.service.hub import WatchHub
from jobsd.service.paging import MAX_PAGE
from jobsd.store.base import JobQuery, JobStore, LogQuery

__all__ = ["MAX_WATCH_SNAPSHOT", "RESUME_OVERLAP", "JobWatches", "ReadJob", "WatchEvent"]

# WatchJobs opens with at most this many active jobs before SYNCED (and replays at most this many on resume).
MAX_WATCH_SNAPSHOT = 10_000
# How far before `changed_since` a resumed WatchJobs looks again. Status changes are stamped by the clock of the
# process that wrote them and published in commit order, so two writers (two replicas, or two writes in flight in
# one process) can publish slightly out of time order. Replaying a little more is harmless: a client keeps the
# highest revision of each job.
RESUME_OVERLAP = timedelta(seconds=5)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["snapshot", "status", "progress", "synced"]
    job: Job | None
    # SYNCED only: the time the opening snapshot was read (where a later stream resumes from).
    synced_at: datetime | None = None


# (principal, job id) -> the job if the principal may read it (JobService.get_job: NotFound, PermissionDenied).
ReadJob = Callable[[Principal, str], Awaitable[Job]]


class JobWatches:
    """The watch streams of one JobService: its store, hub, clock and metrics, and its authorised read."""

    def __init__(self, store: JobStore, hub: WatchHub, clock: Clock, metrics: Metrics, read_job: ReadJob) -> None:
        self._store = store
        self._hub = hub
        self._clock = clock
        self._metrics = metrics
        self._read_job = read_job

    async def watch_job(self, principal: Principal, job_id: str, since_revision: int = 0) -> AsyncIterator[WatchEvent]:
        if since_revision < 0:
            raise InvalidArgument("since_revision", "must not be negative")
        job = await self._read_job(principal, job_id)  # authorise before subscribing
        job_id = job.id  # a short id (a unique prefix) was resolved by the read
        sub = self._hub.subscribe(lambda _job: True, job_id=job.id, workspace_id=job.workspace_id)
        self._metrics.watchers.inc()
        try:
            # Re-read after subscribing so no change can fall between the snapshot and the feed.
            job = await self._read_job(principal, job_id)
            if since_revision > job.revision:
                raise InvalidArgument(
                    "since_revision", f"is ahead of the job: {since_revision} > its revision {job.revision}"
                )
            last = since_revision
            if 0 < last < job.revision:
                # Resuming: replay the status changes the subscriber missed (jobs_log has each of them), so
                # status transitions are never dropped; progress in between is coalesced into the snapshot.
                for missed in await self._missed_status_changes(job, last):
                    yield WatchEvent("status", missed)
            if job.revision > last:
                yield WatchEvent("snapshot", job)
                last = job.revision
            if job.status.is_terminal:
                return
            async for change in sub.events():
                if change is None:  # the feed was reset: re-read
                    change = await self._read_job(principal, job_id)
                    kind: Literal["snapshot", "status", "progress"] = "snapshot"
                else:
                    kind = "status" if change.status_revision == change.revision else "progress"
                if change.revision <= last:
                    continue
                last = change.revision
                yield WatchEvent(kind, change)
                if change.status.is_terminal:
                    return
        finally:
            self._metrics.watchers.dec()
            self._hub.unsubscribe(sub)

    async def _changed_since(
        self, scope: ReadScope, filters: JobFilter, since: datetime, snapshot: Collection[str]
    ) -> list[Job]:
        """The jobs (current state) whose status changed at or after `since`, matching `filters` but for the status,
        readable by `scope` and not in the opening `snapshot`; oldest change first. jobs_log has every status change,
        newest first, so the walk stops at the first row older than `since`."""
        now = self._clock.now()
        seen: set[str] = set()
        changed: list[Job] = []
        after: tuple[datetime, str, int] | None = None
        while True:
            entries = await self._store.list_log(
                LogQuery(
                    workspace_id=scope.workspace_id,
                    limit=MAX_PAGE,
                    # Not the status (the job's current one is what matters) nor the pipe name (matched below).
                    filter=JobFilter(
                        kind=filters.kind,
                        pipe_id=filters.pipe_id,
                        created_after=filters.created_after,
                        created_before=filters.created_before,
                    ),
                    after=after,
                )
            )
            for entry in entries:
                if entry.updated_at < since:
                    return changed[::-1]
                if entry.job_id in seen or entry.job_id in snapshot:
                    continue
                seen.add(entry.job_id)
                if len(seen) > MAX_WATCH_SNAPSHOT:
                    raise InvalidArgument(
                        "changed_since",
                        f"is too far back: more than {MAX_WATCH_SNAPSHOT} jobs changed since; "
                        "open the stream without it and list the jobs again",
                    )
                job = await self._store.get_job(entry.job_id, now)
                if job is not None and scope.allows(job) and filters.matches_all_but_status(job):
                    changed.append(job)
            if len(entries) < MAX_PAGE:
                return changed[::-1]
            last = entries[-1]
            after = (last.updated_at, last.job_id, last.revision)

    async def _missed_status_changes(self, job: Job, since_revision: int) -> list[Job]:
        entries = await self._store.list_log(
            LogQuery(workspace_id=job.workspace_id, limit=MAX_PAGE, filter=JobFilter(job_id=job.id))
        )
        missed = sorted((e for e in entries if since_revision < e.revision < job.revision), key=lambda e: e.revision)
        return [
            replace(
                job,
                status=JobStatus(e.status),
                revision=e.revision,
                status_revision=e.revision,
                updated_at=e.updated_at,
                started_at=e.started_at,
                error=e.error,
            )
            for e in missed
        ]

    async def watch_jobs(
        self, principal: Principal, filters: JobFilter, changed_since: datetime | None = None
    ) -> AsyncIterator[WatchEvent]:
        workspace_id = principal.workspace(filters.workspace_id)
        scope = principal.read_scope(workspace_id)
        sent: dict[str, int] = {}

        def accepts(job: Job) -> bool:
            return scope.allows(job) and (filters.matches(job) or job.id in sent)

        sub = self._hub.subscribe(accepts, workspace_id=workspace_id)
        self._metrics.watchers.inc()
        try:
            synced_at = self._clock.now()
            after: tuple[datetime, str] | None = None
            while len(sent) < MAX_WATCH_SNAPSHOT:
                page = await self._store.list_jobs(
                    JobQuery(
                        scope=scope,
                        now=self._clock.now(),
                        limit=MAX_PAGE,
                        filter=filters,
                        after=after,
                        only_active=True,
                    )
                )
                for job in page:
                    sent[job.id] = job.revision
                    yield WatchEvent("snapshot", job)
                if len(page) < MAX_PAGE:
                    break
                after = (page[-1].created_at, page[-1].id)
            if changed_since is not None:
                for job in await self._changed_since(scope, filters, changed_since - RESUME_OVERLAP, sent):
                    if filters.matches(job) and not job.status.is_terminal:
                        sent[job.id] = job.revision  # created after the snapshot was read: follow it from now on
                    yield WatchEvent("status", job)
            yield WatchEvent("synced", None, synced_at=synced_at)
            async for change in sub.events():
                if change is None:
                    yield WatchEvent("synced", None)
                    continue
                still_matches = filters.matches(change)
                if not still_matches and change.id not in sent:
                    continue  # queued while it was tracked, but its leaving event has been sent already
                if change.revision <= sent.get(change.id, 0):
                    continue
                if change.status.is_terminal or not still_matches:
                    sent.pop(change.id, None)  # one last event says it left; nothing more about it
                else:
                    sent[change.id] = change.revision
                yield WatchEvent("status" if change.status_revision == change.revision else "progress", change)
        finally:
            self._metrics.watchers.dec()
            self._hub.unsubscribe(sub)
