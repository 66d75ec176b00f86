"""Job <-> plain dict, shared by the store backends (SQLite keeps it as JSON, MongoDB as a document)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from jobsd.domain.clock import from_micros, utc
from jobsd.domain.model import (
    Job,
    JobStatus,
    LogEntry,
    ProcessedData,
    QueryProgress,
    Statistics,
    new_job,
    new_log_entry,
)
from jobsd.domain.redaction import scrub

__all__ = ["job_from_plain", "job_to_plain", "log_entry_for", "parse_time"]

# A status's value by its member: a dict read, where `status.value` is a Python-level enum property.
_STATUS_VALUE: dict[JobStatus, str] = {status: status.value for status in JobStatus}
_TIME_FIELDS = ("created_at", "updated_at", "started_at", "expires_at", "lease_expires_at", "cancel_requested_at")


def parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return utc(value)
    if isinstance(value, int):
        return from_micros(value)
    return utc(datetime.fromisoformat(str(value)))


def job_to_plain(job: Job) -> dict[str, Any]:
    """Every stored field; datetimes stay datetimes (each backend encodes them its own way)."""
    return {
        "id": job.id,
        "workspace_id": job.workspace_id,
        "kind": job.kind,
        "status": _STATUS_VALUE[job.status],
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "revision": job.revision,
        "status_revision": job.status_revision,
        "concurrency_key": job.concurrency_key,
        "expires_at": job.expires_at,
        "started_at": job.started_at,
        "datasource": job.datasource,
        "pipe_id": job.pipe_id,
        "pipe_name": job.pipe_name,
        "query_id": job.query_id,
        "query_sql": job.query_sql,
        "mode": job.mode,
        "url": job.url,
        "import_id": job.import_id,
        "params": job.params,
        "result": job.result,
        "progress_percentage": job.progress_percentage,
        "queries": [{"query_id": q.query_id, "status": q.status} for q in job.queries] if job.queries else [],
        "statistics": None
        if job.statistics is None
        else {"bytes": job.statistics.bytes, "row_count": job.statistics.row_count},
        "quarantine_rows": job.quarantine_rows,
        "invalid_lines": job.invalid_lines,
        "processed_data": None
        if job.processed_data is None
        else {
            "read_rows": job.processed_data.read_rows,
            "read_bytes": job.processed_data.read_bytes,
            "written_rows": job.processed_data.written_rows,
            "written_bytes": job.processed_data.written_bytes,
        },
        "error": job.error,
        "errors": list(job.errors),
        "attempt": job.attempt,
        "returns": job.returns,
        "note": job.note,
        "worker_id": job.worker_id,
        "lease_token": job.lease_token,
        "lease_expires_at": job.lease_expires_at,
        "idempotency_key": job.idempotency_key,
        "request_id": job.request_id,
        "cancel_requested_at": job.cancel_requested_at,
    }


def job_from_plain(d: dict[str, Any]) -> Job:
    times = {name: parse_time(d.get(name)) for name in _TIME_FIELDS}
    stats = d.get("statistics")
    processed = d.get("processed_data")
    created_at = times["created_at"]
    updated_at = times["updated_at"]
    assert created_at is not None and updated_at is not None
    return new_job(
        id=d["id"],
        workspace_id=d["workspace_id"],
        kind=d["kind"],
        status=JobStatus(d["status"]),
        created_at=created_at,
        updated_at=updated_at,
        revision=int(d["revision"]),
        status_revision=int(d["status_revision"]),
        concurrency_key=d["concurrency_key"],
        expires_at=times["expires_at"],
        started_at=times["started_at"],
        datasource=d.get("datasource"),
        pipe_id=d.get("pipe_id"),
        pipe_name=d.get("pipe_name"),
        query_id=d.get("query_id"),
        query_sql=d.get("query_sql"),
        mode=d.get("mode"),
        url=d.get("url"),
        import_id=d.get("import_id"),
        params=dict(d.get("params") or {}),
        result=dict(d.get("result") or {}),
        progress_percentage=float(d.get("progress_percentage") or 0.0),
        queries=tuple(QueryProgress(q["query_id"], q["status"]) for q in d.get("queries") or ()),
        statistics=None if stats is None else Statistics(int(stats["bytes"]), int(stats["row_count"])),
        quarantine_rows=int(d.get("quarantine_rows") or 0),
        invalid_lines=int(d.get("invalid_lines") or 0),
        processed_data=None if processed is None else ProcessedData(**{k: int(v) for k, v in processed.items()}),
        error=d.get("error"),
        errors=tuple(d.get("errors") or ()),
        attempt=int(d.get("attempt") or 0),
        returns=int(d.get("returns") or 0),
        note=d.get("note"),
        worker_id=d.get("worker_id"),
        lease_token=d.get("lease_token"),
        lease_expires_at=times["lease_expires_at"],
        idempotency_key=d.get("idempotency_key"),
        request_id=d.get("request_id"),
        cancel_requested_at=times["cancel_requested_at"],
    )


def log_entry_for(job: Job) -> LogEntry:
    """The jobs_log row for the job's current status (written with every status change)."""
    datasource = job.datasource
    datasource_name = datasource_id = None
    if datasource is not None:  # Job.datasource_name and .datasource_id, read once each
        if (name := datasource.get("name")) is not None:
            datasource_name = str(name)
        if (ds_id := datasource.get("id")) is not None:
            datasource_id = str(ds_id)
    metadata: dict[str, Any] = {
        "kind": job.kind,
        "revision": job.revision,
        "attempt": job.attempt,
        "datasource_name": datasource_name,
        "pipe_name": job.pipe_name,
        "progress_percentage": job.progress_percentage,
        "quarantine_rows": job.quarantine_rows,
        "invalid_lines": job.invalid_lines,
    }
    if job.statistics is not None:
        metadata["statistics"] = {"bytes": job.statistics.bytes, "row_count": job.statistics.row_count}
    if job.processed_data is not None:
        metadata["processed_data"] = job_to_plain(job)["processed_data"]
    if job.errors:
        metadata["errors"] = [scrub(text, job.url) for text in job.errors]
    return new_log_entry(
        job_id=job.id,
        job_type=job.kind,
        status=_STATUS_VALUE[job.status],
        # What a worker wrote may repeat the import URL's credentials: never into the archive.
        error=scrub(job.error, job.url) if job.error is not None else None,
        workspace_id=job.workspace_id,
        request_id=job.request_id or "",
        pipe_id=job.pipe_id,
        datasource_id=datasource_id,
        created_at=job.created_at,
        started_at=job.started_at,
        updated_at=job.updated_at,
        job_metadata=metadata,
        revision=job.revision,
    )
