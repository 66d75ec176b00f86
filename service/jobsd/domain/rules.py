"""Queue rules: concurrency keys, limits, leases and the retention bound."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from jobsd.domain.model import Job, JobKind

__all__ = ["DEFAULT_KIND_LIMITS", "QueueRules", "concurrency_key", "is_visible"]

# Kinds that write into one target data source queue per target: two populates of one table never overlap.
_KEYED_BY_TARGET = frozenset({JobKind.POPULATEVIEW, JobKind.COPY, JobKind.DELETE_DATA})

DEFAULT_KIND_LIMITS: Mapping[str, int] = {
    JobKind.IMPORT: 4,
    JobKind.QUERY: 4,
    JobKind.POPULATEVIEW: 1,
    JobKind.COPY: 1,
    JobKind.DELETE_DATA: 1,
    JobKind.SINK: 2,
}


def concurrency_key(workspace_id: str, kind: str, target_datasource: str | None) -> str:
    """`workspace:kind`, or `workspace:kind:target` for kinds that write one target data source."""
    if kind in _KEYED_BY_TARGET and target_datasource:
        return f"{workspace_id}:{kind}:{target_datasource}"
    return f"{workspace_id}:{kind}"


def is_visible(job: Job, now: datetime) -> bool:
    """The 48 h bound, evaluated at `now`: a job is gone from the API the instant it expires."""
    return job.expires_at is None or now < job.expires_at


@dataclass(frozen=True, slots=True)
class QueueRules:
    retention: timedelta = timedelta(hours=48)
    lease: timedelta = timedelta(seconds=30)
    max_attempts: int = 3
    kind_limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_KIND_LIMITS))

    def limit_for(self, kind: str) -> int:
        return self.kind_limits.get(kind, 1)

    @property
    def heartbeat_interval(self) -> timedelta:
        # Three heartbeats per lease: one lost heartbeat never costs the lease.
        return self.lease / 3
