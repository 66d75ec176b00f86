"""Jobs, log rows, workspaces and tokens as MongoDB documents.

Why every time field is stored twice: a BSON date holds milliseconds, jobsd times are microseconds. Each time
field is kept as a native date (for people reading the database and for the TTL monitor) and as an exact integer
`<field>_us` (microseconds since the epoch). Reads decode from the integers, and every query that compares or
orders times (visibility, list order, keyset pages, date filters, leases) uses them, so the MongoDB store answers
exactly like the embedded one.

Free-form objects supplied by callers (`datasource`, `params`, `result`) are stored as JSON text: their keys are
not ours to control, and a key starting with `$` or containing `.` is not a safe MongoDB field name. The data
source's id and name, which lists filter on, are kept as plain fields beside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from jobsd.domain.clock import from_micros, to_micros
from jobsd.domain.model import Job, LogEntry, TokenRecord, Workspace
from jobsd.errors import InvalidArgument
from jobsd.store.plain import job_from_plain, job_to_plain, log_entry_for

__all__ = [
    "CLAIM_LOCK",
    "CLAIM_LOCK_UNTIL",
    "LOG_OUTBOX",
    "LOG_PENDING",
    "TIME_FIELDS",
    "WIRE",
    "ceil_to_millis",
    "floor_to_millis",
    "job_document",
    "job_from_document",
    "log_document",
    "log_document_id",
    "log_from_document",
    "log_outbox_for",
    "micros",
    "token_document",
    "token_from_document",
    "workspace_from_document",
]

TIME_FIELDS: Final = ("created_at", "updated_at", "started_at", "expires_at", "lease_expires_at", "cancel_requested_at")
_JSON_FIELDS: Final = ("datasource", "params", "result")
_LOG_TIME_FIELDS: Final = ("created_at", "started_at", "updated_at")

# Bookkeeping fields of a job document that are not part of the Job.
# A claim in progress: the nonce of the claimer that locked the waiting job, and until when (µs) the lock holds.
CLAIM_LOCK: Final = "claim_lock"
CLAIM_LOCK_UNTIL: Final = "claim_lock_until_us"
# jobs_log rows written atomically with the job (same single-document write) and copied to jobs_log right after;
# LOG_PENDING is true until they are copied, so a writer that dies in between loses nothing (the sweep copies them).
LOG_OUTBOX: Final = "log_outbox"
LOG_PENDING: Final = "log_pending"
# The job's wire form (the store's encoder's bytes, BSON binary), written with the job in the same replace.
WIRE: Final = "wire"
_BOOKKEEPING: Final = frozenset({"_id", CLAIM_LOCK, CLAIM_LOCK_UNTIL, LOG_OUTBOX, LOG_PENDING, WIRE})
_MILLI: Final = timedelta(milliseconds=1)


def micros(value: datetime | None) -> int | None:
    return None if value is None else to_micros(value)


def floor_to_millis(value: datetime) -> datetime:
    """The last millisecond instant not after `value` (what BSON keeps of it)."""
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def ceil_to_millis(value: datetime) -> datetime:
    """The first millisecond instant not before `value`."""
    floor = floor_to_millis(value)
    return floor if floor == value else floor + _MILLI


def _json(field: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(field, f"cannot be stored: {exc}") from None


def log_document_id(job_id: str, revision: int) -> str:
    """Deterministic, so copying one row twice (writer and sweep racing) is a harmless duplicate-key error."""
    return f"{job_id}:{revision}"


def job_document(job: Job, outbox: list[dict[str, Any]], wire: bytes | None = None) -> dict[str, Any]:
    """The whole stored document of `job`, with these jobs_log rows still to be copied, and its wire form."""
    plain = job_to_plain(job)
    doc: dict[str, Any] = {"_id": plain.pop("id")}
    for name, value in plain.items():
        doc[name] = _json(name, value) if name in _JSON_FIELDS else value
    doc["datasource_id"] = job.datasource_id
    doc["datasource_name"] = job.datasource_name
    for name in TIME_FIELDS:
        doc[name + "_us"] = micros(plain[name])
    if job.expires_at is not None:
        # Rounded up, so the TTL monitor can never delete a job during the last millisecond it is visible.
        doc["expires_at"] = ceil_to_millis(job.expires_at)
    doc[CLAIM_LOCK] = None
    doc[CLAIM_LOCK_UNTIL] = None
    doc[LOG_OUTBOX] = outbox
    doc[LOG_PENDING] = bool(outbox)
    doc[WIRE] = wire
    return doc


def job_from_document(doc: Mapping[str, Any]) -> Job:
    plain: dict[str, Any] = {"id": doc["_id"]}
    for name, value in doc.items():
        if name in _BOOKKEEPING or name.endswith("_us") or name in ("datasource_id", "datasource_name"):
            continue
        plain[name] = json.loads(value) if name in _JSON_FIELDS and value is not None else value
    for name in TIME_FIELDS:
        # parse_time turns integers into UTC-aware datetimes: the exact value, never the millisecond date.
        plain[name] = doc.get(name + "_us")
    return job_from_plain(plain)


def log_document(entry: LogEntry) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": log_document_id(entry.job_id, entry.revision),
        "job_id": entry.job_id,
        "revision": entry.revision,
        "job_type": entry.job_type,
        "status": entry.status,
        "error": entry.error,
        "workspace_id": entry.workspace_id,
        "request_id": entry.request_id,
        "pipe_id": entry.pipe_id,
        # Not a jobs_log column (Tinybird has it in job_metadata only), but filtered on: ListJobsLog pipe_name.
        "pipe_name": entry.job_metadata.get("pipe_name"),
        "datasource_id": entry.datasource_id,
        "job_metadata": _json("job_metadata", entry.job_metadata),
    }
    for name in _LOG_TIME_FIELDS:
        value: datetime | None = getattr(entry, name)
        doc[name] = value
        doc[name + "_us"] = micros(value)
    return doc


def log_from_document(doc: dict[str, Any]) -> LogEntry:
    started = doc.get("started_at_us")
    return LogEntry(
        job_id=doc["job_id"],
        job_type=doc["job_type"],
        status=doc["status"],
        error=doc.get("error"),
        workspace_id=doc["workspace_id"],
        request_id=doc.get("request_id") or "",
        pipe_id=doc.get("pipe_id"),
        datasource_id=doc.get("datasource_id"),
        created_at=from_micros(doc["created_at_us"]),
        started_at=None if started is None else from_micros(started),
        updated_at=from_micros(doc["updated_at_us"]),
        job_metadata=json.loads(doc["job_metadata"]) if doc.get("job_metadata") else {},
        revision=int(doc["revision"]),
    )


def log_outbox_for(old: Job | None, new: Job) -> list[dict[str, Any]]:
    """The jobs_log rows a write of `new` (over `old`) carries in its outbox.

    `new`'s row when its status changed. And `old`'s row when `old` was itself a status change: its writer copied
    it right after writing, unless it died first, and this write replaces the document that remembered it. Copying
    it again is a duplicate-key no-op.
    """
    rows: list[dict[str, Any]] = []
    if old is not None and old.revision == old.status_revision:
        rows.append(log_document(log_entry_for(old)))
    if old is None or new.status is not old.status:
        rows.append(log_document(log_entry_for(new)))
    return rows


def workspace_from_document(doc: dict[str, Any]) -> Workspace:
    return Workspace(id=doc["_id"], name=doc["name"], created_at=from_micros(doc["created_at_us"]))


def token_document(record: TokenRecord) -> dict[str, Any]:
    return {
        "_id": record.token_hash,
        "name": record.name,
        "workspace_id": record.workspace_id,
        "scopes": list(record.scopes),
        "created_at": record.created_at,
        "created_at_us": to_micros(record.created_at),
    }


def token_from_document(doc: dict[str, Any]) -> TokenRecord:
    return TokenRecord(
        token_hash=doc["_id"],
        name=doc["name"],
        workspace_id=doc.get("workspace_id"),
        scopes=tuple(doc.get("scopes") or ()),
        created_at=from_micros(doc["created_at_us"]),
    )
