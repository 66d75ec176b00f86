"""Conversions between the jobsd.v1 messages and plain Python: status names, timestamps, JSON-ready dicts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from jobsd_client import pb
from jobsd_client.errors import InvalidArgument

__all__ = [
    "STATUS_NAMES",
    "TERMINAL_STATUSES",
    "from_timestamp",
    "message_to_dict",
    "status_name",
    "status_value",
    "to_timestamp",
]

_PREFIX = "JOB_STATUS_"
# Every enum name but UNSPECIFIED, e.g. "JOB_STATUS_WAITING".
_STATUS_KEYS = frozenset(name for name, _ in pb.JobStatus.items() if name != "JOB_STATUS_UNSPECIFIED")
# "waiting", "working", ... in the order of the enum.
STATUS_NAMES: tuple[str, ...] = tuple(
    name[len(_PREFIX) :].lower()
    for name, _ in sorted(pb.JobStatus.items(), key=lambda item: item[1])
    if name in _STATUS_KEYS
)
TERMINAL_STATUSES = frozenset({pb.JOB_STATUS_DONE, pb.JOB_STATUS_ERROR, pb.JOB_STATUS_CANCELLED})


def status_name(status: pb.JobStatus.ValueType | int) -> str:
    """`pb.JOB_STATUS_WAITING` -> "waiting" (the name users see in the REST JSON); unknown values -> "unspecified"."""
    try:
        name = pb.JobStatus.Name(pb.JobStatus.ValueType(status))
    except ValueError:
        return "unspecified"
    return name[len(_PREFIX) :].lower()


def status_value(name: str | int, *, field: str = "status") -> pb.JobStatus.ValueType:
    """The enum value of a status name: "waiting" (or "JOB_STATUS_WAITING", or the number) -> JOB_STATUS_WAITING."""
    if isinstance(name, int):
        if name not in pb.JobStatus.values() or name == pb.JOB_STATUS_UNSPECIFIED:
            raise InvalidArgument.for_field(field, f"unknown job status {name!r}")
        return pb.JobStatus.ValueType(name)
    key = name.strip().upper()
    if not key.startswith(_PREFIX):
        key = _PREFIX + key
    if key not in _STATUS_KEYS:
        raise InvalidArgument.for_field(
            field, f"unknown job status {name!r}; expected one of {', '.join(STATUS_NAMES)}"
        )
    return pb.JobStatus.Value(key)


def to_timestamp(value: datetime) -> Timestamp:
    """A protobuf Timestamp; naive datetimes are taken as UTC (jobsd speaks UTC only)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value
    stamp = Timestamp()
    stamp.FromDatetime(aware.astimezone(UTC))
    return stamp


def from_timestamp(stamp: Timestamp) -> datetime:
    """A protobuf Timestamp as an aware UTC datetime."""
    return stamp.ToDatetime(tzinfo=UTC)


_INT64_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _humanise(descriptor: Any, data: dict[str, Any]) -> dict[str, Any]:
    # The proto3 JSON mapping writes int64 as strings and enums by their long names; a person (and jq) wants
    # numbers and the status names the REST API shows, so both are turned back here, guided by the descriptor.
    for name, value in list(data.items()):
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        values = value if isinstance(value, list) else [value]
        converted: list[Any]
        if field.type in _INT64_TYPES:
            converted = [int(v) for v in values]
        elif field.enum_type is not None and field.enum_type.full_name == "jobsd.v1.JobStatus":
            converted = [status_name(pb.JobStatus.Value(v)) for v in values]
        elif field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
            converted = [_humanise(field.message_type, v) for v in values]
        else:
            continue
        data[name] = converted if isinstance(value, list) else converted[0]
    return data


def message_to_dict(message: Message) -> dict[str, Any]:
    """A jobsd.v1 message as JSON-ready data: proto field names, integers as numbers, statuses as "waiting"."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _humanise(message.DESCRIPTOR, data)
