"""Server-Sent Events: `GET /v0/jobs/{id}/events` (the REST face of `WatchJob`) and `GET /v0/jobs/events` (of
`WatchJobs`).

A job's stream: each event is `id: <revision>`, `event: snapshot|status|progress`, `data: <the job detail JSON>`,
so a client resumes after a reconnect by sending `Last-Event-ID`, which becomes `since_revision`. It ends after
the terminal state, or when the gateway stops.

The list's stream: `event: snapshot` for each matching active job, `event: synced`, then `status`/`progress`
events of the matching jobs; `id:` is a resume point (integer microseconds, see `ResumeCursor`) that comes back
as `Last-Event-ID` and becomes `WatchJobsRequest.changed_since`. It ends only when the client leaves or the
gateway stops.

The watch is read by a pump task into a one-slot queue: the handler can then wait on "next event", "gateway
closing" and "time for a keep-alive" at once, and a slow HTTP reader pushes back on the watch (whose own buffer
coalesces progress) instead of piling events up here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web

from jobsd.errors import InvalidArgument, JobsdError
from jobsd_client import pb

__all__ = [
    "MAX_REVISION",
    "EventStreamOptions",
    "ResumeCursor",
    "resume_point",
    "revision_id",
    "since_revision",
    "stream_job_events",
]

log = logging.getLogger("jobsd.gateway")

_TYPE_PREFIX = "TYPE_"
# Revisions are int64 on the wire.
MAX_REVISION = 2**63 - 1
_UNEXPECTED = "The event stream failed unexpectedly; reconnect with Last-Event-ID to resume"


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_END = _Marker("END")  # the watch finished (the job reached its terminal state)
_CLOSING = _Marker("CLOSING")  # the gateway is stopping, or the client has gone
_IDLE = _Marker("IDLE")  # nothing happened within the wait


class EventStreamOptions:
    """Timings of a stream. Waits on real time are for the network's sake only (keep-alives, header flush)."""

    def __init__(self, keepalive_seconds: float = 15.0, open_grace_seconds: float = 0.5) -> None:
        # Proxies and load balancers drop connections that stay silent; a comment line every so often prevents it.
        self.keepalive_seconds = keepalive_seconds
        # How long to wait for the first event before sending the headers anyway: errors that the watch raises at
        # once (bad token, unknown job) still become a proper HTTP status, and a resumed stream with nothing new
        # does not leave the client without a response.
        self.open_grace_seconds = open_grace_seconds


def _event_number(name: str, raw: str, what: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_REVISION:
        raise InvalidArgument(name, f"must be {what} (an integer from 0 to {MAX_REVISION}), got {raw!r}")
    return value


def since_revision(headers: Mapping[str, str], query: Mapping[str, str]) -> int:
    """`Last-Event-ID` (what EventSource sends on reconnect), else `?since_revision=`; 0 opens with a snapshot."""
    for name, raw in (("Last-Event-ID", headers.get("Last-Event-ID")), ("since_revision", query.get("since_revision"))):
        if raw is None or raw.strip() == "":
            continue
        return _event_number(name, raw, "a revision number")
    return 0


def resume_point(headers: Mapping[str, str]) -> int:
    """The list stream's `Last-Event-ID`: a resume point this gateway sent as `id:`; 0 when absent."""
    raw = headers.get("Last-Event-ID")
    if raw is None or raw.strip() == "":
        return 0
    return _event_number("Last-Event-ID", raw, "the id of an event of this stream")


class ResumeCursor:
    """The list stream's event ids: the greatest `resume_after` delivered so far, in integer microseconds.

    `resume_after` is the job's updated_at on job events and the snapshot's time on SYNCED; a progress event of a
    job whose status changed long ago must not move the resume point back, hence the maximum.
    """

    def __init__(self, start: int = 0) -> None:
        self.value = start

    def __call__(self, event: pb.JobEvent) -> int | None:
        if event.HasField("resume_after"):
            self.value = max(self.value, event.resume_after.ToMicroseconds())
        return self.value or None


def revision_id(event: pb.JobEvent) -> int | None:
    """A job stream's event id: the revision."""
    return event.revision


async def _pump(events: AsyncIterator[pb.JobEvent], queue: asyncio.Queue[object]) -> None:
    try:
        async for event in events:
            await queue.put(event)
    except Exception as exc:  # handed to the handler, which decides how the client learns of it
        await queue.put(exc)
        return
    await queue.put(_END)


async def _next_item(
    queue: asyncio.Queue[object], closing: asyncio.Event, wait_seconds: float, lost: asyncio.Event | None = None
) -> object:
    if closing.is_set() or (lost is not None and lost.is_set()):
        return _CLOSING
    getter = asyncio.ensure_future(queue.get())
    closer = asyncio.ensure_future(closing.wait())
    waits = {getter, closer}
    if lost is not None:
        waits.add(asyncio.ensure_future(lost.wait()))
    try:
        done, _ = await asyncio.wait(waits, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    if getter in done:
        return getter.result()
    return _CLOSING if done else _IDLE


def _event_name(event: pb.JobEvent) -> str:
    name: str = pb.JobEvent.Type.Name(event.type)
    return name.removeprefix(_TYPE_PREFIX).lower()


def _frame(event_id: int | None, name: str, data: Any) -> bytes:
    lines = [] if event_id is None else [f"id: {event_id}"]
    lines += [f"event: {name}", "data: " + json.dumps(data, separators=(",", ":")), "", ""]
    return "\n".join(lines).encode()


async def stream_job_events(
    request: web.Request,
    events: AsyncIterator[pb.JobEvent],
    *,
    render: Callable[[pb.Job], dict[str, Any]],
    closing: asyncio.Event,
    options: EventStreamOptions,
    documentation: str,
    event_id: Callable[[pb.JobEvent], int | None] = revision_id,
) -> web.StreamResponse:
    """Relay `events` to the client until the watch ends, the client leaves, or the gateway closes.

    `render` turns an event's job into its `data:`; an event without a job (SYNCED) carries `{}`.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=1)
    pump = asyncio.create_task(_pump(events, queue))
    # The gateway's protocol says when the client has gone (then the watch ends now, its place given back).
    lost: asyncio.Event | None = getattr(request.protocol, "lost", None)
    try:
        item = await _next_item(queue, closing, options.open_grace_seconds, lost)
        if isinstance(item, Exception):
            raise item  # before the headers: the error middleware gives it its HTTP status
        if lost is not None and lost.is_set():
            return web.Response()  # the client left before the first event: there is no one to answer
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionError):
            while item is not _END and item is not _CLOSING:
                if item is _IDLE:
                    await response.write(b": keep-alive\n\n")
                elif isinstance(item, pb.JobEvent):
                    data = render(item.job) if item.HasField("job") else {}
                    await response.write(_frame(event_id(item), _event_name(item), data))
                elif isinstance(item, Exception):
                    if isinstance(item, JobsdError):
                        message = item.message
                    else:
                        log.error("event stream of %s failed: %r", request.path, item)
                        message = _UNEXPECTED
                    await response.write(_frame(None, "error", {"error": message, "documentation": documentation}))
                    break
                item = await _next_item(queue, closing, options.keepalive_seconds, lost)
            await response.write_eof()
        return response
    finally:
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pump
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
