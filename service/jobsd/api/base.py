"""`JobsApi`: the jobsd.v1 Jobs API as one small Python interface, keyed by the caller's bearer token.

Two implementations: `jobsd.api.local.LocalJobsApi` calls the domain service in-process (used by the gRPC
servicers and by the gateway inside `jobsd serve`), and `jobsd.api.remote.GrpcJobsApi` calls a remote
jobsd over a gRPC channel (the standalone gateway). Both raise `jobsd.errors.JobsdError` subclasses.
`token` is the raw bearer secret, or None when the caller sent none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from jobsd_client import pb

__all__ = ["JobsApi"]


class JobsApi(Protocol):
    async def list_jobs(self, token: str | None, request: pb.ListJobsRequest) -> pb.ListJobsResponse: ...

    async def get_job(self, token: str | None, request: pb.GetJobRequest) -> pb.Job: ...

    async def cancel_job(self, token: str | None, request: pb.CancelJobRequest) -> pb.Job: ...

    async def create_job(self, token: str | None, request: pb.CreateJobRequest) -> pb.Job: ...

    async def retry_job(self, token: str | None, request: pb.RetryJobRequest) -> pb.Job: ...

    async def list_jobs_log(self, token: str | None, request: pb.ListJobsLogRequest) -> pb.ListJobsLogResponse: ...

    async def get_workspace(self, token: str | None, request: pb.GetWorkspaceRequest) -> pb.Workspace: ...

    async def list_kinds(self, token: str | None, request: pb.ListKindsRequest) -> pb.ListKindsResponse: ...

    def watch_job(self, token: str | None, request: pb.WatchJobRequest) -> AsyncIterator[pb.JobEvent]:
        """Events until the job ends; raises (while iterating) like the unary calls."""
        ...

    def watch_jobs(self, token: str | None, request: pb.WatchJobsRequest) -> AsyncIterator[pb.JobEvent]: ...

    async def ready(self) -> bool:
        """True when the service can serve (store reachable)."""
        ...
