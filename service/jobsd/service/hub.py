"""Fan-out of job changes to watch subscribers.

One task consumes the store's change feed (one per process, not per subscriber) and pushes each change into
the bounded buffer of every interested subscriber, synchronously and without awaiting, so a slow subscriber can
never slow the writers or the other subscribers. When a subscriber lags, consecutive progress-only revisions of
one job are coalesced into the latest; status changes are never dropped. A subscriber whose buffer still
overflows (it holds only status changes, which cannot be coalesced) is closed with a clear error.

Streams are capped twice: per process (`JOBSD_MAX_WATCH_STREAMS`) and per workspace
(`JOBSD_MAX_WATCH_STREAMS_PER_WORKSPACE`), so one workspace holding its whole share still leaves the others
theirs. A place is taken by `subscribe` and given back by `unsubscribe` (once, however often it is called).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from jobsd.domain.model import Job
from jobsd.errors import JobsdError, ResourceExhausted, Unavailable
from jobsd.store.base import FeedReset, JobChanged, JobStore

__all__ = ["DEFAULT_MAX_PER_WORKSPACE", "WatchHub", "Watcher"]

log = logging.getLogger(__name__)

# Watch streams one workspace may have open at once unless the settings say otherwise.
DEFAULT_MAX_PER_WORKSPACE = 1_000


@dataclass(slots=True)
class _ReRead:
    """Marker queued when the feed lost events: the subscriber must re-read the current state."""


class Watcher:
    """One watch stream's bounded, coalescing buffer of job changes (not the store feed's `FeedSubscription`)."""

    def __init__(
        self,
        hub: WatchHub,
        accepts: Callable[[Job], bool],
        job_id: str | None,
        capacity: int,
        workspace_id: str | None = None,
    ) -> None:
        self._hub = hub
        self._accepts = accepts
        self.job_id = job_id
        # The workspace whose place this stream holds (None: counted only in the process's cap).
        self.workspace_id = workspace_id
        self.registered = True
        self._capacity = capacity
        self._buffer: deque[Job | _ReRead] = deque()
        self._wakeup = asyncio.Event()
        self._error: JobsdError | None = None
        self._closed = False
        self.coalesced = 0

    def offer(self, job: Job) -> None:
        if self._closed or not self._accepts(job):
            return
        progress_only = job.status_revision != job.revision
        if progress_only and self._buffer:
            # Coalesce: replace the newest not-yet-delivered progress-only event of the same job.
            for i in range(len(self._buffer) - 1, -1, -1):
                queued = self._buffer[i]
                if isinstance(queued, Job) and queued.id == job.id:
                    if queued.status_revision != queued.revision and queued.revision < job.revision:
                        self._buffer[i] = job
                        self.coalesced += 1
                        return
                    break
        if len(self._buffer) >= self._capacity:
            self.close(ResourceExhausted("The watcher fell too far behind and was closed; resume with since_revision"))
        else:
            self._buffer.append(job)
        self._wakeup.set()

    def reset(self) -> None:
        if not self._closed:
            self._buffer.append(_ReRead())
            self._wakeup.set()

    def close(self, error: JobsdError | None = None) -> None:
        """Stop delivering; with `error`, the reader gets it after the events already buffered."""
        if not self._closed:
            self._error = error
        self._closed = True
        self._wakeup.set()

    async def events(self) -> AsyncIterator[Job | None]:
        """Changes in order; None means "re-read the current state" (the feed was reset)."""
        try:
            while True:
                while self._buffer:
                    item = self._buffer.popleft()
                    yield None if isinstance(item, _ReRead) else item
                if self._error is not None:
                    raise self._error
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
        finally:
            self._hub.unsubscribe(self)


class WatchHub:
    """Owns the change-feed task; `subscribe()` hands out Watchers. start()/stop() are idempotent."""

    def __init__(
        self,
        store: JobStore,
        *,
        capacity: int = 256,
        max_subscribers: int = 20_000,
        max_per_workspace: int = DEFAULT_MAX_PER_WORKSPACE,
    ) -> None:
        self._store = store
        self._capacity = capacity
        self._max = max_subscribers
        self._max_per_workspace = max_per_workspace
        # Open streams per workspace (only workspaces with at least one: bounded by the open streams).
        self._per_workspace: dict[str, int] = {}
        self._by_job: dict[str, set[Watcher]] = {}
        self._wide: set[Watcher] = set()
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[Job], None]] = []

    @property
    def subscriber_count(self) -> int:
        return len(self._wide) + sum(len(s) for s in self._by_job.values())

    def workspace_count(self, workspace_id: str) -> int:
        """Watch streams open on `workspace_id`'s jobs."""
        return self._per_workspace.get(workspace_id, 0)

    def add_listener(self, listener: Callable[[Job], None]) -> None:
        """Called for every change (the claim long-poll uses it to wake waiting workers)."""
        self._listeners.append(listener)

    async def start(self) -> None:
        if self._task is None:
            feed = self._store.changes()
            self._task = asyncio.create_task(self._pump(feed), name="jobsd-watch-hub")
            # Let the pump register with the feed before any write can happen.
            await asyncio.sleep(0)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        shutting_down = Unavailable("The server is shutting down; reconnect and resume with since_revision")
        for sub in [*self._wide, *(s for subs in self._by_job.values() for s in subs)]:
            sub.close(shutting_down)

    def subscribe(
        self, accepts: Callable[[Job], bool], job_id: str | None = None, *, workspace_id: str | None = None
    ) -> Watcher:
        """A new stream's buffer, or ResourceExhausted (nothing taken) when the process's or the workspace's cap
        is reached."""
        if self.subscriber_count >= self._max:
            raise ResourceExhausted(
                f"Too many watch streams on this server: at most {self._max} are open at once "
                f"(JOBSD_MAX_WATCH_STREAMS={self._max}); close one or retry later"
            )
        if workspace_id is not None:
            held = self._per_workspace.get(workspace_id, 0)
            if held >= self._max_per_workspace:
                raise ResourceExhausted(
                    f"Too many watch streams for this workspace: at most {self._max_per_workspace} are open at once "
                    f"(JOBSD_MAX_WATCH_STREAMS_PER_WORKSPACE={self._max_per_workspace}); close one or retry later"
                )
            self._per_workspace[workspace_id] = held + 1
        sub = Watcher(self, accepts, job_id, self._capacity, workspace_id)
        if job_id is None:
            self._wide.add(sub)
        else:
            self._by_job.setdefault(job_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Watcher) -> None:
        sub.close()
        if not sub.registered:
            return
        sub.registered = False
        if sub.workspace_id is not None:
            left = self._per_workspace.get(sub.workspace_id, 0) - 1
            if left > 0:
                self._per_workspace[sub.workspace_id] = left
            else:
                self._per_workspace.pop(sub.workspace_id, None)
        if sub.job_id is None:
            self._wide.discard(sub)
            return
        subs = self._by_job.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_job[sub.job_id]

    def watched_job_ids(self) -> list[str]:
        return list(self._by_job)

    def close_job(self, job_id: str, error: JobsdError) -> None:
        """End every stream on this job with `error` (the job left the retention window)."""
        for sub in tuple(self._by_job.get(job_id, ())):
            sub.close(error)

    def publish(self, job: Job) -> None:
        for sub in tuple(self._by_job.get(job.id, ())):
            sub.offer(job)
        for sub in tuple(self._wide):
            sub.offer(job)
        for listener in self._listeners:
            listener(job)

    async def _pump(self, feed: AsyncIterator[object]) -> None:
        async for change in feed:
            try:
                if isinstance(change, JobChanged):
                    self.publish(change.job)
                elif isinstance(change, FeedReset):
                    log.warning("change feed reset: every watcher re-reads the current state")
                    for sub in [*self._wide, *(s for subs in self._by_job.values() for s in subs)]:
                        sub.reset()
            except Exception:  # one bad subscriber must not stop the fan-out
                log.exception("watch fan-out failed for one change")
