"""`JobFilter`: what a caller asks to see — the one filter type of ListJobs, WatchJobs and ListJobsLog.

The service takes it from the request codecs (gRPC and REST decode into it), hands it to the store inside a
`JobQuery` / `LogQuery`, and WatchJobs matches changes against it. Every field is an exact match; None matches
anything (the codecs turn an empty request field into None).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jobsd.domain.model import Job

__all__ = ["JobFilter"]


@dataclass(frozen=True, slots=True)
class JobFilter:
    # The workspace asked for; None: the token's own. The service resolves it into the store query's scope.
    workspace_id: str | None = None
    # jobs_log only (ListJobs has no job_id filter: GetJob reads one job).
    job_id: str | None = None
    kind: str | None = None
    status: str | None = None
    pipe_id: str | None = None
    pipe_name: str | None = None
    created_after: datetime | None = None  # inclusive
    created_before: datetime | None = None  # inclusive

    def log_equalities(self) -> dict[str, str]:
        """The exact-match filters given, by the jobs_log row field each one fixes (a job's kind is `job_type`)."""
        by_field = {
            "job_id": self.job_id,
            "job_type": self.kind,
            "status": self.status,
            "pipe_id": self.pipe_id,
            "pipe_name": self.pipe_name,
        }
        return {name: value for name, value in by_field.items() if value is not None}

    def matches(self, job: Job) -> bool:
        """Whether `job` passes every filter but the workspace (the read scope decides that)."""
        return (self.status is None or job.status.value == self.status) and self.matches_all_but_status(job)

    def matches_all_but_status(self, job: Job) -> bool:
        """`matches`, the status aside (a resumed WatchJobs replays jobs whose status changed away from it)."""
        return (
            (self.job_id is None or job.id == self.job_id)
            and (self.kind is None or job.kind == self.kind)
            and (self.pipe_id is None or job.pipe_id == self.pipe_id)
            and (self.pipe_name is None or job.pipe_name == self.pipe_name)
            and (self.created_after is None or job.created_at >= self.created_after)
            and (self.created_before is None or job.created_at <= self.created_before)
        )
