"""The embedded store: one SQLite file in WAL mode, one connection, one writer.

Why the statements run directly on the event-loop thread (no `asyncio.to_thread`): every statement here is an
indexed lookup or a short index range that takes microseconds, while a thread hop costs tens of microseconds and
would let two coroutines interleave inside a transaction. Running synchronously makes each method atomic with
respect to the other coroutines of the process; `BEGIN IMMEDIATE` makes it atomic with respect to other processes
that open the same file (e.g. `jobsd token create` next to a running server).

Durability: WAL with `synchronous=NORMAL` writes every commit to the WAL file before the call returns, so an
acknowledged write survives a crash of the process (kill -9); it may be lost only on an OS crash or power loss.

Group commit: a COMMIT costs about as much as the pages it appends to the WAL, and one job write touches ~24
(the row, a dozen index entries, the jobs_log row and its indexes), most of them the same tail pages as the next
write's. So a write runs its statements at once in the open transaction and then waits for the COMMIT that makes it
durable; writes made meanwhile by other coroutines join the same transaction and share its pages. The COMMIT comes
- at the event loop's next turn when writes come one at a time (the last group held one write): no added wait;
- when others are writing too (the last group held more): once no write has joined for a fifth of the window
  (`SqliteCommit.window`), and at the latest a window after the group opened;
- at once when the group holds `SqliteCommit.max_writes` writes, and before any read, so a read never sees an
  uncommitted write (and a caller that re-reads after losing a compare-and-set sees the write it lost to).
A write is acknowledged, and its change published to the feed, only after its COMMIT; a failed COMMIT fails every
write of its group and changes nothing. Writes refuse before they change anything, so one refused write leaves the
others of its group as they were.

WAL limit: SQLite writes the WAL from its start again only when a write transaction begins while the checkpoint
thread has copied every frame back, and group commits that follow each other without a pause never leave it at rest:
measured on the bench's store of a million jobs, the WAL grew to 140 MB in 30 s of job lifecycles and to 760 MB in
60 s of batched creates, and it keeps its largest size on disk. So once the checkpoint thread reports a WAL of
`SqliteCommit.wal_limit` bytes or more, the next COMMIT starts a hold: no new write begins (reads go on), the thread
runs a checkpoint at once, and when it has copied every frame the hold ends, the first write starts the WAL over and
SQLite truncates the file to the limit (`journal_size_limit`). A hold lasts one checkpoint of the frames written
since the last one, at most `WAL_HOLD_MAX` seconds; if a reader of another process pins the WAL, writes go on and
the next hold waits until the thread has run again.

Layout: table `jobs` keeps the indexed columns next to `doc`, the JSON of `job_to_plain(job)` (datetimes as integer
microseconds), and `wire`, the job as the store's encoder made it (the serialised API message), written with `doc`
in every write so GetJob/ListJobs answer from bytes (`get_record`, `list_records`). Every list filter is one
index led by workspace_id that already yields newest-first order, so a page costs the same whether the store holds
a thousand jobs or a million (tests/sqlite/test_store.py checks the plans). Table `jobs_log` is keyed by the
job's created_at first, (created_at, job_id, revision): a job's ids are random, and a log keyed by them put every
new row on a leaf page of its own in a table that keeps a month of rows (one more page in the WAL per status
change, and a page read once the key outgrew the cache); keyed by time, new rows share the last pages of the key.
A read by job id takes the job's created_at from `jobs`, or from `jobs_gone` (id, created_at) once the job is
purged, a row the purge writes in the same transaction and drops when the log no longer keeps the job's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, Final, Literal

import orjson

from jobsd.domain.clock import from_micros, to_micros
from jobsd.domain.fairshare import Candidate, after_claim, claim_order, next_turn
from jobsd.domain.filters import JobFilter
from jobsd.domain.model import Job, LogEntry, TokenRecord, Workspace
from jobsd.errors import AlreadyExists, InvalidArgument, Unavailable
from jobsd.store.base import (
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
from jobsd.store.fanout import DEFAULT_FEED_CAPACITY, ChangeFanout
from jobsd.store.plain import job_from_plain, job_to_plain, log_entry_for
from jobsd.store.sqlite.checkpoint import WalCheckpointer

__all__ = ["SqliteCommit", "SqliteStats", "SqliteStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 3
# Version 1 had no `wire` column: opening such a file adds it; rows written before answer by encoding `doc`.
# Versions 1 and 2 keyed jobs_log by (job_id, revision): opening such a file rebuilds the log once (`_rekey_log`).
_OLDER_VERSIONS: Final = (1, 2)

# The tables and indexes, run by open() on every start (each statement is idempotent).
_SCHEMA: Final = (Path(__file__).parent / "schema.sql").read_text()

_VISIBLE: Final = "(expires_at IS NULL OR expires_at > ?)"
_RUNNING: Final = "status IN ('working', 'cancelling')"
_ACTIVE: Final = "status IN ('waiting', 'working', 'cancelling')"
# The columns kept beside `doc` for the indexes, in the order `_indexed_values` returns them.
_INDEXED_COLUMNS: Final = (
    "workspace_id",
    "kind",
    "status",
    "created_at",
    "expires_at",
    "lease_expires_at",
    "pipe_id",
    "pipe_name",
    "datasource_name",
    "concurrency_key",
    "revision",
)
_JOB_COLUMNS: Final = ", ".join((*_INDEXED_COLUMNS, "doc", "wire"))
# What the read paths select for a JobRecord (after created_at, id, which order the merged pages).
_RECORD_COLUMNS: Final = "created_at, id, workspace_id, datasource_name, pipe_name, wire"
_REVISION: Final = _INDEXED_COLUMNS.index("revision")
_LOG_COLUMNS: Final = (
    "job_id, revision, job_type, status, error, workspace_id, request_id, pipe_id, datasource_id, created_at, "
    "started_at, updated_at, job_metadata"
)
# Exact-match list filters, most selective first: the first one present picks the index.
_FILTER_INDEXES: Final = (
    ("pipe_id", "jobs_by_pipe_id"),
    ("pipe_name", "jobs_by_pipe_name"),
    ("kind", "jobs_by_kind"),
    ("status", "jobs_by_status"),
)
# A claim looks at no more than this many waiting jobs (in FIFO order, over all the workspaces it looks at) for one
# whose concurrency key has a free slot. It bounds the time one claim holds the event loop and the write lock (the
# walk is an index-only scan of microseconds per row); a worker that finds nothing simply polls again once running
# jobs finish.
CLAIM_SCAN_LIMIT: Final = 5_000
# Workspaces whose turns one statement reads, ids one statement looks up (under SQLite's limit on bound parameters).
_TURNS_PER_READ: Final = 500
_IDS_PER_READ: Final = 500
# How long a look at the database file (still there, still the same file) vouches for it before a write looks again.
FILE_CHECK_INTERVAL: Final = 0.05
# Group commit (module docstring): how long a group of writes gathers while others write, and how many it holds at
# most. A window of a few milliseconds lets the writes of concurrent calls share one COMMIT's pages: 12 ms (a 2.4 ms
# quiet gap) measured ~10 % more lifecycles and creates a second than 4 ms, with less CPU per write and no longer
# p99, in five interleaved full-store bench pairs; 20 ms measured worse (bench/results/hotspots.md).
DEFAULT_COMMIT_WINDOW: Final = 0.012
DEFAULT_COMMIT_GROUP_MAX: Final = 64
# A gathering group that no write joined for window / this commits without waiting out the window.
COMMIT_GAP_DIVISOR: Final = 5
# WAL limit (module docstring): the WAL's size past which writes are held until it can start over, and the longest
# such a hold lasts.
DEFAULT_WAL_LIMIT: Final = 64 * 1024 * 1024
WAL_HOLD_MAX: Final = 1.0
# Rows deleted per transaction by `purge`, which yields to the event loop between batches.
PURGE_BATCH: Final = 2_000


def _stored_value(obj: object) -> object:
    if isinstance(obj, datetime):
        return to_micros(obj)
    raise TypeError(f"a value of type {type(obj).__name__} cannot be stored")


def _encode_json(value: Any) -> str:
    """`value` as compact JSON text, datetimes as integer microseconds.

    orjson, not json.dumps: every job write encodes the whole doc and its jobs_log row's metadata, and json.dumps
    was the largest Python share of a write (bench/results/hotspots.md). The output is the same compact JSON, with
    two differences at the edges: NaN and infinities become null (json.dumps wrote them as invalid JSON; the API's
    Struct numbers cannot carry them), and a non-string key or an integer beyond 64 bits is refused as
    InvalidArgument instead of being coerced."""
    try:
        return orjson.dumps(value, default=_stored_value, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        raise InvalidArgument("job", f"cannot be stored: {exc}") from None


def _micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def _time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _job_row(job: Job, wire: bytes | None) -> tuple[Any, ...]:
    """The values of _JOB_COLUMNS for `job`."""
    return (*_indexed_values(job), _encode_json(job_to_plain(job)), wire)


def _indexed_values(job: Job) -> tuple[Any, ...]:
    """The values of _INDEXED_COLUMNS for `job`."""
    return (
        job.workspace_id,
        job.kind,
        job.status.value,
        to_micros(job.created_at),
        _micros(job.expires_at),
        _micros(job.lease_expires_at),
        job.pipe_id,
        job.pipe_name,
        job.datasource_name,
        job.concurrency_key,
        job.revision,
    )


def _unique_by_id(rows: Iterator[Any]) -> Iterator[Any]:
    """Rows of (created_at, id, doc), each id once."""
    seen: set[str] = set()
    for row in rows:
        if row[1] not in seen:
            seen.add(row[1])
            yield row


def _created_within(wanted: JobFilter, where: list[str], params: list[Any]) -> None:
    # The created_at window (inclusive) of both listings, jobs and jobs_log rows.
    if wanted.created_after is not None:
        where.append("created_at >= ?")
        params.append(to_micros(wanted.created_after))
    if wanted.created_before is not None:
        where.append("created_at <= ?")
        params.append(to_micros(wanted.created_before))


def _job_from_doc(doc: str) -> Job:
    return job_from_plain(orjson.loads(doc))


def _log_keys_of(conn: sqlite3.Connection, job_id: str) -> list[int]:
    """The created_at values that key `job_id`'s jobs_log rows: the job's own (also while it is expired and not yet
    purged), and that of each purged job of that id whose rows are still kept."""
    rows = conn.execute(
        "SELECT created_at FROM jobs WHERE id = ? UNION SELECT created_at FROM jobs_gone WHERE id = ?",
        (job_id, job_id),
    ).fetchall()
    return [int(r[0]) for r in rows]


def _purge_jobs(conn: sqlite3.Connection, expired_at: int) -> tuple[int, bool]:
    """One batch of expired jobs deleted (how many, and whether a full batch: there may be more); each leaves a
    `jobs_gone` row, so its log rows stay readable by id."""
    gone = conn.execute("SELECT id, created_at FROM jobs WHERE expires_at <= ? LIMIT ?", (expired_at, PURGE_BATCH))
    rows = gone.fetchall()
    if not rows:
        return 0, False
    # The purge's own time (the bound) is later than any row the job has in the log.
    conn.executemany(
        "INSERT OR IGNORE INTO jobs_gone (id, created_at, log_until) VALUES (?, ?, ?)",
        [(job_id, created_at, expired_at) for job_id, created_at in rows],
    )
    conn.executemany("DELETE FROM jobs WHERE id = ?", [(r[0],) for r in rows])
    return len(rows), len(rows) == PURGE_BATCH


def _purge_log(conn: sqlite3.Connection, older_than: int) -> tuple[int, bool]:
    """One batch of jobs_log rows older than the log keeps deleted, and of the `jobs_gone` rows that only they
    needed (not counted: they are the store's bookkeeping, not rows a reader sees)."""
    deleted = int(
        conn.execute(
            "DELETE FROM jobs_log WHERE rowid IN (SELECT rowid FROM jobs_log WHERE updated_at < ? LIMIT ?)",
            (older_than, PURGE_BATCH),
        ).rowcount
    )
    forgotten = conn.execute(
        "DELETE FROM jobs_gone WHERE (id, created_at) IN "
        "(SELECT id, created_at FROM jobs_gone WHERE log_until < ? LIMIT ?)",
        (older_than, PURGE_BATCH),
    ).rowcount
    return deleted, deleted == PURGE_BATCH or forgotten == PURGE_BATCH


def _log_keyed_by_job(conn: sqlite3.Connection) -> bool:
    """Whether this file's jobs_log has the key of schema versions 1 and 2, (job_id, revision)."""
    key = [r[2] for r in conn.execute("PRAGMA index_info(sqlite_autoindex_jobs_log_1)")]
    return key == ["job_id", "revision"]


def _set_old_log_aside(conn: sqlite3.Connection) -> None:
    """Before the schema runs on a file of version 1 or 2: its jobs_log (and the indexes, whose names the new table
    takes) out of the way, for `_rekey_log` to copy."""
    conn.execute("DROP INDEX IF EXISTS jobs_log_by_workspace")
    conn.execute("DROP INDEX IF EXISTS jobs_log_by_age")
    conn.execute("ALTER TABLE jobs_log RENAME TO jobs_log_keyed_by_job")


def _rekey_log(conn: sqlite3.Connection) -> None:
    """The old log's rows into the new key, in its order, and a `jobs_gone` row for each purged job they keep, in
    the transaction that opens the file (a crash midway leaves it as it was). One pass over the log, once: ~10 s
    per million rows on the bench machine (3,000,000 rows: 30 s)."""
    # The secondary indexes built after the copy (one sort each) rather than row by row during it.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'jobs_log' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    conn.execute(
        f"INSERT INTO jobs_log ({_LOG_COLUMNS}) SELECT {_LOG_COLUMNS} FROM jobs_log_keyed_by_job "
        "ORDER BY created_at, job_id, revision"
    )
    for _, create in indexes:
        conn.execute(create)
    conn.execute(
        "INSERT OR IGNORE INTO jobs_gone (id, created_at, log_until) "
        "SELECT job_id, created_at, MAX(updated_at) FROM jobs_log "
        "WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = jobs_log.job_id) GROUP BY job_id, created_at"
    )
    conn.execute("DROP TABLE jobs_log_keyed_by_job")


