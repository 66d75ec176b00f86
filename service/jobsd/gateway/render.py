"""jobsd.v1 messages -> the JSON of the Tinybird Jobs API (list item, detail per kind, jobs_log row, workspace).

Pure functions, no I/O: the handlers pass the base URL that `job_url` is built on. The shapes follow the reference
document field for field: timestamps as `YYYY-MM-DD HH:MM:SS.ffffff` UTC, `null` where the document shows null,
lower-case status names.
"""

from __future__ import annotations

from collections.abc import Callable
from time import gmtime
from typing import Any, Final

from google.protobuf import struct_pb2, timestamp_pb2

from jobsd_client import pb
from jobsd_client.convert import plain_struct, plain_value

__all__ = [
    "JOBS_LOG_COLUMNS",
    "job_detail",
    "job_event_detail",
    "job_list_event",
    "job_list_item",
    "kind_info",
    "log_entry_row",
    "plain_struct",
    "status_name",
    "timestamp_text",
    "workspace_info",
]

_STATUS_PREFIX = "JOB_STATUS_"

JsonObject = dict[str, Any]
_TIME_TEXT = "%d-%02d-%02d %02d:%02d:%02d.%06d"


def timestamp_text(ts: timestamp_pb2.Timestamp, present: bool = True) -> str | None:
    """`2024-07-22 11:47:58.207606` (UTC, no zone), or None when the field is unset."""
    if not present:
        return None
    # gmtime and %-formatting: the same text as ToDatetime(...).strftime(...) at a fraction of the cost.
    t = gmtime(ts.seconds)
    return _TIME_TEXT % (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, ts.nanos // 1000)


def _optional_ts(message: Any, field: str) -> str | None:
    return timestamp_text(getattr(message, field), message.HasField(field))


# Every status value -> its name in the JSON: one dict lookup per render instead of EnumTypeWrapper.Name.
_STATUS_TEXT: dict[int, str] = {
    value: name.removeprefix(_STATUS_PREFIX).lower() for name, value in pb.JobStatus.items()
}


def status_name(status: int) -> str:
    """JOB_STATUS_DONE -> "done"."""
    text = _STATUS_TEXT.get(status)
    if text is None:  # not a JobStatus: the enum's own error
        name: str = pb.JobStatus.Name(pb.JobStatus.ValueType(status))
        return name.removeprefix(_STATUS_PREFIX).lower()
    return text


def _optional(message: Any, field: str) -> str | None:
    """An `optional string` field, or None when unset."""
    return getattr(message, field) if message.HasField(field) else None


def _reported_datasource(job: pb.Job) -> struct_pb2.Struct | None:
    """`result.datasource`: the target's full object as the worker found it after the work (the executors report it)."""
    value = job.result.fields.get("datasource")  # get, not [key]: a message map's [key] inserts a missing key
    if value is None:
        return None
    return value.struct_value if value.WhichOneof("kind") == "struct_value" else None


def _text_field(struct: struct_pb2.Struct, key: str) -> str:
    if key not in struct.fields:
        return ""
    value = struct.fields[key]
    return value.string_value if value.WhichOneof("kind") == "string_value" else ""


def _datasource_ref(job: pb.Job, reported: struct_pb2.Struct | None = None) -> JsonObject | None:
    """`{id, name}`: what the worker reported, else the typed ref, else the creator's object."""
    if reported is None:
        reported = _reported_datasource(job)
    ds_id = name = ""
    if reported is not None:
        ds_id, name = _text_field(reported, "id"), _text_field(reported, "name")
    ds_id, name = ds_id or job.datasource_ref.id, name or job.datasource_ref.name
    if not (ds_id and name):
        ds_id, name = ds_id or _text_field(job.datasource, "id"), name or _text_field(job.datasource, "name")
    if not ds_id and not name:
        return None
    return {"id": ds_id, "name": name}


def _text(value: Any) -> str:
    """What `_text_field` reads, from a plain value: the string, else ""."""
    return value if isinstance(value, str) else ""


# A Struct's keys come out of protobuf's map in hash order, which differs from one process to the next (upb seeds it
# with an address), so plain_struct sorts them at every depth, and a data source's keys are then shown as the
# reference lists them, followed by any others by name.
_DATASOURCE_KEYS: Final = (
    "id",
    "name",
    "cluster",
    "tags",
    "created_at",
    "updated_at",
    "statistics",
    "replicated",
    "version",
    "project",
    "headers",
    "shared_with",
    "engine",
    "description",
    "used_by",
    "last_commit",
    "errors_discarded_at",
    "type",
)
# After `id` and `name`, which the detail sets first itself.
_DATASOURCE_ORDER: Final = _DATASOURCE_KEYS[2:]
_DATASOURCE_LISTED: Final = frozenset(_DATASOURCE_KEYS)


def _datasource_full(job: pb.Job) -> JsonObject | None:
    """The detail's `datasource`, with `id` and `name` first as in the reference.

    The object the worker reported in `result.datasource` once the job ran (the data plane's full metadata, with
    current statistics and updated_at), else the object the creator supplied; never merged, so the detail shows one
    data source as one party described it. `id` and `name` as `_datasource_ref` chooses them, read off the object
    once it is plain rather than from the Struct a second time.
    """
    reported = _reported_datasource(job)
    full = plain_struct(reported if reported is not None else job.datasource)
    ds_id = name = ""
    if reported is not None:
        ds_id, name = _text(full.get("id")), _text(full.get("name"))
    if not (ds_id and name):
        ref = job.datasource_ref
        ds_id, name = ds_id or ref.id, name or ref.name
        if not (ds_id and name):
            if reported is None:
                ds_id, name = ds_id or _text(full.get("id")), name or _text(full.get("name"))
            else:
                ds_id = ds_id or _text_field(job.datasource, "id")
                name = name or _text_field(job.datasource, "name")
    if not ds_id and not name:
        return None
    # `id` and `name` first, as chosen; the object's other keys in the reference's order, then by name.
    detail: JsonObject = {"id": ds_id, "name": name}
    listed: list[str] = [key for key in _DATASOURCE_ORDER if key in full]
    others = [key for key in full if key not in _DATASOURCE_LISTED]
    if others:
        others.sort()
        listed += others
    for key in listed:
        detail[key] = full[key]
    return detail


def job_url(base_url: str, job_id: str) -> str:
    return f"{base_url.rstrip('/')}/v0/jobs/{job_id}"


def job_list_item(job: pb.Job, base_url: str) -> JsonObject:
    """One entry of `GET /v0/jobs`."""
    item: JsonObject = {
        "id": job.id,
        "kind": job.kind,
        "status": status_name(job.status),
        "created_at": _optional_ts(job, "created_at"),
        "updated_at": _optional_ts(job, "updated_at"),
        "is_cancellable": job.is_cancellable,
        "job_url": job_url(base_url, job.id),
        "datasource": _datasource_ref(job),
    }
    for field in ("pipe_id", "pipe_name"):
        if job.HasField(field):
            item[field] = getattr(job, field)
    return item


def job_list_event(job: pb.Job, base_url: str) -> JsonObject:
    """The `data:` of a `GET /v0/jobs/events` event: the list item, plus what a live list shows and orders by."""
    return {
        **job_list_item(job, base_url),
        "progress_percentage": float(job.progress_percentage),
        "revision": job.revision,
    }


def _statistics(job: pb.Job) -> JsonObject | None:
    # Unset until the worker reports it: the reference shows null until then.
    if not job.HasField("statistics"):
        return None
    statistics = job.statistics
    return {"bytes": statistics.bytes, "row_count": statistics.row_count}


def _processed_data(job: pb.Job) -> JsonObject:
    data = job.processed_data
    return {
        "read_rows": data.read_rows,
        "read_bytes": data.read_bytes,
        "written_rows": data.written_rows,
        "written_bytes": data.written_bytes,
    }


def _queries(job: pb.Job) -> list[JsonObject]:
    queries = job.queries  # a slice, not iteration: that walks __getitem__ to an IndexError
    return [{"query_id": q.query_id, "status": q.status} for q in queries[:]] if queries else []


def _import_fields(job: pb.Job) -> JsonObject:
    return {
        "import_id": _optional(job, "import_id") or job.id,
        "mode": _optional(job, "mode"),
        "url": _optional(job, "url"),
        "statistics": _statistics(job),
        "quarantine_rows": job.quarantine_rows,
        "invalid_lines": job.invalid_lines,
    }


def _pipe_query(job: pb.Job) -> JsonObject:
    # The query a copy, query or sink job ran and the pipe it came from: the first fields of their details.
    return {
        "query_id": _optional(job, "query_id"),
        "query_sql": _optional(job, "query_sql"),
        "pipe_id": _optional(job, "pipe_id"),
        "pipe_name": _optional(job, "pipe_name"),
    }


def _populate_fields(job: pb.Job) -> JsonObject:
    return {
        "query_id": _optional(job, "query_id"),
        "pipe_id": _optional(job, "pipe_id"),
        "pipe_name": _optional(job, "pipe_name"),
        "queries": _queries(job),
        "progress_percentage": float(job.progress_percentage),
    }


def _copy_fields(job: pb.Job) -> JsonObject:
    return {
        **_pipe_query(job),
        "mode": _optional(job, "mode"),
        "processed_data": _processed_data(job),
    }


def _query_fields(job: pb.Job) -> JsonObject:
    return {
        **_pipe_query(job),
        "statistics": _statistics(job),
        "result": plain_struct(job.result),
    }


def _struct_entry(struct: struct_pb2.Struct, key: str) -> Any:
    """`plain_struct(struct).get(key)`, without converting the other entries."""
    value = struct.fields.get(key)
    return None if value is None else plain_value(value)


def _delete_fields(job: pb.Job) -> JsonObject:
    return {
        "delete_condition": _struct_entry(job.params, "delete_condition"),
        "rows_affected": _struct_entry(job.result, "rows_affected"),
    }


def _sink_fields(job: pb.Job) -> JsonObject:
    return {
        **_pipe_query(job),
        "statistics": _statistics(job),
        "processed_data": _processed_data(job),
    }


def _custom_fields(job: pb.Job) -> JsonObject:
    """A kind the operator declared: what every worker can report, and its own inputs and outputs."""
    return {
        "pipe_id": _optional(job, "pipe_id"),
        "pipe_name": _optional(job, "pipe_name"),
        "progress_percentage": float(job.progress_percentage),
        "statistics": _statistics(job),
        "params": plain_struct(job.params),
        "result": plain_struct(job.result),
    }


_KIND_FIELDS: dict[str, Callable[[pb.Job], JsonObject]] = {
    "import": _import_fields,
    "populateview": _populate_fields,
    "copy": _copy_fields,
    "query": _query_fields,
    "delete_data": _delete_fields,
    "sink": _sink_fields,
}


def kind_info(kind: pb.Kind) -> JsonObject:
    """One entry of `GET /v0/kinds`."""
    return {
        "name": kind.name,
        "description": kind.description,
        "builtin": kind.builtin,
        "cancellable_while_working": kind.cancellable_while_working,
        "concurrency_key": kind.concurrency_key,
        "concurrency_limit": kind.concurrency_limit,
        "lease_seconds": kind.lease_seconds,
        "max_attempts": kind.max_attempts,
        "time_limit_seconds": kind.time_limit_seconds,
        "retention_hours": kind.retention_hours,
        "needs_datasource": kind.needs_datasource,
    }


def job_detail(job: pb.Job) -> JsonObject:
    """`GET /v0/jobs/{id}` (and the body of cancel / retry): the common fields, then the kind's own (for a kind the
    operator declared: pipe, progress, statistics, params and result)."""
    kind, job_id = job.kind, job.id
    has = job.HasField
    detail: JsonObject = {
        "kind": kind,
        "id": job_id,
        "job_id": job_id,
        "status": status_name(job.status),
        "created_at": timestamp_text(job.created_at) if has("created_at") else None,
        "updated_at": timestamp_text(job.updated_at) if has("updated_at") else None,
        "started_at": timestamp_text(job.started_at) if has("started_at") else None,
        "is_cancellable": job.is_cancellable,
        "datasource": _datasource_full(job),
    }
    detail.update(_KIND_FIELDS.get(kind, _custom_fields)(job))
    if has("error"):
        detail["error"] = job.error
    errors = job.errors
    if errors:
        detail["errors"] = errors[:]
    return detail


def job_event_detail(job: pb.Job) -> JsonObject:
    """The `data:` of a `GET /v0/jobs/{id}/events` event: the detail, with `progress_percentage` whatever the kind
    (a live progress bar needs it; the detail of an import, as Tinybird renders it, has none)."""
    detail = job_detail(job)
    detail.setdefault("progress_percentage", float(job.progress_percentage))
    return detail


# ClickHouse types of the columns, as Tinybird's jobs_log service data source declares them.
JOBS_LOG_COLUMNS: tuple[tuple[str, str], ...] = (
    ("job_id", "String"),
    ("job_type", "String"),
    ("status", "String"),
    ("error", "Nullable(String)"),
    ("workspace_id", "String"),
    ("request_id", "String"),
    ("pipe_id", "Nullable(String)"),
    ("datasource_id", "Nullable(String)"),
    ("created_at", "DateTime64(6)"),
    ("started_at", "Nullable(DateTime64(6))"),
    ("updated_at", "DateTime64(6)"),
    ("job_metadata", "String"),
    ("revision", "Int64"),
)


def log_entry_row(entry: pb.JobLogEntry) -> JsonObject:
    """One row of `GET /v0/jobs_log`; `job_metadata` stays JSON text, as in the service data source."""
    return {
        "job_id": entry.job_id,
        "job_type": entry.job_type,
        "status": entry.status,
        "error": _optional(entry, "error"),
        "workspace_id": entry.workspace_id,
        "request_id": entry.request_id,
        "pipe_id": _optional(entry, "pipe_id"),
        "datasource_id": _optional(entry, "datasource_id"),
        "created_at": _optional_ts(entry, "created_at"),
        "started_at": _optional_ts(entry, "started_at"),
        "updated_at": _optional_ts(entry, "updated_at"),
        "job_metadata": entry.job_metadata,
        "revision": entry.revision,
    }


def workspace_info(workspace: pb.Workspace) -> JsonObject:
    """`GET /v0/workspace`: what both Tinybird CLIs read (`id`, `name`, `scope`), plus the token's details."""
    scopes = list(workspace.scopes)
    return {
        "id": workspace.id,
        "name": workspace.name,
        # The CLIs copy `scope` into their config as it comes; one string, as Tinybird tokens show it.
        "scope": " ".join(scopes),
        "scopes": scopes,
        "token_name": workspace.token_name,
        "created_at": _optional_ts(workspace, "created_at"),
        "is_branch": False,
        "main": None,
    }
