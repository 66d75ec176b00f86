"""The one error taxonomy of jobsd, shared by the server and the client SDK, free of any transport.

Every failure a caller can see is a `JobsdError` subclass. Each class carries its code as data: `code_name`, the
canonical (gRPC) status code name such as ``"NOT_FOUND"``, and `http_status`, the status the REST gateway answers
with. The edges map those once each (the gRPC servicers turn `code_name` into a `grpc.StatusCode`, the gateway uses
`http_status`); `error_for_code` (the code -> class table, derived from the classes) and `error_from_rpc` (a
failed gRPC call -> its exception, for the SDK and the standalone gateway) rebuild errors that crossed the wire.

Importing this module loads no gRPC: the domain raises these errors and knows nothing of transports. `code`
(a `grpc.StatusCode`) is computed on access, for callers that compare with grpc's enum.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import grpc

__all__ = [
    "FIELD_METADATA_KEY",
    "RATE_LIMIT_METADATA_KEYS",
    "RETRY_AFTER_METADATA_KEY",
    "WRONG_PROTOCOL_GRPC",
    "AlreadyExists",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "JobsdClientError",
    "JobsdError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "check_grpc_target",
    "error_for_code",
    "error_from_item",
    "error_from_rpc",
]

# Trailing-metadata key in which jobsd names the request field an INVALID_ARGUMENT is about.
FIELD_METADATA_KEY = "jobsd-field"
# Trailing-metadata key of a RESOURCE_EXHAUSTED that says when to come back: milliseconds, an integer.
RETRY_AFTER_METADATA_KEY = "retry-after-ms"
# The rate limit's state beside it, as the REST gateway's X-RateLimit-* headers carry it: the bucket's size, the
# requests left in it, and the seconds until it is full again (integers).
RATE_LIMIT_METADATA_KEYS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


class JobsdError(Exception):
    """A failure jobsd reports: `message` for people, `code_name` and `http_status` for programs.

    `field` names the request field at fault, when one is (always for `InvalidArgument`).
    """

    code_name: str = "UNKNOWN"
    http_status: int = 500

    def __init__(self, message: str, *, field: str | None = None, code_name: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code_name is not None and code_name != type(self).code_name:
            # A code without a class of its own (an error from a newer or another server).
            self.code_name = code_name

    def __str__(self) -> str:
        return self.message

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status code (`grpc.StatusCode`) of this error."""
        import grpc

        return grpc.StatusCode[self.code_name]


# The SDK's name for the base class since its first release; the same class.
JobsdClientError = JobsdError


class InvalidArgument(JobsdError, ValueError):
    """A request field is missing or malformed: `field` names it, `problem` says what is wrong.

    Also raised by the SDK for bad input it catches before sending anything.
    """

    code_name = "INVALID_ARGUMENT"
    http_status = 400

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.problem = problem

    @classmethod
    def for_field(cls, field: str, problem: str) -> InvalidArgument:
        """The error for `field` (kept for callers of the SDK's earlier releases; same as the constructor)."""
        return cls(field, problem)

    @classmethod
    def from_wire(cls, message: str, field: str | None) -> InvalidArgument:
        """The error a server sent: its message exactly as sent, the field from the trailing metadata."""
        error = cls.__new__(cls)
        JobsdError.__init__(error, message, field=field)
        prefix = f"{field}: " if field else ""
        error.problem = message[len(prefix) :] if prefix and message.startswith(prefix) else message
        return error


class NotFound(JobsdError):
    """No such job or workspace, or it is past its visibility window."""

    code_name = "NOT_FOUND"
    http_status = 404


class PermissionDenied(JobsdError):
    """The token is valid but does not reach this workspace, job or scope."""

    code_name = "PERMISSION_DENIED"
    http_status = 403


class Unauthenticated(JobsdError):
    """No token, or a token jobsd does not know. Tinybird answers 403 for it, so the gateway does too."""

    code_name = "UNAUTHENTICATED"
    http_status = 403


class FailedPrecondition(JobsdError):
    """The job's state refuses the operation (not cancellable, already cancelling, stale lease, ...)."""

    code_name = "FAILED_PRECONDITION"
    http_status = 400


class AlreadyExists(JobsdError):
    """The thing to create exists already."""

    code_name = "ALREADY_EXISTS"
    http_status = 409


class ResourceExhausted(JobsdError):
    """A limit was hit (too many streams, a request too large, a subscriber too slow, a rate limit); later may work.

    `retry_after`: the seconds the server asks the caller to wait before trying again, when it says (a rate
    limit does: gRPC trailing metadata `retry-after-ms`, REST `Retry-After`); else None. `limit`, `remaining`
    and `reset_after` describe the rate limit that refused the call (its burst, what is left, and the seconds
    until it is full again), when one did.
    """

    code_name = "RESOURCE_EXHAUSTED"
    http_status = 429

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code_name: str | None = None,
        retry_after: float | None = None,
        limit: int | None = None,
        remaining: int | None = None,
        reset_after: float | None = None,
    ) -> None:
        super().__init__(message, field=field, code_name=code_name)
        self.retry_after = retry_after
        self.limit = limit
        self.remaining = remaining
        self.reset_after = reset_after


class Unavailable(JobsdError):
    """jobsd (or its store) cannot be reached right now; the call may be retried."""

    code_name = "UNAVAILABLE"
    http_status = 503


