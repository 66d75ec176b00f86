"""JobService: the domain service every edge calls (gRPC servicers, REST gateway via JobsApi).

It authorises, validates, and moves jobs through the state machine with compare-and-set writes; it knows
nothing of gRPC, HTTP or the store's technology.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from jobsd.domain.auth import Principal, hash_token
from jobsd.domain.clock import Clock, to_micros
from jobsd.domain.fairshare import WorkspaceShare
from jobsd.domain.filters import JobFilter
from jobsd.domain.kinds import KindRegistry, KindSpec
from jobsd.domain.model import (
    RUNNING_STATUSES,
    Job,
    JobStatus,
    LogEntry,
    Progress,
    Workspace,
    datasource_id_for,
    evolve,
    new_job,
)
from jobsd.domain.rules import is_visible
from jobsd.domain.states import Action, apply_progress, transition
from jobsd.domain.validation import DEFAULT_STRUCT_LIMITS, NewJob, StructLimits, retry_of, validate_new_job
from jobsd.errors import FailedPrecondition, InvalidArgument, JobsdError, NotFound, StaleLease, Unauthenticated
from jobsd.metrics import Metrics
from jobsd.service.hub import WatchHub
from jobsd.service.paging import checked_page_size, decode_cursor, encode_cursor
from jobsd.service.ratelimit import TokenBuckets
from jobsd.service.watches import JobWatches, WatchEvent
from jobsd.store.base import ClaimRequest, JobQuery, JobRecord, JobStore, LogQuery

__all__ = ["Claim", "FinishItem", "HeartbeatItem", "HeartbeatResult", "JobService", "item_error"]

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
MAX_ID_LENGTH = 128
# Jobs this process wrote last, by id (see JobService._move).
WRITTEN_KEPT = 1_024
# Workspace ids remembered as existing (see JobService._workspace_exists).
KNOWN_WORKSPACES_KEPT = 1_024
# Data source ids remembered by (workspace, name) (see JobService._datasource_id).
DATASOURCE_IDS_KEPT = 1_024
INVALID_TOKEN = "invalid authentication token"
# A job id may be shortened to a unique prefix of at least this many characters (the 8 a progress bar prints).
MIN_ID_PREFIX = 8
# Ids are UUIDs: 36 characters, lower-case hex and dashes.
FULL_ID_LENGTH = 36
_ID_CHARACTERS = frozenset("0123456789abcdef-")
# Matches named when a prefix is ambiguous.
AMBIGUOUS_SHOWN = 10
# Jobs CreateJobs takes in one call unless the settings say otherwise (JOBSD_MAX_CREATE_BATCH).
DEFAULT_MAX_CREATE_BATCH = 500
DEFAULT_MAX_RETURNS = 5
# Encoded bytes a page of ListJobs may hold unless the settings say otherwise (JOBSD_MAX_PAGE_BYTES): under the 4 MiB
# a gRPC client receives by default.
DEFAULT_MAX_PAGE_BYTES = 3 * 1024 * 1024
# What framing one job in a ListJobsResponse costs at most beyond its bytes: the tag and a length varint.
_FRAME_BYTES = 6
# Times a lease sweep decides one job again after losing its compare-and-set to a concurrent write.
_SWEEP_ATTEMPTS = 10

# What a new job's status is, as the metrics label it.
_WAITING = JobStatus.WAITING.value
_Decide = Callable[[Job], Job]
_Check = Callable[[Job], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class Claim:
    job: Job
    lease_token: str
    lease_expires_at: datetime
    heartbeat_interval: timedelta
    # The kind's run-time limit and what is left of it (from the job's first start); None: no limit. The worker
    # stops the job when it runs out, without waiting for a heartbeat to be refused.
    time_limit: timedelta | None = None
    run_time_left: timedelta | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    cancel_requested: bool
    lease_expires_at: datetime
    revision: int


@dataclass(frozen=True, slots=True)
class HeartbeatItem:
    job_id: str
    lease_token: str
    progress: Progress


@dataclass(frozen=True, slots=True)
class FinishItem:
    job_id: str
    lease_token: str
    status: JobStatus | None
    error: str
    progress: Progress
    release: bool = False


def item_error(exc: JobsdError, prefix: str) -> JobsdError:
    """`exc` as the error of one item of a batch: a field it names is prefixed with the item's place."""
    if isinstance(exc, InvalidArgument):
        return InvalidArgument(f"{prefix}.{exc.field}", exc.problem)
    return exc


def _require_id(job_id: str) -> str:
    if not job_id:
        raise InvalidArgument("job_id", "is required")
    if len(job_id) > MAX_ID_LENGTH:
        raise InvalidArgument("job_id", f"is longer than {MAX_ID_LENGTH} characters")
    return job_id


