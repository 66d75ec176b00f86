"""LocalJobsApi: the jobsd.v1 API in-process. Decodes requests, calls JobService, encodes responses.

The gRPC servicers are a shim over this class (token from metadata, errors to status codes), and the REST
gateway inside `jobsd serve` calls it directly, so both edges share one decode/encode implementation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import TypeVar

from jobsd.api.codec import (
    STATUS_FROM_PB,
    JobWireCodec,
    claimed_url_patch,
    created_result_bytes,
    filter_from_pb,
    item_error_bytes,
    job_to_pb,
    kind_to_pb,
    length_delimited,
    list_response_bytes,
    log_to_pb,
    progress_from_pb,
    struct_to_dict,
    time_from_pb,
    workspace_to_pb,
)
from jobsd.domain.clock import to_micros
from jobsd.domain.validation import NewJob, new_spec
from jobsd.errors import InvalidArgument, JobsdError
from jobsd.service.dispatch import Dispatcher, Outgoing, StreamFinish, StreamHeartbeat, WorkerSession
from jobsd.service.jobs import Claim, FinishItem, HeartbeatItem, JobService
from jobsd.service.watches import WatchEvent
from jobsd_client import pb

__all__ = ["LocalJobsApi", "LocalWorkersApi"]

log = logging.getLogger(__name__)

_EVENT_TYPES = {
    "snapshot": pb.JobEvent.TYPE_SNAPSHOT,
    "status": pb.JobEvent.TYPE_STATUS,
    "progress": pb.JobEvent.TYPE_PROGRESS,
    "synced": pb.JobEvent.TYPE_SYNCED,
}


class _EventEncoder:
    """Encodes watch events, converting each (job, revision) once however many streams carry it.

    One update fanned out to 10,000 WatchJob streams would otherwise build 10,000 identical messages. Bounded:
    it remembers only the most recent revisions, never anything that grows with the store.
    """

    def __init__(self, codec: JobWireCodec, capacity: int = 1024) -> None:
        self._codec = codec
        self._capacity = capacity
        self._recent: OrderedDict[tuple[str, int, str], pb.JobEvent] = OrderedDict()

    def encode(self, event: WatchEvent) -> pb.JobEvent:
        if event.job is None:
            marker = pb.JobEvent(type=_EVENT_TYPES[event.type])
            if event.synced_at is not None:
                marker.resume_after.FromMicroseconds(to_micros(event.synced_at))
            return marker
        key = (event.job.id, event.job.revision, event.type)
        cached = self._recent.get(key)
        if cached is None:
            job = event.job
            cached = pb.JobEvent(
                type=_EVENT_TYPES[event.type], job=job_to_pb(job, self._codec.kinds), revision=job.revision
            )
            cached.resume_after.FromMicroseconds(to_micros(job.updated_at))
            self._recent[key] = cached
            if len(self._recent) > self._capacity:
                self._recent.popitem(last=False)
        return cached


def _new_job(request: pb.CreateJobRequest) -> NewJob:
    return new_spec(
        kind=request.kind,
        workspace_id=request.workspace_id or None,
        datasource=struct_to_dict(request, "datasource"),
        pipe_id=request.pipe_id or None,
        pipe_name=request.pipe_name or None,
        query_id=request.query_id or None,
        query_sql=request.query_sql or None,
        mode=request.mode or None,
        url=request.url or None,
        params=struct_to_dict(request, "params") or {},
        idempotency_key=request.idempotency_key or None,
        request_id=request.request_id or None,
    )


class LocalJobsApi:
    """`codec`: the encoder the service's store was built with (a write's response reuses the bytes it made)."""

    def __init__(self, service: JobService, codec: JobWireCodec | None = None) -> None:
        self.service = service
        self._codec = codec or JobWireCodec(service.kinds)
        self._events = _EventEncoder(self._codec)

    async def list_jobs(self, token: str | None, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        return pb.ListJobsResponse.FromString(await self.list_jobs_wire(token, request))

    async def list_jobs_wire(self, token: str | None, request: pb.ListJobsRequest) -> bytes:
        """The serialised ListJobsResponse: the stored bytes of each job, framed as the repeated field (the gRPC edge
        sends them as they are; `list_jobs` parses them once, in C)."""
        principal = await self.service.authenticate(token)
        records, next_token = await self.service.list_job_records(
            principal, filter_from_pb(request), request.page_size, request.page_token
        )
        return list_response_bytes([r.wire for r in records], next_token)

    async def get_job(self, token: str | None, request: pb.GetJobRequest) -> pb.Job:
        return pb.Job.FromString(await self.get_job_wire(token, request))

    async def get_job_wire(self, token: str | None, request: pb.GetJobRequest) -> bytes:
        """The serialised Job, as the store keeps it."""
        principal = await self.service.authenticate(token)
        return (await self.service.get_job_record(principal, request.job_id)).wire

    async def cancel_job(self, token: str | None, request: pb.CancelJobRequest) -> pb.Job:
        principal = await self.service.authenticate(token)
        return self._codec.message(await self.service.cancel_job(principal, request.job_id))

    async def create_job(self, token: str | None, request: pb.CreateJobRequest) -> pb.Job:
        return pb.Job.FromString(await self.create_job_wire(token, request))

    async def create_job_wire(self, token: str | None, request: pb.CreateJobRequest) -> bytes:
        """The serialised created Job: the bytes the store's write made."""
        principal = await self.service.authenticate(token)
        return self._codec(await self.service.create_job(principal, _new_job(request)))

    async def create_jobs(self, token: str | None, request: pb.CreateJobsRequest) -> pb.CreateJobsResponse:
        return pb.CreateJobsResponse.FromString(await self.create_jobs_wire(token, request))

    async def create_jobs_wire(self, token: str | None, request: pb.CreateJobsRequest) -> bytes:
        """The serialised CreateJobsResponse: per item the created job's stored bytes, or its ItemError."""
        principal = await self.service.authenticate(token)
        results = await self.service.create_jobs(principal, [_new_job(r) for r in request.jobs])
        codec = self._codec
        return b"".join(
            [
                length_delimited(1, length_delimited(2, item_error_bytes(r)))
                if isinstance(r, JobsdError)
                else created_result_bytes(codec(r))
                for r in results
            ]
        )

    async def retry_job(self, token: str | None, request: pb.RetryJobRequest) -> pb.Job:
        principal = await self.service.authenticate(token)
        return self._codec.message(await self.service.retry_job(principal, request.job_id))

    async def list_jobs_log(self, token: str | None, request: pb.ListJobsLogRequest) -> pb.ListJobsLogResponse:
        principal = await self.service.authenticate(token)
        entries, next_token = await self.service.list_log(
            principal, filter_from_pb(request), request.page_size, request.page_token
        )
        return pb.ListJobsLogResponse(entries=[log_to_pb(e) for e in entries], next_page_token=next_token)

    async def get_workspace(self, token: str | None, request: pb.GetWorkspaceRequest) -> pb.Workspace:
        principal = await self.service.authenticate(token)
        if principal.workspace_id is None:
            return pb.Workspace(id="", name="*", scopes=sorted(principal.scopes), token_name=principal.token_name)
        ws = await self.service.workspace(principal)
        return workspace_to_pb(ws, principal.scopes, principal.token_name)

    async def list_kinds(self, token: str | None, request: pb.ListKindsRequest) -> pb.ListKindsResponse:
        principal = await self.service.authenticate(token)
        return pb.ListKindsResponse(kinds=[kind_to_pb(spec) for spec in self.service.list_kinds(principal)])

    async def watch_job(self, token: str | None, request: pb.WatchJobRequest) -> AsyncIterator[pb.JobEvent]:
        principal = await self.service.authenticate(token)
        async for event in self.service.watch_job(principal, request.job_id, request.since_revision):
            yield self._events.encode(event)

    async def watch_jobs(self, token: str | None, request: pb.WatchJobsRequest) -> AsyncIterator[pb.JobEvent]:
        principal = await self.service.authenticate(token)
        changed_since = time_from_pb(request, "changed_since")
        async for event in self.service.watch_jobs(principal, filter_from_pb(request), changed_since):
            yield self._events.encode(event)

    async def ready(self) -> bool:
        try:
            await self.service.store.ping()
        except JobsdError:
            return False
        return True


