"""`JobsClient`: the blocking twin of `AsyncJobsClient`, for scripts and notebooks.

It uses grpc's own synchronous channel rather than an event loop in a helper thread: the sync channel needs no
loop at all (so it also works inside a program that already runs one), and grpc.aio bound to a second loop in
another thread is fragile. Arguments, requests, paging and errors are the async client's own (`_requests`), so the
two cannot drift apart; only the transport differs.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from types import TracebackType
from typing import TypeVar, Unpack

import grpc

from jobsd_client import _requests as req
from jobsd_client import pb
from jobsd_client.async_client import CHANNEL_OPTIONS, DEFAULT_TIMEOUT
from jobsd_client.errors import check_grpc_target
from jobsd_client.events import JobEvent
from jobsd_client.pb import jobs_pb2_grpc

__all__ = ["JobsClient"]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class JobsClient:
    """Blocking access to every jobsd.v1 RPC; same methods, arguments and errors as `AsyncJobsClient`."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        channel: grpc.Channel | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.target = target if channel is not None else check_grpc_target(target)
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._jobs = jobs_pb2_grpc.JobsStub(self._channel)
        self._workers = jobs_pb2_grpc.WorkersStub(self._channel)
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> JobsClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel if this client created it. Safe twice."""
        if self._owns_channel:
            self._channel.close()

    def _unary(
        self, method: grpc.UnaryUnaryMultiCallable[_Request, _Response], request: _Request, timeout: float | None = None
    ) -> _Response:
        with req.rpc_errors:
            return method(request, timeout=timeout if timeout is not None else self.timeout, metadata=self._metadata)

    def _stream(
        self, method: grpc.UnaryStreamMultiCallable[_Request, pb.JobEvent], request: _Request
    ) -> Generator[JobEvent, None, None]:
        call = method(request, metadata=self._metadata)
        try:
            with req.rpc_errors:
                for event in call:
                    yield JobEvent(event)
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves Call.cancel unannotated

    def _pages(self, pages: req.JobsPages) -> Iterator[pb.Job]:
        while (request := pages.next_request()) is not None:
            yield from pages.take(self._unary(self._jobs.ListJobs, request))

    # ------------------------------------------------------------------ Jobs

    def list_jobs(self, **query: Unpack[req.JobsPage]) -> pb.ListJobsResponse:
        """One page of jobs, newest first. `next_page_token` is empty on the last page."""
        return self._unary(self._jobs.ListJobs, req.list_jobs_request(**query))

    def iter_jobs(self, *, limit: int | None = None, **query: Unpack[req.JobsSelection]) -> Iterator[pb.Job]:
        """Every matching job, newest first, following the pages (at most `limit` jobs)."""
        return self._pages(req.JobsPages(limit, query))

    def get_job(self, job_id: str) -> pb.Job:
        """The job, while it is visible (NotFound after its window; PermissionDenied outside the token's reach)."""
        return self._unary(self._jobs.GetJob, pb.GetJobRequest(job_id=job_id))

    def cancel_job(self, job_id: str) -> pb.Job:
        """The job after the request: `cancelled` if it was waiting, `cancelling` if a worker is running it."""
        return self._unary(self._jobs.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def watch_job(self, job_id: str, since_revision: int = 0) -> Generator[JobEvent, None, None]:
        """The job's events, from a SNAPSHOT (or every revision after `since_revision`) to its terminal state."""
        return self._stream(self._jobs.WatchJob, pb.WatchJobRequest(job_id=job_id, since_revision=since_revision))

    def watch_jobs(self, **query: Unpack[req.JobsFilters]) -> Generator[JobEvent, None, None]:
        """Every matching non-terminal job, a SYNCED marker, then every change of a matching job (endless)."""
        return self._stream(self._jobs.WatchJobs, req.watch_jobs_request(**query))

    def create_job(self, kind: str, **fields: Unpack[req.NewJob]) -> pb.Job:
        """A new waiting job (or, with an `idempotency_key` seen before, the job it created)."""
        return self._unary(self._jobs.CreateJob, req.create_job_request(kind, **fields))

    def retry_job(self, job_id: str) -> pb.Job:
        """A new job with the parameters of an `error` or `cancelled` one."""
        return self._unary(self._jobs.RetryJob, pb.RetryJobRequest(job_id=job_id))

    def list_jobs_log(self, **query: Unpack[req.JobsLogPage]) -> pb.ListJobsLogResponse:
        """One page of the jobs_log archive (one row per status change), newest first."""
        return self._unary(self._jobs.ListJobsLog, req.list_jobs_log_request(**query))

    def get_workspace(self) -> pb.Workspace:
        """The workspace of this client's token, with the token's scopes."""
        return self._unary(self._jobs.GetWorkspace, pb.GetWorkspaceRequest())

    def list_kinds(self) -> list[pb.Kind]:
        """The kinds of job the server accepts, with their rules (built in and declared by its operator)."""
        return list(self._unary(self._jobs.ListKinds, pb.ListKindsRequest()).kinds)

    # --------------------------------------------------------------- Workers

    def claim_job(
        self, worker_id: str, kinds: Iterable[str] = (), *, wait_seconds: float = 0.0, workspace_id: str | None = None
    ) -> pb.ClaimJobResponse:
        """Claim the oldest eligible waiting job, waiting up to `wait_seconds` for one (`job` unset if none)."""
        request = req.claim_job_request(worker_id, kinds, wait_seconds, workspace_id)
        return self._unary(self._workers.ClaimJob, request, req.claim_timeout(self.timeout, wait_seconds))

    def heartbeat(
        self, job_id: str, lease_token: str, progress: pb.ProgressUpdate | None = None
    ) -> pb.HeartbeatResponse:
        """Extend the lease and report progress; FailedPrecondition when the lease is no longer ours."""
        return self._unary(self._workers.Heartbeat, req.heartbeat_request(job_id, lease_token, progress))

    def finish_job(
        self, job_id: str, lease_token: str, status: str | int | None = None, **outcome: Unpack[req.Outcome]
    ) -> pb.Job:
        """End the job as done / error / cancelled with its final figures, or (`release=True`) hand it back."""
        return self._unary(self._workers.FinishJob, req.finish_job_request(job_id, lease_token, status, **outcome))
