"""Prometheus metrics of one jobsd process, on a registry of its own (no module-level state)."""

from __future__ import annotations

from typing import Any

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
        self.run_time_exceeded = Counter(
            "jobsd_run_time_exceeded", "Jobs ended for running past their kind's run-time limit", registry=self.registry
        )
        # Labelled children by label values: `labels()` is a lock and a dict lookup per call, on every RPC and
        # every job write. Bounded by the label values that exist (methods x codes, kinds x statuses).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Any, values: tuple[str, ...]) -> Any:
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def transition(self, kind: str, status: str, count: int = 1) -> None:
        """`count` job status changes written (to this status, of this kind)."""
        self._child(self.transitions, (kind, status)).inc(count)

    def rpc(self, method: str, code: str, seconds: float) -> None:
        self._child(self.rpc_latency, (method, code)).observe(seconds)

    def queued(self, kind: str, seconds: float) -> None:
        self._child(self.queue_wait, (kind,)).observe(seconds)
