"""gRPC servicers for jobsd.v1 Jobs and Workers: a shim over LocalJobsApi / LocalWorkersApi.

The hot methods answer with the serialised response (`bytes`: the stored job bytes, framed) instead of a message,
so no message is built only to be serialised again; `add_servicer` registers the services with a serializer that
sends bytes as they are and serialises messages as usual.

Errors are mapped here, once: a JobsdError becomes its own status code and message (InvalidArgument also sends
the field in trailing metadata); anything else is logged and becomes INTERNAL with no stack trace on the wire.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError

from jobsd.api.local import LocalJobsApi, LocalWorkersApi
from jobsd.api.status import grpc_status
from jobsd.errors import (
    FIELD_METADATA_KEY,
    RATE_LIMIT_METADATA_KEYS,
    RETRY_AFTER_METADATA_KEY,
    InvalidArgument,
    JobsdError,
    ResourceExhausted,
)
from jobsd.metrics import Metrics
from jobsd_client import pb

__all__ = ["GenericHandlersOnly", "JobsServicer", "WorkersServicer", "add_servicer", "bearer_token"]

log = logging.getLogger(__name__)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
# The in-process API a servicer serves (LocalJobsApi, LocalWorkersApi).
Api = TypeVar("Api")


def bearer_token(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, secret = value.partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
    return None


def _trailing_metadata(exc: JobsdError) -> tuple[tuple[str, str], ...]:
    """What a refusal says beside its message: the field at fault; a rate limit's delay and state."""
    pairs: list[tuple[str, str]] = []
    if exc.field:
        pairs.append((FIELD_METADATA_KEY, exc.field))
    if isinstance(exc, ResourceExhausted) and exc.retry_after is not None:
        pairs.append((RETRY_AFTER_METADATA_KEY, str(max(1, math.ceil(exc.retry_after * 1000)))))
        if exc.limit is not None and exc.remaining is not None and exc.reset_after is not None:
            state = (exc.limit, exc.remaining, math.ceil(exc.reset_after))
            pairs += [(key, str(value)) for key, value in zip(RATE_LIMIT_METADATA_KEYS, state, strict=True)]
    return tuple(pairs)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException, method: str) -> None:
    if isinstance(exc, JobsdError):
        trailing = _trailing_metadata(exc)
        if trailing:
            context.set_trailing_metadata(trailing)
        await context.abort(grpc_status(exc), exc.message)
    log.error("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class Undecodable:
    """What the deserializer hands a servicer for bytes that are not a valid request message (corrupt protobuf,
    invalid UTF-8 in a string): the call then ends INVALID_ARGUMENT, like any other bad input, not UNKNOWN."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem

    def error(self) -> InvalidArgument:
        return InvalidArgument("request", self.problem)


def _deserializer(message_class: Any) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    name = message_class.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            # upb's text names the type and the fault ("Wire format was corrupt", "String field had bad UTF-8"),
            # never the bytes.
            reason = str(error).rsplit(": ", 1)[-1] or "it cannot be parsed"
            return Undecodable(f"is not a valid {name} message: {reason}")

    return deserialize


class _Edge(Generic[Api]):
    """A servicer: the API it serves, and the metrics every call it answers is counted in."""

    def __init__(self, api: Api, metrics: Metrics) -> None:
        self._api = api
        self._metrics = metrics

    async def _unary(
        self,
        method: str,
        call: Callable[[str | None, Req], Awaitable[Resp]],
        request: Req,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Resp:
        started = time.perf_counter()
        code = "OK"
        try:
            if isinstance(request, Undecodable):
                raise request.error()
            return await call(bearer_token(context), request)
        except Exception as exc:
            code = grpc_status(exc).name if isinstance(exc, JobsdError) else "INTERNAL"
            await _abort(context, exc, method)
            raise  # unreachable: abort raises
        finally:
            self._metrics.rpc(method, code, time.perf_counter() - started)

    async def _stream(
        self,
        method: str,
        events: Callable[[str | None, Req], AsyncIterator[Resp]],
        request: Req,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[Resp]:
        if isinstance(request, Undecodable):
            await _abort(context, request.error(), method)
        stream = events(bearer_token(context), request)
        try:
            async for event in stream:
                yield event
        except Exception as exc:
            await _abort(context, exc, method)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]


def _serializer(message_class: Any) -> Callable[[Any], bytes]:
    serialize = message_class.SerializeToString

    def serialized(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return serialized


def add_servicer(server: grpc.aio.Server, service_name: str, servicer: object) -> None:
    """Register `servicer` for the jobsd.v1 service `service_name` (what the generated add_*_to_server does), with
    a response serializer that passes already serialised responses (`bytes`) through."""
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        if method.client_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=_deserializer(message_factory.GetMessageClass(method.input_type)),
            response_serializer=_serializer(message_factory.GetMessageClass(method.output_type)),
        )
    # Generic handlers only, never `add_registered_method_handlers`: grpc.aio's server keeps one pending request
    # per registered method and `asyncio.wait`s on all of them for every call it accepts, so each of our ~15
    # registered methods cost every RPC a done-callback added and removed (callgrind, GetJob: 716k -> 622k
    # instructions per call). A generic handler is one pending request, as the bare echo anchor has.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


class GenericHandlersOnly:
    """The server as the generated `add_*Servicer_to_server` functions see it (health, reflection): their generic
    handler is added, their `add_registered_method_handlers` is dropped, for the reason `add_servicer` gives."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: Any) -> None:
        del service_name, handlers  # served by the generic handler added just before


class JobsServicer(_Edge[LocalJobsApi]):
    """The jobsd.v1 Jobs service (registered by `add_servicer`; the hot methods answer serialised bytes)."""

    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> bytes:
        return await self._unary("ListJobs", self._api.list_jobs_wire, request, context)

    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> bytes:
        return await self._unary("GetJob", self._api.get_job_wire, request, context)

    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.Job:
        return await self._unary("CancelJob", self._api.cancel_job, request, context)

    async def CreateJob(self, request: pb.CreateJobRequest, context: Any) -> bytes:
        return await self._unary("CreateJob", self._api.create_job_wire, request, context)

    async def CreateJobs(self, request: pb.CreateJobsRequest, context: Any) -> bytes:
        return await self._unary("CreateJobs", self._api.create_jobs_wire, request, context)

    async def RetryJob(self, request: pb.RetryJobRequest, context: Any) -> pb.Job:
        return await self._unary("RetryJob", self._api.retry_job, request, context)

    async def ListJobsLog(self, request: pb.ListJobsLogRequest, context: Any) -> pb.ListJobsLogResponse:
        return await self._unary("ListJobsLog", self._api.list_jobs_log, request, context)

    async def GetWorkspace(self, request: pb.GetWorkspaceRequest, context: Any) -> pb.Workspace:
        return await self._unary("GetWorkspace", self._api.get_workspace, request, context)

    async def ListKinds(self, request: pb.ListKindsRequest, context: Any) -> pb.ListKindsResponse:
        return await self._unary("ListKinds", self._api.list_kinds, request, context)

    async def WatchJob(self, request: pb.WatchJobRequest, context: Any) -> AsyncIterator[pb.JobEvent]:
        async for event in self._stream("WatchJob", self._api.watch_job, request, context):
            yield event

    async def WatchJobs(self, request: pb.WatchJobsRequest, context: Any) -> AsyncIterator[pb.JobEvent]:
        async for event in self._stream("WatchJobs", self._api.watch_jobs, request, context):
            yield event


class WorkersServicer(_Edge[LocalWorkersApi]):
    """The jobsd.v1 Workers service (registered by `add_servicer`)."""

    async def ClaimJob(self, request: pb.ClaimJobRequest, context: Any) -> bytes:
        return await self._unary("ClaimJob", self._api.claim_job_wire, request, context)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        return await self._unary("Heartbeat", self._api.heartbeat, request, context)

    async def FinishJob(self, request: pb.FinishJobRequest, context: Any) -> bytes:
        return await self._unary("FinishJob", self._api.finish_job_wire, request, context)

    async def Connect(self, request_iterator: AsyncIterator[pb.WorkerMessage], context: Any) -> AsyncIterator[bytes]:
        async for message in self._stream("Connect", self._api.connect, request_iterator, context):
            yield message