class LocalWorkersApi:
    """The Workers service in-process: claim, heartbeat, finish (v1), and the worker stream (v2, `connect`)."""

    def __init__(
        self, service: JobService, codec: JobWireCodec | None = None, dispatcher: Dispatcher | None = None
    ) -> None:
        self.service = service
        self._codec = codec or JobWireCodec(service.kinds)
        self.dispatcher = dispatcher or Dispatcher(service)

    async def connect(self, token: str | None, requests: AsyncIterator[pb.WorkerMessage]) -> AsyncIterator[bytes]:
        """Workers.Connect: the serialised ServerMessages for one worker stream (see jobsd.service.dispatch)."""
        principal = await self.service.authenticate(token)
        principal.require_execute()
        first = await anext(aiter(requests), None)
        if first is None:
            return
        if not first.HasField("hello"):
            raise InvalidArgument("hello", "the first message of a worker stream must be its hello")
        hello = first.hello
        session = self.dispatcher.connect(
            principal, hello.worker_id, tuple(hello.kinds), hello.workspace_id or None, hello.slots
        )
        reader = asyncio.create_task(self._read(session, first, requests), name=f"jobsd-worker-{hello.worker_id}")
        try:
            yield b""  # an empty first message: the stream is accepted (the worker may use it from now on)
            async for out in session.messages():
                yield self._server_message(out)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await session.close()

    async def _read(
        self, session: WorkerSession, first: pb.WorkerMessage, requests: AsyncIterator[pb.WorkerMessage]
    ) -> None:
        try:
            await self._apply(session, first)
            async for message in requests:
                if message.HasField("hello"):
                    raise InvalidArgument("hello", "only the first message of a worker stream may be a hello")
                await self._apply(session, message)
            session.end_of_input()
        except JobsdError as exc:
            session.fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker stream of %s failed", session.scope.worker_id)
            session.fail(JobsdError("internal error"))

    async def _apply(self, session: WorkerSession, message: pb.WorkerMessage) -> None:
        limit = self.dispatcher.max_slots
        for name in ("heartbeats", "finishes"):
            if len(getattr(message, name)) > limit:
                raise InvalidArgument(name, f"at most {limit} per message (the most slots a stream has)")
        beats = [StreamHeartbeat(h.ref, h.job_id, _decoded_heartbeat(h, i)) for i, h in enumerate(message.heartbeats)]
        ends = [StreamFinish(f.ref, f.job_id, _decoded_finish(f, i)) for i, f in enumerate(message.finishes)]
        if beats or ends:
            await session.handle(beats, ends)
        session.add_slots(message.add_slots)
        if message.drain:
            session.drain()

    def _server_message(self, out: Outgoing) -> bytes:
        """The serialised ServerMessage: jobs as the store's bytes, framed (nothing parsed or built twice)."""
        parts: list[bytes] = []
        for claim in out.assignments:
            head = _lease_terms(pb.Assignment(), claim)
            job = claim.job
            body = head.SerializeToString() + length_delimited(1, self._codec(job)) + claimed_url_patch(job)
            parts.append(length_delimited(1, body))
        for ref, job_id, beat in out.heartbeats:
            answer = pb.HeartbeatAnswer(ref=ref, job_id=job_id)
            if isinstance(beat, JobsdError):
                answer.error.ParseFromString(item_error_bytes(beat))
            else:
                answer.cancel_requested = beat.cancel_requested
                answer.revision = beat.revision
                answer.lease_expires_at.FromMicroseconds(to_micros(beat.lease_expires_at))
            parts.append(length_delimited(2, answer.SerializeToString()))
        for ref, job_id, finished in out.finishes:
            head_bytes = pb.FinishAnswer(ref=ref, job_id=job_id).SerializeToString()
            if isinstance(finished, JobsdError):
                body = length_delimited(3, item_error_bytes(finished))
            else:
                body = length_delimited(4, self._codec(finished))
            parts.append(length_delimited(3, head_bytes + body))
        for job_id in out.cancels:
            parts.append(length_delimited(4, pb.CancelNotice(job_id=job_id).SerializeToString()))
        return b"".join(parts)

    async def claim_job(self, token: str | None, request: pb.ClaimJobRequest) -> pb.ClaimJobResponse:
        return pb.ClaimJobResponse.FromString(await self.claim_job_wire(token, request))

    async def claim_job_wire(self, token: str | None, request: pb.ClaimJobRequest) -> bytes:
        """The serialised ClaimJobResponse, its job being the bytes the claim's write made."""
        principal = await self.service.authenticate(token)
        claim = await self.service.claim_job(
            principal, request.worker_id, tuple(request.kinds), request.wait_seconds, request.workspace_id or None
        )
        if claim is None:
            return b""
        response = _lease_terms(pb.ClaimJobResponse(), claim)
        # Serialised messages concatenate as a merge: the rest of the response, then field 1 (job) as stored.
        job = claim.job
        return response.SerializeToString() + list_response_bytes([self._codec(job)], "") + claimed_url_patch(job)

    async def heartbeat(self, token: str | None, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        principal = await self.service.authenticate(token)
        result = await self.service.heartbeat(
            principal, request.job_id, request.lease_token, progress_from_pb(request.progress)
        )
        response = pb.HeartbeatResponse(cancel_requested=result.cancel_requested, revision=result.revision)
        response.lease_expires_at.FromDatetime(result.lease_expires_at)
        return response

    async def finish_job(self, token: str | None, request: pb.FinishJobRequest) -> pb.Job:
        return pb.Job.FromString(await self.finish_job_wire(token, request))

    async def finish_job_wire(self, token: str | None, request: pb.FinishJobRequest) -> bytes:
        """The serialised finished Job: the bytes the store's write made."""
        principal = await self.service.authenticate(token)
        status = STATUS_FROM_PB.get(request.status)
        job = await self.service.finish_job(
            principal,
            request.job_id,
            request.lease_token,
            status,
            request.error,
            progress_from_pb(request.progress),
            release=request.release,
        )
        return self._codec(job)


_Claimed = TypeVar("_Claimed", pb.ClaimJobResponse, pb.Assignment)


def _lease_terms(message: _Claimed, claim: Claim) -> _Claimed:
    """`message` (a v1 ClaimJobResponse or a v2 Assignment) with the claim's lease, heartbeat and time limit."""
    message.lease_token = claim.lease_token
    message.heartbeat_interval_seconds = claim.heartbeat_interval.total_seconds()
    message.lease_expires_at.FromMicroseconds(to_micros(claim.lease_expires_at))
    if claim.time_limit is not None and claim.run_time_left is not None:
        message.time_limit_seconds = claim.time_limit.total_seconds()
        message.run_seconds_left = max(0.0, claim.run_time_left.total_seconds())
    return message


def _decoded_heartbeat(h: pb.StreamHeartbeat, i: int) -> HeartbeatItem | JobsdError:
    try:
        return HeartbeatItem(h.job_id, h.lease_token, progress_from_pb(h.progress, f"heartbeats[{i}].progress"))
    except JobsdError as exc:
        return exc


def _decoded_finish(f: pb.StreamFinish, i: int) -> FinishItem | JobsdError:
    try:
        progress = progress_from_pb(f.progress, f"finishes[{i}].progress")
    except JobsdError as exc:
        return exc
    return FinishItem(f.job_id, f.lease_token, STATUS_FROM_PB.get(f.status), f.error, progress, f.release)
