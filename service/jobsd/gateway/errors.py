"""Errors on the wire: `{"error": "<message>", "documentation": "<link>"}` (plus `detail` where the documented
message is only the start of ours), mapped in exactly one middleware.

`JobsdError.http_status` decides the status; aiohttp's own refusals (no such route, wrong method, body too large)
get the same body shape; anything unexpected is a 500 with a generic message and a log line, never a stack trace.
"""

from __future__ import annotations

import asyncio
import logging
import math

from aiohttp import web
from aiohttp.typedefs import Handler

from jobsd.domain.states import NOT_CANCELLABLE
from jobsd.errors import JobsdError, ResourceExhausted

__all__ = [
    "DOCS_JOBS_API",
    "MAX_REQUEST_BYTES",
    "BodyTimeout",
    "documentation_for",
    "error_middleware",
    "error_response",
    "rate_limit_headers",
]

log = logging.getLogger("jobsd.gateway")

DOCS_JOBS_API = "https://www.tinybird.co/docs/api-reference/jobs-api"
_DOCS_AUTH = "https://www.tinybird.co/docs/api-reference#authentication"

# Route name -> the section of the documentation that describes it.
_DOCS_BY_ROUTE: dict[str, str] = {
    "list_jobs": f"{DOCS_JOBS_API}#get-v0-jobs",
    "list_jobs_slash": f"{DOCS_JOBS_API}#get-v0-jobs",
    "get_job": f"{DOCS_JOBS_API}#get-v0-jobs-job_id",
    "cancel_job": f"{DOCS_JOBS_API}#post-v0-jobs-job_id-cancel",
    "retry_job": f"{DOCS_JOBS_API}#post-v0-jobs-job_id-retry",
    "jobs_events": f"{DOCS_JOBS_API}#get-v0-jobs-events",
    "job_events": f"{DOCS_JOBS_API}#get-v0-jobs-job_id-events",
    "jobs_log": "https://www.tinybird.co/docs/monitoring/service-datasources#tinybird-jobs-log",
    "workspace_v0": _DOCS_AUTH,
    "workspace_v1": _DOCS_AUTH,
}

# The body limit the application enforces, kept on the app so the 413 message can state it.
MAX_REQUEST_BYTES = web.AppKey("max_request_bytes", int)


class BodyTimeout(TimeoutError):
    """The request body did not arrive within the body time-out: raised to the handler that reads it.

    A TimeoutError, so that aiohttp's own discarding of an unread body after the response takes it as the end of
    that body rather than as an unexpected error."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"Request timeout: the request body did not arrive within {seconds:g} seconds")
        self.seconds = seconds


_GENERIC_500 = "Internal server error: the request could not be completed; it has been logged"


def documentation_for(request: web.Request, status: int) -> str:
    """The section that explains this endpoint; token problems point at the authentication section."""
    if status == 403:
        return _DOCS_AUTH
    route = request.match_info.route
    return _DOCS_BY_ROUTE.get(route.name or "", DOCS_JOBS_API)


# Messages whose start the Tinybird API documents word for word (clients compare it): the REST body keeps that
# start as `error` and carries the rest (why: the kind, the status, the rule) as `detail`.
_DOCUMENTED_STARTS = (NOT_CANCELLABLE,)


def error_response(request: web.Request, status: int, message: str) -> web.Response:
    body = {"error": message, "documentation": documentation_for(request, status)}
    for start in _DOCUMENTED_STARTS:
        if message.startswith(start + ": "):
            body = {"error": start, "detail": message[len(start) + 2 :], "documentation": body["documentation"]}
    return web.json_response(body, status=status)


def rate_limit_headers(exc: ResourceExhausted) -> dict[str, str]:
    """A rate limit's refusal as HTTP headers: `Retry-After` (whole seconds, at least 1) and `X-RateLimit-Limit`
    (the bucket's size), `X-RateLimit-Remaining` (0), `X-RateLimit-Reset` (whole seconds until it is full again).
    Nothing for a refusal that cannot say when to come back (a cap on streams)."""
    if exc.retry_after is None:
        return {}
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if exc.limit is not None and exc.remaining is not None and exc.reset_after is not None:
        headers["X-RateLimit-Limit"] = str(exc.limit)
        headers["X-RateLimit-Remaining"] = str(exc.remaining)
        headers["X-RateLimit-Reset"] = str(max(1, math.ceil(exc.reset_after)))
    return headers


def _aiohttp_message(exc: web.HTTPException, request: web.Request) -> str:
    if isinstance(exc, web.HTTPNotFound):
        return f"Not found: no endpoint at {request.path}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"Method {request.method} is not allowed here; allowed: {', '.join(sorted(exc.allowed_methods))}"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return f"Request body too large: at most {request.app[MAX_REQUEST_BYTES]} bytes are accepted"
    return exc.reason


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except JobsdError as exc:
        if exc.http_status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.http_status, exc.message)
        response = error_response(request, exc.http_status, exc.message)
        if isinstance(exc, ResourceExhausted):
            response.headers.update(rate_limit_headers(exc))
        return response
    except BodyTimeout as exc:
        # The connection closes after this answer (the protocol said so when the body's time ran out).
        return error_response(request, 408, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(request, exc.status, _aiohttp_message(exc, request))
        if isinstance(exc, web.HTTPMethodNotAllowed):
            response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        # The operator gets the traceback in the log; the caller only the generic message.
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error_response(request, 500, _GENERIC_500)
