"""The error taxonomy of jobsd: the SDK's one hierarchy (`jobsd_client.errors`), plus the server's refinements.

Every failure a caller can see is a `JobsdError`. Each class carries its code as data — `code_name` (the
canonical status code name, e.g. ``"NOT_FOUND"``) and `http_status` — and the edges map them once each: the gRPC
servicers (`jobsd.api.status`) and the REST gateway's error middleware. Nothing here imports a transport, so the
domain can raise these errors without loading gRPC.
"""

from __future__ import annotations

from jobsd_client.errors import (
    FIELD_METADATA_KEY,
    RATE_LIMIT_METADATA_KEYS,
    RETRY_AFTER_METADATA_KEY,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    JobsdError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_for_code,
)

__all__ = [
    "FIELD_METADATA_KEY",
    "RATE_LIMIT_METADATA_KEYS",
    "RETRY_AFTER_METADATA_KEY",
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
    "error_for_code",
]


class StaleLease(FailedPrecondition):
    """The worker's lease is no longer the job's lease (it lapsed, or the job ended)."""

    http_status = 409
