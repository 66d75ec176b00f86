"""Prometheus metrics of one jobsd process, on a registry of its own (no module-level state)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:  # the service layer imports this module; only the app wires a store to it
    from jobsd.store.sqlite import SqliteStats

__all__ = ["Metrics", "SqliteStoreCollector"]


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

    def watch_sqlite(self, stats: Callable[[], SqliteStats]) -> None:
        """Export the embedded store's commit and checkpoint counters, read from `stats` at each scrape."""
        self.registry.register(SqliteStoreCollector(stats))


class SqliteStoreCollector(Collector):
    """The embedded store's group commits and WAL checkpoints, read when scraped (the write path pays nothing).

    `committed_writes / commits` is the average group size; a `wal_frames_behind` that stays up means a long read
    (another process's, e.g. a backup) pins the WAL, which then grows until that read ends.
    """

    def __init__(self, stats: Callable[[], SqliteStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        yield CounterMetricFamily("jobsd_sqlite_commits", "COMMITs of the embedded store", value=stats.commits)
        yield CounterMetricFamily(
            "jobsd_sqlite_committed_writes",
            "Job writes made durable by those COMMITs (group commit shares one COMMIT among many writes)",
            value=stats.committed_writes,
        )
        yield CounterMetricFamily(
            "jobsd_sqlite_checkpoints", "WAL checkpoints run by the checkpoint thread", value=stats.checkpoints
        )
        yield CounterMetricFamily(
            "jobsd_sqlite_checkpoint_failures",
            "WAL checkpoints that failed (busy past the timeout, the file gone); the next one tries again",
            value=stats.checkpoint_failures,
        )
        yield GaugeMetricFamily(
            "jobsd_sqlite_wal_frames", "Pages in the WAL file at the last checkpoint", value=stats.wal_frames
        )
        yield GaugeMetricFamily(
            "jobsd_sqlite_wal_frames_behind",
            "Pages of the WAL the last checkpoint could not copy into the database (a reader still needed them)",
            value=stats.wal_frames_behind,
        )
        yield CounterMetricFamily(
            "jobsd_sqlite_wal_restarts",
            "Times the WAL reached JOBSD_SQLITE_WAL_LIMIT_MB and, new writes held for one checkpoint, started over",
            value=stats.wal_restarts,
        )
        yield CounterMetricFamily(
            "jobsd_sqlite_write_hold_seconds",
            "Seconds new writes waited, in total, while the WAL caught up to start over",
            value=stats.write_hold_seconds,
        )