def _make_private(path: Path) -> None:
    """The database file (and its WAL and shared-memory files) readable by the server's user only: jobs hold import
    URLs, which may carry credentials. SQLite creates the WAL and -shm files with the database file's mode."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)


# The jobs_log fields that are not a column of their own: the row has no pipe_name column, its job_metadata has it
# (rows are scanned in index order anyway).
_LOG_FIELD_SQL: Final = {"pipe_name": "json_extract(job_metadata, '$.pipe_name')"}


class _Guard:
    """SqliteStore._guard's context manager: a class, not @contextmanager (whose generator every read paid)."""

    __slots__ = ("_action", "_path")

    def __init__(self, path: Path, action: str) -> None:
        self._path = path
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, sqlite3.Error):
            raise Unavailable(f"SQLite store {self._path} cannot {self._action}: {exc}") from None


@dataclass(frozen=True, slots=True)
class SqliteCommit:
    """Group commit (module docstring): how long, in seconds, the writes of concurrent calls may gather for one
    COMMIT, and how many one COMMIT carries at most (JOBSD_SQLITE_COMMIT_WINDOW_MS, _MAX_WRITES)."""

    window: float = DEFAULT_COMMIT_WINDOW
    max_writes: int = DEFAULT_COMMIT_GROUP_MAX
    # Bytes of WAL past which new writes wait for it to start over (JOBSD_SQLITE_WAL_LIMIT_MB); 0: no limit.
    wal_limit: int = DEFAULT_WAL_LIMIT

    def __post_init__(self) -> None:
        if not self.window >= 0:
            raise InvalidArgument("commit.window", f"must be 0 or more seconds, got {self.window}")
        if self.max_writes < 1:
            raise InvalidArgument("commit.max_writes", f"must be at least 1, got {self.max_writes}")
        if self.wal_limit < 0:
            raise InvalidArgument("commit.wal_limit", f"must be 0 or more bytes, got {self.wal_limit}")


