"""`GatewayServer`: the REST gateway's aiohttp application, bound to `settings.http_addr`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry

from jobsd.api.base import JobsApi
from jobsd.gateway.connections import GuardedSite
from jobsd.gateway.errors import MAX_REQUEST_BYTES, error_middleware
from jobsd.gateway.handlers import JobsRoutes
from jobsd.gateway.metrics import GatewayMetrics, metrics_middleware
from jobsd.gateway.origin import PublicOrigin
from jobsd.gateway.protocol import CleanErrorsRunner, ConnectionLimits
from jobsd.gateway.sse import EventStreamOptions
from jobsd.gateway.ui import DashboardRoutes
from jobsd.settings import Settings, split_addr

__all__ = ["GatewayServer", "parse_http_addr"]

log = logging.getLogger("jobsd.gateway")

# Request line and each header: aiohttp's defaults (8 KiB), stated here because they are part of the contract
# (longer ones are answered 4xx by the HTTP parser before any handler runs).
MAX_LINE_BYTES = 8190
MAX_FIELD_BYTES = 8190


def parse_http_addr(addr: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8080`) -> (host, port); port 0 asks for an ephemeral one."""
    return split_addr("http_addr", addr)


def _body_limit(max_bytes: int) -> Middleware:
    @web.middleware
    async def refuse_oversized(request: web.Request, handler: Handler) -> web.StreamResponse:
        # A declared length over the limit is refused before anything is read; chunked bodies hit aiohttp's
        # client_max_size when a handler reads them.
        length = request.content_length
        if length is not None and length > max_bytes:
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=length)
        return await handler(request)

    return refuse_oversized


class GatewayServer:
    """The REST gateway: a thin adapter over `JobsApi` (in-process or over gRPC).

    `extra_routes` lets the executors mount their data-source endpoints on the same application when they run in
    the same process; they get the same error, size and metrics middlewares.
    """

    def __init__(
        self,
        api: JobsApi,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        extra_routes: Callable[[web.Application], None] | None = None,
        *,
        stream_options: EventStreamOptions | None = None,
    ) -> None:
        self._api = api
        self._settings = settings
        self._metrics = GatewayMetrics.for_registry(registry if registry is not None else CollectorRegistry())
        self._extra_routes = extra_routes
        self._stream_options = stream_options or EventStreamOptions()
        self._dashboard = DashboardRoutes()
        self._closing = asyncio.Event()
        self._runner: CleanErrorsRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int | None:
        """The bound port while running."""
        return self._port

    def build_app(self) -> web.Application:
        """The aiohttp application, unbound (for start(), and for benchmarks that mount it themselves)."""
        max_bytes = self._settings.max_request_bytes
        app = web.Application(
            client_max_size=max_bytes,
            middlewares=[metrics_middleware(self._metrics), error_middleware, _body_limit(max_bytes)],
        )
        app[MAX_REQUEST_BYTES] = max_bytes
        JobsRoutes(
            self._api,
            origin=PublicOrigin(self._settings.public_url, self._settings.trusted_hosts),
            metrics=self._metrics,
            closing=self._closing,
            stream_options=self._stream_options,
        ).install(app)
        self._dashboard.install(app)
        if self._extra_routes is not None:
            self._extra_routes(app)
        return app

    async def start(self) -> int:
        """Bind `settings.http_addr` and serve; returns the bound port."""
        if self._runner is not None:
            raise RuntimeError("the gateway is already started")
        host, port = parse_http_addr(self._settings.http_addr)
        self._closing.clear()
        limits = ConnectionLimits.from_settings(self._settings)
        runner = CleanErrorsRunner(
            self.build_app(),
            limits=limits,
            access_log=None,
            shutdown_timeout=self._settings.grace_seconds,
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_FIELD_BYTES,
        )
        await runner.setup()
        try:
            # Not web.TCPSite: the gateway's own accept loop caps connections and copes with the descriptor limit.
            site = GuardedSite(runner, host or None, port, limits)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        log.info("REST gateway listening on http://%s:%d", host or "0.0.0.0", self._port)
        return self._port

    async def stop(self) -> None:
        """Stop accepting, end the event streams, let in-flight requests finish (up to grace_seconds). Safe twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()
        self._port = None
