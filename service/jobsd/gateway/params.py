"""HTTP request -> jobsd.v1 request: the token, the list filters, the window and the page.

Decoding only: whether a filter matches, whether a token may see a job, is the API's business. Bad input raises
`InvalidArgument` naming the parameter (a bad date uses the message Tinybird documents).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from typing import TypeVar

from google.protobuf import timestamp_pb2

from jobsd.errors import InvalidArgument
from jobsd_client import pb

__all__ = [
    "MAX_PAGE_SIZE",
    "InvalidDate",
    "bearer_token",
    "jobs_log_request",
    "list_jobs_request",
    "page_size",
    "parse_bound",
    "watch_jobs_request",
]

MAX_PAGE_SIZE = 100
_BEARER = "bearer "


class InvalidDate(InvalidArgument):
    """A created_after / created_before that is not ISO 8601; the message is Tinybird's, verbatim."""

    def __init__(self, field: str, value: str) -> None:
        super().__init__(field, f"The date provided is an invalid isoformat string: '{value}'")
        self.message = self.problem


def bearer_token(query: Mapping[str, str], authorization: str | None) -> str | None:
    """`?token=` first, else `Authorization: Bearer <token>`; None when neither carries one."""
    from_query = query.get("token", "").strip()
    if from_query:
        return from_query
    if authorization and authorization[: len(_BEARER)].lower() == _BEARER:
        return authorization[len(_BEARER) :].strip() or None
    return None


def parse_bound(field: str, raw: str, *, end_of_day: bool) -> datetime:
    """An inclusive created_at bound: ISO 8601 with `Z` or an offset (naive means UTC), or a date.

    A bare date as the upper bound covers that whole day: `created_before=2023-06-19` includes jobs of the 19th,
    which is what "inclusive" means to someone who typed a day.
    """
    text = raw.strip()
    try:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            moment = datetime.fromisoformat(text)
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        return datetime.combine(day, time.max if end_of_day else time.min, tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidDate(field, raw) from None


def _timestamp(moment: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(moment)
    return ts


def page_size(query: Mapping[str, str]) -> int:
    """`limit` (1-100); absent means the most a page holds. Unlike the filters, an empty limit is an error: it is
    this gateway's extension, and a page size nobody can see is better refused than guessed."""
    raw = query.get("limit")
    if raw is None:
        return MAX_PAGE_SIZE
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise InvalidArgument("limit", f"must be an integer from 1 to {MAX_PAGE_SIZE}, got {raw!r}")
    return value


def _window(query: Mapping[str, str]) -> dict[str, timestamp_pb2.Timestamp]:
    bounds: dict[str, timestamp_pb2.Timestamp] = {}
    for field, end_of_day in (("created_after", False), ("created_before", True)):
        raw = query.get(field, "")
        if raw.strip():
            bounds[field] = _timestamp(parse_bound(field, raw, end_of_day=end_of_day))
    return bounds


def _text(query: Mapping[str, str], field: str) -> str:
    # An empty filter is ignored, as Tinybird does.
    return query.get(field, "").strip()


_ListRequest = TypeVar("_ListRequest", pb.ListJobsRequest, pb.ListJobsLogRequest)


def _list_request(request: _ListRequest, query: Mapping[str, str], *names: str) -> _ListRequest:
    # The filters every list shares (and those named), the page, then the window: limit errors come first.
    for name in ("workspace_id", *names, "kind", "status", "pipe_id", "pipe_name"):
        setattr(request, name, _text(query, name))
    request.page_size = page_size(query)
    request.page_token = _text(query, "page_token")
    for name, bound in _window(query).items():
        getattr(request, name).CopyFrom(bound)
    return request


def list_jobs_request(query: Mapping[str, str]) -> pb.ListJobsRequest:
    """`GET /v0/jobs?kind=&status=&pipe_id=&pipe_name=&created_after=&created_before=&limit=&page_token=`."""
    return _list_request(pb.ListJobsRequest(), query)


def watch_jobs_request(query: Mapping[str, str], changed_since_micros: int) -> pb.WatchJobsRequest:
    """`GET /v0/jobs/events`: the filters of /v0/jobs (no page); `changed_since_micros` (0: none) resumes."""
    request = pb.WatchJobsRequest(
        workspace_id=_text(query, "workspace_id"),
        kind=_text(query, "kind"),
        status=_text(query, "status"),
        pipe_id=_text(query, "pipe_id"),
        pipe_name=_text(query, "pipe_name"),
        **_window(query),
    )
    if changed_since_micros:
        request.changed_since.FromMicroseconds(changed_since_micros)
    return request


def jobs_log_request(query: Mapping[str, str]) -> pb.ListJobsLogRequest:
    """`GET /v0/jobs_log`: the filters of /v0/jobs plus `job_id`."""
    return _list_request(pb.ListJobsLogRequest(), query, "job_id")
