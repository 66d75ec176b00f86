"""What the async and the sync client share, so the two can never differ: everything but the transport.

Each RPC's keyword arguments are listed once, as a `TypedDict` (the clients' methods take them as
`**query: Unpack[...]`), and turned into the request once, by a builder here; the paging of `iter_jobs` and the
translation of a failed call into a `JobsdError` are here too. A client method is then one call of its transport.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypedDict, TypeVar, Unpack

import grpc
from google.protobuf.struct_pb2 import Struct

from jobsd_client import pb
from jobsd_client.convert import status_name, status_value, to_timestamp
from jobsd_client.errors import InvalidArgument, error_from_rpc

__all__ = [
    "MAX_PAGE_SIZE",
    "JobsFilters",
    "JobsLogPage",
    "JobsPage",
    "JobsPages",
    "JobsSelection",
    "NewJob",
    "Outcome",
    "StatusFilter",
    "claim_job_request",
    "claim_timeout",
    "create_job_request",
    "finish_job_request",
    "heartbeat_request",
    "list_jobs_log_request",
    "list_jobs_request",
    "rpc_errors",
    "to_struct",
    "watch_jobs_request",
]

MAX_PAGE_SIZE = 100
# A status filter may be given as "waiting" or as pb.JOB_STATUS_WAITING.
StatusFilter = str | int | None


class JobsFilters(TypedDict, total=False):
    """The filters `list_jobs`, `iter_jobs`, `list_jobs_log` and `watch_jobs` share (all optional)."""

    kind: str | None
    status: StatusFilter
    pipe_id: str | None
    pipe_name: str | None
    workspace_id: str | None


class JobsSelection(JobsFilters, total=False):
    """The arguments of `iter_jobs` besides `limit`: the filters, the created_at window, the page size."""

    created_after: datetime | None
    created_before: datetime | None
    page_size: int  # 0 (the default): the maximum


class JobsPage(JobsSelection, total=False):
    """The arguments of `list_jobs`: a selection and the page to read (`page_token`, none: the first)."""

    page_token: str | None


class JobsLogPage(JobsPage, total=False):
    """The arguments of `list_jobs_log`: those of `list_jobs` and the one job whose rows to list."""

    job_id: str | None


class NewJob(TypedDict, total=False):
    """The keyword arguments of `create_job` (its `kind` comes first, positionally)."""

    datasource: Mapping[str, Any] | None
    pipe_id: str | None
    pipe_name: str | None
    query_id: str | None
    query_sql: str | None
    mode: str | None
    url: str | None
    params: Mapping[str, Any] | None
    idempotency_key: str | None
    request_id: str | None
    workspace_id: str | None


class Outcome(TypedDict, total=False):
    """The keyword arguments of `finish_job`: the error text, the final figures, or a release."""

    error: str | None
    progress: pb.ProgressUpdate | None
    release: bool


def _known(arguments: Mapping[str, object], accepted: type, method: str) -> None:
    # `**query` takes any keyword at run time: refuse the ones the method's TypedDict does not name, as a
    # signature would (a misspelt filter must not quietly widen a listing).
    for name in arguments:
        if name not in accepted.__annotations__:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


class _RpcErrors:
    # The one place a failed call becomes a JobsdError: `with rpc_errors:` around a call, or around the
    # iteration of a stream (a class, not @contextmanager: it wraps every call).
    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, grpc.RpcError):
            raise error_from_rpc(exc) from None


rpc_errors = _RpcErrors()


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


def _filtered(request: _Filtered, query: JobsFilters) -> _Filtered:
    # The filters ListJobs, ListJobsLog and WatchJobs share.
    request.workspace_id = query.get("workspace_id") or ""
    request.kind = query.get("kind") or ""
    request.status = _status_filter(query.get("status"))
    request.pipe_id = query.get("pipe_id") or ""
    request.pipe_name = query.get("pipe_name") or ""
    return request


def _paged(request: _Listed, query: JobsPage) -> _Listed:
    # The page and the created_at window of the two lists.
    request.page_size = _page_size(query.get("page_size", 0))
    request.page_token = query.get("page_token") or ""
    created_after = query.get("created_after")
    if created_after is not None:
        request.created_after.CopyFrom(to_timestamp(created_after))
    created_before = query.get("created_before")
    if created_before is not None:
        request.created_before.CopyFrom(to_timestamp(created_before))
    return request


def list_jobs_request(**query: Unpack[JobsPage]) -> pb.ListJobsRequest:
    """The ListJobs request of `list_jobs(**query)`."""
    _known(query, JobsPage, "list_jobs")
    return _paged(_filtered(pb.ListJobsRequest(), query), query)


def list_jobs_log_request(**query: Unpack[JobsLogPage]) -> pb.ListJobsLogRequest:
    """The ListJobsLog request of `list_jobs_log(**query)`."""
    _known(query, JobsLogPage, "list_jobs_log")
    return _paged(_filtered(pb.ListJobsLogRequest(job_id=query.get("job_id") or ""), query), query)


def watch_jobs_request(**query: Unpack[JobsFilters]) -> pb.WatchJobsRequest:
    """The WatchJobs request of `watch_jobs(**query)`."""
    _known(query, JobsFilters, "watch_jobs")
    return _filtered(pb.WatchJobsRequest(), query)


class JobsPages:
    """The paging of `iter_jobs`: the ListJobs request of each page, and the jobs of a page to yield.

    At most `limit` jobs in all (None: every one); the pages end at the first without a `next_page_token`.
    """

    def __init__(self, limit: int | None, query: JobsSelection) -> None:
        _known(query, JobsSelection, "iter_jobs")
        self._limit = limit
        self._query = query
        self._token: str | None = None
        self._yielded = 0
        self._done = False

    def next_request(self) -> pb.ListJobsRequest | None:
        """The request of the next page; None when there is none to read."""
        if self._done:
            return None
        page_size = self._query.get("page_size", 0)
        if self._limit is not None:
            page_size = min(page_size or MAX_PAGE_SIZE, self._limit - self._yielded)
        page: JobsPage = {**self._query, "page_size": page_size, "page_token": self._token}
        return list_jobs_request(**page)

    def take(self, page: pb.ListJobsResponse) -> Iterator[pb.Job]:
        """The jobs of `page` to yield, in order (fewer once `limit` is reached)."""
        for job in page.jobs:
            yield job
            self._yielded += 1
            if self._limit is not None and self._yielded >= self._limit:
                self._done = True
                return
        self._done = not page.next_page_token
        self._token = page.next_page_token


def create_job_request(kind: str, **fields: Unpack[NewJob]) -> pb.CreateJobRequest:
    """The CreateJob request of `create_job(kind, **fields)`."""
    _known(fields, NewJob, "create_job")
    if not kind:
        raise InvalidArgument.for_field("kind", "is required")
    request = pb.CreateJobRequest(
        workspace_id=fields.get("workspace_id") or "",
        kind=kind,
        pipe_id=fields.get("pipe_id") or "",
        pipe_name=fields.get("pipe_name") or "",
        query_id=fields.get("query_id") or "",
        query_sql=fields.get("query_sql") or "",
        mode=fields.get("mode") or "",
        url=fields.get("url") or "",
        idempotency_key=fields.get("idempotency_key") or "",
        request_id=fields.get("request_id") or "",
    )
    datasource_struct = to_struct(fields.get("datasource"), "datasource")
    if datasource_struct is not None:
        request.datasource.CopyFrom(datasource_struct)
    params_struct = to_struct(fields.get("params"), "params")
    if params_struct is not None:
        request.params.CopyFrom(params_struct)
    return request


def claim_job_request(
    worker_id: str, kinds: Iterable[str], wait_seconds: float, workspace_id: str | None
) -> pb.ClaimJobRequest:
    """The ClaimJob request of `claim_job(...)`."""
    if not worker_id:
        raise InvalidArgument.for_field("worker_id", "is required")
    if not 0 <= wait_seconds <= 60:
        raise InvalidArgument.for_field("wait_seconds", f"must be between 0 and 60, got {wait_seconds}")
    return pb.ClaimJobRequest(
        worker_id=worker_id, kinds=list(kinds), wait_seconds=wait_seconds, workspace_id=workspace_id or ""
    )


def claim_timeout(timeout: float | None, wait_seconds: float) -> float | None:
    """The deadline of a claim: the client's timeout plus the long-poll wait (None: no deadline)."""
    return None if timeout is None else timeout + wait_seconds


def heartbeat_request(job_id: str, lease_token: str, progress: pb.ProgressUpdate | None) -> pb.HeartbeatRequest:
    """The Heartbeat request of `heartbeat(...)`."""
    request = pb.HeartbeatRequest(job_id=job_id, lease_token=lease_token)
    if progress is not None:
        request.progress.CopyFrom(progress)
    return request


def finish_job_request(
    job_id: str, lease_token: str, status: str | int | None, **outcome: Unpack[Outcome]
) -> pb.FinishJobRequest:
    """The FinishJob request of `finish_job(job_id, lease_token, status, **outcome)`."""
    _known(outcome, Outcome, "finish_job")
    release = outcome.get("release", False)
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
        error=outcome.get("error") or "",
        release=release,
    )
    progress = outcome.get("progress")
    if progress is not None:
        request.progress.CopyFrom(progress)
    return request
