"""Domain <-> jobsd.v1 protobuf. Used by the in-process API (and so by the gRPC servicers)."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from jobsd.domain.clock import to_micros
from jobsd.domain.filters import JobFilter
from jobsd.domain.kinds import BUILTIN_KINDS, KindRegistry, KindSpec
from jobsd.domain.model import Job, JobStatus, LogEntry, ProcessedData, Progress, QueryProgress, Statistics, Workspace
from jobsd.domain.redaction import redact_url, scrub
from jobsd.errors import InvalidArgument, JobsdError
from jobsd_client import pb

__all__ = [
    "STATUS_FROM_PB",
    "STATUS_TO_PB",
    "JobWireCodec",
    "claimed_url_patch",
    "created_result_bytes",
    "filter_from_pb",
    "item_error_bytes",
    "job_to_pb",
    "kind_to_pb",
    "length_delimited",
    "list_response_bytes",
    "log_to_pb",
    "progress_from_pb",
    "struct_to_dict",
    "time_from_pb",
    "workspace_to_pb",
]

STATUS_TO_PB: dict[JobStatus, pb.JobStatus.ValueType] = {
    JobStatus.WAITING: pb.JOB_STATUS_WAITING,
    JobStatus.WORKING: pb.JOB_STATUS_WORKING,
    JobStatus.DONE: pb.JOB_STATUS_DONE,
    JobStatus.ERROR: pb.JOB_STATUS_ERROR,
    JobStatus.CANCELLING: pb.JOB_STATUS_CANCELLING,
    JobStatus.CANCELLED: pb.JOB_STATUS_CANCELLED,
}
STATUS_FROM_PB = {v: k for k, v in STATUS_TO_PB.items()}


def _ts(value: datetime) -> timestamp_pb2.Timestamp:
    # From integer microseconds: FromDatetime goes through utctimetuple/timegm, several times slower.
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(to_micros(value))
    return ts


def time_from_pb(msg: Any, field: str) -> datetime | None:
    """The Timestamp field of `msg`, or None if unset."""
    if not msg.HasField(field):
        return None
    value: timestamp_pb2.Timestamp = getattr(msg, field)
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is not a valid timestamp") from None


def filter_from_pb(request: pb.ListJobsRequest | pb.ListJobsLogRequest | pb.WatchJobsRequest) -> JobFilter:
    """The filter fields a list or watch request has (an empty one is no filter); bad timestamps name the field."""
    fields = request.DESCRIPTOR.fields_by_name

    def text(name: str) -> str | None:
        return (getattr(request, name) or None) if name in fields else None

    def moment(name: str) -> datetime | None:
        return time_from_pb(request, name) if name in fields else None

    return JobFilter(
        workspace_id=text("workspace_id"),
        job_id=text("job_id"),
        kind=text("kind"),
        status=text("status"),
        pipe_id=text("pipe_id"),
        pipe_name=text("pipe_name"),
        created_after=moment("created_after"),
        created_before=moment("created_before"),
    )


def struct_to_dict(msg: Any, field: str, path: str | None = None) -> dict[str, Any] | None:
    """The Struct field of `msg` as a dict (what `json_format.MessageToDict` gives: numbers stay floats), or None
    if unset. Walked directly: MessageToDict's descriptor-driven walk was a visible share of every CreateJob."""
    if not msg.HasField(field):
        return None
    try:
        return _struct_dict(getattr(msg, field))
    except ValueError:
        raise InvalidArgument(path or field, "a number must be finite (JSON has no NaN or Infinity)") from None


def _struct_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    # The map's own iteration and lookup (C); `.items()` is the collections.abc view, a Python step per entry.
    entries = struct.fields
    return {key: _value_plain(entries[key]) for key in entries}


