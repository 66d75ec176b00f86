"""The jobsd client SDK: async and sync clients for the jobsd.v1 API, the worker SDK, and the `jobsctl` CLI.

    from jobsd_client import AsyncJobsClient, status_name

    async with AsyncJobsClient("127.0.0.1:50051", token) as client:
        job = await client.create_job("import", url="https://.../events.csv", datasource={"name": "events"})
        async for event in client.watch_job(job.id):
            print(status_name(event.job.status), event.job.progress_percentage)

Messages are the generated protobuf classes (`from jobsd_client import pb`); errors are `jobsd_client.errors`.
This package never imports the server package `jobsd`.
"""

from jobsd_client import pb
from jobsd_client.async_client import AsyncJobsClient
from jobsd_client.convert import STATUS_NAMES, TERMINAL_STATUSES, message_to_dict, status_name, status_value
from jobsd_client.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    JobsdClientError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from jobsd_client.sync_client import JobsClient
from jobsd_client.worker import Handler, JobCancelled, JobContext, JobFailed, Worker, run_until_signalled

__all__ = [
    "STATUS_NAMES",
    "TERMINAL_STATUSES",
    "AlreadyExists",
    "AsyncJobsClient",
    "FailedPrecondition",
    "Handler",
    "InvalidArgument",
    "JobCancelled",
    "JobContext",
    "JobFailed",
    "JobsClient",
    "JobsdClientError",
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
