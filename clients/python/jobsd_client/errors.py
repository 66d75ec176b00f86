"""The client's error hierarchy: one class per gRPC status code jobsd answers with (SPEC §6).

The client package never imports the server package, so it mirrors `jobsd.errors` here instead of sharing it.
Every failed RPC raises a `JobsdClientError` subclass carrying the gRPC `code`, the server's message and, for
`InvalidArgument`, the offending `field` (trailing metadata key `jobsd-field`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

__all__ = [
    "FIELD_METADATA_KEY",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "JobsdClientError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "error_from_rpc",
]

# Trailing-metadata key in which jobsd names the field an INVALID_ARGUMENT is about.
FIELD_METADATA_KEY = "jobsd-field"


class JobsdClientError(Exception):
    """A call to jobsd failed. `code` is the gRPC status code, `field` the request field at fault (if known)."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidArgument(JobsdClientError, ValueError):
    """A request field is missing or malformed; `field` names it. Also raised for bad input caught locally."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    @classmethod
    def for_field(cls, field: str, problem: str) -> InvalidArgument:
        return cls(f"{field}: {problem}", field=field)


class NotFound(JobsdClientError):
    code = grpc.StatusCode.NOT_FOUND


class PermissionDenied(JobsdClientError):
    """The token is valid but does not reach this workspace, job or scope."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(JobsdClientError):
    """No token, or a token jobsd does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


class FailedPrecondition(JobsdClientError):
    """The job's state refuses the operation (not cancellable, already cancelling, stale lease, ...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExists(JobsdClientError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(JobsdClientError):
    """A limit was hit (too many streams, a request too large); retrying later may work."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(JobsdClientError):
    """jobsd (or its store) cannot be reached right now; the call may be retried."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(JobsdClientError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(JobsdClientError):
    code = grpc.StatusCode.CANCELLED


class Unimplemented(JobsdClientError):
    """The server does not know this RPC (an older jobsd)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(JobsdClientError):
    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[JobsdClientError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        PermissionDenied,
        Unauthenticated,
        FailedPrecondition,
        AlreadyExists,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        Unimplemented,
        Internal,
    )
}


def _field_from(metadata: Iterable[Any] | None) -> str | None:
    # Sync calls give a tuple of (key, value) pairs, grpc.aio a Metadata whose iteration yields the same pairs.
    for item in metadata or ():
        key, value = item
        if key == FIELD_METADATA_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def error_from_rpc(error: grpc.RpcError) -> JobsdClientError:
    """The typed error for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details_of = getattr(error, "details", None)
    details = (details_of() if callable(details_of) else None) or code.name
    trailing_of = getattr(error, "trailing_metadata", None)
    try:
        field = _field_from(trailing_of() if callable(trailing_of) else None)
    except (TypeError, ValueError):  # malformed metadata never hides the real error
        field = None
    cls = _BY_CODE.get(code, JobsdClientError)
    return cls(str(details), code=code, field=field)