def _value_plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if math.isinf(number) or math.isnan(number):
            raise ValueError(number)  # as MessageToDict refuses them
        return number
    if kind == "struct_value":
        return _struct_dict(value.struct_value)
    if kind == "list_value":
        return [_value_plain(item) for item in value.list_value.values]
    if kind == "bool_value":
        return value.bool_value
    return None  # null_value, or unset (MessageToDict reads both as null)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    st = struct_pb2.Struct()
    st.update(value)
    return st


# The optional text fields of a job that its message carries as they are, when set (same name on both).
_OPTIONAL_TEXT = (
    "note",
    "pipe_id",
    "pipe_name",
    "query_id",
    "query_sql",
    "mode",
    "import_id",
    "worker_id",
    "idempotency_key",
)


def job_to_pb(job: Job, kinds: KindRegistry = BUILTIN_KINDS) -> pb.Job:
    """The job as a message; `kinds` decides the derived `is_cancellable`.

    Every write encodes its job once (the stored wire), so sub-messages are filled in place (`FromMicroseconds`,
    `Struct.update`, `SetInParent`) rather than built apart and copied in: the same bytes, fewer objects."""
    msg = pb.Job(
        id=job.id,
        workspace_id=job.workspace_id,
        kind=job.kind,
        status=STATUS_TO_PB[job.status],
        is_cancellable=kinds.is_cancellable(job),
        revision=job.revision,
        progress_percentage=job.progress_percentage,
        quarantine_rows=job.quarantine_rows,
        invalid_lines=job.invalid_lines,
        attempt=job.attempt,
        concurrency_key=job.concurrency_key,
        returns=job.returns,
    )
    created_at = to_micros(job.created_at)
    _set_micros(msg.created_at, created_at)
    # A new job's two times are one datetime: converted once.
    _set_micros(msg.updated_at, created_at if job.updated_at is job.created_at else to_micros(job.updated_at))
    if job.queries:
        add_query = msg.queries.add
        for q in job.queries:
            add_query(query_id=q.query_id, status=q.status)
    if job.errors:
        msg.errors.extend([scrub(text, job.url) for text in job.errors] if job.url else job.errors)
    if job.started_at is not None:
        _set_micros(msg.started_at, to_micros(job.started_at))
    if job.datasource is not None:
        ref = msg.datasource_ref
        ref.SetInParent()
        ref.id = job.datasource_id or ""
        ref.name = job.datasource_name or ""
        msg.datasource.SetInParent()
        _update_struct(msg.datasource, job.datasource)
    for name in _OPTIONAL_TEXT:
        if (value := getattr(job, name)) is not None:
            setattr(msg, name, value)
    # An import URL is shown without its credentials, and so is anything a worker wrote that repeats them. The
    # worker running the import gets the real URL in its claim (`claimed_url_patch`), nowhere else.
    if job.url is not None:
        msg.url = redact_url(job.url)
    if job.error is not None:
        msg.error = scrub(job.error, job.url)
    if job.statistics is not None:
        stats = msg.statistics
        stats.SetInParent()
        stats.bytes = job.statistics.bytes
        stats.row_count = job.statistics.row_count
    if job.processed_data is not None:
        p = job.processed_data
        data = msg.processed_data
        data.SetInParent()
        data.read_rows = p.read_rows
        data.read_bytes = p.read_bytes
        data.written_rows = p.written_rows
        data.written_bytes = p.written_bytes
    if job.lease_expires_at is not None:
        _set_micros(msg.lease_expires_at, to_micros(job.lease_expires_at))
    if job.params:
        _update_struct(msg.params, job.params)
    if job.result:
        _update_struct(msg.result, job.result)
    return msg


def _set_micros(ts: timestamp_pb2.Timestamp, micros: int) -> None:
    """`ts.FromMicroseconds(micros)` without its range check: a datetime's microseconds are always a valid
    Timestamp (years 1 to 9999 both)."""
    seconds, rest = divmod(micros, 1_000_000)
    ts.seconds = seconds
    ts.nanos = rest * 1000