class JobService:
    def __init__(
        self,
        store: JobStore,
        clock: Clock,
        kinds: KindRegistry,
        hub: WatchHub,
        metrics: Metrics,
        *,
        log_retention: timedelta = timedelta(days=30),
        max_create_batch: int = DEFAULT_MAX_CREATE_BATCH,
        max_returns: int = DEFAULT_MAX_RETURNS,
        struct_limits: StructLimits = DEFAULT_STRUCT_LIMITS,
        max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
        rate_limits: TokenBuckets | None = None,
    ) -> None:
        self.store = store
        # Requests per token, for every edge (authenticate takes one); off unless given.
        self.rate_limits = rate_limits or TokenBuckets(clock, 0, 1)
        # A list page stops before its jobs' encoded bytes pass this (it always holds one job, however large).
        self.max_page_bytes = max_page_bytes
        # The sizes of datasource, params (checked at create) and result (checked when a worker reports it).
        self.struct_limits = struct_limits
        self.max_create_batch = max_create_batch
        # Times a job may go back to the queue unfinished (lapsed leases and releases); the next return ends it.
        self.max_returns = max_returns
        self.clock = clock
        self.kinds = kinds
        self.hub = hub
        self.metrics = metrics
        self.log_retention = log_retention
        self._queue_changed = asyncio.Event()
        self._closing = False
        self._token_cache: dict[str, tuple[float, Principal]] = {}
        # Ids of workspaces known to exist (see _workspace_exists).
        self._known_workspaces: set[str] = set()
        # datasource_id_for(workspace, name), by its arguments (see _datasource_id).
        self._datasource_ids: dict[tuple[str, str], str] = {}
        # Tokens this process accepts without the store (the in-process executors'): by hash, never persisted.
        self._in_memory_tokens: dict[str, Principal] = {}
        self._watches = JobWatches(store, hub, clock, metrics, self.get_job)
        # The last job this process wrote, per id, for the most recent WRITTEN_KEPT ids: a heartbeat or finish
        # decides on it instead of reading the job back. Only a first guess: the compare-and-set refuses it if the
        # store moved on (another process wrote), and the move is then decided again on what the store holds.
        self._written: OrderedDict[str, Job] = OrderedDict()
        hub.add_listener(self._on_change)

    def _remember(self, job: Job) -> None:
        written = self._written
        written[job.id] = job
        written.move_to_end(job.id)
        if len(written) > WRITTEN_KEPT:
            written.popitem(last=False)

    def close(self) -> None:
        """Shutting down: long-polling claims return empty at once instead of holding the grace period."""
        self._closing = True
        self._wake_claimers()

    # ------------------------------------------------------------------ auth

    def accept_in_memory_token(self, secret: str, principal: Principal) -> None:
        """Accept `secret` as `principal` for as long as this service lives, without storing it anywhere: the
        credential of a worker inside this process, which no other process needs and a restart replaces."""
        self._in_memory_tokens[hash_token(secret)] = principal

    async def authenticate(self, token: str | None) -> Principal:
        if not token:
            raise Unauthenticated(INVALID_TOKEN)
        digest = hash_token(token)
        in_memory = self._in_memory_tokens.get(digest)
        if in_memory is not None:
            return in_memory  # this process's own executors: never rate limited
        cached = self._token_cache.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            self.rate_limits.take(digest)
            return cached[1]
        record = await self.store.get_token(digest)
        if record is None:
            raise Unauthenticated(INVALID_TOKEN)
        principal = Principal.from_record(record)
        if len(self._token_cache) > 1024:  # bounded: never grows with the number of tokens
            self._token_cache.clear()
        self._token_cache[digest] = (time.monotonic() + 5.0, principal)
        # After the token is known: a request with a bad token is refused as such and uses no one's budget.
        self.rate_limits.take(digest)
        return principal

    async def workspace(self, principal: Principal, requested: str | None = None) -> Workspace:
        workspace_id = principal.workspace(requested)
        ws = await self.store.get_workspace(workspace_id)
        if ws is None:
            raise NotFound(f'Workspace "{workspace_id}" not found')
        return ws

    # ------------------------------------------------------------------ reads

    def list_kinds(self, principal: Principal) -> list[KindSpec]:
        """Every kind CreateJob and ClaimJob accept, by name. Any valid token may read them (they are the server's
        configuration, not a workspace's data)."""
        del principal
        return list(self.kinds)

    async def resolve_job_id(self, principal: Principal, job_id: str) -> str:
        """The full id of the one job `principal` may read whose id starts with `job_id`, when `job_id` is a
        shortened id (MIN_ID_PREFIX to 35 characters of a UUID); else `job_id` as given.

        Only the caller's own workspace is searched, and only jobs it may read count: a prefix never tells one
        token about another workspace's jobs (nor about jobs its read scope hides). No match: `job_id` as given
        (the lookup then says "not found", as for any unknown id). Two or more: InvalidArgument naming them."""
        _require_id(job_id)
        if not MIN_ID_PREFIX <= len(job_id) < FULL_ID_LENGTH:
            return job_id
        prefix = job_id.lower()
        if not set(prefix) <= _ID_CHARACTERS:
            return job_id
        records = await self.store.records_by_id_prefix(
            prefix, principal.workspace_id, self.clock.now(), AMBIGUOUS_SHOWN + 1
        )
        matches = []
        for record in records:
            try:
                principal.check_read(record)
            except JobsdError:
                continue
            matches.append(record.id)
        if not matches:
            return job_id
        if len(matches) == 1:
            return matches[0]
        many = f"more than {AMBIGUOUS_SHOWN}" if len(matches) > AMBIGUOUS_SHOWN else str(len(matches))
        raise InvalidArgument(
            "job_id",
            f'"{job_id}" is the start of {many} job ids: {", ".join(matches[:AMBIGUOUS_SHOWN])}; give more of the id',
        )

    async def _visible(self, job_id: str) -> Job:
        job = await self.store.get_job(_require_id(job_id), self.clock.now())
        if job is None:
            raise NotFound(f'Job with id "{job_id}" not found')
        return job

    async def get_job(self, principal: Principal, job_id: str) -> Job:
        if len(job_id) != FULL_ID_LENGTH:
            job_id = await self.resolve_job_id(principal, job_id)
        job = await self._visible(job_id)
        principal.check_read(job)
        return job

    async def get_job_record(self, principal: Principal, job_id: str) -> JobRecord:
        """`get_job` as the store's light record: authorised on its fields, the job itself as wire bytes."""
        if len(job_id) != FULL_ID_LENGTH:
            job_id = await self.resolve_job_id(principal, job_id)
        record = await self.store.get_record(_require_id(job_id), self.clock.now())
        if record is None:
            raise NotFound(f'Job with id "{job_id}" not found')
        principal.check_read(record)
        return record

    async def list_job_records(
        self, principal: Principal, filters: JobFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[JobRecord], str]:
        """A page of jobs as the store's light records, newest first (the store applied the read scope)."""
        limit, query = self._list_query(principal, filters, page_size, page_token)
        records = await self.store.list_records(query)
        # Bounded by bytes as well as by count: the page stops before the job that would take it past
        # max_page_bytes (a first job larger than that is sent alone), and the cursor continues from its last job.
        budget = self.max_page_bytes
        kept = 0
        for record in records[:limit]:
            budget -= len(record.wire) + _FRAME_BYTES
            if budget < 0 and kept:
                break
            kept += 1
        if kept == len(records):
            return records, ""
        records = records[:kept]
        last = records[-1]
        return records, encode_cursor(last.created_at_us, last.id)

    def _list_query(
        self, principal: Principal, filters: JobFilter, page_size: int, page_token: str
    ) -> tuple[int, JobQuery]:
        limit = checked_page_size(page_size)
        workspace_id = principal.workspace(filters.workspace_id)
        after = None
        if page_token:
            when, (job_id,) = decode_cursor(page_token, 2)
            after = (when, job_id)
        query = JobQuery(
            scope=principal.read_scope(workspace_id), now=self.clock.now(), limit=limit + 1, filter=filters, after=after
        )
        return limit, query

    async def list_log(
        self, principal: Principal, filters: JobFilter, page_size: int = 0, page_token: str = ""
    ) -> tuple[list[LogEntry], str]:
        limit = checked_page_size(page_size)
        workspace_id = principal.workspace(filters.workspace_id)
        if filters.job_id and len(filters.job_id) != FULL_ID_LENGTH:
            filters = dataclasses.replace(filters, job_id=await self.resolve_job_id(principal, filters.job_id))
        if not principal.read_scope(workspace_id).everything:
            if filters.job_id:
                # One job's status changes are part of what its reader sees (the timeline on its page).
                await self.get_job_record(principal, filters.job_id)
            else:
                principal.require_admin()
        after = None
        if page_token:
            when, (job_id, revision) = decode_cursor(page_token, 3)
            if not revision.isdigit() or len(revision) > 18:
                raise InvalidArgument("page_token", "is not a page token this server issued")
            after = (when, job_id, int(revision))
        entries = await self.store.list_log(
            LogQuery(workspace_id=workspace_id, limit=limit + 1, filter=filters, after=after)
        )
        if len(entries) <= limit:
            return entries, ""
        entries = entries[:limit]
        last = entries[-1]
        return entries, encode_cursor(to_micros(last.updated_at), last.job_id, last.revision)

    # ------------------------------------------------------------------ writes

    async def create_job(self, principal: Principal, spec: NewJob) -> Job:
        principal.require_create()
        job = await self._new_job(principal, spec, {})
        stored = await self.store.insert_job(job)
        if stored.id == job.id:
            self._created(stored)
        return stored

    async def create_jobs(self, principal: Principal, specs: Sequence[NewJob]) -> list[Job | JobsdError]:
        """Each spec as `create_job` would create it, in one store write; per item the job or why it was refused.

        The call as a whole is refused only for who asks (token, scope, a workspace it cannot reach) or for the
        batch's size; an item that is bad in itself is refused alone."""
        principal.require_create()
        if not specs:
            raise InvalidArgument("jobs", "at least one job is required")
        if len(specs) > self.max_create_batch:
            raise InvalidArgument("jobs", f"at most {self.max_create_batch} jobs per call, got {len(specs)}")
        # Whom the token may create for is about who asks: a workspace it cannot reach refuses the whole call.
        for requested in dict.fromkeys(spec.workspace_id for spec in specs):
            principal.workspace(requested)
        results: list[Job | JobsdError | None] = []
        pending: list[tuple[int, Job]] = []
        workspaces: dict[str, bool] = {}
        for i, spec in enumerate(specs):
            try:
                job = await self._new_job(principal, spec, workspaces)
            except JobsdError as exc:
                results.append(item_error(exc, f"jobs[{i}]"))
                continue
            results.append(None)
            pending.append((i, job))
        if pending:
            stored = await self.store.insert_jobs([job for _, job in pending])
            # Counted once per kind: the batch's new jobs are all waiting.
            created: dict[str, int] = {}
            for (i, job), kept in zip(pending, stored, strict=True):
                if kept.id == job.id:
                    self._remember(kept)
                    created[kept.kind] = created.get(kept.kind, 0) + 1
                results[i] = kept
            for kind, count in created.items():
                self.metrics.transition(kind, _WAITING, count)
        return [r for r in results if r is not None]

    def _created(self, job: Job) -> None:
        self._remember(job)
        self.metrics.transition(job.kind, _WAITING)

    async def _new_job(self, principal: Principal, spec: NewJob, workspaces: dict[str, bool]) -> Job:
        """The waiting job `spec` asks for (validated; nothing written). `workspaces`: existence already looked up."""
        workspace_id = principal.workspace(spec.workspace_id)
        exists = workspaces.get(workspace_id)
        if exists is None:
            exists = workspaces[workspace_id] = await self._workspace_exists(workspace_id)
        if not exists:
            raise NotFound(f'Workspace "{workspace_id}" not found')
        valid = validate_new_job(spec, self.kinds, self.struct_limits)
        kind = self.kinds.get(valid.kind)
        now = self.clock.now()
        job_id = _new_job_id()
        datasource = dict(valid.datasource) if valid.datasource is not None else None
        if datasource is not None and not datasource.get("id"):
            # A stable id per (workspace, name) when the creator does not know it; the data plane uses the same.
            datasource["id"] = self._datasource_id(workspace_id, str(datasource["name"]))
        query_id = valid.query_id
        if query_id is None and valid.kind in ("populateview", "copy", "query"):
            query_id = _new_query_id(now)
        return new_job(
            id=job_id,
            workspace_id=workspace_id,
            kind=valid.kind,
            status=JobStatus.WAITING,
            created_at=now,
            updated_at=now,
            revision=1,
            status_revision=1,
            concurrency_key=kind.key_for(workspace_id, (datasource or {}).get("name")),
            expires_at=now + kind.retention,
            datasource=datasource,
            pipe_id=valid.pipe_id,
            pipe_name=valid.pipe_name,
            query_id=query_id,
            query_sql=valid.query_sql,
            mode=valid.mode,
            url=valid.url,
            import_id=job_id if valid.kind == "import" else None,
            params=dict(valid.params),
            idempotency_key=valid.idempotency_key,
            request_id=valid.request_id or job_id,
        )

    def _datasource_id(self, workspace_id: str, name: str) -> str:
        """`datasource_id_for(workspace_id, name)`, remembered (bounded): a SHA-256 and its hex per job otherwise, for
        an answer that never changes."""
        key = (workspace_id, name)
        known = self._datasource_ids.get(key)
        if known is None:
            if len(self._datasource_ids) >= DATASOURCE_IDS_KEPT:
                self._datasource_ids.clear()
            known = self._datasource_ids[key] = datasource_id_for(workspace_id, name)
        return known

    async def _workspace_exists(self, workspace_id: str) -> bool:
        """Whether the workspace exists. A workspace is never deleted, so one seen once is remembered (bounded):
        a create then pays no store read for it."""
        if workspace_id in self._known_workspaces:
            return True
        if await self.store.get_workspace(workspace_id) is None:
            return False
        if len(self._known_workspaces) >= KNOWN_WORKSPACES_KEPT:
            self._known_workspaces.clear()
        self._known_workspaces.add(workspace_id)
        return True

    async def _move(self, job_id: str, decide: _Decide, check: _Check | None = None) -> Job:
        """Read, decide, compare-and-set; on a lost race re-read and decide again.

        The first attempt starts from the job as this process last wrote it, if it did recently (no read); if that
        copy is refused by the check, the decision or the compare-and-set, the next attempts read the store."""
        remembered = self._written.get(job_id)
        for _ in range(50):
            if remembered is not None and is_visible(remembered, self.clock.now()):
                job, fresh = remembered, False
            else:
                job, fresh = await self._visible(job_id), True
            remembered = None
            try:
                if check is not None:
                    pending = check(job)
                    if pending is not None:
                        await pending
                new = decide(job)
            except JobsdError:
                if fresh:
                    raise
                continue  # decided on an old copy: decide again on the stored job
            if new is job:
                if fresh:
                    return job
                continue
            if await self.store.compare_and_set(job, new):
                self._remember(new)
                if new.status is not job.status:
                    self.metrics.transition(new.kind, new.status.value)
                return new
        raise FailedPrecondition(f"Job {job_id} is changing too fast; try again")

    async def _move_many(self, moves: Sequence[tuple[str, _Decide, _Check]]) -> list[Job | JobsdError]:
        """`_move` for each (job_id, decide, check). The moves this process can decide on the job as it last wrote
        it share one store write (each still its own compare-and-set); any other move, or one whose
        compare-and-set lost, goes the way `_move` goes alone."""
        results: list[Job | JobsdError | None] = [None] * len(moves)
        pairs: list[tuple[Job, Job]] = []
        batched: list[int] = []
        alone: list[int] = []
        now = self.clock.now()
        seen: set[str] = set()
        for i, (job_id, decide, check) in enumerate(moves):
            job = self._written.get(job_id)
            if job is None or job_id in seen or not is_visible(job, now):
                alone.append(i)
                continue
            try:
                if check(job) is not None:  # an asynchronous check: `_move` awaits it
                    alone.append(i)
                    continue
                new = decide(job)
            except JobsdError:
                alone.append(i)  # decided on an old copy: decide again on the stored job
                continue
            if new is job:
                alone.append(i)
                continue
            seen.add(job_id)
            pairs.append((job, new))
            batched.append(i)
        if pairs:
            outcomes = await self.store.compare_and_set_many(pairs)
            for i, (old, new), written in zip(batched, pairs, outcomes, strict=True):
                if written:
                    self._remember(new)
                    if new.status is not old.status:
                        self.metrics.transition(new.kind, new.status.value)
                    results[i] = new
                else:
                    alone.append(i)
        for i in sorted(alone):
            job_id, decide, check = moves[i]
            try:
                results[i] = await self._move(job_id, decide, check)
            except JobsdError as exc:
                results[i] = exc
        return [r for r in results if r is not None]

    async def cancel_job(self, principal: Principal, job_id: str) -> Job:
        if len(job_id) != FULL_ID_LENGTH:
            job_id = await self.resolve_job_id(principal, job_id)

        def decide(job: Job) -> Job:
            return transition(job, Action.CANCEL, self.clock.now(), kind=self.kinds.get(job.kind))

        return await self._move(job_id, decide, check=principal.check_write)

    async def retry_job(self, principal: Principal, job_id: str) -> Job:
        if len(job_id) != FULL_ID_LENGTH:
            job_id = await self.resolve_job_id(principal, job_id)
        old = await self._visible(job_id)
        principal.check_write(old)
        if old.status not in (JobStatus.ERROR, JobStatus.CANCELLED):
            raise FailedPrecondition(f"Job can only be retried when it is error or cancelled; it is {old.status.value}")
        # check_write above demands the same scopes create does.
        return await self.create_job(principal, retry_of(old))

    # ------------------------------------------------------------------ workers

    def _on_change(self, job: Job) -> None:
        # A new waiting job, or a slot freed by a job leaving working: wake the long-polling claimers.
        if job.status is JobStatus.WAITING or job.status.is_terminal:
            self._wake_claimers()

    def _wake_claimers(self) -> None:
        # Each generation is its own Event: set it for everyone waiting on it, hand out a fresh one.
        changed, self._queue_changed = self._queue_changed, asyncio.Event()
        changed.set()

    async def claim_job(
        self,
        principal: Principal,
        worker_id: str,
        kinds: Collection[str],
        wait_seconds: float,
        workspace_id: str | None = None,
    ) -> Claim | None:
        workspace = self.claim_scope(principal, worker_id, kinds, workspace_id)
        if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
            raise InvalidArgument("wait_seconds", f"must be between 0 and {MAX_WAIT_SECONDS:g}, got {wait_seconds:g}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while True:
            # Taken before the attempt, so a change during it wakes us at once (no lost wake-ups).
            changed = self._queue_changed
            claims = await self.claim_batch(worker_id, kinds, workspace, 1)
            remaining = deadline - loop.time()
            if claims or remaining <= 0 or self._closing:
                return claims[0] if claims else None
            # Wake on a local change; re-check at least every second for other replicas' writes.
            # asyncio.timeout, not wait_for (which on Python 3.11 loses a cancellation that lands with a change).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, 1.0)):
                    await changed.wait()

    def claim_scope(
        self, principal: Principal, worker_id: str, kinds: Collection[str], workspace_id: str | None
    ) -> str | None:
        """Check who claims what (scope, worker id, kinds); the workspace its claims are limited to, if any."""
        principal.require_execute()
        if not worker_id:
            raise InvalidArgument("worker_id", "is required")
        if len(worker_id) > MAX_ID_LENGTH:
            raise InvalidArgument("worker_id", f"is longer than {MAX_ID_LENGTH} characters")
        for kind in kinds:
            self.kinds.require(kind, "kinds")
        workspace = workspace_id or None
        if principal.workspace_id is not None:
            workspace = principal.workspace(workspace)
        return workspace

    async def claim_batch(
        self,
        worker_id: str,
        kinds: Collection[str],
        workspace_id: str | None,
        limit: int,
        share: WorkspaceShare | None = None,
    ) -> list[Claim]:
        """Up to `limit` claims now (no waiting) for a worker `claim_scope` has checked; each its own lease. `share`:
        the worker's max-share rule (a worker stream's; jobsd.domain.fairshare), None for a unary ClaimJob."""
        now = self.clock.now()

        def claim(job: Job) -> Job:
            kind = self.kinds.get(job.kind)
            # The lease is measured on the job as started (a first claim starts its run-time clock now).
            started = job if job.started_at is not None else evolve(job, started_at=now)
            return transition(
                job,
                Action.CLAIM,
                now,
                kind=kind,
                worker_id=worker_id,
                lease_token=_uuid4_bytes().hex(),
                lease_expires_at=kind.lease_until(started, now),
            )

        request = ClaimRequest(
            now=now,
            kinds=tuple(kinds),
            workspace_id=workspace_id,
            limit_for=self.kinds.limit_for,
            claim=claim,
            share=share,
        )
        if limit == 1:
            one = await self.store.claim_next(request)
            jobs = [] if one is None else [one]
        else:
            jobs = await self.store.claim_batch(request, limit)
        claims = []
        for job in jobs:
            self._remember(job)
            self.metrics.transition(job.kind, job.status.value)
            self.metrics.queued(job.kind, max(0.0, (now - job.created_at).total_seconds()))
            assert job.lease_token is not None
            assert job.lease_expires_at is not None
            kind = self.kinds.get(job.kind)
            deadline = kind.deadline(job)
            claims.append(
                Claim(
                    job,
                    job.lease_token,
                    job.lease_expires_at,
                    kind.heartbeat_interval,
                    time_limit=kind.time_limit,
                    run_time_left=None if deadline is None else deadline - now,
                )
            )
        return claims

    def _check_lease(self, principal: Principal, lease_token: str) -> Callable[[Job], None]:
        principal.require_execute()
        if not lease_token:
            raise InvalidArgument("lease_token", "is required")

        def check(job: Job) -> None:
            if principal.workspace_id is not None and job.workspace_id != principal.workspace_id:
                principal.check_write(job)
            if job.lease_token != lease_token or job.status.is_terminal:
                raise StaleLease(f"Job {job.id}: this worker no longer holds its lease (job is {job.status.value})")
            now = self.clock.now()
            if job.lease_expires_at is not None and now >= job.lease_expires_at:
                kind = self.kinds.get(job.kind)
                deadline = kind.deadline(job)
                if deadline is not None and now >= deadline:
                    raise StaleLease(f"Job {job.id}: {kind.run_time_error()}")
                raise StaleLease(f"Job {job.id}: the lease lapsed at {job.lease_expires_at.isoformat()}")

        return check

    async def heartbeat(
        self, principal: Principal, job_id: str, lease_token: str, progress: Progress
    ) -> HeartbeatResult:
        job = await self._move(*self._heartbeat_move(principal, job_id, lease_token, progress))
        return self._heartbeat_result(job)

    async def heartbeat_many(
        self, principal: Principal, items: Sequence[HeartbeatItem]
    ) -> list[HeartbeatResult | JobsdError]:
        """`heartbeat` for each item (one store write for those that can share it); per item the result or error."""
        moves: list[tuple[str, _Decide, _Check]] = []
        results: list[HeartbeatResult | JobsdError | None] = []
        for i, item in enumerate(items):
            try:
                moves.append(self._heartbeat_move(principal, item.job_id, item.lease_token, item.progress))
                results.append(None)
            except JobsdError as exc:
                results.append(item_error(exc, f"heartbeats[{i}]"))
        moved = iter(await self._move_many(moves))
        out: list[HeartbeatResult | JobsdError] = []
        for result in results:
            if result is None:
                job = next(moved)
                result = job if isinstance(job, JobsdError) else self._heartbeat_result(job)
            out.append(result)
        return out

    @staticmethod
    def _heartbeat_result(job: Job) -> HeartbeatResult:
        assert job.lease_expires_at is not None
        return HeartbeatResult(job.status is JobStatus.CANCELLING, job.lease_expires_at, job.revision)

    def _heartbeat_move(
        self, principal: Principal, job_id: str, lease_token: str, progress: Progress
    ) -> tuple[str, _Decide, _Check]:
        check = self._check_lease(principal, lease_token)
        _require_id(job_id)
        self.struct_limits.check("result", progress.result, "progress.result")

        def decide(job: Job) -> Job:
            now = self.clock.now()
            return evolve(
                apply_progress(job, progress, now), lease_expires_at=self.kinds.get(job.kind).lease_until(job, now)
            )

        return job_id, decide, check

    async def finish_job(
        self,
        principal: Principal,
        job_id: str,
        lease_token: str,
        status: JobStatus | None,
        error: str,
        progress: Progress,
        release: bool = False,
    ) -> Job:
        item = FinishItem(job_id, lease_token, status, error, progress, release)
        return await self._move(*self._finish_move(principal, item))

    async def finish_many(self, principal: Principal, items: Sequence[FinishItem]) -> list[Job | JobsdError]:
        """`finish_job` for each item (one store write for those that can share it); per item the job or error."""
        moves: list[tuple[str, _Decide, _Check]] = []
        results: list[Job | JobsdError | None] = []
        for i, item in enumerate(items):
            try:
                moves.append(self._finish_move(principal, item))
                results.append(None)
            except JobsdError as exc:
                results.append(item_error(exc, f"finishes[{i}]"))
        moved = iter(await self._move_many(moves))
        return [r if r is not None else next(moved) for r in results]

    def _finish_move(self, principal: Principal, item: FinishItem) -> tuple[str, _Decide, _Check]:
        check = self._check_lease(principal, item.lease_token)
        _require_id(item.job_id)
        if item.release:
            action = Action.RELEASE
        elif item.status is JobStatus.DONE:
            action = Action.FINISH_DONE
        elif item.status is JobStatus.ERROR:
            action = Action.FINISH_ERROR
        elif item.status is JobStatus.CANCELLED:
            action = Action.FINISH_CANCELLED
        else:
            raise InvalidArgument("status", "must be DONE, ERROR or CANCELLED (or set release)")
        if len(item.error) > 10_000:
            raise InvalidArgument("error", "is longer than 10000 characters")
        self.struct_limits.check("result", item.progress.result, "progress.result")
        error = item.error or None
        progress = None if item.progress.is_empty() else item.progress

        def decide(job: Job) -> Job:
            chosen, why = action, error
            if action is Action.RELEASE and job.returns >= self.max_returns:
                chosen, why = Action.RELEASE_EXHAUSTED, self._returned_too_often(job, "its worker released it")
            kind = self.kinds.get(job.kind)
            return transition(job, chosen, self.clock.now(), kind=kind, error=why, progress=progress)

        return item.job_id, decide, check

    def _returned_too_often(self, job: Job, how: str) -> str:
        """The `error` of a job that came back once more than JOBSD_MAX_RETURNS allows."""
        return (
            f"Job came back to the queue {job.returns + 1} times without finishing ({how} this time; a lapsed "
            f"lease or a release at a worker's shutdown each count): at most {self.max_returns} are allowed "
            f"(JOBSD_MAX_RETURNS={self.max_returns})"
        )

    # ------------------------------------------------------------------ watch (jobsd.service.watches)

    def watch_job(self, principal: Principal, job_id: str, since_revision: int = 0) -> AsyncIterator[WatchEvent]:
        return self._watches.watch_job(principal, job_id, since_revision)

    def watch_jobs(
        self, principal: Principal, filters: JobFilter, changed_since: datetime | None = None
    ) -> AsyncIterator[WatchEvent]:
        return self._watches.watch_jobs(principal, filters, changed_since)

    # ------------------------------------------------------------------ sweeps

    async def sweep_leases(self) -> int:
        """Recover jobs whose lease lapsed: past their kind's run-time limit they end (`error`, or `cancelled` if
        a cancel was asked); else they are requeued, or end in `error` after the kind's max attempts. A lease never
        outlasts the run-time deadline, so this one query finds both.

        Each recovery is a compare-and-set on the job as the sweep read it. One that loses to a concurrent write (a
        cancel, a finish, another replica's sweep) reads the job again and decides again while its lease is still
        lapsed: a job cancelled meanwhile ends `cancelled` now instead of staying `cancelling` until the next sweep,
        and one that another writer already moved on is left as that writer left it (never transitioned twice)."""
        now = self.clock.now()
        recovered = 0
        for lapsed in await self.store.lapsed_leases(now, 100):
            job: Job | None = lapsed
            for _ in range(_SWEEP_ATTEMPTS):
                if job is None or not _lease_lapsed(job, now):
                    break
                action, new = self._recovery(job, now)
                if await self.store.compare_and_set(job, new):
                    recovered += 1
                    if action is Action.RUN_TIME_EXCEEDED:
                        self.metrics.run_time_exceeded.inc()
                    else:
                        self.metrics.lease_lapses.inc()
                    self.metrics.transition(new.kind, new.status.value)
                    log.info(
                        "run-time limit reached" if action is Action.RUN_TIME_EXCEEDED else "lease lapsed",
                        extra={"job_id": job.id, "new_status": new.status.value},
                    )
                    break
                # Lost to a concurrent write: decide again on what the store holds now.
                job = await self.store.get_job(job.id, now)
            else:
                log.warning(
                    "lease sweep: job kept changing under the sweep; left for the next one", extra={"job_id": lapsed.id}
                )
        return recovered

    def _recovery(self, job: Job, now: datetime) -> tuple[Action, Job]:
        """What a lapsed lease makes of `job`: the action and the job after it."""
        kind = self.kinds.get(job.kind)
        deadline = kind.deadline(job)
        if deadline is not None and now >= deadline:
            action, error = Action.RUN_TIME_EXCEEDED, kind.run_time_error()
        elif job.attempt < kind.max_attempts and job.returns >= self.max_returns:
            action = Action.LEASE_EXHAUSTED
            error = self._returned_too_often(job, f"its worker {job.worker_id or '?'} stopped heartbeating")
        else:
            exhausted = job.attempt >= kind.max_attempts
            action = Action.LEASE_EXHAUSTED if exhausted else Action.LEASE_REQUEUE
            error = (
                f"Job abandoned: its worker {job.worker_id or '?'} stopped heartbeating "
                f"{job.attempt} time(s) (max attempts {kind.max_attempts} for {kind.name} jobs)"
            )
        return action, transition(job, action, now, kind=kind, error=error)

    async def sweep_retention(self) -> int:
        """Purge expired jobs and old log rows, and end the watch streams of jobs that are gone."""
        now = self.clock.now()
        purged = await self.store.purge(now, now - self.log_retention)
        for job_id in self.hub.watched_job_ids():
            if await self.store.get_job(job_id, now) is None:
                self.hub.close_job(job_id, NotFound(f'Job with id "{job_id}" not found'))
        return purged


def _lease_lapsed(job: Job, now: datetime) -> bool:
    """Whether `job` is running on a lease that lapsed before `now` (what `lapsed_leases` finds)."""
    return job.status in RUNNING_STATUSES and job.lease_expires_at is not None and job.lease_expires_at < now


def _uuid4_bytes() -> bytearray:
    """The 16 bytes of a random (version 4) UUID, as `uuid.uuid4().bytes` are: random but for the version and variant
    bits. Without building the `UUID` object, whose Python `__init__` and `__str__` cost ~21k instructions per id."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # variant RFC 4122
    return raw


def _new_job_id() -> str:
    """`str(uuid.uuid4())`: 36 characters, lower-case hex in groups of 8-4-4-4-12."""
    h = _uuid4_bytes().hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# RFC 4648 base-32 digits -> Crockford's, in the same order.
_CROCKFORD = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", b"0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def _new_query_id(now: datetime) -> str:
    """A ULID-shaped id (26 Crockford base-32 characters: 48-bit time, 80 bits of a random UUID's bytes).

    The 130 bits of the 26 digits, shifted to the top of 17 bytes, are what `b32encode` writes from the first bit:
    one C call instead of 26 Python divmods of a 128-bit number."""
    value = (to_micros(now) // 1000) << 80 | int.from_bytes(_uuid4_bytes()[:10], "big")
    return base64.b32encode((value << 6).to_bytes(17, "big"))[:26].translate(_CROCKFORD).decode()
