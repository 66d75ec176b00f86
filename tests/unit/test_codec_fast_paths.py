"""The hand-written fast paths of the hot code give what the library calls they replaced give: Struct requests
as `json_format.MessageToDict` reads them, `model.evolve` as `dataclasses.replace` (hypothesis), `model.builder`'s
constructors as the frozen classes' own, ids as `uuid.uuid4` made them."""

from __future__ import annotations

import dataclasses
import math
import uuid
from datetime import UTC, datetime
from typing import Any
from unittest import mock

import pytest
from google.protobuf import json_format, struct_pb2, timestamp_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from jobsd.api.codec import _set_micros, created_result_bytes, length_delimited, struct_to_dict
from jobsd.domain.clock import from_micros, to_micros
from jobsd.domain.model import Job, JobStatus, LogEntry, builder, evolve, new_job, new_log_entry
from jobsd.domain.validation import NewJob, new_spec
from jobsd.errors import InvalidArgument
from jobsd.service import jobs
from jobsd_client import pb
from tests.support.jobs import waiting_job

_scalars = st.none() | st.booleans() | st.text(max_size=8) | st.floats(allow_nan=False, allow_infinity=False)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=6), _json, max_size=6))
def test_struct_to_dict_reads_a_struct_as_message_to_dict_does(value: dict[str, Any]) -> None:
    request = pb.CreateJobRequest(kind="copy")
    request.params.SetInParent()
    request.params.update(value)
    assert struct_to_dict(request, "params") == json_format.MessageToDict(request.params)


def test_struct_to_dict_is_none_for_an_unset_struct_and_empty_for_an_empty_one() -> None:
    request = pb.CreateJobRequest(kind="copy")
    assert struct_to_dict(request, "datasource") is None
    request.datasource.SetInParent()
    assert struct_to_dict(request, "datasource") == {}


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_number_json_cannot_carry_is_refused_naming_the_field(number: float) -> None:
    request = pb.CreateJobRequest(kind="copy")
    request.datasource.update({"name": "t", "nested": {"list": [1, number]}})
    with pytest.raises(InvalidArgument) as refused:
        struct_to_dict(request, "datasource")
    assert refused.value.field == "datasource"
    assert "finite" in refused.value.problem
    with pytest.raises(InvalidArgument) as refused:
        struct_to_dict(request, "datasource", "progress.result")
    assert refused.value.field == "progress.result"


_T0 = datetime(2026, 6, 1, tzinfo=UTC)
_JOB = waiting_job(_T0, id="j", workspace_id="w", kind="copy", concurrency_key="copy:w:t", datasource={"name": "t"})
_CHANGES = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(list(JobStatus)),
        "revision": st.integers(1, 10**9),
        "updated_at": st.datetimes(timezones=st.just(UTC)),
        "lease_token": st.none() | st.text(max_size=8),
        "progress_percentage": st.floats(0, 100),
        "errors": st.tuples(st.text(max_size=5)),
        "expires_at": st.none() | st.datetimes(timezones=st.just(UTC)),
    },
)


@settings(max_examples=200, deadline=None)
@given(_CHANGES)
def test_evolve_makes_the_job_dataclasses_replace_makes(changes: dict[str, Any]) -> None:
    evolved = evolve(_JOB, **changes)
    assert evolved == dataclasses.replace(_JOB, **changes)
    assert type(evolved) is Job
    assert _JOB.revision == 1  # the original is untouched


def test_evolve_refuses_a_field_a_job_does_not_have() -> None:
    with pytest.raises(TypeError, match="statuz"):
        evolve(_JOB, statuz=JobStatus.DONE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolve(_JOB).status = JobStatus.DONE  # type: ignore[misc]


def test_a_struct_number_stays_a_float() -> None:
    request = pb.CreateJobRequest(kind="copy")
    request.params.update({"n": 4})
    converted = struct_to_dict(request, "params")
    assert converted == {"n": 4.0} and isinstance(converted["n"], float)
    assert struct_pb2.Value(number_value=4).number_value == converted["n"]


def test_a_builder_makes_the_frozen_class_itself() -> None:
    fields = {f.name: getattr(_JOB, f.name) for f in dataclasses.fields(Job)}
    built = new_job(**fields)
    assert type(built) is Job and built == Job(**fields) == _JOB and hash(built.id) == hash(_JOB.id)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.revision = 2  # type: ignore[misc]
    # Defaults and factories as the class has them: a fresh dict per job, never one shared.
    short = {name: fields[name] for name in ("id", "workspace_id", "kind", "status", "created_at", "updated_at")}
    a = new_job(**short, revision=1, status_revision=1, concurrency_key="k", expires_at=None)
    b = Job(**short, revision=1, status_revision=1, concurrency_key="k", expires_at=None)
    assert a == b and a.params == {} and a.params is not new_job(**fields).params and a.result is not b.result
    spec = new_spec(kind="copy", url="u")
    assert type(spec) is NewJob and spec == NewJob(kind="copy", url="u")
    entry: dict[str, Any] = {
        "job_id": "j",
        "job_type": "copy",
        "status": "waiting",
        "error": None,
        "workspace_id": "w",
        "request_id": "r",
        "pipe_id": None,
        "datasource_id": None,
        "created_at": _T0,
        "started_at": None,
        "updated_at": _T0,
        "job_metadata": {"a": 1},
        "revision": 1,
    }
    made = new_log_entry(**entry)
    assert type(made) is LogEntry and made == LogEntry(**entry)


def test_a_builder_refuses_a_class_without_slots() -> None:
    @dataclasses.dataclass(frozen=True)
    class Loose:
        x: int

    with pytest.raises(TypeError, match="Loose"):
        builder(Loose)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.integers(0, 253_402_300_799_999))
def test_ids_are_made_as_uuid4_and_the_ulid_loop_made_them(raw: bytes, millis: int) -> None:
    made = uuid.UUID(bytes=raw, version=4)
    with mock.patch("os.urandom", lambda n: raw):
        assert jobs._new_job_id() == str(made)
        assert jobs._uuid4_bytes().hex() == made.hex
        query_id = jobs._new_query_id(from_micros(millis * 1000))
    value, digits = millis << 80 | int.from_bytes(made.bytes[:10], "big"), []
    for _ in range(26):
        value, rest = divmod(value, 32)
        digits.append("0123456789ABCDEFGHJKMNPQRSTVWXYZ"[rest])
    assert query_id == "".join(reversed(digits))


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 0x3FFD, 0x3FFE, 0x3FFF, 0x4000, 0x4001, 70_000])
def test_a_created_result_is_framed_as_the_nested_length_delimited_fields(size: int) -> None:
    wire = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert created_result_bytes(wire) == length_delimited(1, length_delimited(1, wire))
    parsed = pb.CreateJobsResponse.FromString(created_result_bytes(pb.Job(id="x" * size).SerializeToString()))
    assert parsed.results[0].job.id == "x" * size


@settings(max_examples=500, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_a_time_is_set_as_from_microseconds_sets_it(when: datetime) -> None:
    expected, made = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    expected.FromMicroseconds(to_micros(when))
    _set_micros(made, to_micros(when))
    assert made.SerializeToString() == expected.SerializeToString()
