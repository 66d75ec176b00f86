"""`JobsClient`: the blocking twin of `AsyncJobsClient`, for scripts and notebooks.

It uses grpc's own synchronous channel rather than an event loop in a helper thread: the sync channel needs no
loop at all (so it also works inside a program that already runs one), and grpc.aio bound to a second loop in
another thread is fragile. Requests are built by the same `_requests` functions as the async client's, so the
two cannot drift apart; only the transport differs.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc

from jobsd_client import _requests as req
from jobsd_client import pb
from jobsd_client.async_client import CHANNEL_OPTIONS, DEFAULT_TIMEOUT
from jobsd_client.errors import error_from_rpc
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
        self.target = target
        self.timeout = timeout
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
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
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def _stream(
        self, method: grpc.UnaryStreamMultiCallable[_Request, pb.JobEvent], request: _Request
    ) -> Generator[pb.JobEvent, None, None]:
        call = method(request, metadata=self._metadata)
        try:
            for event in call:  # noqa: UP028 (not `yield from`: closing us must not close grpc's iterator)
                yield event
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves Call.cancel unannotated

    # ------------------------------------------------------------------ Jobs

    def list_jobs(
        self,
        *,
        kind: str | None = None,
        status: req.StatusFilter = None,
        pipe_id: str | None = None,
        pipe_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        workspace_id: str | None = None,
        page_size: int = 0,
        page_token: str | None = None,
    ) -> pb.ListJobsResponse:
        """One page of jobs, newest first. `next_page_token` is empty on the last page."""
        request = req.list_jobs_request(
            kind=kind,
            status=status,
            pipe_id=pipe_id,
            pipe_name=pipe_name,
            created_after=created_after,
            created_before=created_before,
            workspace_id=workspace_id,
            page_size=page_size,
            page_token=page_token,
        )
        return self._unary(self._jobs.ListJobs, request)

    def iter_jobs(
        self,
        *,
        kind: str | None = None,
        status: req.StatusFilter = None,
        pipe_id: str | None = None,
        pipe_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        workspace_id: str | None = None,
        page_size: int = 0,
        limit: int | None = None,
    ) -> Iterator[pb.Job]:
        """Every matching job, newest first, following the pages (at most `limit` jobs)."""
        token: str | None = None
        yielded = 0
        while True:
            page = self.list_jobs(
                kind=kind,
                status=status,
                pipe_id=pipe_id,
                pipe_name=pipe_name,
                created_after=created_after,
                created_before=created_before,
                workspace_id=workspace_id,
                page_size=page_size if limit is None else min(page_size or req.MAX_PAGE_SIZE, limit - yielded),
                page_token=token,
            )
            for job in page.jobs:
                yield job
                yielded += 1
                if limit is not None and yielded >= limit:
                    return
            if not page.next_page_token:
                return
            token = page.next_page_token

    def get_job(self, job_id: str) -> pb.Job:
        """The job, while it is visible (NotFound after its window; PermissionDenied outside the token's reach)."""
        return self._unary(self._jobs.GetJob, pb.GetJobRequest(job_id=job_id))

    def cancel_job(self, job_id: str) -> pb.Job:
        """The job after the request: `cancelled` if it was waiting, `cancelling` if a worker is running it."""
        return self._unary(self._jobs.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def watch_job(self, job_id: str, since_revision: int = 0) -> Generator[pb.JobEvent, None, None]:
        """The job's events, from a SNAPSHOT (or every revision after `since_revision`) to its terminal state."""
        return self._stream(self._jobs.WatchJob, pb.WatchJobRequest(job_id=job_id, since_revision=since_revision))

    def watch_jobs(
        self,
        *,
        kind: str | None = None,
        status: req.StatusFilter = None,
        pipe_id: str | None = None,
        pipe_name: str | None = None,
        workspace_id: str | None = None,
    ) -> Generator[pb.JobEvent, None, None]:
        """Every matching non-terminal job, a SYNCED marker, then every change of a matching job (endless)."""
        request = req.watch_jobs_request(
            kind=kind, status=status, pipe_id=pipe_id, pipe_name=pipe_name, workspace_id=workspace_id
        )
        return self._stream(self._jobs.WatchJobs, request)

    def create_job(
        self,
        kind: str,
        *,
        datasource: Mapping[str, Any] | None = None,
        pipe_id: str | None = None,
        pipe_name: str | None = None,
        query_id: str | None = None,
        query_sql: str | None = None,
        mode: str | None = None,
        url: str | None = None,
        params: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        request_id: str | None = None,
        workspace_id: str | None = None,
    ) -> pb.Job:
        """A new waiting job (or, with an `idempotency_key` seen before, the job it created)."""
        request = req.create_job_request(
            kind,
            datasource=datasource,
            pipe_id=pipe_id,
            pipe_name=pipe_name,
            query_id=query_id,
            query_sql=query_sql,
            mode=mode,
            url=url,
            params=params,
            idempotency_key=idempotency_key,
            request_id=request_id,
            workspace_id=workspace_id,
        )
        return self._unary(self._jobs.CreateJob, request)

    def retry_job(self, job_id: str) -> pb.Job:
        """A new job with the parameters of an `error` or `cancelled` one."""
        return self._unary(self._jobs.RetryJob, pb.RetryJobRequest(job_id=job_id))

    def list_jobs_log(
        self,
        *,
        job_id: str | None = None,
        kind: str | None = None,
        status: req.StatusFilter = None,
        pipe_id: str | None = None,
        pipe_name: str | None = None,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
        workspace_id: str | None = None,
        page_size: int = 0,
        page_token: str | None = None,
    ) -> pb.ListJobsLogResponse:
        """One page of the jobs_log archive (one row per status change), newest first."""
        request = req.list_jobs_log_request(
            job_id=job_id,
            kind=kind,
            status=status,
            pipe_id=pipe_id,
            pipe_name=pipe_name,
            created_after=created_after,
            created_before=created_before,
            workspace_id=workspace_id,
            page_size=page_size,
            page_token=page_token,
        )
        return self._unary(self._jobs.ListJobsLog, request)

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
        timeout = None if self.timeout is None else self.timeout + wait_seconds
        return self._unary(self._workers.ClaimJob, request, timeout)

    def heartbeat(
        self, job_id: str, lease_token: str, progress: pb.ProgressUpdate | None = None
    ) -> pb.HeartbeatResponse:
        """Extend the lease and report progress; FailedPrecondition when the lease is no longer ours."""
        request = pb.HeartbeatRequest(job_id=job_id, lease_token=lease_token)
        if progress is not None:
            request.progress.CopyFrom(progress)
        return self._unary(self._workers.Heartbeat, request)

    def finish_job(
        self,
        job_id: str,
        lease_token: str,
        status: str | int | None = None,
        *,
        error: str | None = None,
        progress: pb.ProgressUpdate | None = None,
        release: bool = False,
    ) -> pb.Job:
        """End the job as done / error / cancelled with its final figures, or (`release=True`) hand it back."""
        request = req.finish_job_request(job_id, lease_token, status, error=error, progress=progress, release=release)
        return self._unary(self._workers.FinishJob, request)
