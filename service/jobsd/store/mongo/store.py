"""The production store: MongoDB through PyMongo's native asyncio API (`AsyncMongoClient`; Motor is deprecated).

N stateless jobsd replicas share one replica set (or sharded cluster). Everything that must hold across replicas
is a single-document atomic write on the server:

- Job writes are compare-and-set: `replace_one` filtered on `_id` and `revision`.
- jobs_log rows ride in the same write, in the job document's `log_outbox` (see mongo_codec), and are copied to
  `jobs_log` right after with deterministic ids (`job_id:revision`). A writer that dies in between leaves the
  document flagged `log_pending`; the sweep (`purge`) copies the rows and expired jobs are not deleted before.
  Chosen over a multi-document transaction because it needs no replica-set session machinery, never aborts
  under contention (claims would otherwise retry TransientTransactionError), works the same on a sharded
  cluster, and runs on the in-process emulation CI uses. Chosen over "log row first, delete it if the CAS loses"
  because that shows readers rows for changes that never happened, and leaves them behind if the writer dies.
- Claims take the workspaces in turns (jobsd.domain.fairshare: a distinct finds the workspaces with waiting jobs,
  `turns` orders them); in one workspace, `find_one_and_update` sorted FIFO on `created_at_us` locks the oldest
  eligible waiting job (a short `claim_lock`), a slot of its concurrency key is reserved atomically in `slots`,
  then the job is written as claimed (a compare-and-set that also checks the lock). The lock makes concurrent
  claimers take different jobs in one round trip; the slot makes concurrency limits hold across processes.
- The change feed is one change stream per process (mongo_feed). Without change streams (a standalone server,
  or the emulation) the store publishes its own writes in-process and says so once in the log: one replica then
  works, but replicas do not see each other's writes.

Write concern is majority on every write; reads use read concern majority, so nothing a caller sees can be rolled
back by a failover. Connection failures surface as `Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from heapq import merge
from itertools import islice
from typing import Any, Final
from urllib.parse import unquote

from pymongo import AsyncMongoClient, ReadPreference, ReturnDocument, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)
from pymongo.read_concern import ReadConcern

from jobsd.domain.fairshare import Candidate, claim_order, next_turn
from jobsd.domain.model import RUNNING_STATUSES, Job, LogEntry, TokenRecord, Workspace
from jobsd.errors import AlreadyExists, InvalidArgument, Unavailable
from jobsd.store.base import (
    BatchWrites,
    Capability,
    ChangeEvent,
    ClaimRequest,
    JobChanged,
    JobEncoder,
    JobQuery,
    JobRecord,
    LogQuery,
    missing_encoder,
)
from jobsd.store.mongo.codec import (
    CLAIM_LOCK,
    CLAIM_LOCK_UNTIL,
    LOG_OUTBOX,
    LOG_PENDING,
    WIRE,
    ceil_to_millis,
    floor_to_millis,
    job_document,
    job_from_document,
    log_from_document,
    log_outbox_for,
    micros,
    token_document,
    token_from_document,
    workspace_from_document,
)
from jobsd.store.mongo.feed import DEFAULT_FEED_CAPACITY, ChangeFanout, ChangeStream, ChangeStreamPump
from jobsd.store.mongo.queries import (
    JOBS,
    JOBS_LOG,
    SLOTS,
    TOKENS,
    TURNS,
    WORKSPACES,
    FindPlan,
    IndexSpec,
    claim_plan,
    collection_indexes,
    lapsed_plan,
    list_plans,
    log_plan,
    visible_at,
    waiting_workspaces_plan,
)

__all__ = ["CLAIM_LOCK_TTL", "DEFAULT_DATABASE", "MongoStore", "database_from_uri"]

_log = logging.getLogger("jobsd.store.mongo")

Document = dict[str, Any]
DEFAULT_DATABASE: Final = "jobsd"
# How long a claimer may hold a waiting job between locking it and writing it claimed; only matters if it dies.
CLAIM_LOCK_TTL: Final = timedelta(seconds=30)
# A health check or a first request fails fast instead of hanging for pymongo's default 30 s.
_SERVER_SELECTION_TIMEOUT_MS: Final = 2_000
_MAJORITY_WRITES_TIMEOUT_MS: Final = 10_000
_MAJORITY_WRITES: Final = WriteConcern("majority", wtimeout=_MAJORITY_WRITES_TIMEOUT_MS)
_MAJORITY_READS: Final = ReadConcern("majority")
_SWEEP_BATCH: Final = 1_000
_INSERT_ATTEMPTS: Final = 5
_ACKNOWLEDGED_KEPT: Final = 65_536
# Server codes that mean "not the primary / shutting down": the caller may retry against the new primary.
_NOT_WRITABLE: Final = frozenset({91, 189, 10107, 11600, 11602, 13435, 13436})
_DUPLICATE_KEY: Final = 11000


def database_from_uri(uri: str) -> str | None:
    """The database named in the URI path (`mongodb://host/<db>?...`), without any network lookup."""
    _, sep, rest = uri.partition("://")
    if not sep:
        return None
    hosts_and_path = rest.split("?", 1)[0].rsplit("@", 1)[-1]
    _, _, path = hosts_and_path.partition("/")
    return unquote(path) or None


def _running(job: Job) -> bool:
    return job.status in RUNNING_STATUSES


def _slot_holder(job_id: str, claim: str | None) -> Document:
    # The claim's lease token identifies which claim of the job holds the slot, so releasing an ended claim can
    # never free the slot of a later claim of the same job.
    return {"job": job_id, "claim": claim}


class MongoStore(BatchWrites):
    """`jobsd.store.base.JobStore` on MongoDB. Create, `await open()`, use, `await close()`.

    `client`: an already-built client (tests pass the in-process emulation); the store then does not close it.
    `log_retention`: JOBSD_LOG_RETENTION_DAYS, for a TTL index on jobs_log. Without it the store creates none
    (a TTL shorter than the configured retention would lose rows) and `purge` alone deletes old rows.
    """

    def __init__(
        self,
        uri: str,
        *,
        database: str | None = None,
        client: AsyncMongoClient[Document] | None = None,
        log_retention: timedelta | None = None,
        feed_capacity: int = DEFAULT_FEED_CAPACITY,
        encoder: JobEncoder | None = None,
    ) -> None:
        # Job -> wire bytes, stored in the job document by every write (see jobsd.store.base).
        self._encoder = encoder
        self._owns_client = client is None
        if client is None:
            options: dict[str, Any] = {"tz_aware": True}
            if "serverselectiontimeoutms" not in uri.lower():
                options["serverSelectionTimeoutMS"] = _SERVER_SELECTION_TIMEOUT_MS
            try:
                client = AsyncMongoClient(uri, **options)
            except (ConfigurationError, ValueError) as exc:
                raise InvalidArgument("store", f"is not a usable MongoDB URI: {exc}") from None
        self._client = client
        self._database_name = database or database_from_uri(uri) or DEFAULT_DATABASE
        db = client.get_database(self._database_name, write_concern=_MAJORITY_WRITES, read_concern=_MAJORITY_READS)
        self._db = db
        self._jobs: AsyncCollection[Document] = db.get_collection(JOBS)
        # Reads that must see the latest majority-committed writes whatever read preference the URI asks for.
        self._primary_jobs: AsyncCollection[Document] = db.get_collection(JOBS, read_preference=ReadPreference.PRIMARY)
        self._log: AsyncCollection[Document] = db.get_collection(JOBS_LOG)
        self._slots: AsyncCollection[Document] = db.get_collection(SLOTS)
        self._turns: AsyncCollection[Document] = db.get_collection(TURNS)
        self._workspaces: AsyncCollection[Document] = db.get_collection(WORKSPACES)
        self._tokens: AsyncCollection[Document] = db.get_collection(TOKENS)
        self._log_retention = log_retention
        self._fanout = ChangeFanout(feed_capacity)
        self._pump = ChangeStreamPump(self._open_change_stream, self._publish_streamed, job_from_document)
        # Numbers of this process's acknowledged writes by (job id, revision), the latest few only: lets a new
        # subscriber skip stream events of writes acknowledged before it subscribed.
        self._writes_acknowledged = 0
        self._acknowledged: OrderedDict[tuple[str, int], int] = OrderedDict()
        # True when the server has no change streams: the store then publishes its own writes.
        self._local_feed = False
        self._open = False

    @property
    def database_name(self) -> str:
        return self._database_name

    @property
    def publishes_locally(self) -> bool:
        """True when changes() only carries this process's writes (no change streams on the server)."""
        return self._local_feed

    def supports(self, capability: Capability) -> bool:
        if capability is Capability.CROSS_PROCESS_FEED:
            return not self._local_feed  # change streams, unless the server has none (standalone fallback)
        return capability is Capability.CHANGE_FEED

    def __repr__(self) -> str:
        return f"MongoStore(database={self._database_name!r})"

    # -- lifecycle

    async def open(self) -> None:
        if self._open:
            return
        with self._reachable("create its collections and indexes"):
            for collection, specs in collection_indexes(self._log_retention).items():
                await self._ensure_indexes(self._db.get_collection(collection), specs)
            streaming = await self._pump.start()
        self._local_feed = not streaming
        if self._local_feed:
            _log.warning(
                "MongoDB database %r has no change streams (a standalone server, not a replica set): watchers of "
                "this jobsd see only the writes this process makes. Run MongoDB as a replica set to watch jobs "
                "across replicas.",
                self._database_name,
            )
        self._open = True

    async def _ensure_indexes(self, collection: AsyncCollection[Document], specs: tuple[IndexSpec, ...]) -> None:
        """Create what is missing; recreate an index whose definition changed (e.g. the log retention)."""
        existing = await collection.index_information()
        for spec in specs:
            current = existing.get(spec.name)
            if current is not None and _same_index(current, spec):
                continue
            if current is not None:
                await collection.drop_index(spec.name)
            await collection.create_index(list(spec.keys), name=spec.name, **spec.options)

    async def close(self) -> None:
        self._open = False
        await self._pump.stop()
        self._fanout.close()
        if self._owns_client:
            await self._client.close()

    async def ping(self) -> None:
        self._check_open()
        with self._reachable("answer a health check"):
            await self._client.admin.command("ping")

    # -- jobs

    async def insert_job(self, job: Job) -> Job:
        self._check_open()
        outbox = log_outbox_for(None, job)
        document = job_document(job, outbox, self._wire(job))
        with self._reachable("insert a job"):
            for _ in range(_INSERT_ATTEMPTS):
                if job.idempotency_key is not None:
                    existing = await self._holder_of_key(job)
                    if existing is not None:
                        return existing
                try:
                    await self._jobs.insert_one(document)
                    break
                except DuplicateKeyError:
                    if job.idempotency_key is None or await self._primary_jobs.find_one({"_id": job.id}, {"_id": 1}):
                        raise AlreadyExists(f"Job with id {job.id!r} already exists") from None
                    # A concurrent create (maybe on another replica) took the key first: answer with its job.
                    winner = await self._winner_of_key(job)
                    if winner is not None:
                        return winner
                    # Its job is gone (expired, or rolled back with a failed-over primary): try again.
            else:
                raise Unavailable(f"MongoDB store cannot insert job {job.id}: its idempotency key stays contended")
        await self._copy_log_rows(job.id, outbox)
        self._publish_own(job)
        return job

    def _key_held_by(self, job: Job) -> Document:
        """The query of the visible job of `job`'s workspace holding its idempotency key."""
        return {
            "workspace_id": job.workspace_id,
            "idempotency_key": job.idempotency_key,
            "$and": [visible_at(job.created_at)],
        }

    async def _holder_of_key(self, job: Job) -> Job | None:
        """The visible job of the workspace holding `job`'s idempotency key; an invisible one loses the key."""
        found = await self._primary_jobs.find_one(self._key_held_by(job))
        if found is not None:
            return job_from_document(found)
        key = {"workspace_id": job.workspace_id, "idempotency_key": job.idempotency_key}
        await self._jobs.update_many(
            {**key, "expires_at_us": {"$lte": micros(job.created_at)}}, {"$set": {"idempotency_key": None}}
        )
        return None

    async def _winner_of_key(self, job: Job) -> Job | None:
        """After an insert lost its idempotency key: the winner's job, read from the primary with read concern
        majority (never a job that a failover could roll back). The unique index refused the loser as soon as the
        winner's insert reached the primary, possibly before a majority had it, so the read is repeated (briefly
        backing off) until the winner is majority-committed, for at most the majority write timeout; None if it
        never shows (its job was rolled back, or is no longer visible)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _MAJORITY_WRITES_TIMEOUT_MS / 1000
        pause = 0.002
        while True:
            found = await self._primary_jobs.find_one(self._key_held_by(job))
            if found is not None:
                return job_from_document(found)
            if loop.time() + pause > deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.1)

    async def get_job(self, job_id: str, now: datetime) -> Job | None:
        self._check_open()
        with self._reachable("read a job"):
            found = await self._jobs.find_one({"_id": job_id, "$and": [visible_at(now)]})
        return None if found is None else job_from_document(found)

    def _wire(self, job: Job) -> bytes | None:
        return None if self._encoder is None else self._encoder(job)

    def _record(self, doc: Document) -> JobRecord:
        wire = doc.get(WIRE)
        if wire is None:  # written before the store kept wire bytes: read the whole job and encode it
            raise _NeedsWholeDocument
        get = doc.get
        return JobRecord(
            doc["_id"], doc["workspace_id"], doc["created_at_us"], get("datasource_name"), get("pipe_name"), wire
        )

    async def _records(self, documents: list[Document]) -> list[JobRecord]:
        records: list[JobRecord] = []
        for doc in documents:
            try:
                records.append(self._record(doc))
            except _NeedsWholeDocument:
                whole = await self._jobs.find_one({"_id": doc["_id"]})
                if whole is None:
                    continue
                job = job_from_document(whole)
                wire = (self._encoder or missing_encoder)(job)
                created = whole["created_at_us"]
                records.append(JobRecord(job.id, job.workspace_id, created, job.datasource_name, job.pipe_name, wire))
        return records

    async def get_record(self, job_id: str, now: datetime) -> JobRecord | None:
        self._check_open()
        with self._reachable("read a job"):
            found = await self._jobs.find_one({"_id": job_id, "$and": [visible_at(now)]}, _RECORD_FIELDS)
            if found is None:
                return None
            records = await self._records([found])
        return records[0] if records else None

    async def records_by_id_prefix(
        self, prefix: str, workspace_id: str | None, now: datetime, limit: int
    ) -> list[JobRecord]:
        if not prefix or limit < 1:
            raise InvalidArgument("prefix", "must not be empty, with a limit of at least 1")
        self._check_open()
        # A range on _id (its index): [prefix, prefix with its last character + 1).
        query: dict[str, Any] = {
            "_id": {"$gte": prefix, "$lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)},
            "$and": [visible_at(now)],
        }
        if workspace_id is not None:
            query["workspace_id"] = workspace_id
        with self._reachable("find jobs by id prefix"):
            found = await self._jobs.find(query, _RECORD_FIELDS, sort=[("_id", 1)], limit=limit, hint="_id_").to_list(
                None
            )
            return await self._records(found)

    async def list_records(self, query: JobQuery) -> list[JobRecord]:
        if query.limit < 1:
            raise InvalidArgument("limit", f"must be at least 1, got {query.limit}")
        self._check_open()
        with self._reachable("list jobs"):
            pages = [await self._find(self._jobs, plan, _RECORD_FIELDS) for plan in list_plans(query)]
            if len(pages) == 1:
                return await self._records(pages[0])
            merged = merge(*pages, key=lambda d: (d["created_at_us"], d["_id"]), reverse=True)
            return await self._records(list(islice(_unique(merged), query.limit)))

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        if query.limit < 1:
            raise InvalidArgument("limit", f"must be at least 1, got {query.limit}")
        self._check_open()
        with self._reachable("list jobs"):
            pages = [await self._find(self._jobs, plan) for plan in list_plans(query)]
        if len(pages) == 1:
            return [job_from_document(d) for d in pages[0]]
        # Narrow scope: one indexed query per readable data source / pipe, merged newest first. A job on both a
        # readable data source and a readable pipe comes back twice; keep it once.
        merged = merge(*pages, key=lambda d: (d["created_at_us"], d["_id"]), reverse=True)
        return [job_from_document(d) for d in islice(_unique(merged), query.limit)]

    async def compare_and_set(self, old: Job, new: Job) -> bool:
        if new.id != old.id:
            raise InvalidArgument("job.id", f"compare_and_set needs one job, got {old.id!r} and {new.id!r}")
        if new.revision <= old.revision:
            raise InvalidArgument(
                "job.revision", f"the new revision ({new.revision}) must be greater than the old ({old.revision})"
            )
        self._check_open()
        return await self._write(old, new, {})

    async def _write(self, old: Job, new: Job, also: Mapping[str, Any]) -> bool:
        """Write `new` iff the stored job is still `old` (and matches `also`), then do what follows a write."""
        outbox = log_outbox_for(old, new)
        with self._reachable("update a job"):
            result = await self._jobs.replace_one(
                # workspace_id: on a cluster sharded by it, the write goes to one shard instead of all.
                {"_id": old.id, "workspace_id": old.workspace_id, "revision": old.revision, **also},
                job_document(new, outbox, self._wire(new)),
            )
        if result.matched_count == 0:
            return False
        if _running(old) and not _running(new):
            await self._after_write("free its concurrency slot", self._release_slot(old.concurrency_key, old))
        await self._copy_log_rows(new.id, outbox)
        self._publish_own(new)
        return True

    async def claim_next(self, request: ClaimRequest) -> Job | None:
        """The next claimable job, claimed; None only when there is none.

        Workspaces in turn (jobsd.domain.fairshare): a distinct over the claim index finds the workspaces with
        waiting jobs; with more than one, their turns (`turns`) order them, and the claim tries each in that order
        (`_claim_in_workspace`) until one gives a job, then moves that workspace's turn on (a `$max`, so turns only
        grow whatever the interleaving). The turns are bookkeeping, not a lock: two claimers at once may serve the
        same workspace, never the same job. A workspace that gave nothing is not asked again by this claim; before
        answering None the workspaces are read again, and any that appeared meanwhile is tried too.

        None never rests on a place held by a claim that is over: before answering None while some keys are full
        (and, unless the claim names its workspace, some job waits), the holders of those keys are checked against
        their jobs (`_free_places_of_ended_claims`);
        if any claim among them had ended, its place is dropped and the claim looks again. A job's end or requeue
        is written (and seen by watchers) before its writer frees the place, and a writer that dies in between
        leaves the place to the sweep: without this check a job shown `waiting`, with nothing running for its key,
        was refused until its writer (or the sweep, every 10 sweep intervals) got to it."""
        self._check_open()
        with self._reachable("claim a job"):
            full_keys = await self._full_keys(request)
            if request.workspace_id is not None:
                while True:
                    claimed = await self._claim_in_workspace(request, full_keys)
                    if claimed is not None:
                        turn = micros(request.now) or 0
                        await self._after_write(
                            f"move the turn of {claimed.workspace_id} on", self._take_turn(claimed.workspace_id, turn)
                        )
                        return claimed
                    if not (full_keys and await self._free_places_of_ended_claims(full_keys, request.now)):
                        return None
                    full_keys = await self._full_keys(request)
            tried: set[str] = set()
            filter_, hint = waiting_workspaces_plan(request)
            while True:
                found: list[str] = await self._jobs.distinct("workspace_id", filter_, hint=hint)
                fresh = [w for w in found if w not in tried]
                if not fresh:
                    # Every workspace with waiting jobs gave nothing: unless a full key's place was held by a claim
                    # that is over (dropped now; then all of them are asked again), the answer is None.
                    if not (found and full_keys and await self._free_places_of_ended_claims(full_keys, request.now)):
                        return None
                    tried.clear()
                    full_keys = await self._full_keys(request)
                    continue
                if len(found) == 1:
                    # No one to choose from: no turns to read; the workspace's turn is the claim's time.
                    claimed = await self._claim_in_workspace(replace(request, workspace_id=fresh[0]), full_keys)
                    if claimed is not None:
                        turn = micros(request.now) or 0
                        await self._after_write(f"move the turn of {fresh[0]} on", self._take_turn(fresh[0], turn))
                        return claimed
                    tried.add(fresh[0])
                    continue
                candidates = await self._candidates(request, fresh)
                for workspace_id in claim_order(candidates, request.share):
                    claimed = await self._claim_in_workspace(replace(request, workspace_id=workspace_id), full_keys)
                    if claimed is not None:
                        turn = next_turn(micros(request.now) or 0, candidates)
                        await self._after_write(
                            f"move the turn of {workspace_id} on", self._take_turn(workspace_id, turn)
                        )
                        return claimed
                    tried.add(workspace_id)

    async def _take_turn(self, workspace_id: str, turn: int) -> None:
        await self._turns.update_one({"_id": workspace_id}, {"$max": {"served": turn}}, upsert=True)

    async def _candidates(self, request: ClaimRequest, workspace_ids: list[str]) -> list[Candidate]:
        """The workspaces with their turns; for those never served (when more than one), their oldest waiting job
        of the requested kinds, which orders them."""
        turns = {
            d["_id"]: d["served"]
            for d in await self._turns.find({"_id": {"$in": workspace_ids}}).to_list(None)
            if isinstance(d.get("served"), int)
        }
        unserved = [w for w in workspace_ids if w not in turns]
        oldest: dict[str, int] = {}
        if len(unserved) > 1:
            for workspace_id in unserved:
                plan = claim_plan(replace(request, workspace_id=workspace_id), (), request.now)
                head = await self._jobs.find_one(
                    plan.filter, {"created_at_us": 1}, sort=list(plan.sort), hint=plan.hint
                )
                if head is not None:
                    oldest[workspace_id] = head["created_at_us"]
        return [Candidate(w, turns.get(w), oldest.get(w)) for w in workspace_ids]

    async def _claim_in_workspace(self, request: ClaimRequest, full_keys: set[str]) -> Job | None:
        """The oldest claimable job of the request's workspace, claimed; None only when it has none.

        A place first, then the job: the claim looks up the oldest eligible waiting job (no lock) for its
        concurrency key, reserves a place in that key (a holder naming this claim's nonce, until the lock
        lapses), and only then locks the oldest unlocked waiting job *of that key*. Locks are therefore held only
        by claims that hold a place, so a job of a key never starts while an older one of the same key waits for
        a claimer that will lose the race for the last place (FIFO per key under any interleaving). The place is
        turned into the job's claim before the job is written claimed.

        No fixed number of rounds: a round that claims nothing has learnt something that cannot repeat for ever —
        a key it read full (excluded from here on; keys are finite), or that others took every job of a key (each
        such round is another claim's success). A place is refused only when a read of the slot shows it full.
        Before answering None, the keys excluded as full are read again: one freed meanwhile is looked at once
        more, so None never rests on a stale reading. `full_keys` is the caller's reading, brought up to date."""
        while True:
            plan = claim_plan(request, sorted(full_keys), request.now)
            candidate = await self._jobs.find_one(
                plan.filter, {"concurrency_key": 1, "kind": 1}, sort=list(plan.sort), hint=plan.hint
            )
            if candidate is None:
                still_full = await self._full_keys(request)
                if full_keys <= still_full:
                    full_keys.clear()
                    full_keys.update(still_full)
                    return None
                full_keys.clear()
                full_keys.update(still_full)
                continue
            key: str = candidate["concurrency_key"]
            kind: str = candidate["kind"]
            nonce = uuid.uuid4().hex
            lock_until = micros(request.now + CLAIM_LOCK_TTL)
            place = {"job": None, "claim": nonce, "until": lock_until}
            if not await self._reserve_slot(key, kind, place, request.limit_for(kind)):
                full_keys.add(key)
                continue
            claimed = await self._claim_in_key(request, key, nonce, lock_until, place)
            if claimed is not None:
                return claimed

    async def _claim_in_key(
        self, request: ClaimRequest, key: str, nonce: str, lock_until: int | None, place: Document
    ) -> Job | None:
        """Holding `place` in `key`: claim the oldest unlocked waiting job of the key. None (the place given back)
        if other claimers took them all."""
        plan = claim_plan(request, (), request.now, concurrency_key=key)
        while True:
            locked = await self._jobs.find_one_and_update(
                plan.filter,
                {"$set": {CLAIM_LOCK: nonce, CLAIM_LOCK_UNTIL: lock_until}},
                sort=list(plan.sort),
                hint=plan.hint,
                return_document=ReturnDocument.AFTER,
            )
            if locked is None:
                await self._slots.update_one({"_id": key}, {"$pull": {"holders": place}})
                return None
            job = job_from_document(locked)
            try:
                claimed = request.claim(job)
            except BaseException:
                await self._unlock(job, nonce)
                await self._slots.update_one({"_id": key}, {"$pull": {"holders": place}})
                raise
            holder = _slot_holder(job.id, claimed.lease_token or nonce)
            handed = await self._slots.update_one({"_id": key, "holders": place}, {"$set": {"holders.$": holder}})
            if not handed.matched_count:
                # The place is gone (the sweep dropped it: this claim outlived its lock). Claiming now could
                # exceed the limit: give the job back and look again.
                await self._unlock(job, nonce)
                return None
            if await self._write(job, claimed, {CLAIM_LOCK: nonce}):
                return claimed
            # Changed since we locked it (cancelled): keep the place and take the key's next job.
            await self._slots.update_one({"_id": key, "holders": holder}, {"$set": {"holders.$": place}})

    async def _full_keys(self, request: ClaimRequest) -> set[str]:
        """Concurrency keys that already run as many jobs as their kind's limit allows."""
        filter_: Document = {"holders.0": {"$exists": True}}
        if request.kinds:
            filter_["kind"] = {"$in": sorted(set(request.kinds))}
        slots = await self._slots.find(filter_).to_list(None)
        return {s["_id"] for s in slots if len(s["holders"]) >= request.limit_for(s["kind"])}

    async def _free_places_of_ended_claims(self, keys: set[str], now: datetime) -> bool:
        """Drop the holders of these keys whose claim is over (`_holds`); whether there were any. Each one found
        cannot hold again (lease tokens and nonces are never reused), so a caller that looks again on True makes
        progress: it cannot loop on the same holder."""
        slots = await self._slots.find({"_id": {"$in": sorted(keys)}}).to_list(None)
        return await self._drop_ended_holders(slots, now) > 0

    async def _drop_ended_holders(self, slots: list[Document], now: datetime) -> int:
        """Pull from each slot document the holders whose claim is over; how many there were (a holder another
        process pulled first still counts: either way its place is free)."""
        ids = sorted({h["job"] for slot in slots for h in slot["holders"] if h.get("job") is not None})
        jobs = (
            {
                d["_id"]: d
                for d in await self._jobs.find(
                    {"_id": {"$in": ids}}, {"status": 1, "lease_token": 1, CLAIM_LOCK_UNTIL: 1}
                ).to_list(None)
            }
            if ids
            else {}
        )
        now_us = micros(now) or 0
        ended = 0
        for slot in slots:
            stale = [h for h in slot["holders"] if not _holds(jobs.get(h.get("job")), h, now_us)]
            if stale:
                await self._slots.update_one({"_id": slot["_id"]}, {"$pull": {"holders": {"$in": stale}}})
                ended += len(stale)
        return ended

    async def _reserve_slot(self, key: str, kind: str, holder: Document, limit: int) -> bool:
        """Atomically add `holder` to the key's slot document while it has fewer than `limit` holders. False only
        when a read of the slot shows it full; every other outcome (the document did not exist, another claimer
        created it first, a place was freed between the attempt and the read) tries again."""
        if limit < 1:
            return False
        while True:
            added = await self._slots.update_one(
                {"_id": key, f"holders.{limit - 1}": {"$exists": False}}, {"$addToSet": {"holders": holder}}
            )
            if added.matched_count:
                return True
            slot = await self._slots.find_one({"_id": key}, {"holders": 1})
            if slot is not None:
                if len(slot["holders"]) >= limit:
                    return False
                continue  # a place was freed after the attempt: try it
            try:
                await self._slots.insert_one({"_id": key, "kind": kind, "holders": [holder]})
                return True
            except DuplicateKeyError:
                continue  # another claimer created the document first: join it, if it has room

    async def _release_slot(self, key: str, job: Job) -> None:
        holder = _slot_holder(job.id, job.lease_token) if job.lease_token else {"job": job.id}
        await self._slots.update_one({"_id": key}, {"$pull": {"holders": holder}})

    async def _unlock(self, job: Job, nonce: str) -> None:
        await self._jobs.update_one(
            {"_id": job.id, "workspace_id": job.workspace_id, CLAIM_LOCK: nonce},
            {"$set": {CLAIM_LOCK: None, CLAIM_LOCK_UNTIL: None}},
        )

    async def lapsed_leases(self, now: datetime, limit: int) -> list[Job]:
        if limit < 1:
            raise InvalidArgument("limit", f"must be at least 1, got {limit}")
        self._check_open()
        with self._reachable("list lapsed leases"):
            documents = await self._find(self._jobs, lapsed_plan(now, limit))
        return [job_from_document(d) for d in documents]

    async def purge(self, now: datetime, log_before: datetime) -> int:
        """Copy jobs_log rows a dead writer left behind, free slots of claims that ended without freeing them,
        then delete expired jobs (never one with rows still to copy) and old log rows."""
        self._check_open()
        with self._reachable("purge expired rows"):
            await self._copy_pending_log_rows()
            await self._reconcile_slots(now)
            # The native dates narrow the range on their (TTL) indexes; the exact microseconds decide.
            expired = await self._jobs.delete_many(
                {
                    "expires_at": {"$lte": ceil_to_millis(now)},
                    "expires_at_us": {"$lte": micros(now)},
                    LOG_PENDING: {"$ne": True},
                }
            )
            rows = await self._log.delete_many(
                {"updated_at": {"$lte": floor_to_millis(log_before)}, "updated_at_us": {"$lt": micros(log_before)}}
            )
        return expired.deleted_count + rows.deleted_count

    async def _copy_pending_log_rows(self) -> None:
        """Copy the outbox of every document still flagged, then clear the flag (only if no write came since)."""
        pending = await self._jobs.find(
            {LOG_PENDING: True}, {"workspace_id": 1, "revision": 1, LOG_OUTBOX: 1}, limit=_SWEEP_BATCH
        ).to_list(None)
        for document in pending:
            await self._insert_log_rows(document[LOG_OUTBOX])
            await self._jobs.update_one(
                {
                    "_id": document["_id"],
                    "workspace_id": document["workspace_id"],
                    "revision": document["revision"],
                    LOG_PENDING: True,
                },
                {"$set": {LOG_PENDING: False, LOG_OUTBOX: []}},
            )

    async def _reconcile_slots(self, now: datetime) -> None:
        """Drop slot holders whose claim is over (a process died between its write and freeing the slot). A claim
        that would answer None on a full key does this for that key itself (`_free_places_of_ended_claims`); this
        catches the rest, and deletes the slot documents left empty."""
        await self._drop_ended_holders(await self._slots.find({"holders.0": {"$exists": True}}).to_list(None), now)
        await self._slots.delete_many({"holders": {"$size": 0}})

    # -- jobs_log

    async def list_log(self, query: LogQuery) -> list[LogEntry]:
        if query.limit < 1:
            raise InvalidArgument("limit", f"must be at least 1, got {query.limit}")
        self._check_open()
        with self._reachable("list the jobs log"):
            documents = await self._find(self._log, log_plan(query))
        return [log_from_document(d) for d in documents]

    # -- change feed

    def changes(self) -> AsyncIterator[ChangeEvent]:
        """Every job write committed after this call returns, from any replica (this process's only, when the
        server has no change streams). Ends when closed (`aclose()`) or when the store closes."""
        self._check_open()
        return self._fanout.subscribe(since=self._writes_acknowledged)

    async def _open_change_stream(self, resume_after: Mapping[str, Any] | None) -> ChangeStream:
        # Only inserts and whole-document replaces are job writes. Their events carry the document exactly as
        # written (unlike fullDocument="updateLookup", which reads it again later and can skip a revision).
        # Partial updates are bookkeeping (claim locks, outbox flags) and are not published.
        pipeline = [{"$match": {"operationType": {"$in": ["insert", "replace", "invalidate"]}}}]
        return await self._jobs.watch(pipeline, resume_after=resume_after)

    def _publish_own(self, job: Job) -> None:
        """After every acknowledged job write: number it, and publish it ourselves if there is no stream."""
        self._writes_acknowledged += 1
        self._acknowledged[(job.id, job.revision)] = self._writes_acknowledged
        if len(self._acknowledged) > _ACKNOWLEDGED_KEPT:
            self._acknowledged.popitem(last=False)
        if self._local_feed:
            self._fanout.publish(JobChanged(job))

    def _publish_streamed(self, event: ChangeEvent) -> None:
        number = self._acknowledged.get((event.job.id, event.job.revision)) if isinstance(event, JobChanged) else None
        self._fanout.publish(event, number)

    # -- workspaces and tokens

    async def ensure_workspace(self, name: str, now: datetime) -> Workspace:
        if not name.strip():
            raise InvalidArgument("name", "a workspace name must not be empty")
        self._check_open()
        # An upsert copies the filter's equality fields (`name`) into the document it inserts.
        created = {"_id": str(uuid.uuid4()), "created_at": now, "created_at_us": micros(now)}
        found: Document | None = None
        with self._reachable("create a workspace"):
            for _ in range(_INSERT_ATTEMPTS):
                # Another replica may create it at the same moment: the upsert then raises DuplicateKeyError
                # (mongod), or answers no document (the wire server, for two of three replicas starting at once).
                # Either way the next upsert matches the document that now exists. Not a read to find it: a
                # majority read need not see a write committed but not yet majority-committed.
                with contextlib.suppress(DuplicateKeyError):
                    found = await self._workspaces.find_one_and_update(
                        {"name": name}, {"$setOnInsert": created}, upsert=True, return_document=ReturnDocument.AFTER
                    )
                if found is not None:
                    break
        if found is None:
            raise Unavailable(f"MongoDB store cannot create workspace {name!r}: it vanished as it was created")
        return workspace_from_document(found)

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        self._check_open()
        with self._reachable("read a workspace"):
            found = await self._workspaces.find_one({"_id": workspace_id})
        return None if found is None else workspace_from_document(found)

    async def find_workspace(self, name: str) -> Workspace | None:
        self._check_open()
        with self._reachable("read a workspace"):
            found = await self._workspaces.find_one({"name": name})
        return None if found is None else workspace_from_document(found)

    async def put_token(self, record: TokenRecord) -> None:
        self._check_open()
        with self._reachable("store a token"):
            await self._tokens.replace_one({"_id": record.token_hash}, token_document(record), upsert=True)

    async def get_token(self, token_hash: str) -> TokenRecord | None:
        self._check_open()
        with self._reachable("read a token"):
            found = await self._tokens.find_one({"_id": token_hash})
        return None if found is None else token_from_document(found)

    # -- internals

    def _check_open(self) -> None:
        if not self._open:
            raise Unavailable(f"MongoDB store {self._database_name!r} is not open")

    @contextmanager
    def _reachable(self, action: str) -> Iterator[None]:
        """A server that cannot be reached (or cannot confirm a majority write) surfaces as Unavailable."""
        try:
            yield
        except (ConnectionFailure, WriteConcernError, ExecutionTimeout) as exc:
            raise Unavailable(f"MongoDB store cannot {action}: {exc}") from None
        except OperationFailure as exc:
            if exc.code in _NOT_WRITABLE or exc.has_error_label("RetryableWriteError"):
                raise Unavailable(f"MongoDB store cannot {action}: {exc}") from None
            raise

    async def _after_write(self, action: str, step: Awaitable[None]) -> None:
        """Follow-up work of a committed write: if it fails, the write still stands and the sweep finishes it."""
        try:
            await step
        except PyMongoError as exc:
            _log.warning("MongoDB store could not %s after a write (%s); the sweep will", action, exc)

    async def _copy_log_rows(self, job_id: str, rows: list[Document]) -> None:
        """Copy a write's outbox to jobs_log right away. The document stays flagged until the sweep clears the
        flag: that keeps a second write off the request path, and covers a writer that dies before this copy."""
        if rows:
            await self._after_write(f"copy the jobs_log rows of job {job_id}", self._insert_log_rows(rows))

    async def _insert_log_rows(self, rows: list[Document]) -> None:
        if not rows:
            return
        try:
            await self._log.insert_many(rows, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            # Rows already copied (by the writer, the sweep or a later writer) are fine; anything else is not.
            if exc.details.get("writeConcernErrors") or any(e.get("code") != _DUPLICATE_KEY for e in errors):
                raise

    @staticmethod
    async def _find(
        collection: AsyncCollection[Document], plan: FindPlan, projection: Mapping[str, int] | None = None
    ) -> list[Document]:
        cursor = collection.find(plan.filter, projection, sort=list(plan.sort), limit=plan.limit, hint=plan.hint)
        return await cursor.to_list(None)


class _NeedsWholeDocument(Exception):
    """A job document without wire bytes (written before the store kept them)."""


# What a JobRecord reads of a job document.
_RECORD_FIELDS: Final = {"_id": 1, "workspace_id": 1, "created_at_us": 1, "datasource_name": 1, "pipe_name": 1, WIRE: 1}


def _holds(job: Document | None, holder: Document, now_us: int) -> bool:
    """Whether a slot holder still belongs to a live claim: its job runs under that claim, or is being claimed."""
    if holder.get("job") is None:  # a place reserved by a claim still choosing its job
        until = holder.get("until")
        return until is not None and until > now_us
    if job is None:
        return False
    if job.get("status") in {s.value for s in RUNNING_STATUSES}:
        return job.get("lease_token") == holder.get("claim")
    lock_until = job.get(CLAIM_LOCK_UNTIL)
    return lock_until is not None and lock_until > now_us


def _unique(documents: Iterator[Document]) -> Iterator[Document]:
    seen: set[str] = set()
    for document in documents:
        if document["_id"] not in seen:
            seen.add(document["_id"])
            yield document


def _same_index(current: Mapping[str, Any], spec: IndexSpec) -> bool:
    keys = [(str(name), int(direction)) for name, direction in current.get("key", [])]
    if keys != list(spec.keys):
        return False
    return all(current.get(option) == value for option, value in spec.options.items())
