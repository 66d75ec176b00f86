"""Request builders shared by the async and the sync client, so the two can never build a request differently."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf.struct_pb2 import Struct

from jobsd_client import pb
from jobsd_client.convert import status_name, status_value, to_timestamp
from jobsd_client.errors import InvalidArgument

__all__ = [
    "MAX_PAGE_SIZE",
    "StatusFilter",
    "claim_job_request",
    "create_job_request",
    "finish_job_request",
    "list_jobs_log_request",
    "list_jobs_request",
    "to_struct",
    "watch_jobs_request",
]

MAX_PAGE_SIZE = 100
# A status filter may be given as "waiting" or as pb.JOB_STATUS_WAITING.
StatusFilter = str | int | None


def to_struct(value: Mapping[str, Any] | None, field: str) -> Struct | None:
    """A google.protobuf.Struct from a JSON-like mapping; a clear InvalidArgument when it is not one."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgument.for_field(field, f"expected a mapping, got {type(value).__name__}")
    struct = Struct()
    try:
        struct.update(dict(value))
    except (TypeError, ValueError) as exc:
        raise InvalidArgument.for_field(field, f"must hold only JSON values: {exc}") from None
    return struct


def _status_filter(status: StatusFilter) -> str:
    if status is None or status == "":
        return ""
    return status_name(status_value(status))


def _page_size(page_size: int) -> int:
    if not 0 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument.for_field("page_size", f"must be between 1 and {MAX_PAGE_SIZE} (0: the maximum)")
    return page_size


_Filtered = TypeVar("_Filtered", pb.ListJobsRequest, pb.ListJobsLogRequest, pb.WatchJobsRequest)
_Listed = TypeVar("_Listed", pb.ListJobsRequest, pb.ListJobsLogRequest)


def _filtered(
    request: _Filtered,
    *,
    kind: str | None,
    status: StatusFilter,
    pipe_id: str | None,
    pipe_name: str | None,
    workspace_id: str | None,
) -> _Filtered:
    # The filters ListJobs, ListJobsLog and WatchJobs share.
    request.workspace_id = workspace_id or ""
    request.kind = kind or ""
    request.status = _status_filter(status)
    request.pipe_id = pipe_id or ""
    request.pipe_name = pipe_name or ""
    return request


def _paged(
    request: _Listed,
    page_size: int,
    page_token: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> _Listed:
    # The page and the created_at window of the two lists.
    request.page_size = _page_size(page_size)
    request.page_token = page_token or ""
    if created_after is not None:
        request.created_after.CopyFrom(to_timestamp(created_after))
    if created_before is not None:
        request.created_before.CopyFrom(to_timestamp(created_before))
    return request


def list_jobs_request(
    *,
    kind: str | None,
    status: StatusFilter,
    pipe_id: str | None,
    pipe_name: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    workspace_id: str | None,
    page_size: int,
    page_token: str | None,
) -> pb.ListJobsRequest:
    request = _filtered(
        pb.ListJobsRequest(), kind=kind, status=status, pipe_id=pipe_id, pipe_name=pipe_name, workspace_id=workspace_id
    )
    return _paged(request, page_size, page_token, created_after, created_before)


def list_jobs_log_request(
    *,
    job_id: str | None,
    kind: str | None,
    status: StatusFilter,
    pipe_id: str | None,
    pipe_name: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
    workspace_id: str | None,
    page_size: int,
    page_token: str | None,
) -> pb.ListJobsLogRequest:
    request = _filtered(
        pb.ListJobsLogRequest(job_id=job_id or ""),
        kind=kind,
        status=status,
        pipe_id=pipe_id,
        pipe_name=pipe_name,
        workspace_id=workspace_id,
    )
    return _paged(request, page_size, page_token, created_after, created_before)


def watch_jobs_request(
    *, kind: str | None, status: StatusFilter, pipe_id: str | None, pipe_name: str | None, workspace_id: str | None
) -> pb.WatchJobsRequest:
    return _filtered(
        pb.WatchJobsRequest(), kind=kind, status=status, pipe_id=pipe_id, pipe_name=pipe_name, workspace_id=workspace_id
    )


def create_job_request(
    kind: str,
    *,
    datasource: Mapping[str, Any] | None,
    pipe_id: str | None,
    pipe_name: str | None,
    query_id: str | None,
    query_sql: str | None,
    mode: str | None,
    url: str | None,
    params: Mapping[str, Any] | None,
    idempotency_key: str | None,
    request_id: str | None,
    workspace_id: str | None,
) -> pb.CreateJobRequest:
    if not kind:
        raise InvalidArgument.for_field("kind", "is required")
    request = pb.CreateJobRequest(
        workspace_id=workspace_id or "",
        kind=kind,
        pipe_id=pipe_id or "",
        pipe_name=pipe_name or "",
        query_id=query_id or "",
        query_sql=query_sql or "",
        mode=mode or "",
        url=url or "",
        idempotency_key=idempotency_key or "",
        request_id=request_id or "",
    )
    datasource_struct = to_struct(datasource, "datasource")
    if datasource_struct is not None:
        request.datasource.CopyFrom(datasource_struct)
    params_struct = to_struct(params, "params")
    if params_struct is not None:
        request.params.CopyFrom(params_struct)
    return request


def claim_job_request(
    worker_id: str, kinds: Iterable[str], wait_seconds: float, workspace_id: str | None
) -> pb.ClaimJobRequest:
    if not worker_id:
        raise InvalidArgument.for_field("worker_id", "is required")
    if not 0 <= wait_seconds <= 60:
        raise InvalidArgument.for_field("wait_seconds", f"must be between 0 and 60, got {wait_seconds}")
    return pb.ClaimJobRequest(
        worker_id=worker_id, kinds=list(kinds), wait_seconds=wait_seconds, workspace_id=workspace_id or ""
    )


def finish_job_request(
    job_id: str,
    lease_token: str,
    status: str | int | None,
    *,
    error: str | None,
    progress: pb.ProgressUpdate | None,
    release: bool,
) -> pb.FinishJobRequest:
    if not status:  # None, "" and JOB_STATUS_UNSPECIFIED all mean "not given"
        if not release:
            raise InvalidArgument.for_field("status", "is required unless release is set (done, error or cancelled)")
        final_status: pb.JobStatus.ValueType = pb.JOB_STATUS_UNSPECIFIED
    else:
        final_status = status_value(status)
    request = pb.FinishJobRequest(
        job_id=job_id,
        lease_token=lease_token,
        status=final_status,
        error=error or "",
        release=release,
    )
    if progress is not None:
        request.progress.CopyFrom(progress)
    return request
