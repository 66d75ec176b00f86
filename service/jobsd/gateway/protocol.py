"""The gateway's protocol handler: what happens to a connection before (and between) the requests a handler sees.

Two jobs, both about requests that never reach a handler.

**Clean refusals.** aiohttp answers a request it cannot parse (a request line or header over the size limit, a bad
Content-Length, bytes that are not HTTP) from its protocol handler, before routing and middlewares: by default a
text/plain 400 that quotes the start of the offending line — which may hold an `Authorization: Bearer …` header —
and an ERROR log record with a traceback for each one. `GatewayProtocol.handle_error` answers the documented JSON
body instead, quotes nothing of the request, and logs one DEBUG line naming only the kind of problem (a client
that sends garbage must not be able to fill the log).

**Time-outs.** aiohttp (3.14) has one timer per connection, `keepalive_timeout`: armed when the connection opens
and after each response, it closes a connection still waiting for a request when it fires. After a response that
is the idle time-out (`ConnectionLimits.idle_timeout`). It knows nothing of a request that trickles in, so
`GatewayProtocol` adds two (and, while one of them runs, stands aiohttp's timer down):

- the **header time-out**: a request's line and headers must be complete within it, counted from the connection's
  start (a silent new connection) or from the first byte of a request on a kept-alive one. A connection that sent
  part of a head gets a JSON 408 and is closed; a silent one is closed.
- the **body time-out**: once the head has arrived, the whole body must arrive within it. The handler reading the
  body gets `BodyTimeout` (answered 408 by the error middleware), and the connection closes after the response.
  A handler that does not read the body is not held up; aiohttp then discards the rest for at most its lingering
  time before closing.

The connection count and the file-descriptor limit are the listener's business (`jobsd.gateway.connections`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from jobsd.gateway.errors import DOCS_JOBS_API, BodyTimeout
from jobsd.settings import Settings

__all__ = [
    "BodyTimeout",
    "CleanErrorsRunner",
    "ConnectionLimits",
    "GatewayProtocol",
    "raw_response",
    "refusal_body",
]

log = logging.getLogger("jobsd.gateway")

_MESSAGES = {
    400: "Bad request: the request line or its headers could not be read (malformed, or longer than allowed)",
    408: "Request timeout: the request line and headers did not arrive in time",
    413: "Request too large",
    431: "Request header fields too large",
}
_GENERIC_500 = "Internal server error: the request could not be completed; it has been logged"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one REST connection may take (seconds), and how many may be open at once (`settings.http_*`)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 75.0
    max_connections: int = 1_000

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout=settings.http_header_timeout_seconds,
            body_timeout=settings.http_body_timeout_seconds,
            idle_timeout=settings.http_idle_timeout_seconds,
            max_connections=settings.http_max_connections,
        )


def refusal_body(status: int, message: str | None = None) -> bytes:
    """The JSON error body for a request refused before routing: never anything of the request itself."""
    if message is None:
        default = _GENERIC_500 if status >= 500 else f"{status} {HTTPStatus(status).phrase}"
        message = default if status >= 500 else _MESSAGES.get(status, default)
    return json.dumps({"error": message, "documentation": DOCS_JOBS_API}).encode()


def raw_response(status: int, message: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A whole HTTP/1.1 response with the JSON error body, for a connection no handler will serve (it is closed
    right after)."""
    body = refusal_body(status, message)
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
        "",
        "",
    ]
    return "\r\n".join(lines).encode() + body


