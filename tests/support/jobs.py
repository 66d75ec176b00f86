"""Building the requests the end-to-end suites send: a Struct from a dict, a CreateJobRequest from keywords."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2

from jobsd_client import pb

__all__ = ["TERMINAL", "create_request", "struct"]

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
