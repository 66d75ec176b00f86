"""`AsyncJobsClient`: typed asyncio access to every RPC of the jobsd.v1 `Jobs` and `Workers` services.

Methods return the protobuf messages unchanged and raise `jobsd_client.errors.JobsdClientError` subclasses;
nothing else about gRPC leaks to the caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from types import TracebackType
from typing import TypeVar, Unpack

import grpc
import grpc.aio

from jobsd_client import _requests as req
from jobsd_client import pb
from jobsd_client.errors import JobsdClientError, Unavailable, check_grpc_target, error_from_item
from jobsd_client.events import JobEvent
from jobsd_client.pb import jobs_pb2_grpc

__all__ = ["CHANNEL_OPTIONS", "DEFAULT_TIMEOUT", "AsyncJobsClient"]

DEFAULT_TIMEOUT = 30.0
# gRPC's own reconnect backoff grows to 120 s by default, so a client that saw the server restart could stay
# "unavailable" for minutes after it is back; cap it so workers and watchers reconnect within seconds.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 3000),
)
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class AsyncJobsClient:
    """A connection to one jobsd (or a load balancer in front of several), authenticated by one bearer token.

    `target` is `host:port`. Pass `channel` to use a channel you built (TLS, interceptors, options); the client
    then leaves closing it to you. `timeout` is the deadline in seconds of each unary call (None: no deadline);
    watches never time out and `claim_job` adds its long-poll wait to it.
    """

    def __init__(
        self,
        target: str,
        token: str,
        *,
        channel: grpc.aio.Channel | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        self.target = target if channel is not None else check_grpc_target(target)
        self.timeout = timeout
        self._owns_channel = channel is None
        # Our own channel is made on first use: grpc.aio binds a channel to the event loop running when it is
        # made, so a client built before `asyncio.run(...)` must not make it in __init__.
        self._channel: grpc.aio.Channel | None = channel
        self._stubs: tuple[jobs_pb2_grpc.JobsAsyncStub, jobs_pb2_grpc.WorkersAsyncStub] | None = None
        self._metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {token}"),) if token else ()

    async def __aenter__(self) -> AsyncJobsClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel if this client created it (a caller-supplied channel stays open). Safe twice."""
        if self._owns_channel and self._channel is not None:
            await self._channel.close(None)

    @property
    def _jobs(self) -> jobs_pb2_grpc.JobsAsyncStub:
        return self._connect()[0]

    @property
    def _workers(self) -> jobs_pb2_grpc.WorkersAsyncStub:
        return self._connect()[1]

    def _connect(self) -> tuple[jobs_pb2_grpc.JobsAsyncStub, jobs_pb2_grpc.WorkersAsyncStub]:
        if self._stubs is None:
            if self._channel is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
            self._stubs = (jobs_pb2_grpc.JobsStub(self._channel), jobs_pb2_grpc.WorkersStub(self._channel))
        return self._stubs

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        deadline: float | None = None,
    ) -> _Response:
        with req.rpc_errors:
            return await method(
                request, timeout=deadline if deadline is not None else self.timeout, metadata=self._metadata
            )

    async def _stream(
        self, method: grpc.aio.UnaryStreamMultiCallable[_Request, pb.JobEvent], request: _Request
    ) -> AsyncGenerator[JobEvent, None]:
        call = method(request, metadata=self._metadata)
        try:
            with req.rpc_errors:
                async for event in call:
                    yield JobEvent(event)
        finally:
            # Leaving the loop early (break, an exception, aclose) must not leave the stream open on the server.
            call.cancel()

    async def _pages(self, pages: req.JobsPages) -> AsyncGenerator[pb.Job, None]:
        while (request := pages.next_request()) is not None:
            for job in pages.take(await self._unary(self._jobs.ListJobs, request)):
                yield job

    # ------------------------------------------------------------------ Jobs

    async def list_jobs(self, **query: Unpack[req.JobsPage]) -> pb.ListJobsResponse:
        """One page of jobs, newest first. `next_page_token` is empty on the last page."""
        return await self._unary(self._jobs.ListJobs, req.list_jobs_request(**query))

    def iter_jobs(self, *, limit: int | None = None, **query: Unpack[req.JobsSelection]) -> AsyncIterator[pb.Job]:
        """Every matching job, newest first, following the pages (at most `limit` jobs)."""
        return self._pages(req.JobsPages(limit, query))

    async def get_job(self, job_id: str) -> pb.Job:
        """The job, while it is visible (NotFound after its window; PermissionDenied outside the token's reach)."""
        return await self._unary(self._jobs.GetJob, pb.GetJobRequest(job_id=job_id))

    async def cancel_job(self, job_id: str) -> pb.Job:
        """The job after the request: `cancelled` if it was waiting, `cancelling` if a worker is running it."""
        return await self._unary(self._jobs.CancelJob, pb.CancelJobRequest(job_id=job_id))

    def watch_job(self, job_id: str, since_revision: int = 0) -> AsyncGenerator[JobEvent, None]:
        """The job's events, from a SNAPSHOT (or every revision after `since_revision`) to its terminal state.

        Then each change, in order; the iteration ends after the terminal state. Leaving early? `aclose()` it (or
        use `contextlib.aclosing`) to end the server-side stream at once rather than when it is collected.
        """
        return self._stream(self._jobs.WatchJob, pb.WatchJobRequest(job_id=job_id, since_revision=since_revision))

    async def follow_job(
        self, job_id: str, since_revision: int = 0, *, reconnect_seconds: float = 30.0
    ) -> AsyncGenerator[JobEvent, None]:
        """`watch_job` that survives a jobsd restart or a dropped connection.

        On UNAVAILABLE it resumes after the last revision it delivered (so nothing is repeated or skipped), giving
        up with the error once `reconnect_seconds` pass without getting back in.
        """
        loop = asyncio.get_running_loop()
        last = since_revision
        delay = 0.1
        give_up_at: float | None = None
        while True:
            stream = self.watch_job(job_id, since_revision=last)
            try:
                async for event in stream:
                    give_up_at, delay = None, 0.1  # connected again: a later outage gets the full budget
                    if event.revision:
                        last = max(last, event.revision)
                    yield event
                return
            except Unavailable:
                now = loop.time()
                give_up_at = give_up_at if give_up_at is not None else now + reconnect_seconds
                if now >= give_up_at:
                    raise
            finally:
                await stream.aclose()
            await asyncio.sleep(min(delay, max(give_up_at - loop.time(), 0.0)))
            delay = min(delay * 2, 2.0)

    def watch_jobs(self, **query: Unpack[req.JobsFilters]) -> AsyncGenerator[JobEvent, None]:
        """Every matching non-terminal job, a SYNCED marker, then every change of a matching job (endless)."""
        return self._stream(self._jobs.WatchJobs, req.watch_jobs_request(**query))

    async def create_job(self, kind: str, **fields: Unpack[req.NewJob]) -> pb.Job:
        """A new waiting job (or, with an `idempotency_key` seen before, the job it created)."""
        return await self._unary(self._jobs.CreateJob, req.create_job_request(kind, **fields))

    async def create_jobs(self, jobs: Iterable[pb.CreateJobRequest]) -> list[pb.Job | JobsdClientError]:
        """Create several jobs in one call and one write on the server (worker protocol v2).

        Per job, in order: the created job, or the error that refused it alone (the others are created).
        """
        request = pb.CreateJobsRequest(jobs=list(jobs))
        response = await self._unary(self._jobs.CreateJobs, request)
        return [r.job if r.HasField("job") else error_from_item(r.error) for r in response.results]

    async def retry_job(self, job_id: str) -> pb.Job:
        """A new job with the parameters of an `error` or `cancelled` one."""
        return await self._unary(self._jobs.RetryJob, pb.RetryJobRequest(job_id=job_id))

    async def list_jobs_log(self, **query: Unpack[req.JobsLogPage]) -> pb.ListJobsLogResponse:
        """One page of the jobs_log archive (one row per status change), newest first."""
        return await self._unary(self._jobs.ListJobsLog, req.list_jobs_log_request(**query))

    async def get_workspace(self) -> pb.Workspace:
        """The workspace of this client's token, with the token's scopes."""
        return await self._unary(self._jobs.GetWorkspace, pb.GetWorkspaceRequest())

    async def list_kinds(self) -> list[pb.Kind]:
        """The kinds of job the server accepts, with their rules (built in and declared by its operator)."""
        response = await self._unary(self._jobs.ListKinds, pb.ListKindsRequest())
        return list(response.kinds)

    # --------------------------------------------------------------- Workers

    async def claim_job(
        self, worker_id: str, kinds: Iterable[str] = (), *, wait_seconds: float = 0.0, workspace_id: str | None = None
    ) -> pb.ClaimJobResponse:
        """Claim the oldest eligible waiting job, waiting up to `wait_seconds` for one (`job` unset if none)."""
        request = req.claim_job_request(worker_id, kinds, wait_seconds, workspace_id)
        return await self._unary(self._workers.ClaimJob, request, req.claim_timeout(self.timeout, wait_seconds))

    async def worker_stream(self, requests: AsyncIterator[pb.WorkerMessage]) -> AsyncGenerator[pb.ServerMessage, None]:
        """Open Workers.Connect (worker protocol v2): send `requests` (a ConnectHello first), yield the answers.

        Used by `Worker`; raises JobsdClientError subclasses like every call.
        """
        call = self._workers.Connect(requests, metadata=self._metadata)
        try:
            with req.rpc_errors:
                async for message in call:
                    yield message
        finally:
            call.cancel()

    async def heartbeat(
        self, job_id: str, lease_token: str, progress: pb.ProgressUpdate | None = None
    ) -> pb.HeartbeatResponse:
        """Extend the lease and report progress; FailedPrecondition when the lease is no longer ours."""
        return await self._unary(self._workers.Heartbeat, req.heartbeat_request(job_id, lease_token, progress))

    async def finish_job(
        self, job_id: str, lease_token: str, status: str | int | None = None, **outcome: Unpack[req.Outcome]
    ) -> pb.Job:
        """End the job as done / error / cancelled with its final figures, or (`release=True`) hand it back."""
        return await self._unary(
            self._workers.FinishJob, req.finish_job_request(job_id, lease_token, status, **outcome)
        )
