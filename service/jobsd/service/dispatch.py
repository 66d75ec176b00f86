"""Worker protocol v2: connected workers (one stream each) and the dispatcher that assigns them jobs.

A `WorkerSession` is one connected worker: who it is, the kinds it runs, how many free slots it has, the jobs it
holds, and what is waiting to be sent to it. The `Dispatcher` (one per process, owned by the app) claims jobs for
the sessions that have free slots — in turn, so one worker cannot starve the others — whenever the queue may have
changed (a new waiting job, a job that ended and freed a concurrency slot, slots given back), and at least every
second for the writes of other replicas. Claims are the same compare-and-set claims `ClaimJob` makes (turns
across workspaces, FIFO, concurrency limits), so the rules of the queue do not depend on the protocol a worker
speaks. A stream also says how many slots its worker has, so its claims carry the max-share rule
(jobsd.domain.fairshare, JOBSD_MAX_WORKSPACE_SHARE): of its slots (free + held), one workspace holds at most its
share while another workspace has a job this worker could start.

Leases mean what they mean for the unary RPCs: a session's loss is its worker's loss. Its leases lapse unless the
worker reconnects and heartbeats in time (a reconnecting worker keeps its jobs); only jobs claimed for a session
but never handed to it are released at once. Knows nothing of gRPC: the servicer decodes and encodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field

from jobsd.domain.auth import Principal
from jobsd.domain.fairshare import DEFAULT_MAX_WORKSPACE_SHARE, WorkspaceShare
from jobsd.domain.model import Job, JobStatus, Progress
from jobsd.errors import InvalidArgument, JobsdError, ResourceExhausted, Unavailable
from jobsd.service.jobs import Claim, FinishItem, HeartbeatItem, HeartbeatResult, JobService

__all__ = [
    "DEFAULT_MAX_WORKER_SLOTS",
    "DEFAULT_MAX_WORKER_STREAMS",
    "Dispatcher",
    "Outgoing",
    "StreamFinish",
    "StreamHeartbeat",
    "WorkerSession",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_WORKER_STREAMS = 1_000
DEFAULT_MAX_WORKER_SLOTS = 256
# Claims made for one session in one step: bounds how long one claim transaction holds the event loop.
CLAIM_STEP = 32
# How often the dispatcher looks at the queue with nothing to wake it (other replicas' writes).
IDLE_LOOK_SECONDS = 1.0


@dataclass(slots=True)
class Outgoing:
    """What is waiting to be sent to one worker (one ServerMessage when taken)."""

    assignments: list[Claim] = field(default_factory=list)
    heartbeats: list[tuple[int, str, HeartbeatResult | JobsdError]] = field(default_factory=list)
    finishes: list[tuple[int, str, Job | JobsdError]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.assignments or self.heartbeats or self.finishes or self.cancels)


@dataclass(frozen=True, slots=True)
class StreamHeartbeat:
    ref: int
    job_id: str
    # What the edge decoded, or why it could not (answered as it is).
    item: HeartbeatItem | JobsdError


@dataclass(frozen=True, slots=True)
class StreamFinish:
    ref: int
    job_id: str
    item: FinishItem | JobsdError


@dataclass(frozen=True, slots=True)
class WorkerScope:
    """What a worker stream claims, as its hello said and `claim_scope` checked: the worker's id, the kinds it runs
    (sorted, once each) and the workspace its claims are limited to (None: every one its token reaches)."""

    worker_id: str
    kinds: tuple[str, ...]
    workspace_id: str | None


class WorkerSession:
    """One connected worker. Created by `Dispatcher.connect`; ends with `close()` (safe twice)."""

    def __init__(
        self, dispatcher: Dispatcher, principal: Principal, scope: WorkerScope, slots: int, max_slots: int
    ) -> None:
        self._dispatcher = dispatcher
        self.principal = principal
        self.scope = scope
        self.free = slots
        self._max_slots = max_slots
        # Jobs assigned to this worker and not yet finished by it, with their lease tokens (and their workspaces).
        self.held: dict[str, str] = {}
        self.held_workspace: dict[str, str] = {}
        self.draining = False
        self.closed = False
        self._out = Outgoing()
        self._ready = asyncio.Event()
        self._error: JobsdError | None = None
        self._detached = False

    def __repr__(self) -> str:
        return f"WorkerSession(worker_id={self.scope.worker_id!r}, free={self.free}, held={len(self.held)})"

    @property
    def wants_jobs(self) -> bool:
        return self.free > 0 and not self.draining and not self.closed

    def share(self, fraction: float) -> WorkspaceShare | None:
        """The max-share rule of this worker's next claims: its slots are the free ones and the ones it holds."""
        held = Counter(self.held_workspace[job_id] for job_id in self.held if job_id in self.held_workspace)
        return WorkspaceShare.of(fraction, self.free + len(self.held), held)

    # ---------------------------------------------------------- from the worker

    def add_slots(self, count: int) -> None:
        if count < 0:
            raise InvalidArgument("add_slots", f"must not be negative, got {count}")
        if count == 0:
            return
        if self.free + count > self._max_slots:
            raise InvalidArgument("add_slots", f"a worker stream has at most {self._max_slots} free slots")
        self.free += count
        self._dispatcher.wake()

    def drain(self) -> None:
        """Assign nothing more (the worker is stopping); answers keep flowing."""
        self.draining = True

    async def handle(self, heartbeats: Sequence[StreamHeartbeat], finishes: Sequence[StreamFinish]) -> None:
        """Apply one message's heartbeats, then its finishes; every item is answered, refused or not."""
        service = self._dispatcher.service
        if heartbeats:
            beats = [h.item for h in heartbeats if not isinstance(h.item, JobsdError)]
            answers = iter(await service.heartbeat_many(self.principal, beats) if beats else [])
            for h in heartbeats:
                result = h.item if isinstance(h.item, JobsdError) else next(answers)
                self._out.heartbeats.append((h.ref, h.job_id, result))
        if finishes:
            ends = [f.item for f in finishes if not isinstance(f.item, JobsdError)]
            done = iter(await service.finish_many(self.principal, ends) if ends else [])
            for f in finishes:
                finished = f.item if isinstance(f.item, JobsdError) else next(done)
                if not isinstance(finished, JobsdError):
                    self._dispatcher.forget(self, f.job_id)
                self._out.finishes.append((f.ref, f.job_id, finished))
        self._notify()

    def end_of_input(self) -> None:
        """The worker closed its side: assign nothing more, send what is waiting, then end."""
        self.draining = True
        self.closed = True
        self._notify()

    # ---------------------------------------------------------- to the worker

    def assign(self, claims: Sequence[Claim]) -> None:
        for claim in claims:
            self.held[claim.job.id] = claim.lease_token
            self.held_workspace[claim.job.id] = claim.job.workspace_id
        self.free -= len(claims)
        self._out.assignments.extend(claims)
        self._notify()

    def cancel_requested(self, job_id: str) -> None:
        if job_id not in self._out.cancels:
            self._out.cancels.append(job_id)
            self._notify()

    def fail(self, error: JobsdError) -> None:
        """End the stream with `error` after what is already waiting to be sent."""
        if self._error is None:
            self._error = error
        self._notify()

    async def messages(self) -> AsyncIterator[Outgoing]:
        """What to send, one batch at a time, until the session closes (then raises its error, if any)."""
        while True:
            if self._out:
                out, self._out = self._out, Outgoing()
                yield out
                continue
            if self._error is not None:
                raise self._error
            if self.closed:
                return
            self._ready.clear()
            await self._ready.wait()

    def _notify(self) -> None:
        self._ready.set()

    async def close(self) -> None:
        """The stream ended. Jobs claimed for it but never sent go back to the queue now; the ones it holds keep
        their leases (the worker may reconnect and go on heartbeating them)."""
        if self._detached:
            return
        self._detached = True
        self.closed = True
        self._notify()
        unsent, self._out.assignments = self._out.assignments, []
        self._dispatcher.detach(self)
        if unsent:
            await self._dispatcher.release(self.principal, unsent)


