"""Prometheus metrics of one jobsd process, on a registry of its own (no module-level state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["Metrics"]


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.transitions = Counter(
            "jobsd_job_transitions",
            "Job status changes written, by kind and new status",
            ["kind", "status"],
            registry=self.registry,
        )
        self.rpc_latency = Histogram(
            "jobsd_rpc_seconds",
            "Latency of gRPC calls by method and code",
            ["method", "code"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
        )
        self.queue_wait = Histogram(
            "jobsd_queue_wait_seconds",
            "Time from creation to first claim",
            ["kind"],
            registry=self.registry,
            buckets=(0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600),
        )
        self.watchers = Gauge("jobsd_watchers", "Open watch streams", registry=self.registry)
        self.lease_lapses = Counter("jobsd_lease_lapses", "Leases recovered by the sweeper", registry=self.registry)
