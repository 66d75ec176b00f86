"""`jobsd gateway --grpc-target HOST:PORT`: the REST gateway alone, in front of any jobsd (or a load balancer)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import prometheus_client

from jobsd.api.remote import GrpcJobsApi
from jobsd.gateway.server import GatewayServer
from jobsd.settings import Settings

__all__ = ["run_standalone"]

log = logging.getLogger("jobsd.gateway")


async def run_standalone(
    settings: Settings,
    grpc_target: str,
    stop: asyncio.Event,
    *,
    on_listening: Callable[[int], None] | None = None,
) -> None:
    """Serve `settings.http_addr` over the jobsd at `grpc_target` until `stop` is set.

    `on_listening(port)` is called once the port is bound (with port 0 in the address, that is how a caller
    learns which one it got).
    """
    api = GrpcJobsApi(grpc_target)
    # The process's default registry: in a process of its own, /metrics then also shows the process collectors.
    server = GatewayServer(api, settings, registry=prometheus_client.REGISTRY)
    try:
        port = await server.start()
        log.info("standalone REST gateway on port %d, forwarding to jobsd at %s", port, grpc_target)
        if on_listening is not None:
            on_listening(port)
        await stop.wait()
    finally:
        await server.stop()
        await api.close()
