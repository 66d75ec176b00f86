"""How an executor ends a job other than DONE.

Executors raise these instead of the worker SDK's exceptions so they stay free of transport: the runner's adapter
(`jobsd.executors.runner`) turns them into `jobsd_client.worker.JobFailed` / `JobCancelled`.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["ExecutionCancelled", "ExecutionFailed"]


class ExecutionFailed(Exception):
    """The job ends in ERROR with `message` (written for the user: what is wrong and what to fix)."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.errors = tuple(errors)


class ExecutionCancelled(Exception):
    """The executor noticed a cancel request and stopped; the job ends CANCELLED."""