class _CommitGroup:
    """The writes of the open transaction: each waits for the one COMMIT that makes them all durable."""

    __slots__ = ("handle", "last_join", "opened", "published", "waiters")

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []
        # The jobs those writes changed, in write order: published to the change feed once committed.
        self.published: list[Job] = []
        self.handle: asyncio.TimerHandle | asyncio.Handle | None = None
        # loop.time() of the first and of the latest write that joined.
        self.opened = 0.0
        self.last_join = 0.0


@dataclass(frozen=True, slots=True)
class SqliteStats:
    """What the store's commits and WAL checkpoints did since it was created (the operator's metrics)."""

    commits: int
    committed_writes: int
    checkpoints: int
    checkpoint_failures: int
    wal_frames: int
    wal_frames_behind: int
    wal_restarts: int = 0  # holds after which the WAL started over (WAL limit in the module docstring)
    write_hold_seconds: float = 0.0  # how long every hold (restart or not) kept writes waiting, in total


class SqliteStore:
    """`jobsd.store.base.JobStore` on one SQLite file. Create, `await open()`, use, `await close()`."""

    def __init__(
        self,
        path: str | Path,
        *,
        feed_capacity: int = DEFAULT_FEED_CAPACITY,
        busy_timeout_ms: int = 5_000,
        encoder: JobEncoder | None = None,
        commit: SqliteCommit | None = None,
    ) -> None:
        self._path = Path(path)
        # Job -> wire bytes, stored beside `doc` by every write. Without one, writes store no wire and the record
        # reads raise (tests of other behaviour build stores without one).
        self._encoder = encoder
        # How long a write waits for another process's write lock before the call fails as Unavailable.
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        # (st_dev, st_ino) of the file we opened: writes into a file that was deleted or replaced would be lost.
        self._file_identity: tuple[int, int] | None = None
        # Until when (time.monotonic) the last look at the file vouches for it (see _check_file).
        self._file_ok_until = 0.0
        # The in-process change feed: every committed job write, in commit order.
        self._feed = ChangeFanout(feed_capacity)
        self._checkpointer = WalCheckpointer(self._path, busy_timeout_ms=busy_timeout_ms)
        # Group commit (see the module docstring): the open transaction's writes, how long a group may gather
        # while others write, at most how many writes one COMMIT carries, and how many the last one carried.
        commit = commit or SqliteCommit()
        self._group: _CommitGroup | None = None
        self._commit_window = commit.window
        # A group still growing waits on; one that no write joined for this long commits early.
        self._commit_gap = commit.window / COMMIT_GAP_DIVISOR
        self._commit_group_max = commit.max_writes
        self._last_group_size = 0
        self._commits = 0
        self._committed_writes = 0
        # WAL limit (module docstring): in frames once the page size is known; the hold in force, if any.
        self._wal_limit = commit.wal_limit
        self._wal_limit_frames = 0
        self._hold: asyncio.Future[None] | None = None
        self._hold_timer: asyncio.TimerHandle | None = None
        self._hold_started = 0.0
        # The checkpoint thread's run count when the last hold ended: its WAL size is stale until it runs again.
        self._hold_checkpoints = -1
        self._wal_restarts = 0
        self._write_hold_seconds = 0.0

    @property
    def path(self) -> Path:
        return self._path

    @property
    def commits(self) -> int:
        """COMMITs of writes made through this store since it was created (group commit shares one among many)."""
        return self._commits

    @property
    def committed_writes(self) -> int:
        """Writes those COMMITs made durable."""
        return self._committed_writes

    def stats(self) -> SqliteStats:
        """Counters read as they are: cheap enough for every scrape, and nothing is computed on the write path."""
        checkpointer = self._checkpointer
        return SqliteStats(
            commits=self._commits,
            committed_writes=self._committed_writes,
            checkpoints=checkpointer.checkpoints,
            checkpoint_failures=checkpointer.failures,
            wal_frames=checkpointer.wal_frames,
            wal_frames_behind=checkpointer.wal_frames_behind,
            wal_restarts=self._wal_restarts,
            write_hold_seconds=self._write_hold_seconds,
        )

    def supports(self, capability: Capability) -> bool:
        # Its change feed is in-process: another process writing the same file is not seen.
        return capability is Capability.CHANGE_FEED

    def __repr__(self) -> str:
        return f"SqliteStore({str(self._path)!r})"

    # -- lifecycle

    async def open(self) -> None:
        if self._conn is not None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            _make_private(self._path)
        except OSError as exc:
            raise Unavailable(f"SQLite store {self._path}: cannot create its directory: {exc}") from None
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; every write below says BEGIN IMMEDIATE ... COMMIT.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (journal_mode is {mode})")
            conn.execute("PRAGMA synchronous=NORMAL")
            # A bounded page cache (32 MiB): index pages of a large store stay hot; memory stays flat in its size.
            conn.execute("PRAGMA cache_size=-32768")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            # No checkpoint inside a COMMIT on the event loop: WalCheckpointer runs them on a thread of its own.
            conn.execute("PRAGMA wal_autocheckpoint=0")
            if self._wal_limit > 0:
                # A WAL that grew past the limit is cut back to it when it starts over.
                conn.execute(f"PRAGMA journal_size_limit={int(self._wal_limit)}")
                page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                self._wal_limit_frames = max(1, self._wal_limit // page_size)
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version not in (0, *_OLDER_VERSIONS, SCHEMA_VERSION):
                raise sqlite3.OperationalError(
                    f"schema version {version} is not supported (this jobsd knows {SCHEMA_VERSION})"
                )
            conn.execute("BEGIN IMMEDIATE")
            old_log = version in _OLDER_VERSIONS and _log_keyed_by_job(conn)
            if old_log:
                # Minutes for a large log, during which the server answers nothing: say why it is not up yet.
                log.warning(
                    "%s: rebuilding jobs_log with its schema-%d key (once; ~10 s per million rows)",
                    self._path,
                    SCHEMA_VERSION,
                )
                _set_old_log_aside(conn)
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            if old_log:
                _rekey_log(conn)
            if "wire" not in {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}:
                conn.execute("ALTER TABLE jobs ADD COLUMN wire BLOB")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
            stat = os.stat(self._path)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise Unavailable(f"SQLite store {self._path} cannot be opened: {exc}") from None
        self._conn = conn
        self._file_identity = (stat.st_dev, stat.st_ino)
        self._checkpointer.start()

    async def close(self) -> None:
        # The writes still gathering were made before close was asked for: commit them, so their callers return.
        self._commit_group()
        if self._hold is not None:
            self._end_hold(self._hold)
        self._feed.close()
        await self._checkpointer.stop()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def ping(self) -> None:
        self._check_file(always=True)
        with self._read("answer a health check"):
            conn = self._open_connection()
            conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
            # Taking the write lock proves the file can be written now (no other process is stuck holding it).
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")

    # -- jobs

    def _wire(self, job: Job) -> bytes | None:
        return None if self._encoder is None else self._encoder(job)

    async def insert_job(self, job: Job) -> Job:
        row = _job_row(job, self._wire(job))
        log = log_entry_for(job)
        await self._writable()
        with self._write("insert a job") as conn:
            stored = self._insert(conn, job, row, log)
        await self._committed((job,) if stored is job else ())
        return stored

    async def insert_jobs(self, jobs: Sequence[Job]) -> list[Job]:
        """One transaction for the whole batch: one commit's WAL pages instead of one per job."""
        rows = [(job, _job_row(job, self._wire(job)), log_entry_for(job)) for job in jobs]
        await self._writable()
        with self._write("insert jobs") as conn:
            self._refuse_taken_ids(conn, [job.id for job in jobs])
            stored = [self._insert(conn, job, row, log) for job, row, log in rows]
        await self._committed([job for job, kept in zip(jobs, stored, strict=True) if kept is job])
        return stored

    @staticmethod
    def _refuse_taken_ids(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
        """AlreadyExists, before a batch changes anything, if one of its ids is taken or appears twice in it."""
        if len(set(ids)) != len(ids):
            twice = next(i for i in ids if ids.count(i) > 1)
            raise AlreadyExists(f"Job with id {twice!r} appears twice in one batch")
        for start in range(0, len(ids), _IDS_PER_READ):
            chunk = ids[start : start + _IDS_PER_READ]
            taken = conn.execute(
                f"SELECT id FROM jobs WHERE id IN ({', '.join('?' * len(chunk))}) LIMIT 1", chunk
            ).fetchone()
            if taken is not None:
                raise AlreadyExists(f"Job with id {taken[0]!r} already exists")

    def _insert(self, conn: sqlite3.Connection, job: Job, row: tuple[Any, ...], log: LogEntry) -> Job:
        """Insert `job` inside the caller's transaction; the visible job holding its idempotency key instead.
        A refusal comes before any change (see `_write`)."""
        if job.idempotency_key is not None:
            existing = conn.execute(
                f"SELECT doc FROM jobs WHERE workspace_id = ? AND idempotency_key = ? AND {_VISIBLE}",
                (job.workspace_id, job.idempotency_key, to_micros(job.created_at)),
            ).fetchone()
            if existing is not None:
                return _job_from_doc(existing[0])
            # The UPDATE below changes a row: refuse a taken id before it, not at the INSERT after it.
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone() is not None:
                raise AlreadyExists(f"Job with id {job.id!r} already exists")
            # A job that is no longer visible keeps no claim on its key.
            conn.execute(
                "UPDATE jobs SET idempotency_key = NULL WHERE workspace_id = ? AND idempotency_key = ?",
                (job.workspace_id, job.idempotency_key),
            )
        try:
            conn.execute(
                f"INSERT INTO jobs (id, idempotency_key, {_JOB_COLUMNS}) VALUES (?, ?{', ?' * len(row)})",
                (job.id, job.idempotency_key, *row),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"Job with id {job.id!r} already exists") from None
        self._append_log(conn, log)
        return job

    async def get_job(self, job_id: str, now: datetime) -> Job | None:
        with self._read("read a job"):
            row = (
                self._open_connection()
                .execute(f"SELECT doc FROM jobs WHERE id = ? AND {_VISIBLE}", (job_id, to_micros(now)))
                .fetchone()
            )
        return None if row is None else _job_from_doc(row[0])

    async def get_record(self, job_id: str, now: datetime) -> JobRecord | None:
        with self._read("read a job"):
            conn = self._open_connection()
            row = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE id = ? AND {_VISIBLE}", (job_id, to_micros(now))
            ).fetchone()
            if row is None:
                return None
            wire = row[5] if row[5] is not None else self._wire_of_doc(conn, row[1])
            return JobRecord(row[1], row[2], row[0], row[3], row[4], wire)

    async def records_by_id_prefix(
        self, prefix: str, workspace_id: str | None, now: datetime, limit: int
    ) -> list[JobRecord]:
        if not prefix or limit < 1:
            raise InvalidArgument("prefix", "must not be empty, with a limit of at least 1")
        # A range on the primary key (binary collation): [prefix, prefix with its last character + 1).
        where = ["id >= ?", "id < ?", _VISIBLE]
        params: list[Any] = [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1), to_micros(now)]
        if workspace_id is not None:
            where.append("workspace_id = ?")
            params.append(workspace_id)
        with self._read("find jobs by id prefix"):
            conn = self._open_connection()
            rows = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY id LIMIT ?", (*params, limit)
            ).fetchall()
            return [
                JobRecord(
                    row[1],
                    row[2],
                    row[0],
                    row[3],
                    row[4],
                    row[5] if row[5] is not None else self._wire_of_doc(conn, row[1]),
                )
                for row in rows
            ]

    async def list_records(self, query: JobQuery) -> list[JobRecord]:
        if query.limit < 1:
            raise InvalidArgument("limit", f"must be at least 1, got {query.limit}")
        statements = self._list_statements(query, _RECORD_COLUMNS)
        with self._read("list jobs"):
            conn = self._open_connection()
            if len(statements) == 1:
                sql, params = statements[0]
                rows = conn.execute(sql, params).fetchall()
            else:
                cursors = [conn.execute(sql, params) for sql, params in statements]
                try:
                    merged = heapq.merge(*cursors, key=lambda r: (r[0], r[1]), reverse=True)
                    rows = list(islice(_unique_by_id(merged), query.limit))
                finally:
                    for cursor in cursors:
                        cursor.close()
            return [
                JobRecord(r[1], r[2], r[0], r[3], r[4], r[5] if r[5] is not None else self._wire_of_doc(conn, r[1]))
                for r in rows
            ]

    def _wire_of_doc(self, conn: sqlite3.Connection, job_id: str) -> bytes:
        """The wire of a row written before the store kept one (schema version 1): encoded from its doc."""
        row = conn.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return (self._encoder or missing_encoder)(_job_from_doc(row[0]))

    async def list_jobs(self, query: JobQuery) -> list[Job]:
        if query.limit < 1:
            raise InvalidArgument("limit", f"must be at least 1, got {query.limit}")
        statements = self._list_statements(query)
        with self._read("list jobs"):
            conn = self._open_connection()
            if len(statements) == 1:
                sql, params = statements[0]
                return [_job_from_doc(r[2]) for r in conn.execute(sql, params).fetchall()]
            # Narrow scope: one indexed query per readable data source / pipe, merged newest first and read lazily
            # (a token with many names reads about `limit` rows, not `limit` per name). A job on both a readable
            # data source and a readable pipe comes back from two queries; keep it once.
            cursors = [conn.execute(sql, params) for sql, params in statements]
            try:
                merged = heapq.merge(*cursors, key=lambda r: (r[0], r[1]), reverse=True)
                docs = [r[2] for r in islice(_unique_by_id(merged), query.limit)]
            finally:
                for cursor in cursors:
                    cursor.close()
        return [_job_from_doc(doc) for doc in docs]

    def explain_list_jobs(self, query: JobQuery) -> list[list[str]]:
        """EXPLAIN QUERY PLAN of each statement `list_jobs(query)` runs: one list of plan lines per statement."""
        with self._read("explain a query"):
            conn = self._open_connection()
            return [
                [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()]
                for sql, params in self._list_statements(query)
            ]

    def _list_statements(self, query: JobQuery, columns: str = "created_at, id, doc") -> list[tuple[str, list[Any]]]:
        where = ["workspace_id = ?", _VISIBLE]
        params: list[Any] = [query.scope.workspace_id, to_micros(query.now)]
        index = "jobs_by_workspace"
        wanted = query.filter
        for column, column_index in reversed(_FILTER_INDEXES):
            value = getattr(wanted, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
                index = column_index  # reversed: the most selective filter present wins
        _created_within(wanted, where, params)
        if query.after is not None:
            where.append("(created_at, id) < (?, ?)")
            params.extend((to_micros(query.after[0]), query.after[1]))
        if query.only_active:
            where.append(_ACTIVE)

        def select(index_name: str, extra: str | None, extra_params: Sequence[Any]) -> tuple[str, list[Any]]:
            clauses = [*where, extra] if extra else where
            sql = (
                f"SELECT {columns} FROM jobs INDEXED BY {index_name} WHERE {' AND '.join(clauses)} "
                "ORDER BY created_at DESC, id DESC LIMIT ?"
            )
            return sql, [*params, *extra_params, query.limit]

        if query.scope.everything:
            return [select(index, None, ())]
        narrowed = [
            select("jobs_by_datasource_name", "datasource_name = ?", (name,))
            for name in sorted(query.scope.datasource_names)
        ]
        narrowed += [select("jobs_by_pipe_name", "pipe_name = ?", (name,)) for name in sorted(query.scope.pipe_names)]
        # A scope that can read nothing still runs one query that matches nothing, so callers see one shape.
        return narrowed or [select(index, "0", ())]

    async def compare_and_set(self, old: Job, new: Job) -> bool:
        if new.id != old.id:
            raise InvalidArgument("job.id", f"compare_and_set needs one job, got {old.id!r} and {new.id!r}")
        if new.revision <= old.revision:
            raise InvalidArgument(
                "job.revision", f"the new revision ({new.revision}) must be greater than the old ({old.revision})"
            )
        doc = _encode_json(job_to_plain(new))
        wire = self._wire(new)
        log = log_entry_for(new) if new.status is not old.status else None
        await self._writable()
        with self._write("update a job") as conn:
            written = self._write_if_revision(conn, old, new, doc, wire)
            if written and log is not None:
                self._append_log(conn, log)
        await self._committed((new,) if written else ())
        return written

    async def compare_and_set_many(self, pairs: Sequence[tuple[Job, Job]]) -> list[bool]:
        """Each pair its own compare-and-set, all in one transaction (one commit for the batch)."""
        for old, new in pairs:
            if new.id != old.id or new.revision <= old.revision:
                raise InvalidArgument("pairs", f"each pair must be one job at a higher revision, got {old.id!r}")
        prepared = [
            (old, new, _encode_json(job_to_plain(new)), self._wire(new), new.status is not old.status)
            for old, new in pairs
        ]
        await self._writable()
        with self._write("update jobs") as conn:
            outcomes = []
            for old, new, doc, wire, status_changed in prepared:
                written = self._write_if_revision(conn, old, new, doc, wire)
                if written and status_changed:
                    self._append_log(conn, log_entry_for(new))
                outcomes.append(written)
        await self._committed([new for (_old, new, *_rest), written in zip(prepared, outcomes, strict=True) if written])
        return outcomes

    async def claim_batch(self, request: ClaimRequest, limit: int) -> list[Job]:
        """Up to `limit` claims in one transaction, each chosen as `claim_next` would choose it."""
        if isinstance(request.kinds, str):
            raise InvalidArgument("kinds", f"expected a collection of kinds, got the string {request.kinds!r}")
        now = to_micros(request.now)
        claimed: list[Job] = []
        await self._writable()
        with self._write("claim jobs") as conn:
            while len(claimed) < limit:
                job = self._claim_in(conn, request, now)
                if job is None:
                    break
                claimed.append(job)
                # The job just claimed counts towards its workspace's share for the next claim.
                request = replace(request, share=after_claim(request.share, job.workspace_id))
        await self._committed(claimed)
        return claimed

    async def claim_next(self, request: ClaimRequest) -> Job | None:
        if isinstance(request.kinds, str):
            # A bare string would be read as a set of one-letter kinds and silently match nothing.
            raise InvalidArgument("kinds", f"expected a collection of kinds, got the string {request.kinds!r}")
        now = to_micros(request.now)
        await self._writable()
        with self._write("claim a job") as conn:
            claimed = self._claim_in(conn, request, now)
        await self._committed(() if claimed is None else (claimed,))
        return claimed

    def _claim_in(self, conn: sqlite3.Connection, request: ClaimRequest, now: int) -> Job | None:
        """Choose and claim one job inside the caller's write transaction."""
        chosen = self._choose_claimable(conn, request, now)
        if chosen is None:
            return None
        job = _job_from_doc(chosen)
        claimed = request.claim(job)
        doc = _encode_json(job_to_plain(claimed))
        if not self._write_if_revision(conn, job, claimed, doc, self._wire(claimed)):
            # Impossible while we hold the write lock; refuse rather than hand out a job twice.
            raise Unavailable(f"SQLite store {self._path}: job {job.id} changed during its claim")
        if claimed.status is not job.status:
            self._append_log(conn, log_entry_for(claimed))
        return claimed

    def _choose_claimable(self, conn: sqlite3.Connection, request: ClaimRequest, now: int) -> str | None:
        """The doc of the job to claim (jobsd.domain.fairshare): the workspaces with waiting jobs in turn order,
        in each the oldest visible waiting job whose concurrency key has a free slot; within the scan bound."""
        kinds = sorted(set(request.kinds))
        walk = _ClaimWalk(conn, request, kinds, now)
        only = request.workspace_id
        if only is None:
            candidates = _waiting_workspaces(conn, kinds)
            if len(candidates) > 1:
                return self._choose_in_turn(conn, request, walk, _with_turns(conn, candidates), now)
            if not candidates:
                return None
            only = candidates[0].workspace_id
        # One workspace to look at (asked for, or the only one waiting): no turns to read; its turn is now.
        doc = walk.oldest_claimable(only)
        if doc is not None:
            _take_turn(conn, only, now)
        return doc

    @staticmethod
    def _choose_in_turn(
        conn: sqlite3.Connection, request: ClaimRequest, walk: _ClaimWalk, candidates: list[Candidate], now: int
    ) -> str | None:
        """Several workspaces waiting: the first in turn order that has a claimable job; its turn moves on."""
        for workspace_id in claim_order(candidates, request.share):
            doc = walk.oldest_claimable(workspace_id)
            if doc is not None:
                _take_turn(conn, workspace_id, next_turn(now, candidates))
                return doc
            if walk.exhausted:
                return None
        return None

    async def lapsed_leases(self, now: datetime, limit: int) -> list[Job]:
        if limit < 1:
            raise InvalidArgument("limit", f"must be at least 1, got {limit}")
        with self._read("list lapsed leases"):
            rows = (
                self._open_connection()
                .execute(
                    f"SELECT doc FROM jobs INDEXED BY jobs_leases WHERE {_RUNNING} AND lease_expires_at < ? "
                    "ORDER BY lease_expires_at, id LIMIT ?",
                    (to_micros(now), limit),
                )
                .fetchall()
            )
        return [_job_from_doc(r[0]) for r in rows]

    async def purge(self, now: datetime, log_before: datetime) -> int:
        deleted = 0
        batches = (
            (_purge_jobs, to_micros(now)),
            (_purge_log, to_micros(log_before)),
        )
        for purge_batch, bound in batches:
            while True:
                await self._writable()
                with self._write("purge expired rows") as conn:
                    count, more = purge_batch(conn, bound)
                await self._committed()
                deleted += count
                if not more:
                    break
                # Let RPCs run between batches: a large purge must not freeze the server.
                await asyncio.sleep(0)
        return deleted

    # -- jobs_log

    async def list_log(self, query: LogQuery) -> list[LogEntry]:
        if query.limit < 1:
            raise InvalidArgument("limit", f"must be at least 1, got {query.limit}")
        wanted = query.filter
        where = ["workspace_id = ?"]
        params: list[Any] = [query.workspace_id]
        for name, value in wanted.log_equalities().items():
            where.append(f"{_LOG_FIELD_SQL.get(name, name)} = ?")
            params.append(value)
        _created_within(wanted, where, params)
        if query.after is not None:
            updated_at, job_id, revision = query.after
            where.append("(updated_at, job_id, revision) < (?, ?, ?)")
            params.extend((to_micros(updated_at), job_id, revision))
        with self._read("list the jobs log"):
            conn = self._open_connection()
            if wanted.job_id is None:
                index = "INDEXED BY jobs_log_by_workspace"  # the page order
            else:
                # One job's rows are few, and the primary key finds them from the job's created_at.
                created = _log_keys_of(conn, wanted.job_id)
                if not created:
                    return []
                where.append(f"created_at IN ({', '.join('?' * len(created))})")
                params.extend(created)
                index = "INDEXED BY sqlite_autoindex_jobs_log_1"
            sql = (
                f"SELECT {_LOG_COLUMNS} FROM jobs_log {index} WHERE {' AND '.join(where)} "
                "ORDER BY updated_at DESC, job_id DESC, revision DESC LIMIT ?"
            )
            rows = conn.execute(sql, (*params, query.limit)).fetchall()
        return [
            LogEntry(
                job_id=r[0],
                revision=r[1],
                job_type=r[2],
                status=r[3],
                error=r[4],
                workspace_id=r[5],
                request_id=r[6],
                pipe_id=r[7],
                datasource_id=r[8],
                created_at=from_micros(r[9]),
                started_at=_time(r[10]),
                updated_at=from_micros(r[11]),
                job_metadata=orjson.loads(r[12]),
            )
            for r in rows
        ]

    # -- change feed

    def changes(self) -> AsyncIterator[ChangeEvent]:
        """Every job write committed after this call returns (registration happens here, not at the first
        `__anext__`). The iterator ends when it is closed (`aclose()`) or the store is."""
        self._open_connection()
        return self._feed.subscribe()

    # -- workspaces and tokens

    async def ensure_workspace(self, name: str, now: datetime) -> Workspace:
        if not name.strip():
            raise InvalidArgument("name", "a workspace name must not be empty")
        await self._writable()
        with self._write("create a workspace") as conn:
            conn.execute(
                "INSERT INTO workspaces (id, name, created_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING",
                (str(uuid.uuid4()), name, to_micros(now)),
            )
            row = conn.execute("SELECT id, name, created_at FROM workspaces WHERE name = ?", (name,)).fetchone()
        await self._committed()
        return Workspace(id=row[0], name=row[1], created_at=from_micros(row[2]))

    async def get_workspace(self, workspace_id: str) -> Workspace | None:
        return self._workspace_where("id", workspace_id)

    async def find_workspace(self, name: str) -> Workspace | None:
        return self._workspace_where("name", name)

    def _workspace_where(self, column: Literal["id", "name"], value: str) -> Workspace | None:
        """The workspace whose `column` (both are unique) is `value`, if any."""
        with self._read("read a workspace"):
            row = (
                self._open_connection()
                .execute(f"SELECT id, name, created_at FROM workspaces WHERE {column} = ?", (value,))
                .fetchone()
            )
        return None if row is None else Workspace(id=row[0], name=row[1], created_at=from_micros(row[2]))

    async def put_token(self, record: TokenRecord) -> None:
        await self._writable()
        with self._write("store a token") as conn:
            conn.execute(
                "INSERT OR REPLACE INTO tokens (token_hash, name, workspace_id, scopes, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    record.token_hash,
                    record.name,
                    record.workspace_id,
                    json.dumps(list(record.scopes)),
                    to_micros(record.created_at),
                ),
            )
        await self._committed()

    async def get_token(self, token_hash: str) -> TokenRecord | None:
        with self._read("read a token"):
            row = (
                self._open_connection()
                .execute(
                    "SELECT token_hash, name, workspace_id, scopes, created_at FROM tokens WHERE token_hash = ?",
                    (token_hash,),
                )
                .fetchone()
            )
        if row is None:
            return None
        return TokenRecord(
            token_hash=row[0],
            name=row[1],
            workspace_id=row[2],
            scopes=tuple(json.loads(row[3])),
            created_at=from_micros(row[4]),
        )

    # -- internals

    def _open_connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable(f"SQLite store {self._path} is not open")
        return self._conn

    def _check_file(self, *, always: bool = False) -> None:
        """Unavailable if the database file was removed or replaced under us (writes would silently be lost).

        Writes look at the file at most every FILE_CHECK_INTERVAL after a check that found it in place (a stat per
        write was a visible share of a job's lifecycle); a health check always looks, and after a failed check every
        write looks again until the file is back."""
        self._open_connection()
        if not always and time.monotonic() < self._file_ok_until:
            return
        self._file_ok_until = 0.0
        try:
            stat = os.stat(self._path)
        except OSError:
            raise Unavailable(f"SQLite store {self._path}: the database file is gone") from None
        if (stat.st_dev, stat.st_ino) != self._file_identity:
            raise Unavailable(f"SQLite store {self._path}: the database file was replaced; restart jobsd")
        self._file_ok_until = time.monotonic() + FILE_CHECK_INTERVAL

    def _guard(self, action: str) -> _Guard:
        """Any SQLite failure surfaces as Unavailable naming the file and what we were doing."""
        return _Guard(self._path, action)

    def _read(self, action: str) -> _Guard:
        """Before a read: commit the writes still gathering (a read sees only what is committed, and a caller that
        re-reads after losing a compare-and-set sees the write it lost to)."""
        if self._group is not None:
            self._commit_group()
        return _Guard(self._path, action)

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One write, in the open transaction (begun if none is). The caller then awaits `_committed`, which
        returns once the write is durable.

        A write refuses (raises) before it changes anything, so a refusal leaves its group as it was. There are no
        savepoints: SQLite copies every page a savepoint first touches into its statement journal, which cost a
        single create more than its COMMIT did. A failure after a change (an I/O error, a full disk) rolls the
        whole group back and fails all its writes, none of which had been acknowledged."""
        self._check_file()
        with self._guard(action):
            conn = self._open_connection()
            if self._group is None:
                conn.execute("BEGIN IMMEDIATE")
                self._group = _CommitGroup()
            changes = conn.total_changes
            try:
                yield conn
            except BaseException:
                self._undo_write(conn, changed=conn.total_changes != changes)
                raise

    def _undo_write(self, conn: sqlite3.Connection, *, changed: bool) -> None:
        """A write's body raised: keep the other writes of its group if it changed nothing, else fail them all."""
        group = self._group
        if conn.in_transaction and not changed:
            if group is not None and not group.waiters:
                # Nobody else is in this transaction: end it now rather than hold the write lock.
                self._group = None
                conn.execute("ROLLBACK")
            return
        self._group = None
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if group is not None:
            self._fail_group(group, f"SQLite store {self._path}: a write failed mid-transaction; none of it was kept")

    async def _committed(self, published: Sequence[Job] = ()) -> None:
        """Wait until the write just made (in the open group) is committed; `published` goes to the change feed
        then. When the group commits: see the module docstring."""
        group = self._group
        if group is None:  # pragma: no cover - _write always leaves a group open
            raise Unavailable(f"SQLite store {self._path}: no open transaction to commit")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        group.waiters.append(waiter)
        group.published.extend(published)
        group.last_join = now = loop.time()
        if len(group.waiters) >= self._commit_group_max:
            self._commit_group()
        elif group.handle is None:
            group.opened = now
            if self._last_group_size > 1 and self._commit_window > 0:
                group.handle = loop.call_at(now + self._commit_gap, self._commit_when_quiet)
            else:
                group.handle = loop.call_soon(self._commit_group)
        await waiter

    def _commit_when_quiet(self) -> None:
        """The gathering group's timer: commit once no write has joined for a gap, or at the end of the window."""
        group = self._group
        if group is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        until = min(group.last_join + self._commit_gap, group.opened + self._commit_window)
        if now < until:
            group.handle = loop.call_at(until, self._commit_when_quiet)
            return
        self._commit_group()

    def _commit_group(self) -> None:
        """COMMIT the open transaction; then publish its jobs in write order and release its writers."""
        group, self._group = self._group, None
        if group is None:
            return
        if group.handle is not None:
            group.handle.cancel()
        conn = self._conn
        try:
            if conn is None:
                raise sqlite3.OperationalError("the store was closed")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn is not None and conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._fail_group(group, f"SQLite store {self._path} cannot commit: {exc}")
            return
        self._last_group_size = len(group.waiters)
        self._commits += 1
        self._committed_writes += len(group.waiters)
        for job in group.published:
            self._publish(job)
        for waiter in group.waiters:
            if not waiter.done():
                waiter.set_result(None)
        checkpointer = self._checkpointer
        if (
            self._wal_limit_frames
            and checkpointer.wal_frames >= self._wal_limit_frames
            and checkpointer.checkpoints > self._hold_checkpoints
            and self._hold is None
        ):
            self._start_hold()

    # -- WAL limit (module docstring)

    def _start_hold(self) -> None:
        """Hold new writes (none is open: a COMMIT just ended) until the checkpoint thread has caught up."""
        loop = asyncio.get_running_loop()
        hold: asyncio.Future[None] = loop.create_future()
        self._hold = hold
        self._hold_started = loop.time()
        self._hold_timer = loop.call_at(self._hold_started + WAL_HOLD_MAX, self._end_hold, hold)

        def caught_up(frames: int, copied: int) -> None:  # on the checkpoint thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits any more
                loop.call_soon_threadsafe(self._end_hold, hold, frames >= 0 and copied == frames)

        self._checkpointer.catch_up(caught_up)

    def _end_hold(self, hold: asyncio.Future[None], caught_up: bool = False) -> None:
        if self._hold is not hold:
            return
        self._hold = None
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None
        checkpointer = self._checkpointer
        self._hold_checkpoints = checkpointer.checkpoints
        self._write_hold_seconds += asyncio.get_running_loop().time() - self._hold_started
        if caught_up:
            # Every frame is copied back and no write is open: the next write starts the WAL over.
            self._wal_restarts += 1
        hold.set_result(None)

    async def _writable(self) -> None:
        """Return once no hold keeps writes waiting (at once, nearly always)."""
        while self._hold is not None:
            # Shielded: a writer cancelled while it waits must not cancel the hold the others wait on.
            await asyncio.shield(self._hold)

    @staticmethod
    def _fail_group(group: _CommitGroup, message: str) -> None:
        if group.handle is not None:
            group.handle.cancel()
        for waiter in group.waiters:
            if not waiter.done():
                waiter.set_exception(Unavailable(message))

    @staticmethod
    def _write_if_revision(conn: sqlite3.Connection, old: Job, new: Job, doc: str, wire: bytes | None) -> bool:
        """Write `new` over `old` iff the stored row is still `old`: same revision, same indexed values.

        Only the indexed columns that differ are assigned: SQLite then rewrites only the indexes on those columns,
        and each index page a commit touches is one more page appended to the WAL (a progress-only heartbeat
        touches the table alone). The columns left alone are compared instead, so an `old` that is not what the
        store holds loses the compare-and-set rather than leaving an index out of step with `doc`.
        """
        before, after = _indexed_values(old), _indexed_values(new)
        assigned = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b or i == _REVISION]
        compared = [i for i in range(len(before)) if i not in assigned]
        sql = (
            f"UPDATE jobs SET {''.join(f'{_INDEXED_COLUMNS[i]} = ?, ' for i in assigned)}doc = ?, wire = ? "
            f"WHERE id = ? AND revision = ?{''.join(f' AND {_INDEXED_COLUMNS[i]} IS ?' for i in compared)}"
        )
        params = (*(after[i] for i in assigned), doc, wire, old.id, old.revision, *(before[i] for i in compared))
        return conn.execute(sql, params).rowcount == 1

    @staticmethod
    def _append_log(conn: sqlite3.Connection, entry: LogEntry) -> None:
        conn.execute(
            f"INSERT INTO jobs_log ({_LOG_COLUMNS}) VALUES ({', '.join('?' * 13)})",
            (
                entry.job_id,
                entry.revision,
                entry.job_type,
                entry.status,
                entry.error,
                entry.workspace_id,
                entry.request_id,
                entry.pipe_id,
                entry.datasource_id,
                to_micros(entry.created_at),
                _micros(entry.started_at),
                to_micros(entry.updated_at),
                _encode_json(entry.job_metadata),
            ),
        )

    def _publish(self, job: Job) -> None:
        self._feed.publish(JobChanged(job))


