"""Fast seeding of the embedded store: batched SQL into the schema `SqliteStore` creates, never one RPC per job.

The store opens the file (so its schema and indexes exist), then one plain sqlite3 connection inserts rows in
large transactions with durability off (seeding is not a service write; a crash just means seed again). Each row
is what `SqliteStore.insert_job` would write for the same job: the indexed columns, the JSON `doc` made by
`job_to_plain` (datetimes as integer microseconds) and the `wire` bytes the app's encoder makes (`job_to_pb`; built
once per template and status, then only the per-row fields set). `verify()` reads a sample back through
`SqliteStore` and the domain decoder, and compares each wire with a fresh encoding, so a change of the store's
layout makes the bench fail loudly rather than measure garbage.

The jobs spread over a few workspaces, every kind, 40 pipes and data sources per workspace and a realistic mix of
statuses (mostly done), with `created_at` uniform over the last 46 h, so every ListJobs filter has full pages
and the 48 h bound holds for the whole run. Each job also has the `jobs_log` rows its status changes would have
written (waiting; then working and its final status), so the log's key is as large as the store's jobs make it and
a write's log row lands in a table of millions, as on a server that has been running (a month's log is larger
still: the log outlives its jobs).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from jobsd.api.codec import JobWireCodec, job_to_pb
from jobsd.domain.auth import ADMIN, JOBS_CREATE, JOBS_EXECUTE, hash_token
from jobsd.domain.clock import to_micros
from jobsd.domain.model import Job, JobStatus, TokenRecord
from jobsd.domain.rules import concurrency_key
from jobsd.store.plain import job_from_plain, job_to_plain
from jobsd.store.sqlite.store import _JOB_COLUMNS, _LOG_COLUMNS, SqliteStore
from jobsd_client import pb

__all__ = [
    "ADMIN_TOKEN",
    "SERVICE_TOKEN",
    "SeedInfo",
    "count_jobs",
    "expires_soon",
    "sample",
    "seed_to",
    "seeded_without_log",
    "verify",
]

# Fixed secrets: the store is a throw-away file and the server listens on 127.0.0.1 only.
ADMIN_TOKEN = "bench-admin-token"
SERVICE_TOKEN = "bench-service-token"
WORKSPACES = ("default", "acme", "globex", "initech")
KINDS = ("import", "populateview", "copy", "query", "delete_data", "sink")
PIPES_PER_WORKSPACE = 40
SPREAD = timedelta(hours=46)
BATCH = 25_000
# (status, share): mostly finished jobs, as in a store that has been running for two days. Waiting jobs are
# only of kind `sink`, which no benchmark claims, so the lifecycle figure never picks up seeded jobs.
STATUS_MIX = ((JobStatus.DONE, 0.90), (JobStatus.ERROR, 0.05), (JobStatus.CANCELLED, 0.03))
WAITING_SHARE = 0.02


@dataclass(frozen=True, slots=True)
class SeedInfo:
    jobs: int
    added: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


def count_jobs(path: Path) -> int:
    if not path.exists():
        return 0
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def seeded_without_log(path: Path) -> bool:
    """Whether the store holds jobs but no jobs_log rows: seeded by a bench from before the seeder wrote them, so its
    figures would not compare with a store seeded now (read-only: never creates the file)."""
    if not path.exists():
        return False
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        jobs = conn.execute("SELECT EXISTS (SELECT 1 FROM jobs)").fetchone()[0]
        logged = conn.execute("SELECT EXISTS (SELECT 1 FROM jobs_log)").fetchone()[0]
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return bool(jobs) and not logged


def expires_soon(path: Path, within: timedelta) -> bool:
    """Whether the store's first job expires within `within` from now (read-only: never creates the file).

    Seeded jobs are spread over 46 hours and kept 48, so a store is whole for only ~2 hours after seeding; past
    that the oldest expire, GetJob's sample starts to answer NOT_FOUND and the store holds fewer jobs than it
    says. The bench re-seeds such a store before it measures."""
    if not path.exists():
        return False
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        first = conn.execute("SELECT MIN(expires_at) FROM jobs").fetchone()[0]
    except sqlite3.OperationalError:
        return False
    finally:
        conn.close()
    return first is not None and int(first) <= to_micros(datetime.now(UTC) + within)


async def _prepare(path: Path) -> dict[str, str]:
    """Schema, workspaces and the two bench tokens, through the store itself. Returns workspace name -> id."""
    store = SqliteStore(path)
    await store.open()
    try:
        now = datetime.now(UTC)
        ids = {name: (await store.ensure_workspace(name, now)).id for name in WORKSPACES}
        await store.put_token(TokenRecord(hash_token(ADMIN_TOKEN), "bench admin", ids["default"], (ADMIN,), now))
        await store.put_token(
            TokenRecord(hash_token(SERVICE_TOKEN), "bench service", None, (JOBS_CREATE, JOBS_EXECUTE), now)
        )
        return ids
    finally:
        await store.close()


def _template(workspace_id: str, kind: str, pipe: int) -> dict[str, Any]:
    """The plain form of a typical job of this kind (every per-job field is overwritten by the row maker)."""
    now = datetime.now(UTC)
    ds: dict[str, Any] = {
        "id": f"t_{workspace_id[:8]}_{pipe:04d}",
        "name": f"events_{pipe:02d}",
        "type": "csv",
        "statistics": {"bytes": 123456, "row_count": 4567},
        "used_by": [],
        "engine": {"engine": "MergeTree", "sorting_key": "timestamp"},
    }
    piped = kind in ("populateview", "copy", "sink")
    job = Job(
        id="x",
        workspace_id=workspace_id,
        kind=kind,
        status=JobStatus.DONE,
        created_at=now,
        updated_at=now,
        revision=4,
        status_revision=4,
        concurrency_key=concurrency_key(workspace_id, kind, ds["name"]),
        expires_at=now,
        started_at=now,
        datasource=ds,
        pipe_id=f"t_pipe_{pipe:04d}" if piped else None,
        pipe_name=f"pipe_{pipe:02d}" if piped else None,
        query_id="01HZX3Y6Q8W9E7R5T3Y1U2I4O6" if kind in ("populateview", "copy", "query") else None,
        query_sql="SELECT * FROM events WHERE ts > now() - INTERVAL 1 DAY" if kind in ("copy", "query") else None,
        mode="append" if kind in ("import", "copy") else None,
        url="https://example.com/exports/events.csv" if kind == "import" else None,
        progress_percentage=100.0,
        attempt=1,
        worker_id="executor-1",
    )
    plain = job_to_plain(job)
    for name, value in list(plain.items()):
        if isinstance(value, datetime):
            plain[name] = to_micros(value)
    return plain


_TEMPLATES: dict[tuple[str, str, int], dict[str, Any]] = {}
# Serialised pb.Job per (workspace, kind, pipe, status): the fields every row of that key shares.
_WIRES: dict[tuple[str, str, int, str], bytes] = {}


def _wire(key: tuple[str, str, int, str], plain: dict[str, Any]) -> bytes:
    """What `job_to_pb(job).SerializeToString()` gives for this row: the key's shared message, per-row fields set."""
    shared = _WIRES.get(key)
    if shared is None:
        shared = _WIRES[key] = job_to_pb(job_from_plain(plain)).SerializeToString()
    msg = pb.Job.FromString(shared)
    msg.id = plain["id"]
    msg.created_at.FromMicroseconds(plain["created_at"])
    msg.updated_at.FromMicroseconds(plain["updated_at"])
    if plain["started_at"] is None:
        msg.ClearField("started_at")
    else:
        msg.started_at.FromMicroseconds(plain["started_at"])
    if plain.get("import_id") is not None:
        msg.import_id = plain["import_id"]
    return msg.SerializeToString()


