"""Conversions between the jobsd.v1 messages and plain Python: status names, timestamps, JSON-ready dicts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp

from jobsd_client import pb
from jobsd_client.errors import InvalidArgument

__all__ = [
    "STATUS_NAMES",
    "TERMINAL_STATUSES",
    "from_timestamp",
    "message_to_dict",
    "plain_struct",
    "plain_value",
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


# Doubles represent every integer up to 2**53 exactly; past it a whole double may already have lost digits.
_MAX_EXACT_INT = 2**53


def plain_value(value: Value) -> Any:
    """One Struct `Value` as plain Python (see `plain_struct`): str, int or float, bool, dict, list or None."""
    # The kinds by how often a Struct holds them, strings first. `for key in fields` / `fields[key]` and a slice of
    # the list are the containers' own C methods: `.items()` is collections.abc's ItemsView, and iterating a
    # repeated field walks __getitem__ until an IndexError, a Python-level step or exception per item.
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if number.is_integer() and -_MAX_EXACT_INT <= number <= _MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "struct_value":
        return plain_struct(value.struct_value)
    if kind == "bool_value":
        return value.bool_value
    if kind == "list_value":
        values = value.list_value.values
        return [plain_value(item) for item in values[:]] if values else []
    return None  # null_value, or no value at all


def plain_struct(struct: Struct) -> dict[str, Any]:
    """A Struct (params, result, datasource) as plain Python, whole numbers as `int`.

    A Struct has one number type, a double (JSON's), so `{"images": 4}` travels as 4.0. Whole numbers within
    ±2**53 (where a double is exact) come back as ints, the others as floats: 4 and 4.0 cannot be told apart on
    the wire, and an int is what a JSON writer meant by `4`. Integers beyond 2**53 lose digits in a double:
    send them as strings.

    Keys come out sorted, at every depth: a Struct's map iterates in an order protobuf seeds per process, so the
    same Struct would otherwise give differently ordered dicts (and JSON) in two processes.
    """
    plain: dict[str, Any] = {}
    fields = struct.fields
    for key in sorted(fields):
        plain[key] = plain_value(fields[key])
    return plain


def _humanise(message: Message, data: dict[str, Any]) -> dict[str, Any]:
    # The proto3 JSON mapping writes int64 as strings, enums by their long names and Struct numbers as floats; a
    # person (and jq) wants numbers, the status names the REST API shows and 4 rather than 4.0, so all three are
    # turned back here, guided by the descriptor.
    descriptor = message.DESCRIPTOR
    for name, value in list(data.items()):
        field = descriptor.fields_by_name.get(name)
        if field is None:
            continue
        values = value if isinstance(value, list) else [value]
        messages = getattr(message, name) if isinstance(value, list) else [getattr(message, name)]
        converted: list[Any]
        if field.type in _INT64_TYPES:
            converted = [int(v) for v in values]
        elif field.enum_type is not None and field.enum_type.full_name == "jobsd.v1.JobStatus":
            converted = [status_name(pb.JobStatus.Value(v)) for v in values]
        elif field.enum_type is not None:
            continue
        elif field.message_type is not None and field.message_type.full_name == "google.protobuf.Struct":
            converted = [plain_struct(m) for m in messages]
        elif field.message_type is not None and not field.message_type.full_name.startswith("google.protobuf."):
            converted = [_humanise(m, v) for m, v in zip(messages, values, strict=True)]
        else:
            continue
        data[name] = converted if isinstance(value, list) else converted[0]
    return data


def message_to_dict(message: Message) -> dict[str, Any]:
    """A jobsd.v1 message as JSON-ready data: proto field names, numbers, status names.

    Integers are numbers (also the whole numbers inside params and results), statuses are "waiting", ...
    """
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return _humanise(message, data)