def _update_struct(struct: struct_pb2.Struct, value: dict[str, Any]) -> None:
    """`struct.update(value)`: a string sets its entry here (what `update` does for one, without its Python type
    switch per entry: a data source is its name and id); any other value goes through `update`."""
    entries = struct.fields
    for key in value:
        item = value[key]
        if type(item) is str:
            entries[key].string_value = item
        else:
            struct.update({key: item})


_QUERY_STATUSES = frozenset({"waiting", "working", "done", "error", "cancelled"})


def progress_from_pb(msg: pb.ProgressUpdate, field: str = "progress") -> Progress:
    queries = None
    if msg.queries:
        for i, q in enumerate(msg.queries):
            if not q.query_id:
                raise InvalidArgument(f"{field}.queries[{i}].query_id", "is required")
            if q.status not in _QUERY_STATUSES:
                raise InvalidArgument(
                    f"{field}.queries[{i}].status", f"must be one of {', '.join(sorted(_QUERY_STATUSES))}"
                )
        queries = tuple(QueryProgress(q.query_id, q.status) for q in msg.queries)
    pct = msg.progress_percentage if msg.HasField("progress_percentage") else None
    if pct is not None and not 0.0 <= pct <= 100.0:
        raise InvalidArgument(f"{field}.progress_percentage", f"must be between 0 and 100, got {pct:g}")
    for name in ("quarantine_rows", "invalid_lines"):
        if msg.HasField(name) and getattr(msg, name) < 0:
            raise InvalidArgument(f"{field}.{name}", "must not be negative")
    stats = None
    if msg.HasField("statistics"):
        if msg.statistics.bytes < 0 or msg.statistics.row_count < 0:
            raise InvalidArgument(f"{field}.statistics", "must not be negative")
        stats = Statistics(msg.statistics.bytes, msg.statistics.row_count)
    processed = None
    if msg.HasField("processed_data"):
        d = msg.processed_data
        if min(d.read_rows, d.read_bytes, d.written_rows, d.written_bytes) < 0:
            raise InvalidArgument(f"{field}.processed_data", "must not be negative")
        processed = ProcessedData(d.read_rows, d.read_bytes, d.written_rows, d.written_bytes)
    return Progress(
        progress_percentage=pct,
        queries=queries,
        statistics=stats,
        quarantine_rows=msg.quarantine_rows if msg.HasField("quarantine_rows") else None,
        invalid_lines=msg.invalid_lines if msg.HasField("invalid_lines") else None,
        processed_data=processed,
        result=struct_to_dict(msg, "result", f"{field}.result"),
        errors=tuple(msg.errors) if msg.errors else None,
    )


def log_to_pb(entry: LogEntry) -> pb.JobLogEntry:
    msg = pb.JobLogEntry(
        job_id=entry.job_id,
        job_type=entry.job_type,
        status=entry.status,
        workspace_id=entry.workspace_id,
        request_id=entry.request_id,
        created_at=_ts(entry.created_at),
        updated_at=_ts(entry.updated_at),
        job_metadata=json.dumps(entry.job_metadata, sort_keys=True),
        revision=entry.revision,
    )
    if entry.error is not None:
        msg.error = entry.error
    if entry.pipe_id is not None:
        msg.pipe_id = entry.pipe_id
    if entry.datasource_id is not None:
        msg.datasource_id = entry.datasource_id
    if entry.started_at is not None:
        msg.started_at.CopyFrom(_ts(entry.started_at))
    return msg


def workspace_to_pb(ws: Workspace, scopes: frozenset[str], token_name: str) -> pb.Workspace:
    return pb.Workspace(
        id=ws.id, name=ws.name, scopes=sorted(scopes), token_name=token_name, created_at=_ts(ws.created_at)
    )