class Dispatcher:
    """Assigns jobs to the connected workers (see the module doc). `start()`/`stop()`; `stop()` is safe twice."""

    def __init__(
        self,
        service: JobService,
        *,
        max_streams: int = DEFAULT_MAX_WORKER_STREAMS,
        max_slots: int = DEFAULT_MAX_WORKER_SLOTS,
        max_workspace_share: float = DEFAULT_MAX_WORKSPACE_SHARE,
    ) -> None:
        self.service = service
        self.max_streams = max_streams
        self.max_slots = max_slots
        self.max_workspace_share = max_workspace_share
        self._sessions: list[WorkerSession] = []
        self._holder: dict[str, WorkerSession] = {}
        self._turn = itertools.count()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        service.hub.add_listener(self._on_change)

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="jobsd-dispatcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in list(self._sessions):
            session.fail(Unavailable("The server is shutting down; reconnect"))
            await session.close()

    def connect(
        self,
        principal: Principal,
        worker_id: str,
        kinds: Collection[str],
        workspace_id: str | None,
        slots: int,
    ) -> WorkerSession:
        """A session for a worker that said hello (checked as ClaimJob checks its caller)."""
        workspace = self.service.claim_scope(principal, worker_id, kinds, workspace_id)
        if not 0 <= slots <= self.max_slots:
            raise InvalidArgument("hello.slots", f"must be between 0 and {self.max_slots}, got {slots}")
        if len(self._sessions) >= self.max_streams:
            raise ResourceExhausted(f"Too many worker streams on this server (limit {self.max_streams})")
        if self._task is None:
            raise Unavailable("The server is not accepting workers (starting or shutting down)")
        scope = WorkerScope(worker_id, tuple(sorted(set(kinds))), workspace)
        session = WorkerSession(self, principal, scope, slots, self.max_slots)
        self._sessions.append(session)
        self.wake()
        return session

    def detach(self, session: WorkerSession) -> None:
        with contextlib.suppress(ValueError):
            self._sessions.remove(session)
        for job_id in list(session.held):
            if self._holder.get(job_id) is session:
                del self._holder[job_id]

    def forget(self, session: WorkerSession, job_id: str) -> None:
        """The worker finished (or released) the job: it no longer holds it."""
        session.held.pop(job_id, None)
        session.held_workspace.pop(job_id, None)
        if self._holder.get(job_id) is session:
            del self._holder[job_id]

    def wake(self) -> None:
        self._wakeup.set()

    async def release(self, principal: Principal, claims: Sequence[Claim]) -> None:
        items = [FinishItem(c.job.id, c.lease_token, None, "", Progress(), release=True) for c in claims]
        try:
            results = await self.service.finish_many(principal, items)
        except JobsdError as exc:
            log.warning("could not release %d unsent assignments (their leases will lapse): %s", len(items), exc)
            return
        for claim, result in zip(claims, results, strict=True):
            if isinstance(result, JobsdError):
                log.warning("job %s: unsent assignment not released: %s", claim.job.id, result)

    def _on_change(self, job: Job) -> None:
        holder = self._holder.get(job.id)
        if holder is not None:
            if job.lease_token != holder.held.get(job.id):
                self.forget(holder, job.id)  # requeued or ended by someone else: no longer this worker's
            elif job.status is JobStatus.CANCELLING:
                holder.cancel_requested(job.id)
        # A new waiting job, or a slot freed by a job leaving working: there may be work to assign — if a stream
        # has free slots (a stream that gains slots or connects wakes the loop itself). Waking with no one to assign
        # to cost every unary CreateJob a dispatcher round and a wait_for on its timer.
        if (job.status is JobStatus.WAITING or job.status.is_terminal) and any(s.wants_jobs for s in self._sessions):
            self.wake()

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                busy = await self._assign_round()
            except JobsdError as exc:
                log.warning("dispatcher could not claim: %s", exc)
                busy = False
            except Exception:
                log.exception("dispatcher round failed")
                busy = False
            if busy:
                await asyncio.sleep(0)  # let the RPCs that wait run between steps
                continue
            # asyncio.timeout, never wait_for: on Python 3.11 wait_for returns (and loses stop()'s cancellation)
            # when a wake-up lands in the same loop turn as the cancel, and stop() then waits for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_LOOK_SECONDS):
                    await self._wakeup.wait()

    async def _assign_round(self) -> bool:
        """One claim step for each session that wants jobs, in turn; True if any step came back full (there may
        be more to assign right away)."""
        sessions = [s for s in self._sessions if s.wants_jobs]
        if not sessions:
            return False
        start = next(self._turn) % len(sessions)
        # (kinds, workspace) a claim came back short for this round: the sessions of the same ones skip it.
        empty: set[tuple[tuple[str, ...], str | None]] = set()
        busy = False
        for session in sessions[start:] + sessions[:start]:
            scope = session.scope
            if (scope.kinds, scope.workspace_id) in empty or not session.wants_jobs:
                continue
            want = min(session.free, CLAIM_STEP)
            share = session.share(self.max_workspace_share)
            claims = await self.service.claim_batch(scope.worker_id, scope.kinds, scope.workspace_id, want, share=share)
            if len(claims) < want:
                empty.add((scope.kinds, scope.workspace_id))
            elif session.free > want:
                busy = True  # a full step and still free slots: there may be more right away
            if not claims:
                continue
            if session.closed:
                await self.release(session.principal, claims)
                continue
            for claim in claims:
                self._holder[claim.job.id] = session
            session.assign(claims)
        return busy