def _waiting_workspaces(conn: sqlite3.Connection, kinds: Sequence[str]) -> list[Candidate]:
    """Every workspace with a waiting job of `kinds` (all kinds if empty), with its oldest such job's created_at:
    one index step per workspace (skipping along workspace_id), however many jobs each one has waiting."""
    oldest: dict[str, int] = {}
    if kinds:
        head = "FROM jobs INDEXED BY jobs_waiting_by_kind WHERE status = 'waiting' AND kind = ?"
    else:
        head = "FROM jobs INDEXED BY jobs_waiting WHERE status = 'waiting'"
    first = f"SELECT workspace_id, created_at {head} ORDER BY workspace_id, created_at, id LIMIT 1"
    after = f"SELECT workspace_id, created_at {head} AND workspace_id > ? ORDER BY workspace_id, created_at, id LIMIT 1"
    for kind in kinds or (None,):
        bound: tuple[str, ...] = () if kind is None else (kind,)
        row = conn.execute(first, bound).fetchone()
        while row is not None:
            workspace_id, created_at = row
            if created_at < oldest.get(workspace_id, created_at + 1):
                oldest[workspace_id] = created_at
            row = conn.execute(after, (*bound, workspace_id)).fetchone()
    return [Candidate(workspace_id, oldest_us=created_at) for workspace_id, created_at in oldest.items()]


