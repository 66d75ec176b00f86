"""Prometheus metrics of the gateway: requests by route, method and status; latency; open event streams."""

from __future__ import annotations

import time
import weakref
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics", "metrics_middleware"]

# A route the router did not match (404s, probes of random paths): one label value, not one per path.
_UNMATCHED = "unmatched"
# Labelled children remembered per metric (see GatewayMetrics.record).
_CHILDREN_KEPT = 1_024


class GatewayMetrics:
    """The gateway's collectors in one registry.

    One instance per registry (see `for_registry`): a registry refuses a second collector of the same name, and
    a process may start a gateway more than once on the same registry (restarts, tests).
    """

    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, GatewayMetrics] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "jobsd_http_requests",
            "HTTP requests served by the REST gateway",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "jobsd_http_request_duration_seconds",
            "Time to answer an HTTP request (for event streams: how long the stream stayed open)",
            ["route", "method"],
            registry=registry,
        )
        self.open_streams = Gauge(
            "jobsd_http_event_streams",
            "Server-Sent Event streams currently open",
            registry=registry,
        )
        # Labelled children by label values (`labels()` is a lock and a tuple check per call, twice per request).
        # Routes are the router's canonical paths (or one "unmatched"); a client can still send any method
        # token, so each map is emptied when it reaches _CHILDREN_KEPT.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request."""
        counted = self._counted.get((route, method, status))
        if counted is None:
            if len(self._counted) >= _CHILDREN_KEPT:
                self._counted.clear()
            counted = self._counted[(route, method, status)] = self.requests.labels(route, method, str(status))
        counted.inc()
        timed = self._timed.get((route, method))
        if timed is None:
            if len(self._timed) >= _CHILDREN_KEPT:
                self._timed.clear()
            timed = self._timed[(route, method)] = self.latency.labels(route, method)
        timed.observe(seconds)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> GatewayMetrics:
        existing = cls._by_registry.get(registry)
        if existing is None:
            existing = cls._by_registry[registry] = cls(registry)
        return existing


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else _UNMATCHED


def metrics_middleware(metrics: GatewayMetrics) -> Middleware:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            metrics.record(_route_label(request), request.method, status, time.perf_counter() - started)

    return record
