"""The jobsd client SDK: async and sync clients for the jobsd.v1 API, the worker SDK, and the `jobsctl` CLI.

    from jobsd_client import AsyncJobsClient, status_name

    async with AsyncJobsClient("127.0.0.1:50051", token) as client:
        job = await client.create_job("import", url="https://.../events.csv", datasource={"name": "events"})
        async for event in client.watch_job(job.id):
            print(event.type, status_name(event.job.status), event.job.progress_percentage)  # snapshot waiting 0.0

Watch streams yield `JobEvent`s: `event.type` is an `EventType` (an IntEnum: `EventType.STATUS`, printed
"status", equal to `pb.JobEvent.TYPE_STATUS`), `event.job` the job, `event.message` the protobuf.

A worker for a kind of your own (declared by the operator in `JOBSD_KINDS_FILE` / `JOBSD_KINDS`; its token needs
JOBS:EXECUTE, which `make run` keeps in .jobsd/worker-token):

    from jobsd_client import JobCancelled, JobContext, Worker, run_until_signalled

    async def thumbnail(ctx: JobContext) -> None:
        images = ctx.params.get("images", 1)
        for done in range(images):
            if ctx.cancel_requested:            # a kind declared cancellable_while_working
                raise JobCancelled()
            ...                                 # render one
            ctx.report(progress_percentage=100 * (done + 1) / images)

    await run_until_signalled(Worker("127.0.0.1:50051", worker_token, {"thumbnail": thumbnail}, concurrency=2))

The README's "Your own worker in five minutes" has it complete (a test runs it as written); `jobsd_client.worker`
says what a handler may raise, how progress and cancels travel, and the run-time limit.

Messages are the generated protobuf classes (`from jobsd_client import pb`); errors are `jobsd_client.errors`.
This package never imports the server package `jobsd`.

Only the errors are imported with the package; the rest (the clients, the worker, the messages) loads on first
use, so code that only raises or catches jobsd's errors (the server's domain layer) never loads gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobsd_client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    JobsdClientError,
    JobsdError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from jobsd_client import pb
    from jobsd_client.async_client import AsyncJobsClient
    from jobsd_client.convert import STATUS_NAMES, TERMINAL_STATUSES, message_to_dict, status_name, status_value
    from jobsd_client.events import EventType, JobEvent
    from jobsd_client.sync_client import JobsClient
    from jobsd_client.worker import Handler, JobCancelled, JobContext, JobFailed, Worker, run_until_signalled

__all__ = [
    "STATUS_NAMES",
    "TERMINAL_STATUSES",
    "AlreadyExists",
    "AsyncJobsClient",
    "EventType",
    "FailedPrecondition",
    "Handler",
    "InvalidArgument",
    "JobCancelled",
    "JobContext",
    "JobEvent",
    "JobFailed",
    "JobsClient",
    "JobsdClientError",
    "JobsdError",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Worker",
    "message_to_dict",
    "pb",
    "run_until_signalled",
    "status_name",
    "status_value",
]

# Public name -> the module that defines it (imported on first access).
_LAZY = {
    "AsyncJobsClient": "jobsd_client.async_client",
    "JobsClient": "jobsd_client.sync_client",
    "STATUS_NAMES": "jobsd_client.convert",
    "TERMINAL_STATUSES": "jobsd_client.convert",
    "message_to_dict": "jobsd_client.convert",
    "status_name": "jobsd_client.convert",
    "status_value": "jobsd_client.convert",
    "EventType": "jobsd_client.events",
    "JobEvent": "jobsd_client.events",
    "Handler": "jobsd_client.worker",
    "JobCancelled": "jobsd_client.worker",
    "JobContext": "jobsd_client.worker",
    "JobFailed": "jobsd_client.worker",
    "Worker": "jobsd_client.worker",
    "run_until_signalled": "jobsd_client.worker",
}


def __getattr__(name: str) -> Any:
    if name == "pb":
        return importlib.import_module("jobsd_client.pb")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobsd_client' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
