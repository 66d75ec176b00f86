"""`GrpcJobsApi`: `JobsApi` over a gRPC channel, for the standalone gateway (`jobsd gateway --grpc-target`).

The bearer token travels as `authorization: Bearer` metadata; gRPC errors come back as the JobsdError the remote
raised (the InvalidArgument field rides in the `jobsd-field` trailing metadata).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from jobsd.errors import JobsdError, Unavailable
from jobsd_client import pb
from jobsd_client.errors import DeadlineExceeded, error_from_rpc
from jobsd_client.pb import jobs_pb2_grpc

__all__ = ["GrpcJobsApi", "translate_rpc_error"]

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

# A unary call that takes longer than this is reported as unavailable rather than hanging the HTTP client.
_DEFAULT_TIMEOUT_SECONDS = 30.0
_READY_TIMEOUT_SECONDS = 2.0


def translate_rpc_error(exc: grpc.aio.AioRpcError) -> JobsdError:
    """The JobsdError a remote jobsd raised (the SDK's translator); a remote out of reach is Unavailable (503)."""
    error = error_from_rpc(exc)
    if isinstance(error, Unavailable | DeadlineExceeded):
        return Unavailable(f"The jobs service is unavailable: {error.message}")
    return error


class GrpcJobsApi:
    """The Jobs API of a remote jobsd (or a load balancer in front of several)."""

    def __init__(self, target: str, *, timeout_seconds: float = _DEFAULT_TIMEOUT_SECONDS) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._jobs = jobs_pb2_grpc.JobsStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._timeout = timeout_seconds

    @staticmethod
    def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),) if token else ()

    async def _unary(
        self, method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response], token: str | None, request: _Request
    ) -> _Response:
        try:
            return await method(request, metadata=self._metadata(token), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc) from None

    async def list_jobs(self, token: str | None, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        return await self._unary(self._jobs.ListJobs, token, request)

    async def get_job(self, token: str | None, request: pb.GetJobRequest) -> pb.Job:
        return await self._unary(self._jobs.GetJob, token, request)

    async def cancel_job(self, token: str | None, request: pb.CancelJobRequest) -> pb.Job:
        return await self._unary(self._jobs.CancelJob, token, request)

    async def create_job(self, token: str | None, request: pb.CreateJobRequest) -> pb.Job:
        return await self._unary(self._jobs.CreateJob, token, request)

    async def retry_job(self, token: str | None, request: pb.RetryJobRequest) -> pb.Job:
        return await self._unary(self._jobs.RetryJob, token, request)

    async def list_jobs_log(self, token: str | None, request: pb.ListJobsLogRequest) -> pb.ListJobsLogResponse:
        return await self._unary(self._jobs.ListJobsLog, token, request)

    async def get_workspace(self, token: str | None, request: pb.GetWorkspaceRequest) -> pb.Workspace:
        return await self._unary(self._jobs.GetWorkspace, token, request)

    async def list_kinds(self, token: str | None, request: pb.ListKindsRequest) -> pb.ListKindsResponse:
        response: pb.ListKindsResponse = await self._unary(self._jobs.ListKinds, token, request)
        return response

    async def _stream(
        self, method: grpc.aio.UnaryStreamMultiCallable[_Request, pb.JobEvent], token: str | None, request: _Request
    ) -> AsyncIterator[pb.JobEvent]:
        call = method(request, metadata=self._metadata(token))
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as exc:
            raise translate_rpc_error(exc) from None
        finally:
            call.cancel()  # the HTTP client left (or the stream ended): free the server-side watch at once

    def watch_job(self, token: str | None, request: pb.WatchJobRequest) -> AsyncIterator[pb.JobEvent]:
        return self._stream(self._jobs.WatchJob, token, request)

    def watch_jobs(self, token: str | None, request: pb.WatchJobsRequest) -> AsyncIterator[pb.JobEvent]:
        return self._stream(self._jobs.WatchJobs, token, request)

    async def ready(self) -> bool:
        """The remote's gRPC health status is SERVING (it reports NOT_SERVING while its store is unreachable)."""
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=_READY_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def close(self) -> None:
        await self._channel.close(grace=None)
