"""Queue rules that do not depend on a kind's configuration: the retention bound, and the concurrency key of a
built-in kind (every other rule is a kind's: `jobsd.domain.kinds`)."""

from __future__ import annotations

from datetime import datetime

from jobsd.domain.kinds import BUILTIN_KINDS, KindRegistry
from jobsd.domain.model import Job

__all__ = ["concurrency_key", "is_visible"]


def concurrency_key(
    workspace_id: str, kind: str, target_datasource: str | None, kinds: KindRegistry = BUILTIN_KINDS
) -> str:
    """`workspace:kind`, or `workspace:kind:target` for kinds queued per target data source."""
    return kinds.get(kind).key_for(workspace_id, target_datasource)


def is_visible(job: Job, now: datetime) -> bool:
    """The 48 h bound, evaluated at `now`: a job is gone from the API the instant it expires."""
    return job.expires_at is None or now < job.expires_at