def _batch(task: tuple[int, list[str], int]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """One batch of rows (runs in the seeding helper process)."""
    seed, ws_ids, count = task
    if not _TEMPLATES:
        for ws in ws_ids:
            for kind in KINDS:
                for p in range(PIPES_PER_WORKSPACE):
                    _TEMPLATES[(ws, kind, p)] = _template(ws, kind, p)
    return _rows(random.Random(seed), ws_ids, _TEMPLATES, count, _wire)


def _rows(
    rng: random.Random,
    ws_ids: list[str],
    templates: dict[tuple[str, str, int], dict[str, Any]],
    count: int,
    wire: Any,
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The jobs rows and their jobs_log rows."""
    now = to_micros(datetime.now(UTC))
    spread = int(SPREAD.total_seconds() * 1_000_000)
    retention = int(timedelta(hours=48).total_seconds() * 1_000_000)
    statuses = [s for s, _ in STATUS_MIX]
    weights = [w for _, w in STATUS_MIX]
    created = sorted(now - rng.randrange(spread) - 60_000_000 for _ in range(count))
    rows = []
    log_rows: list[tuple[Any, ...]] = []
    dumps = json.JSONEncoder(separators=(",", ":")).encode
    for created_at in created:
        ws = ws_ids[rng.randrange(len(ws_ids))]
        pipe = rng.randrange(PIPES_PER_WORKSPACE)
        if rng.random() < WAITING_SHARE:
            kind, status = "sink", JobStatus.WAITING
        else:
            kind = KINDS[rng.randrange(len(KINDS))]
            status = rng.choices(statuses, weights)[0]
        plain = dict(templates[(ws, kind, pipe)])
        job_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        expires_at = created_at + retention
        plain["id"] = job_id
        plain["status"] = status.value
        plain["created_at"] = created_at
        plain["expires_at"] = expires_at
        if status is JobStatus.WAITING:
            plain.update(updated_at=created_at, started_at=None, revision=1, status_revision=1, attempt=0)
            plain.update(worker_id=None, progress_percentage=0.0)
        else:
            plain["started_at"] = created_at + 1_000_000
            plain["updated_at"] = created_at + 5_000_000
            if status is JobStatus.ERROR:
                plain["error"] = "There was an error with the import: the URL answered 404"
        plain["request_id"] = job_id
        if kind == "import":
            plain["import_id"] = job_id
        ds = plain["datasource"]
        log_rows.extend(_log_rows(plain, status, kind, ws, created_at, dumps))
        rows.append(
            (
                job_id,
                None,
                ws,
                kind,
                status.value,
                created_at,
                expires_at,
                None,
                plain["pipe_id"],
                plain["pipe_name"],
                ds["name"],
                plain["concurrency_key"],
                plain["revision"],
                dumps(plain),
                wire((ws, kind, pipe, status.value), plain),
            )
        )
    return rows, log_rows


def _log_rows(
    plain: dict[str, Any], status: JobStatus, kind: str, ws: str, created_at: int, dumps: Any
) -> list[tuple[Any, ...]]:
    """The job's status changes as `log_entry_for` writes them (in `_LOG_COLUMNS` order)."""
    ds = plain["datasource"]
    changes: list[tuple[int, str, int | None, int, str | None]] = [(1, "waiting", None, created_at, None)]
    if status is not JobStatus.WAITING:
        started = created_at + 1_000_000
        changes.append((2, "working", started, started, None))
        changes.append((plain["revision"], status.value, started, plain["updated_at"], plain.get("error")))
    rows = []
    for revision, status_text, started_at, updated_at, error in changes:
        metadata = {
            "kind": kind,
            "revision": revision,
            "attempt": 0 if revision == 1 else 1,
            "datasource_name": ds["name"],
            "pipe_name": plain["pipe_name"],
            "progress_percentage": 100.0 if status_text == "done" else 0.0,
            "quarantine_rows": 0,
            "invalid_lines": 0,
        }
        rows.append(
            (
                plain["id"],
                revision,
                kind,
                status_text,
                error,
                ws,
                plain["request_id"],
                plain["pipe_id"],
                ds["id"],
                created_at,
                started_at,
                updated_at,
                dumps(metadata),
            )
        )
    return rows


def seed_to(path: Path, target: int, *, seed: int = 7, progress: bool = True) -> SeedInfo:
    """Add jobs until the store at `path` holds `target`."""
    ws_map = asyncio.run(_prepare(path))
    ws_ids = list(ws_map.values())
    have = count_jobs(path)
    if have >= target:
        return SeedInfo(have, 0, 0.0)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-1048576")  # 1 GiB: the random-id primary key stays in memory
    columns = ", ".join(c.strip() for c in _JOB_COLUMNS.split(","))
    sql = f"INSERT INTO jobs (id, idempotency_key, {columns}) VALUES ({', '.join('?' * 15)})"
    log_sql = f"INSERT INTO jobs_log ({_LOG_COLUMNS}) VALUES ({', '.join('?' * 13)})"
    started = time.perf_counter()
    added = 0
    # Bulk load without the secondary indexes, then let the store rebuild them (a sort per index is much faster
    # than a million random B-tree inserts into each); the store's own schema statements recreate them.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('jobs', 'jobs_log') "
        "AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    try:
        # Another process makes the rows (JSON encoding is most of the cost) while this one writes them.
        sizes = [min(BATCH, target - have - done) for done in range(0, target - have, BATCH)]
        tasks = [(seed * 1_000_003 + have + i, ws_ids, n) for i, n in enumerate(sizes)]
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            for rows, log_rows in pool.imap(_batch, tasks):
                conn.execute("BEGIN")
                conn.executemany(sql, rows)
                conn.executemany(log_sql, log_rows)
                conn.execute("COMMIT")
                added += len(rows)
                if progress and (added // BATCH) % 40 == 0:
                    rate = added / (time.perf_counter() - started)
                    print(f"  seeded {have + added:,}/{target:,} ({rate:,.0f}/s)", flush=True)
        inserted = time.perf_counter()
        conn.execute("PRAGMA threads=2")
        for _, create in indexes:
            conn.execute(create)
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if progress:
            indexed = time.perf_counter() - inserted
            print(f"  inserted {added:,} rows in {inserted - started:.1f}s, indexed in {indexed:.1f}s", flush=True)
    finally:
        conn.close()
    return SeedInfo(have + added, added, time.perf_counter() - started)


def sample(path: Path, count: int, workspace: str = "default", seed: int = 11) -> list[str]:
    """`count` random visible job ids of `workspace` (what GetJob asks for)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        ws_id = conn.execute("SELECT id FROM workspaces WHERE name = ?", (workspace,)).fetchone()[0]
        # rowid ranges are cheap to sample from without scanning a million rows.
        top = int(conn.execute("SELECT MAX(rowid) FROM jobs").fetchone()[0])
        rng = random.Random(seed)
        ids: list[str] = []
        while len(ids) < count:
            picks = [rng.randrange(1, top + 1) for _ in range(count)]
            marks = ",".join("?" * len(picks))
            rows = conn.execute(
                f"SELECT id FROM jobs WHERE rowid IN ({marks}) AND workspace_id = ? AND status != 'waiting'",
                (*picks, ws_id),
            ).fetchall()
            ids.extend(r[0] for r in rows)
        return ids[:count]
    finally:
        conn.close()


def verify(path: Path, job_ids: list[str]) -> None:
    """Read seeded jobs back through the real store: the bench's rows must be what jobsd itself would read."""

    async def check() -> None:
        encode = JobWireCodec()
        store = SqliteStore(path, encoder=encode)
        await store.open()
        try:
            now = datetime.now(UTC)
            for job_id in job_ids:
                job = await store.get_job(job_id, now)
                record = await store.get_record(job_id, now)
                if job is None or record is None:
                    raise RuntimeError(f"seeded job {job_id} is not readable through SqliteStore")
                if pb.Job.FromString(record.wire) != encode.message(job):
                    raise RuntimeError(f"seeded job {job_id}: its wire bytes are not what jobsd would store")
        finally:
            await store.close()

    asyncio.run(check())