def _take_turn(conn: sqlite3.Connection, workspace_id: str, turn: int) -> None:
    """Move the workspace's turn on to `turn` (never back: turns only grow)."""
    conn.execute(
        "INSERT INTO turns (workspace_id, served) VALUES (?, ?) "
        "ON CONFLICT (workspace_id) DO UPDATE SET served = MAX(served, excluded.served)",
        (workspace_id, turn),
    )


def _with_turns(conn: sqlite3.Connection, candidates: list[Candidate]) -> list[Candidate]:
    """The candidates with their turns (`served`) read from the turns table."""
    served: dict[str, int] = {}
    ids = [c.workspace_id for c in candidates]
    for i in range(0, len(ids), _TURNS_PER_READ):
        chunk = ids[i : i + _TURNS_PER_READ]
        rows = conn.execute(
            f"SELECT workspace_id, served FROM turns WHERE workspace_id IN ({', '.join('?' * len(chunk))})", chunk
        )
        served.update(rows)
    return [Candidate(c.workspace_id, served.get(c.workspace_id), c.oldest_us) for c in candidates]


class _ClaimWalk:
    """One claim's walk over waiting jobs, workspace by workspace: shares the running counts it read and the scan
    bound (CLAIM_SCAN_LIMIT rows for the whole claim, whatever the number of workspaces)."""

    __slots__ = ("_conn", "_kinds", "_now", "_request", "_running", "budget")

    def __init__(self, conn: sqlite3.Connection, request: ClaimRequest, kinds: Sequence[str], now: int) -> None:
        self._conn = conn
        self._request = request
        self._kinds = kinds
        self._now = now
        self._running: dict[str, int] = {}
        self.budget = CLAIM_SCAN_LIMIT

    @property
    def exhausted(self) -> bool:
        return self.budget <= 0

    def oldest_claimable(self, workspace_id: str) -> str | None:
        """The doc of the workspace's oldest visible waiting job whose concurrency key has a free slot."""
        conn, request = self._conn, self._request
        columns = "created_at, id, kind, concurrency_key"
        tail = f"workspace_id = ? AND {_VISIBLE} ORDER BY created_at, id LIMIT {max(self.budget, 0)}"
        cursors: list[sqlite3.Cursor]
        if self._kinds:
            # One FIFO cursor per requested kind, merged: `kind IN (...)` on one index would need a sort.
            cursors = [
                conn.execute(
                    f"SELECT {columns} FROM jobs INDEXED BY jobs_waiting_by_kind "
                    f"WHERE status = 'waiting' AND kind = ? AND {tail}",
                    (kind, workspace_id, self._now),
                )
                for kind in self._kinds
            ]
        else:
            cursors = [
                conn.execute(
                    f"SELECT {columns} FROM jobs INDEXED BY jobs_waiting WHERE status = 'waiting' AND {tail}",
                    (workspace_id, self._now),
                )
            ]
        running = self._running
        try:
            candidates: Iterator[Any] = heapq.merge(*cursors, key=lambda r: (r[0], r[1]))
            for _created_at, job_id, kind, key in islice(candidates, max(self.budget, 0)):
                self.budget -= 1
                if key not in running:
                    running[key] = conn.execute(
                        f"SELECT COUNT(*) FROM jobs INDEXED BY jobs_running WHERE concurrency_key = ? AND {_RUNNING}",
                        (key,),
                    ).fetchone()[0]
                if running[key] >= request.limit_for(kind):
                    continue
                row = conn.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
                return str(row[0])
            return None
        finally:
            for cursor in cursors:
                cursor.close()
