"""Requests that never reach a handler: what the HTTP parser refuses is answered like every other error.

aiohttp answers a request it cannot parse (a request line or header over the size limit, a bad Content-Length,
bytes that are not HTTP) from its protocol handler, before routing and middlewares: by default a text/plain 400
that quotes the start of the offending line — which may hold an `Authorization: Bearer …` header — and an ERROR
log record with a traceback for each one. `CleanErrorsRunner` serves the gateway with a protocol handler whose
`handle_error` answers the documented JSON body instead, quotes nothing of the request, and logs one DEBUG line
naming only the kind of problem (a client that sends garbage must not be able to fill the log).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from jobsd.gateway.errors import DOCS_JOBS_API

__all__ = ["CleanErrorsRunner", "refusal_body"]

log = logging.getLogger("jobsd.gateway")

_MESSAGES = {
    400: "Bad request: the request line or its headers could not be read (malformed, or longer than allowed)",
    413: "Request too large",
    431: "Request header fields too large",
}
_GENERIC_500 = "Internal server error: the request could not be completed; it has been logged"


def refusal_body(status: int) -> bytes:
    """The JSON error body for a request refused before routing: never anything of the request itself."""
    default = _GENERIC_500 if status >= 500 else f"{status} {HTTPStatus(status).phrase}"
    message = default if status >= 500 else _MESSAGES.get(status, default)
    return json.dumps({"error": message, "documentation": DOCS_JOBS_API}).encode()


class _CleanErrorsHandler(RequestHandler):
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


class _CleanErrorsServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _CleanErrorsHandler(self, loop=self._loop, **self._kwargs)


class CleanErrorsRunner(web.AppRunner):
    """`web.AppRunner` whose connections answer parse errors with the JSON error body (see the module doc)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's Server, made by aiohttp with its own handler and request factory; only the protocol
        # handler class it makes per connection changes.
        server.__class__ = _CleanErrorsServer
        return server
