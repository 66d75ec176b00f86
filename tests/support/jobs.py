"""Building jobs and requests: a Struct from a dict, a CreateJobRequest from keywords (the end-to-end suites), a
domain `Job` as CreateJob makes it (the unit and contract suites)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from google.protobuf import struct_pb2

from jobsd.domain.model import Job, JobStatus
from jobsd_client import pb

__all__ = ["TERMINAL", "create_request", "struct", "waiting_job"]

# How long a job stays visible unless its kind says otherwise (JOBSD_RETENTION_HOURS's default).
RETENTION = timedelta(hours=48)

TERMINAL = frozenset({pb.JOB_STATUS_DONE, pb.JOB_STATUS_ERROR, pb.JOB_STATUS_CANCELLED})


def struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    """A google.protobuf.Struct holding `values`."""
    message = struct_pb2.Struct()
    message.update(values)
    return message


def create_request(kind: str, datasource: str | None = None, **fields: Any) -> pb.CreateJobRequest:
    """A CreateJob of `kind`: `datasource` names its target data source, `params` is a dict (empty: none), the
    other keywords are CreateJobRequest fields."""
    params = fields.pop("params", None)
    request = pb.CreateJobRequest(kind=kind, **fields)
    if datasource is not None:
        request.datasource.CopyFrom(struct({"name": datasource}))
    if params:
        request.params.CopyFrom(struct(params))
    return request


def waiting_job(created_at: datetime, *, workspace_id: str = "ws", kind: str = "import", **fields: Any) -> Job:
    """A job as CreateJob makes it at `created_at`: waiting, revision 1, a new id, visible for RETENTION, its
    concurrency key `workspace:kind`; `fields` (any other `Job` field) set as given."""
    made: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "status": JobStatus.WAITING,
        "updated_at": created_at,
        "revision": 1,
        "status_revision": 1,
        "concurrency_key": f"{workspace_id}:{kind}",
        "expires_at": created_at + RETENTION,
    }
    return Job(workspace_id=workspace_id, kind=kind, created_at=created_at, **{**made, **fields})