class GatewayProtocol(RequestHandler):
    """aiohttp's protocol handler with clean refusals and the header and body time-outs (see the module doc)."""

    def __init__(self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self.limits = ConnectionLimits(idle_timeout=self.keepalive_timeout)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False  # some bytes of the head being waited for have arrived
        self._body: StreamReader | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._on_lost: Callable[[], None] | None = None
        # Set when the connection ends: a long response (an event stream) stops at once and gives back what it
        # holds (its watch stream's place) instead of finding out at its next write.
        self.lost = asyncio.Event()

    def on_connection_lost(self, callback: Callable[[], None]) -> None:
        """Call `callback` once when this connection ends (the listener's connection count)."""
        self._on_lost = callback

    @property
    def awaiting_request(self) -> bool:
        """Waiting for a request of which nothing has arrived: a new connection that has sent nothing, or a
        kept-alive one between requests. Closing it loses no request (HTTP lets a server close it at any time)."""
        waiter = self._waiter  # aiohttp's: set while its loop waits for the next request
        head_arriving = self._head_timer is not None and self._head_started
        return (
            self.transport is not None
            and not self._force_close
            and waiter is not None
            and not waiter.done()
            and not self._messages
            and not head_arriving
        )

    def give_up(self) -> None:
        """Close this connection at once, without a word (the listener needs its descriptor); only while it is
        `awaiting_request`. Its descriptor is free once `connection_lost` has run."""
        transport = self.transport
        self.force_close()
        if transport is not None:
            transport.abort()  # not close(): a response the client never read must not keep the descriptor

    # ------------------------------------------------------------------ the connection's life

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_head_timer(started=False)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        self.lost.set()
        try:
            super().connection_lost(exc)
        finally:
            on_lost, self._on_lost = self._on_lost, None
            if on_lost is not None:
                on_lost()

    def data_received(self, data: bytes) -> None:
        if data and self._head_timer is None and not self._body_pending():
            # The first bytes of the next request on a kept-alive connection: its head is now on the clock.
            self._arm_head_timer(started=True)
        elif data and self._head_timer is not None:
            self._head_started = True
        heads = self._request_count
        super().data_received(data)
        arrived = self._request_count - heads
        if arrived <= 0:
            return
        self._cancel_head_timer()
        # The newest request's body is the only one that can still be incomplete (the parser has moved past the
        # bodies of the ones before it).
        _message, payload = self._messages[-1] if self._messages else (None, None)
        if isinstance(payload, StreamReader) and not payload.is_eof():
            self._arm_body_timer(payload)

    # ------------------------------------------------------------------ time-outs

    def _body_pending(self) -> bool:
        return self._body is not None and not self._body.is_eof()

    def _arm_head_timer(self, *, started: bool) -> None:
        self._cancel_head_timer()
        # While a head is awaited the header time-out alone applies: aiohttp's keep-alive timer (armed at the
        # connection's start and after each response) would otherwise close it first, silently, when shorter.
        # aiohttp arms it again after the next response.
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        self._head_started = started
        self._head_timer = self._loop.call_later(self.limits.header_timeout, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_body_timer(self, payload: StreamReader) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body = payload
        self._body_timer = self._loop.call_later(self.limits.body_timeout, self._body_expired, payload)

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._force_close:
            return
        seconds = self.limits.header_timeout
        if self._head_started:
            log.debug("closed a connection whose request head did not arrive within %g s", seconds)
            message = f"Request timeout: the request line and headers did not arrive within {seconds:g} seconds"
            if not self._request_in_progress:
                transport.write(raw_response(408, message))
        else:
            log.debug("closed a connection that sent nothing within %g s", seconds)
        self.force_close()

    def _body_expired(self, payload: StreamReader) -> None:
        self._body_timer = None
        if payload.is_eof() or self._force_close:
            return
        log.debug("request body did not arrive within %g s", self.limits.body_timeout)
        # No keep-alive after this request; its handler (if it reads the body) answers 408.
        self.close()
        payload.set_exception(BodyTimeout(self.limits.body_timeout))

    # ------------------------------------------------------------------ refusals

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            # A bug (aiohttp has logged the exception already): the caller gets the generic message only.
            log.error("request from %s failed before a response: %s", request.remote, type(exc).__name__)
        else:
            log.debug("refused a malformed HTTP request from %s: %s", request.remote, type(exc).__name__)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started: no error response can follow")
        response = web.Response(status=status, body=refusal_body(status), content_type="application/json")
        response.force_close()
        return response


class _GatewayServer(web.Server):
    limits: ConnectionLimits

    def __call__(self) -> RequestHandler:
        handler = GatewayProtocol(self, loop=self._loop, **self._kwargs)
        handler.limits = self.limits
        return handler


class CleanErrorsRunner(web.AppRunner):
    """`web.AppRunner` whose connections are `GatewayProtocol`s: clean refusals and the time-outs of `limits`."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits | None = None, **kwargs: Any) -> None:
        self.limits = limits or ConnectionLimits()
        super().__init__(app, keepalive_timeout=self.limits.idle_timeout, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's Server, made by aiohttp with its own handler and request factory; only the protocol
        # handler class it makes per connection changes.
        server.__class__ = _GatewayServer
        assert isinstance(server, _GatewayServer)
        server.limits = self.limits
        return server
