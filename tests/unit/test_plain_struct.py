"""plain_struct / plain_value: every Struct value kind, nested, with the exact Python types the REST JSON relies on."""

from __future__ import annotations

import math
from typing import Any

from google.protobuf import struct_pb2

from jobsd.gateway import render
from jobsd_client import pb
from jobsd_client.convert import plain_struct, plain_value


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _typed(value: Any) -> Any:
    """The value with its types spelled out, so 4 and 4.0 (or True and 1) never compare equal."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, value)


def test_every_kind_nested_keeps_its_type() -> None:
    plain = plain_struct(
        _struct(
            {
                "s": "x",
                "empty": "",
                "whole": 4,
                "half": 4.5,
                "negative": -3,
                "limit": 2**53,
                "past": 2**53 + 2,
                "huge": 1e300,
                "yes": True,
                "no": False,
                "null": None,
                "list": [1, "a", None, True, [2.5, [3]], {"k": 1}],
                "none": [],
                "obj": {"deep": {"n": 7, "l": [None, False]}},
                "bare": {},
            }
        )
    )
    assert _typed(plain) == _typed(
        {
            "s": "x",
            "empty": "",
            "whole": 4,
            "half": 4.5,
            "negative": -3,
            "limit": 2**53,
            "past": float(2**53 + 2),
            "huge": 1e300,
            "yes": True,
            "no": False,
            "null": None,
            "list": [1, "a", None, True, [2.5, [3]], {"k": 1}],
            "none": [],
            "obj": {"deep": {"n": 7, "l": [None, False]}},
            "bare": {},
        }
    )


def test_non_finite_numbers_stay_floats_and_an_unset_value_is_none() -> None:
    assert plain_value(struct_pb2.Value(number_value=math.inf)) == math.inf
    assert math.isnan(plain_value(struct_pb2.Value(number_value=math.nan)))
    assert plain_value(struct_pb2.Value()) is None
    assert _typed(plain_value(struct_pb2.Value(number_value=-0.0))) == ("int", 0)


def test_a_missing_key_of_delete_data_renders_null_and_is_not_added() -> None:
    job = pb.Job(id="j", kind="delete_data", status=pb.JOB_STATUS_DONE)
    job.params.update({"delete_condition": "a > 1"})
    detail = render.job_detail(job)
    assert detail["delete_condition"] == "a > 1"
    assert detail["rows_affected"] is None
    assert "rows_affected" not in job.result.fields
    assert "datasource" not in job.result.fields


def test_the_reported_datasource_keeps_id_and_name_first() -> None:
    job = pb.Job(id="j", kind="import", status=pb.JOB_STATUS_DONE)
    job.datasource_ref.id, job.datasource_ref.name = "t_ref", "ref"
    job.result.update({"datasource": {"cluster": "c", "id": 3, "name": "plane", "version": 0}})
    detail = render.job_detail(job)["datasource"]
    assert list(detail)[:2] == ["id", "name"]
    assert detail == {"id": "t_ref", "name": "plane", "cluster": "c", "version": 0}