class JobWireCodec:
    """Job -> serialised `pb.Job`: the encoder the store is built with (every job write stores these bytes).

    It remembers the bytes of the last few jobs it encoded, by object identity (holding the job, so an identity
    cannot be reused while remembered): a write's response then reuses the bytes the store just wrote instead of
    building the message again. Bounded, so nothing grows with the store.
    """

    def __init__(self, kinds: KindRegistry = BUILTIN_KINDS, capacity: int = 256) -> None:
        self.kinds = kinds
        self._capacity = capacity
        self._recent: OrderedDict[int, tuple[Job, bytes]] = OrderedDict()

    def __call__(self, job: Job) -> bytes:
        hit = self._recent.get(id(job))
        if hit is not None and hit[0] is job:
            return hit[1]
        wire = job_to_pb(job, self.kinds).SerializeToString()
        self._recent[id(job)] = (job, wire)
        if len(self._recent) > self._capacity:
            self._recent.popitem(last=False)
        return wire

    def message(self, job: Job) -> pb.Job:
        """The job as a message, parsed from its (usually already made) bytes."""
        return pb.Job.FromString(self(job))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# The tag and length of field 1 (length-delimited) for every length up to 16 KiB; longer ones are computed.
_FIELD_1_HEADERS = tuple(b"\x0a" + _varint(size) for size in range(0x4000))


def claimed_url_patch(job: Job) -> bytes:
    """For a claim: a `job` field holding only the real URL, when the stored bytes show it redacted. Serialised
    messages concatenate as a merge and a later string field wins, so appended to the claim response it gives the
    worker — and only the worker — the URL it must fetch."""
    if job.url is None or redact_url(job.url) == job.url:
        return b""
    return list_response_bytes([pb.Job(url=job.url).SerializeToString()], "")


def list_response_bytes(wires: list[bytes], next_page_token: str) -> bytes:
    """A serialised `ListJobsResponse` of these serialised jobs: field 1 (`jobs`) repeated, then field 2."""
    headers = _FIELD_1_HEADERS
    parts: list[bytes] = []
    for wire in wires:
        size = len(wire)
        parts.append(headers[size] if size < 0x4000 else b"\x0a" + _varint(size))
        parts.append(wire)
    if next_page_token:
        token = next_page_token.encode()
        parts.append(b"\x12" + _varint(len(token)) + token)
    return b"".join(parts)


def _field_1_header(size: int) -> bytes:
    return _FIELD_1_HEADERS[size] if size < 0x4000 else b"\x0a" + _varint(size)


def created_result_bytes(wire: bytes) -> bytes:
    """A serialised `CreateJobResult` holding the serialised job `wire` (field 1, `job`), framed as field 1 of the
    `CreateJobsResponse` (`results`): what `length_delimited(1, length_delimited(1, wire))` gives, the headers read
    from the table for all but jobs over 16 KiB."""
    inner = _field_1_header(len(wire))
    return b"".join((_field_1_header(len(inner) + len(wire)), inner, wire))


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """`payload` (a serialised message, or bytes) as field `field_number` of an enclosing message."""
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def item_error_bytes(exc: JobsdError) -> bytes:
    """A serialised `ItemError` for one refused item of a batch."""
    return pb.ItemError(code=exc.code_name, message=exc.message, field=exc.field or "").SerializeToString()


def kind_to_pb(spec: KindSpec) -> pb.Kind:
    msg = pb.Kind(
        name=spec.name,
        description=spec.description,
        builtin=spec.builtin,
        cancellable_while_working=spec.cancellable_while_working,
        concurrency_key=spec.concurrency_key.value,
        concurrency_limit=spec.concurrency_limit,
        lease_seconds=spec.lease.total_seconds(),
        max_attempts=spec.max_attempts,
        time_limit_seconds=0.0 if spec.time_limit is None else spec.time_limit.total_seconds(),
        retention_hours=spec.retention.total_seconds() / 3600,
        needs_datasource=spec.needs_datasource,
    )
    return msg