class DeadlineExceeded(JobsdError):
    """The call did not finish within its deadline."""

    code_name = "DEADLINE_EXCEEDED"
    http_status = 504


class Cancelled(JobsdError):
    """The call was cancelled (by the caller, or by the server shutting down)."""

    code_name = "CANCELLED"


class Unimplemented(JobsdError):
    """The server does not know this RPC (an older jobsd)."""

    code_name = "UNIMPLEMENTED"


class Internal(JobsdError):
    """The server failed in a way it does not describe (never with a stack trace)."""

    code_name = "INTERNAL"


def _with_own_code(cls: type[JobsdError]) -> list[type[JobsdError]]:
    found = [cls] if "code_name" in vars(cls) else []
    for sub in cls.__subclasses__():
        found += _with_own_code(sub)
    return found


def error_for_code(code_name: str) -> type[JobsdError]:
    """The class of a status code name (`"NOT_FOUND"` -> `NotFound`); `JobsdError` itself for the others.

    Derived from the classes: the first class (in definition order) that declares the code owns it, so a
    refinement such as the server's `StaleLease` (a FailedPrecondition) never takes its parent's place.
    """
    by_code: dict[str, type[JobsdError]] = {}
    for cls in _with_own_code(JobsdError):
        by_code.setdefault(cls.code_name, cls)
    return by_code.get(code_name, JobsdError)


def _metadata_text(metadata: Iterable[Any] | None) -> dict[str, str]:
    # Sync calls give a tuple of (key, value) pairs, grpc.aio a Metadata whose iteration yields the same pairs.
    found: dict[str, str] = {}
    for item in metadata or ():
        key, value = item
        found.setdefault(str(key), value.decode() if isinstance(value, bytes) else str(value))
    return found


def _field_from(metadata: Iterable[Any] | None) -> str | None:
    return _metadata_text(metadata).get(FIELD_METADATA_KEY)


def _integer(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() and len(text) <= 18 else None


def error_from_rpc(error: grpc.RpcError) -> JobsdError:
    """The typed error for a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    code_of = getattr(error, "code", None)
    code = code_of() if callable(code_of) else None
    code_name = code.name if code is not None else "UNKNOWN"
    details_of = getattr(error, "details", None)
    details = str((details_of() if callable(details_of) else None) or code_name)
    trailing_of = getattr(error, "trailing_metadata", None)
    try:
        trailing = _metadata_text(trailing_of() if callable(trailing_of) else None)
    except (TypeError, ValueError):  # malformed metadata never hides the real error
        trailing = {}
    field = trailing.get(FIELD_METADATA_KEY)
    cls = error_for_code(code_name)
    if issubclass(cls, InvalidArgument):
        return cls.from_wire(details, field)
    if code_name == "UNAVAILABLE" and _HTTP1_ANSWER in details:
        details = WRONG_PROTOCOL_GRPC
    if issubclass(cls, ResourceExhausted):
        retry_ms = _integer(trailing.get(RETRY_AFTER_METADATA_KEY))
        limit, remaining, reset = (_integer(trailing.get(key)) for key in RATE_LIMIT_METADATA_KEYS)
        return cls(
            details,
            field=field,
            code_name=code_name,
            retry_after=None if retry_ms is None else retry_ms / 1000,
            limit=limit,
            remaining=remaining,
            reset_after=None if reset is None else float(reset),
        )
    return cls(details, field=field, code_name=code_name)


# What gRPC says when an HTTP/1.x server answers its HTTP/2 preface (a REST port given as the gRPC target).
_HTTP1_ANSWER = "Trying to connect an http1.x server"
WRONG_PROTOCOL_GRPC = (
    "an HTTP/1.1 server answered, not gRPC: is this the REST gateway's port? The target is jobsd's gRPC "
    "address (JOBSD_GRPC_ADDR, default 127.0.0.1:50051); REST URLs go to --http-target / JOBSD_HTTP_TARGET"
)


def check_grpc_target(target: str) -> str:
    """`target` as grpc dials it; a URL (`http://host:port`) is refused naming what to give instead.

    gRPC's own schemes (`dns:///`, `unix:`, `ipv4:`, ...) pass; `http(s)://` is a REST address, and gRPC would
    only say "Misformatted domain name" of it.
    """
    stripped = target.strip()
    scheme, sep, rest = stripped.partition("://")
    if sep and scheme.lower() in ("http", "https", "grpc", "grpcs"):
        hostport = rest.split("/", 1)[0] or "127.0.0.1:50051"
        raise InvalidArgument(
            "target",
            f"expected HOST:PORT (jobsd's gRPC address), got the URL {stripped!r}: give {hostport} "
            "(the REST gateway's http:// URL is --http-target / JOBSD_HTTP_TARGET)",
        )
    if not stripped:
        raise InvalidArgument("target", "expected HOST:PORT (jobsd's gRPC address), got nothing")
    return stripped


def error_from_item(error: Any) -> JobsdError:
    """The typed error for one refused item of a batch (a `pb.ItemError`: code name, message, field)."""
    code_name = str(error.code) or "UNKNOWN"
    cls = error_for_code(code_name)
    field = str(error.field) or None
    if issubclass(cls, InvalidArgument):
        return cls.from_wire(str(error.message), field)
    return cls(str(error.message) or code_name, field=field, code_name=code_name)
