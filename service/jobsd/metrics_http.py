"""A bare /metrics listener for processes that serve no REST gateway (gRPC-only replicas behind a load balancer)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from jobsd.gateway.protocol import CleanErrorsRunner
from jobsd.settings import split_addr

__all__ = ["MetricsServer"]


class MetricsServer:
    def __init__(self, registry: CollectorRegistry, addr: str) -> None:
        self._registry = registry
        self._addr = addr
        self._runner: CleanErrorsRunner | None = None
        self.port: int | None = None

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self._registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def start(self) -> int:
        host, port = split_addr("metrics_addr", self._addr)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        runner = CleanErrorsRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
