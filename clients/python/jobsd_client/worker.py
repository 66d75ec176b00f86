"""The worker SDK: claim jobs of the kinds you handle, run them, keep their leases alive, finish them.

    async def populate(ctx: JobContext) -> None:
        for i, partition in enumerate(partitions):
            if ctx.cancel_requested:
                raise JobCancelled()
            ...
            ctx.report(progress_percentage=100 * (i + 1) / len(partitions))

    worker = Worker("127.0.0.1:50051", token, {"populateview": populate}, concurrency=2)
    await run_until_signalled(worker)          # or: await worker.run() ... await worker.stop()

The worker speaks worker protocol v2 when the server has it: one `Workers.Connect` stream on which the server
pushes jobs up to the worker's free slots and pushes cancel requests, and heartbeats and finishes travel
(several per message when they happen together). Against a server without it, it claims with `ClaimJob`
long-polls (v1). While the stream is down (a server restart), heartbeats and finishes go as unary calls and the
stream reconnects with backoff; running jobs keep their leases throughout.

A handler that returns finishes its job as `done` with the figures it reported; `JobFailed` finishes it as `error`
with its message; `JobCancelled` (after a cancel request) as `cancelled`; any other exception as `error` with
"<ExceptionType>: <message>". While a handler runs, a background heartbeat every `heartbeat_interval_seconds`
(given by the server with the claim) extends the lease and carries the figures reported since the last one; its
answer (or, on v2, the server's push) is how the handler learns about a cancel request. Figures do not wait for
it: what `ctx.report(...)` merges goes out within `Worker(progress_interval=1.0)` seconds of the last send (a
heartbeat carrying it; reports in between coalesce, so a job is written at most about once per interval however
often it reports), and the regular heartbeat counts its interval from the last send. If the lease is lost (the
server gave the job to someone else), the handler is cancelled and the job is left alone; the worker also takes
the lease as lost when no heartbeat has reached jobsd for a whole lease (three heartbeat intervals), so a job is
never run on behind jobsd's back while it is being given to another worker.

Run time: a claim carries what is left of the kind's run-time limit (and `Worker(time_limits=...)` can set a
tighter one per kind). When it runs out the handler is cancelled and the job finished as `error`, "Job exceeded
the run-time limit of ...", on this worker's clock, whether heartbeats get through or not (`ctx.time_left` says
how much is left). Handlers must let `asyncio.CancelledError` through: it is how a graceful stop, a lost lease
and the run-time limit reach them (the built-in executors interrupt their running statement then).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, Unpack

import grpc
import grpc.aio

from jobsd_client import pb
from jobsd_client._figures import QUERY_STATUSES, Figures, ReportFigures, validate_report
from jobsd_client.async_client import AsyncJobsClient
from jobsd_client.convert import plain_struct
from jobsd_client.errors import (
    FailedPrecondition,
    InvalidArgument,
    JobsdClientError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    error_from_item,
)
from jobsd_client.signals import STOP_SIGNALS, stop_on_signals

__all__ = [
    "DEFAULT_PROGRESS_INTERVAL",
    "MAX_ERROR_CHARS",
    "QUERY_STATUSES",
    "Handler",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "ReportFigures",
    "Worker",
    "run_until_signalled",
]

_log = logging.getLogger("jobsd_client.worker")

# jobsd refuses longer error messages; a handler's (an SQL engine's, say) is cut to fit rather than refused.
MAX_ERROR_CHARS = 10_000
# Figures a handler reports reach jobsd (and its watchers) at most this often, by default (Worker(progress_interval)).
DEFAULT_PROGRESS_INTERVAL = 1.0
MIN_PROGRESS_INTERVAL = 0.05
# Used only if a server does not say how often to heartbeat.
_DEFAULT_HEARTBEAT_INTERVAL = 10.0
# Errors worth retrying: the server restarts, is overloaded, or the network hiccups.
_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)
# Worker protocols: "auto" (v2, or v1 against a server without it), "v2", "v1".
PROTOCOLS = ("auto", "v2", "v1")
# Errors no retry can fix: the worker's token or its request is wrong. They end `Worker.run()`.
_FATAL_ERRORS = (Unauthenticated, PermissionDenied, InvalidArgument, Unimplemented)


def _retry_worthy(exc: JobsdClientError) -> bool:
    """Whether trying again may work: a transient code (`_TRANSIENT_CODES`), never one of `_FATAL_ERRORS`."""
    return exc.code in _TRANSIENT_CODES and not isinstance(exc, _FATAL_ERRORS)


def _clip(message: str) -> str:
    if len(message) <= MAX_ERROR_CHARS:
        return message
    marker = " [... truncated]"
    return message[: MAX_ERROR_CHARS - len(marker)] + marker


class JobFailed(Exception):
    """Raise from a handler to finish the job as `error` with this message (and optionally an `errors` list)."""

    def __init__(self, message: str, errors: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.errors = tuple(errors)


class JobCancelled(Exception):
    """Raise from a handler after noticing `ctx.cancel_requested`: the job finishes as `cancelled`."""


class _Backoff:
    """Exponential backoff with full jitter, so a fleet of workers does not hammer a restarting server in step."""

    def __init__(self, first: float = 0.1, ceiling: float = 5.0) -> None:
        self._first = first
        self._ceiling = ceiling
        self._attempt = 0

    def next_delay(self, error: BaseException | None = None) -> float:
        """The next wait; never shorter than what a rate-limited server asked for (`ResourceExhausted.retry_after`)."""
        delay = min(self._ceiling, self._first * (2**self._attempt))
        self._attempt = min(self._attempt + 1, 16)
        asked = getattr(error, "retry_after", None) or 0.0
        return max(float(asked), random.uniform(delay / 2, delay))

    def reset(self) -> None:
        self._attempt = 0


class JobContext:
    """What a handler gets: the claimed job, its inputs, a way to report figures, and the cancel signal."""

    def __init__(
        self,
        *,
        job: pb.Job,
        lease_token: str,
        worker_id: str,
        client: AsyncJobsClient,
        heartbeat_interval: float,
        heartbeat: _HeartbeatCall | None = None,
        run_time: _RunTime | None = None,
        progress_interval: float | None = DEFAULT_PROGRESS_INTERVAL,
    ) -> None:
        self.job = job
        self.job_id = job.id
        self.kind = job.kind
        # Whole numbers as ints ({"images": 4}, not 4.0): see `jobsd_client.convert.plain_struct`.
        self.params: dict[str, Any] = plain_struct(job.params)
        self.datasource: dict[str, Any] = plain_struct(job.datasource)
        self.worker_id = worker_id
        self._lease_token = lease_token
        self._client = client
        self._beat: _HeartbeatCall = heartbeat or client.heartbeat
        self._heartbeat_interval = heartbeat_interval
        # Figures reported go out at most this often (a heartbeat carrying them); None: only with the heartbeats.
        self._progress_interval = progress_interval
        # When the last heartbeat went (the claim counts as one: a job that reports and ends within the first
        # interval sends its figures with its finish only, no write more than before).
        self._last_sent = time.monotonic()
        # Set by report(): figures wait to be sent (see _progress_forever).
        self._reported = asyncio.Event()
        # Worker protocol v2: whether this job's slot was already given back to the server.
        self._slot_returned = False
        self._figures = Figures()
        self._cancel_requested = asyncio.Event()
        # One heartbeat at a time, so figures reach the server in the order they were reported.
        self._heartbeat_lock = asyncio.Lock()
        self._lease_lost = False
        self._handler_task: asyncio.Task[None] | None = None
        # On this process's monotonic clock: until when the lease surely holds (jobsd gives three heartbeat
        # intervals from each heartbeat), and when the run time runs out.
        self._lease_until = time.monotonic() + 3 * heartbeat_interval
        self._run_time = run_time
        self._deadline = None if run_time is None else time.monotonic() + run_time.left
        self._ran_out_of_time = False

    def __repr__(self) -> str:
        return f"JobContext(job_id={self.job_id!r}, kind={self.kind!r}, worker_id={self.worker_id!r})"

    @property
    def cancel_requested(self) -> bool:
        """True once a heartbeat answered that a user asked to cancel this job."""
        return self._cancel_requested.is_set()

    async def wait_cancel_requested(self) -> None:
        """Return when a cancel has been requested (learned on a heartbeat, within one heartbeat period)."""
        await self._cancel_requested.wait()

    @property
    def time_left(self) -> float | None:
        """Seconds of run time the job has left; None when it has no limit.

        The limit is the kind's in jobsd, or this worker's (`Worker(time_limits=...)`), whichever ends first. When
        it reaches 0 the handler is cancelled and the job ends in error.
        """
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    @property
    def lease_lost(self) -> bool:
        """Whether jobsd took the job back (the lease lapsed or the job ended): stop working on it."""
        return self._lease_lost

    def report(self, **figures: Unpack[ReportFigures]) -> None:
        """Merge figures into what goes to jobsd next (within `progress_interval`, 1 s by default, of the last send).

        They go with the next heartbeat, a `flush()` or the finish if one comes first. Reports in between are
        coalesced (only the latest figures go), so a handler may call this as often as it likes: jobsd writes a
        job at most about once per interval, and a progress write is not a status change (no jobs_log row).
        Validated as a whole first: a bad figure raises `InvalidArgument` naming it, and nothing is merged.
        """
        self._figures.merge(validate_report(figures))
        self._reported.set()

    async def flush(self) -> None:
        """Send the pending figures now (also refreshes `cancel_requested`).

        A transient transport failure is logged, not raised: the figures stay pending for the next heartbeat.
        If the lease turns out to be lost, the handler is cancelled (CancelledError is raised here).
        """
        await self._heartbeat()
        if self._lease_lost:
            await asyncio.sleep(0)  # the handler task was just cancelled: let the CancelledError land here

    # ---------------------------------------------------------- worker side

    def _bind(self, handler_task: asyncio.Task[None]) -> None:
        self._handler_task = handler_task

    def _lose_lease(self, reason: str) -> None:
        if self._lease_lost:
            return
        self._lease_lost = True
        _log.warning(
            "job %s: lease lost (%s); cancelling its handler", self.job_id, reason, extra={"job_id": self.job_id}
        )
        if self._handler_task is not None and not self._handler_task.done():
            self._handler_task.cancel()

    async def _heartbeat(self) -> None:
        async with self._heartbeat_lock:
            if self._lease_lost:
                return
            update, fields = self._figures.take()
            sent_at = self._last_sent = time.monotonic()
            try:
                response = await self._send_heartbeat(update)
            except (FailedPrecondition, NotFound) as exc:
                self._lose_lease(str(exc))
                return
            except JobsdClientError as exc:
                self._figures.restore(fields)
                _log.warning(
                    "job %s: heartbeat failed, will retry: %s", self.job_id, exc, extra={"job_id": self.job_id}
                )
                return
            except BaseException:
                self._figures.restore(fields)
                raise
            self._lease_until = sent_at + 3 * self._heartbeat_interval
        if response.cancel_requested and not self._cancel_requested.is_set():
            _log.info("job %s: cancel requested", self.job_id, extra={"job_id": self.job_id})
            self._cancel_requested.set()

    def _cancel_pushed(self) -> None:
        if not self._cancel_requested.is_set():
            _log.info("job %s: cancel requested", self.job_id, extra={"job_id": self.job_id})
            self._cancel_requested.set()

    async def _send_heartbeat(self, update: pb.ProgressUpdate | None) -> pb.HeartbeatResponse:
        try:
            return await self._beat(self.job_id, self._lease_token, update)
        except InvalidArgument as exc:
            if update is None:
                raise
            # Figures the server refuses (a size limit, say) must not cost the lease: drop them from the
            # heartbeats (FinishJob still carries them, and ends the job in error if they are refused again).
            _log.error(
                "job %s: jobsd refused the reported figures: %s", self.job_id, exc, extra={"job_id": self.job_id}
            )
            return await self._beat(self.job_id, self._lease_token, None)

    async def _heartbeat_forever(self) -> None:
        while not self._lease_lost:
            # A heartbeat interval after the last send: figures sent in between extended the lease already.
            await asyncio.sleep(max(0.0, self._last_sent + self._heartbeat_interval - time.monotonic()))
            if time.monotonic() >= self._last_sent + self._heartbeat_interval:
                await self._heartbeat()
            if not self._lease_lost and time.monotonic() >= self._lease_until:
                # jobsd has requeued (or ended) the job by now: stop working on it.
                self._lose_lease(f"no heartbeat reached jobsd for {3 * self._heartbeat_interval:g} s")

    async def _progress_forever(self) -> None:
        """Send reported figures at most once per `progress_interval` while they keep changing."""
        interval = self._progress_interval
        if interval is None:
            return
        while not self._lease_lost:
            await self._reported.wait()
            await asyncio.sleep(max(0.0, self._last_sent + interval - time.monotonic()))
            self._reported.clear()
            if self._figures.pending:
                await self._heartbeat()

    def _run_out_of_time(self) -> None:
        """The run time is up: cancel the handler (the job then finishes as error)."""
        self._ran_out_of_time = True
        _log.warning("job %s: %s; stopping it", self.job_id, self._run_time_error(), extra={"job_id": self.job_id})
        if self._handler_task is not None and not self._handler_task.done():
            self._handler_task.cancel()

    def _run_time_error(self) -> str:
        run_time = self._run_time
        assert run_time is not None
        if run_time.from_jobsd:
            # As jobsd says it when its sweep ends the job (whichever of the two gets there first).
            return (
                f"Job exceeded the run-time limit of {run_time.limit:g} s for {self.kind} jobs "
                "(time_limit_seconds; JOBSD_TIME_LIMITS)"
            )
        return f"Job exceeded the run-time limit of {run_time.limit:g} s this worker sets for {self.kind} jobs"


class _RunTime:
    """The run-time limit a job runs under: `left` seconds of `limit`, set by jobsd (the kind's) or the worker."""

    __slots__ = ("from_jobsd", "left", "limit")

    def __init__(self, limit: float, left: float, from_jobsd: bool) -> None:
        self.limit = limit
        self.left = left
        self.from_jobsd = from_jobsd

    @classmethod
    def for_claim(cls, claimed: pb.ClaimJobResponse, local_limit: float | None) -> _RunTime | None:
        """The tighter of what the claim says is left of the kind's limit and the worker's own limit."""
        limits: list[_RunTime] = []
        if claimed.HasField("run_seconds_left"):
            limit = claimed.time_limit_seconds if claimed.HasField("time_limit_seconds") else claimed.run_seconds_left
            limits.append(cls(limit, claimed.run_seconds_left, True))
        if local_limit is not None:
            limits.append(cls(local_limit, local_limit, False))
        return min(limits, key=lambda run_time: run_time.left, default=None)


Handler = Callable[[JobContext], Awaitable[None]]
_HeartbeatCall = Callable[[str, str, "pb.ProgressUpdate | None"], Awaitable[pb.HeartbeatResponse]]


class _NoStreams(Exception):
    """The server has no worker protocol v2: fall back to v1."""


class _WorkerStream:
    """One Workers.Connect stream of a Worker.

    What is sent in one loop turn goes as one message; every answer is routed to the call that waits for it by `ref`.
    """

    def __init__(self, worker: Worker) -> None:
        self._worker = worker
        self._queue: asyncio.Queue[pb.WorkerMessage | None] = asyncio.Queue()
        self._outbox = pb.WorkerMessage()
        self._flush_pending = False
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._refs = itertools.count(1)
        self.alive = True
        self.answered = False

    async def run(self, hello: pb.ConnectHello) -> None:
        """Say hello, then dispatch the server's messages until the stream ends (raises how it failed)."""
        self._queue.put_nowait(pb.WorkerMessage(hello=hello))
        async for message in self._worker._client.worker_stream(self._requests()):
            self.answered = True
            self._worker._on_server_message(message)

    async def _requests(self) -> AsyncIterator[pb.WorkerMessage]:
        while True:
            message = await self._queue.get()
            if message is None:
                return
            yield message

    def _touch(self) -> pb.WorkerMessage:
        if not self._flush_pending:
            self._flush_pending = True
            asyncio.get_running_loop().call_soon(self._flush)
        return self._outbox

    def _flush(self) -> None:
        self._flush_pending = False
        message, self._outbox = self._outbox, pb.WorkerMessage()
        if self.alive and message.ByteSize():
            self._queue.put_nowait(message)

    def add_slots(self, count: int) -> None:
        self._touch().add_slots += count

    def drain(self) -> None:
        self._touch().drain = True

    def close(self) -> None:
        """End our side (after what is already queued); the server then ends the stream."""
        self._flush()
        self._queue.put_nowait(None)

    def abandon(self, reason: str) -> None:
        """The stream is gone: every call still waiting fails as Unavailable (and is retried the unary way)."""
        self.alive = False
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(Unavailable(f"the worker stream ended: {reason}"))

    def answer(self, ref: int, answer: Any) -> None:
        future = self._waiting.pop(ref, None)
        if future is not None and not future.done():
            future.set_result(answer)

    async def _ask(self, ref: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ref] = future
        try:
            # asyncio.timeout, never wait_for: on Python 3.11 wait_for returns the answer, and loses the
            # cancellation, when both land in the same loop turn. A job's progress task cancelled as its heartbeat
            # was answered then went on waiting for figures that never came, and the job never finished.
            async with asyncio.timeout(self._worker._client.timeout):
                answer = await future
        except TimeoutError:
            raise Unavailable("no answer on the worker stream in time") from None
        finally:
            self._waiting.pop(ref, None)
        if answer.HasField("error"):
            raise error_from_item(answer.error)
        return answer

    async def heartbeat(self, job_id: str, lease_token: str, update: pb.ProgressUpdate | None) -> pb.HeartbeatResponse:
        ref = next(self._refs)
        beat = self._touch().heartbeats.add(ref=ref, job_id=job_id, lease_token=lease_token)
        if update is not None:
            beat.progress.CopyFrom(update)
        answer = await self._ask(ref)
        response = pb.HeartbeatResponse(cancel_requested=answer.cancel_requested, revision=answer.revision)
        response.lease_expires_at.CopyFrom(answer.lease_expires_at)
        return response

    async def finish(
        self,
        job_id: str,
        lease_token: str,
        status: pb.JobStatus.ValueType,
        error: str | None,
        progress: pb.ProgressUpdate | None,
        release: bool,
    ) -> pb.Job:
        ref = next(self._refs)
        end = self._touch().finishes.add(
            ref=ref, job_id=job_id, lease_token=lease_token, status=status, error=error or "", release=release
        )
        if progress is not None:
            end.progress.CopyFrom(progress)
        answer = await self._ask(ref)
        return answer.job  # type: ignore[no-any-return]


class _RunningJob:
    def __init__(self, ctx: JobContext, handler_task: asyncio.Task[None]) -> None:
        self.ctx = ctx
        self.handler_task = handler_task
        # Set when a graceful stop ran out of grace: the job goes back to the queue, not to a final status.
        self.released = False


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Claims jobs of the handled kinds (long-poll), runs up to `concurrency` at once, until `stop()`.

    `time_limits`: seconds a job of a kind may run on this worker (`{"query": 300}`), enforced by the worker on
    top of the kind's run-time limit in jobsd (each claim says what is left of it): whichever ends first stops it.
    """

    def __init__(
        self,
        target: str,
        token: str,
        handlers: Mapping[str, Handler],
        *,
        worker_id: str | None = None,
        concurrency: int = 1,
        wait_seconds: float = 5.0,
        channel: grpc.aio.Channel | None = None,
        protocol: str = "auto",
        time_limits: Mapping[str, float] | None = None,
        progress_interval: float | None = DEFAULT_PROGRESS_INTERVAL,
    ) -> None:
        if not handlers:
            raise InvalidArgument.for_field("handlers", "at least one kind -> handler is required")
        for kind, handler in handlers.items():
            if not kind or not callable(handler):
                raise InvalidArgument.for_field("handlers", f"expected kind -> async callable, got {kind!r}")
        if concurrency < 1:
            raise InvalidArgument.for_field("concurrency", f"must be at least 1, got {concurrency}")
        if not 0 <= wait_seconds <= 60:
            raise InvalidArgument.for_field("wait_seconds", f"must be between 0 and 60, got {wait_seconds}")
        if protocol not in PROTOCOLS:
            raise InvalidArgument.for_field("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        for kind, seconds in (time_limits or {}).items():
            if not seconds > 0:
                raise InvalidArgument.for_field("time_limits", f"{kind}: must be more than 0 seconds, got {seconds!r}")
        if progress_interval is not None and not MIN_PROGRESS_INTERVAL <= progress_interval <= 3600:
            raise InvalidArgument.for_field(
                "progress_interval",
                f"must be between {MIN_PROGRESS_INTERVAL:g} and 3600 seconds (or None), got {progress_interval!r}",
            )
        self._progress_interval = progress_interval
        # Run-time limits per kind this worker enforces itself (jobsd's own, sent with each claim, apply too).
        self._time_limits = dict(time_limits or {})
        self._protocol = protocol
        self._concurrency = concurrency
        # v2: slots held by jobs assigned and not yet given back (the rest are free).
        self._held_slots = 0
        self._stream: _WorkerStream | None = None
        # The protocol in use once run() has connected: "v2" or "v1".
        self.protocol_in_use: str | None = None
        self.worker_id = worker_id or _default_worker_id()
        self._handlers = dict(handlers)
        self._kinds = sorted(self._handlers)
        self._wait_seconds = wait_seconds
        self._client = AsyncJobsClient(target, token, channel=channel)
        self._free_slots = asyncio.Semaphore(concurrency)
        self._stopping = asyncio.Event()
        self._loop_exited = asyncio.Event()
        self._run_started = False
        self._claim_task: asyncio.Task[pb.ClaimJobResponse | None] | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self._job_tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, _RunningJob] = {}

    @property
    def running_job_ids(self) -> list[str]:
        """Ids of the jobs whose handlers are running now."""
        return list(self._running)

    @property
    def running_jobs(self) -> list[tuple[str, str]]:
        """(id, kind) of each job whose handler is running now (what a graceful stop waits for)."""
        return [(job_id, running.ctx.kind) for job_id, running in self._running.items()]

    async def run(self) -> None:
        """Claim and run jobs until `stop()`; raises if the server refuses this worker (bad token, scope)."""
        if self._run_started:
            raise RuntimeError("Worker.run() can only be called once")
        self._run_started = True
        try:
            if not self._stopping.is_set():
                if self._protocol != "v1":
                    try:
                        await self._stream_loop()
                        return
                    except _NoStreams:
                        if self._protocol == "v2":
                            raise Unimplemented(
                                "the server does not offer worker protocol v2 (Workers.Connect)"
                            ) from None
                        _log.info("the server has no worker streams; claiming with ClaimJob (v1)")
                self.protocol_in_use = "v1"
                await self._claim_loop()
        finally:
            self._loop_exited.set()
            # Ending without stop() (a fatal error, or run() was cancelled): release whatever still runs.
            await asyncio.shield(self._begin_shutdown(grace=0.0))

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop claiming, let running jobs finish for up to `grace` seconds, then hand the rest back.

        Handlers still running then are cancelled and their jobs released to the queue. Returns when everything
        is settled. Safe to call twice.
        """
        await asyncio.shield(self._begin_shutdown(grace=grace))

    # ------------------------------------------------------------ v2: one stream

    async def _stream_loop(self) -> None:
        backoff = _Backoff()
        while not self._stopping.is_set():
            stream = _WorkerStream(self)
            hello = pb.ConnectHello(
                worker_id=self.worker_id, kinds=self._kinds, slots=max(0, self._concurrency - self._held_slots)
            )
            self._stream = stream
            try:
                await stream.run(hello)
                if not self._stopping.is_set():
                    raise Unavailable("the server ended the worker stream")
                return
            except Unimplemented:
                if not stream.answered:
                    raise _NoStreams() from None
                raise
            except JobsdClientError as exc:
                if not _retry_worthy(exc):
                    raise
                if stream.answered:
                    backoff.reset()
                delay = backoff.next_delay(exc)
                _log.warning("worker stream failed (%s: %s); reconnecting in %.2fs", exc.code.name, exc, delay)
                stream.abandon(str(exc))
                self._stream = None
                await self._sleep_unless_stopping(delay)
            finally:
                stream.abandon("closed")
                if self._stream is stream:
                    self._stream = None
            self.protocol_in_use = "v2"

    def _on_server_message(self, message: pb.ServerMessage) -> None:
        self.protocol_in_use = "v2"
        stream = self._stream
        if stream is not None:
            for beat in message.heartbeats:
                stream.answer(beat.ref, beat)
            for end in message.finishes:
                stream.answer(end.ref, end)
        for notice in message.cancels:
            running = self._running.get(notice.job_id)
            if running is not None:
                running.ctx._cancel_pushed()
        for assignment in message.assignments:
            self._held_slots += 1
            claimed = pb.ClaimJobResponse(
                job=assignment.job,
                lease_token=assignment.lease_token,
                heartbeat_interval_seconds=assignment.heartbeat_interval_seconds,
            )
            claimed.lease_expires_at.CopyFrom(assignment.lease_expires_at)
            if assignment.HasField("run_seconds_left"):
                claimed.run_seconds_left = assignment.run_seconds_left
            if assignment.HasField("time_limit_seconds"):
                claimed.time_limit_seconds = assignment.time_limit_seconds
            self._start_job(claimed, streamed=True)

    def _start_job(self, claimed: pb.ClaimJobResponse, *, streamed: bool) -> None:
        """Run the claimed job in a task of its own, kept until it ends (so a stop can wait for it)."""
        task = asyncio.create_task(self._run_job(claimed, streamed=streamed), name=f"jobsd-worker-job-{claimed.job.id}")
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)

    def _return_slot(self, ctx: JobContext) -> None:
        """v2: the job's slot is free again (said beside its finish, so the server can assign the next job)."""
        if ctx._slot_returned:
            return
        ctx._slot_returned = True
        self._held_slots -= 1
        if self._stream is not None and self._stream.alive and not self._stopping.is_set():
            self._stream.add_slots(1)

    async def _heartbeat_call(
        self, job_id: str, lease_token: str, update: pb.ProgressUpdate | None
    ) -> pb.HeartbeatResponse:
        stream = self._stream
        if stream is not None and stream.alive and stream.answered:
            return await stream.heartbeat(job_id, lease_token, update)
        return await self._client.heartbeat(job_id, lease_token, update)

    # ------------------------------------------------------------ v1: claiming

    async def _claim_loop(self) -> None:
        backoff = _Backoff()
        while not self._stopping.is_set():
            self._claim_task = asyncio.create_task(self._claim_one(), name=f"jobsd-worker-claim-{self.worker_id}")
            try:
                claimed = await self._claim_task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if self._stopping.is_set() and current is not None and not current.cancelling():
                    return  # stop() interrupted the long poll
                raise
            except JobsdClientError as exc:
                if not _retry_worthy(exc):
                    raise
                delay = backoff.next_delay(exc)
                _log.warning("claim failed (%s: %s); retrying in %.2fs", exc.code.name, exc, delay)
                await self._sleep_unless_stopping(delay)
                continue
            finally:
                self._claim_task = None
            backoff.reset()
            if claimed is not None:
                self._start_job(claimed, streamed=False)

    async def _claim_one(self) -> pb.ClaimJobResponse | None:
        """Wait for a free slot, then long-poll for a job; the slot stays taken only if a job was claimed."""
        await self._free_slots.acquire()
        try:
            response = await self._client.claim_job(self.worker_id, self._kinds, wait_seconds=self._wait_seconds)
        except BaseException:
            self._free_slots.release()
            raise
        if not response.HasField("job"):
            self._free_slots.release()
            return None
        return response

    async def _sleep_unless_stopping(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):  # not wait_for: see _WorkerStream._ask
                await self._stopping.wait()

    # ------------------------------------------------------------- running

    async def _run_job(self, claimed: pb.ClaimJobResponse, *, streamed: bool = False) -> None:
        job = claimed.job
        ctx = JobContext(
            job=job,
            lease_token=claimed.lease_token,
            worker_id=self.worker_id,
            client=self._client,
            heartbeat_interval=claimed.heartbeat_interval_seconds or _DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat=self._heartbeat_call if streamed else None,
            run_time=_RunTime.for_claim(claimed, self._time_limits.get(job.kind)),
            progress_interval=self._progress_interval,
        )
        if not streamed:
            ctx._slot_returned = True  # v1 slots are the semaphore's
        try:
            handler = self._handlers.get(job.kind)
            if self._stopping.is_set():
                # Claimed just as the worker began to stop: hand it straight back.
                await self._finish(ctx, release=True)
            elif handler is None:
                await self._finish(ctx, status=pb.JOB_STATUS_ERROR, error=f"worker has no handler for {job.kind!r}")
            else:
                await self._supervise(ctx, handler)
        except Exception:
            _log.exception("job %s: the worker failed to settle it", job.id, extra={"job_id": job.id})
        finally:
            self._running.pop(job.id, None)
            if streamed:
                self._return_slot(ctx)
            else:
                self._free_slots.release()

    async def _supervise(self, ctx: JobContext, handler: Handler) -> None:
        """Run the handler with a heartbeat beside it, then finish the job according to how the handler ended."""
        handler_task: asyncio.Task[None] = asyncio.create_task(
            _call(handler, ctx), name=f"jobsd-handler-{ctx.kind}-{ctx.job_id}"
        )
        ctx._bind(handler_task)
        running = _RunningJob(ctx, handler_task)
        self._running[ctx.job_id] = running
        _log.info("job %s (%s): started", ctx.job_id, ctx.kind, extra={"job_id": ctx.job_id})
        heartbeat_task = asyncio.create_task(ctx._heartbeat_forever(), name=f"jobsd-heartbeat-{ctx.job_id}")
        progress_task = asyncio.create_task(ctx._progress_forever(), name=f"jobsd-progress-{ctx.job_id}")
        try:
            await asyncio.wait({handler_task}, timeout=ctx.time_left)
            if not handler_task.done():
                ctx._run_out_of_time()
                await asyncio.wait({handler_task})
        finally:
            # Also reached if this task itself is cancelled: nothing is left running behind it.
            for task in (handler_task, heartbeat_task, progress_task):
                task.cancel()
            await asyncio.wait({handler_task, heartbeat_task, progress_task})
            for task in (heartbeat_task, progress_task):
                if not task.cancelled() and task.exception() is not None:
                    _log.error("job %s: %s crashed", ctx.job_id, task.get_name(), exc_info=task.exception())

        if ctx.lease_lost:
            # The job belongs to someone else now (requeued or ended by the server): leave it alone.
            _log.warning("job %s: not finishing, its lease was lost", ctx.job_id, extra={"job_id": ctx.job_id})
            return
        if ctx._ran_out_of_time:
            # Before `released`: a job out of run time is not given back to the queue to run out again.
            await self._finish(ctx, status=pb.JOB_STATUS_ERROR, error=ctx._run_time_error())
            return
        if running.released:
            await self._finish(ctx, release=True)
            return
        if handler_task.cancelled():
            # Nobody but the handler itself cancelled it (a release or lost lease is handled above).
            if ctx.cancel_requested:
                await self._finish(ctx, status=pb.JOB_STATUS_CANCELLED)
            else:
                await self._finish(ctx, status=pb.JOB_STATUS_ERROR, error="CancelledError: the handler was cancelled")
            return
        exc = handler_task.exception()
        if exc is None:
            await self._finish(ctx, status=pb.JOB_STATUS_DONE)
        elif isinstance(exc, JobFailed):
            await self._finish(ctx, status=pb.JOB_STATUS_ERROR, error=exc.message, errors=exc.errors)
        elif isinstance(exc, JobCancelled):
            await self._finish(ctx, status=pb.JOB_STATUS_CANCELLED)
        else:
            _log.error("job %s: handler raised", ctx.job_id, exc_info=exc, extra={"job_id": ctx.job_id})
            message = str(exc)
            error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
            await self._finish(ctx, status=pb.JOB_STATUS_ERROR, error=error)

    async def _finish(
        self,
        ctx: JobContext,
        *,
        status: pb.JobStatus.ValueType = pb.JOB_STATUS_UNSPECIFIED,
        error: str | None = None,
        errors: Sequence[str] = (),
        release: bool = False,
    ) -> None:
        """FinishJob with every figure reported, retrying transient failures while the lease can still hold."""
        if errors:
            ctx._figures.add_errors(errors)
        progress: pb.ProgressUpdate | None = ctx._figures.everything()
        loop = asyncio.get_running_loop()
        # A lease lasts three heartbeat intervals; past that, retrying can only meet a lease that is gone.
        give_up_at = loop.time() + max(3 * ctx._heartbeat_interval, 5.0)
        backoff = _Backoff()
        refused = False
        error = _clip(error) if error else error
        while True:
            try:
                await self._finish_call(ctx, status, error, progress, release)
            except FailedPrecondition as exc:
                if status == pb.JOB_STATUS_CANCELLED and not release:
                    # The server had no cancel request: a handler gave up on its own, which is an error.
                    status = pb.JOB_STATUS_ERROR
                    error = "the handler stopped the job as cancelled, but no cancel was requested"
                    continue
                _log.warning("job %s: could not finish, lease no longer ours: %s", ctx.job_id, exc)
                return
            except NotFound as exc:
                _log.warning("job %s: could not finish, job gone: %s", ctx.job_id, exc)
                return
            except InvalidArgument as exc:
                if refused:
                    _log.error("job %s: the server refused to finish it: %s", ctx.job_id, exc)
                    return
                # Never leave a job running because what it reported was refused: settle it without the figures
                # (a finish becomes an error that says why; a release stays a release).
                refused, progress = True, None
                if not release:
                    status, error = pb.JOB_STATUS_ERROR, _clip(f"jobsd refused the job's final report: {exc}")
                continue
            except JobsdClientError as exc:
                if exc.code not in _TRANSIENT_CODES or loop.time() >= give_up_at:
                    _log.error("job %s: could not finish (%s: %s)", ctx.job_id, exc.code.name, exc)
                    return
                await asyncio.sleep(backoff.next_delay(exc))
                continue
            outcome = "released" if release else pb.JobStatus.Name(status)[len("JOB_STATUS_") :].lower()
            _log.info("job %s: %s%s", ctx.job_id, outcome, f" ({error})" if error else "", extra={"job_id": ctx.job_id})
            return

    async def _finish_call(
        self,
        ctx: JobContext,
        status: pb.JobStatus.ValueType,
        error: str | None,
        progress: pb.ProgressUpdate | None,
        release: bool,
    ) -> None:
        stream = self._stream
        self._return_slot(ctx)  # in the same message as the finish
        if stream is not None and stream.alive and stream.answered:
            if not release and not status:
                raise InvalidArgument.for_field("status", "is required unless release is set")
            await stream.finish(ctx.job_id, ctx._lease_token, status, error, progress, release)
            return
        await self._client.finish_job(
            ctx.job_id, ctx._lease_token, status, error=error, progress=progress, release=release
        )

    # ------------------------------------------------------------ shutdown

    def _begin_shutdown(self, grace: float) -> asyncio.Task[None]:
        if self._shutdown_task is None:
            self._stopping.set()
            self._shutdown_task = asyncio.create_task(self._shutdown(grace), name=f"jobsd-worker-stop-{self.worker_id}")
        return self._shutdown_task

    async def _shutdown(self, grace: float) -> None:
        if self._claim_task is not None:
            # A job the server claims in the instant this cancel lands is recovered by its lease sweeper.
            self._claim_task.cancel()
        stream = self._stream
        if stream is not None and stream.alive:
            # v2: no more assignments; one already on its way is handed straight back (see _run_job).
            stream.drain()
        elif self._run_started:
            await self._loop_exited.wait()  # no new job can start after this
        if self._job_tasks and grace > 0:
            await asyncio.wait(set(self._job_tasks), timeout=grace)
        for running in list(self._running.values()):
            if not running.handler_task.done():
                running.released = True
                running.handler_task.cancel()
        if self._job_tasks:
            await asyncio.wait(set(self._job_tasks))
        if self._stream is not None:
            self._stream.close()
        if self._run_started:
            await self._loop_exited.wait()
        if self._job_tasks:
            await asyncio.wait(set(self._job_tasks))
        await self._client.close()


async def _call(handler: Handler, ctx: JobContext) -> None:
    await handler(ctx)


async def run_until_signalled(
    worker: Worker, *, grace: float = 10.0, signals: Sequence[signal.Signals] = STOP_SIGNALS
) -> None:
    """Run `worker` until one of `signals` (SIGTERM, Ctrl-C) arrives, then stop it gracefully."""
    with stop_on_signals(signals) as signalled:
        run_task = asyncio.create_task(worker.run(), name=f"jobsd-worker-run-{worker.worker_id}")
        signal_task = asyncio.create_task(signalled.wait())
        try:
            await asyncio.wait({run_task, signal_task}, return_when=asyncio.FIRST_COMPLETED)
            if signalled.is_set():
                _log.info("signal received: stopping (grace %.1fs)", grace)
                await worker.stop(grace=grace)
            await run_task
        finally:
            signal_task.cancel()
            if not run_task.done():
                run_task.cancel()
                await asyncio.wait({run_task})
