"""The one error taxonomy of jobsd.

Every failure a caller can see is a `JobsdError`; each class knows its gRPC status code and its HTTP status,
so the edges (gRPC servicers, REST gateway) map errors in exactly one place each and never leak a stack trace.
"""

from __future__ import annotations

import grpc

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "InvalidArgument",
    "JobsdError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "StaleLease",
    "Unauthenticated",
    "Unavailable",
    "error_from_grpc",
]


class JobsdError(Exception):
    """Base of every error jobsd reports to a caller."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message


class InvalidArgument(JobsdError):
    """A request field is missing or malformed; `field` names it and the message says what is wrong."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.problem = problem


class NotFound(JobsdError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class PermissionDenied(JobsdError):
    """The token is valid but does not reach this workspace, job or scope."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class Unauthenticated(JobsdError):
    """No token, or a token jobsd does not know. Tinybird answers 403 for it, so the gateway does too."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 403


class FailedPrecondition(JobsdError):
    """The job is not in a state that allows the operation (not cancellable, already cancelling, ...)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400


class StaleLease(FailedPrecondition):
    """The worker's lease is no longer the job's lease (it lapsed, or the job ended)."""

    http_status = 409


class AlreadyExists(JobsdError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    http_status = 409


class ResourceExhausted(JobsdError):
    """A limit was hit: too many streams, a request too large, a subscriber too slow."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class Unavailable(JobsdError):
    """The store cannot be reached; the caller may retry."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


_BY_CODE: dict[grpc.StatusCode, type[JobsdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
}

# Trailing-metadata key that carries InvalidArgument.field across gRPC.
FIELD_METADATA_KEY = "jobsd-field"


def error_from_grpc(code: grpc.StatusCode, message: str, field: str | None = None) -> JobsdError:
    """Rebuild the JobsdError a remote jobsd raised (used by clients and the standalone gateway)."""
    cls = _BY_CODE.get(code)
    if cls is InvalidArgument:
        name = field or "request"
        prefix = f"{name}: "
        return InvalidArgument(name, message[len(prefix) :] if message.startswith(prefix) else message)
    if cls is None:
        return JobsdError(message or code.name)
    return cls(message)
