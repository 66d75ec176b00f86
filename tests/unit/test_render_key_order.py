"""The REST JSON of a job is the same bytes in every process: objects that come from a Struct (data source,
params, result) do not show protobuf's per-process map order."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from jobsd.gateway import render
from jobsd_client import pb

ROOT = Path(__file__).resolve().parents[2]

# The reference's data source object (an import job's detail), with keys in a scrambled order and two extra ones.
_DATASOURCE: dict[str, Any] = {
    "type": "csv",
    "used_by": [],
    "zeta_extra": {"b": 1, "a": 2},
    "engine": {"sorting_key": "date", "engine": "MergeTree", "partition_key": "toYear(date)"},
    "version": 0,
    "name": "events",
    "headers": {"cached_delimiter": ","},
    "tags": {},
    "alpha_extra": [{"y": 1, "x": 2}],
    "created_at": "2024-07-22 11:47:51.807384",
    "project": None,
    "id": "t_caf95c54174e48f488ea65d181eb5b75",
    "cluster": "default",
    "shared_with": [],
    "replicated": True,
    "updated_at": "2024-07-22 11:48:52.726243",
    "description": "",
    "last_commit": {"status": "changed", "path": "", "content_sha": ""},
    "errors_discarded_at": None,
    "statistics": {"row_count": 5, "bytes": 10},
}


def _job() -> pb.Job:
    job = pb.Job(id="1f6a5a3d-cfcb-4244-ba0b-0bfa1d1752fb", kind="import", status=pb.JOB_STATUS_DONE)
    job.created_at.FromMicroseconds(1_700_000_000_000_000)
    job.datasource.update(_DATASOURCE)
    return job


_RENDER = """
import base64, sys
import orjson
from jobsd.gateway import render
from jobsd_client import pb
job = pb.Job.FromString(base64.b64decode(sys.argv[1]))
sys.stdout.write(base64.b64encode(orjson.dumps(render.job_detail(job))).decode())
"""


def test_a_job_detail_is_the_same_bytes_in_every_process() -> None:
    wire = base64.b64encode(_job().SerializeToString()).decode()
    outputs = {
        subprocess.run(
            [sys.executable, "-c", _RENDER, wire], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
        ).stdout
        for _ in range(4)
    }
    assert len(outputs) == 1, "the detail differed between processes"


def test_the_data_source_shows_the_reference_order_then_other_keys_by_name_sorted_within() -> None:
    shown = orjson.loads(orjson.dumps(render.job_detail(_job())))["datasource"]
    assert list(shown) == [
        "id",
        "name",
        "cluster",
        "tags",
        "created_at",
        "updated_at",
        "statistics",
        "replicated",
        "version",
        "project",
        "headers",
        "shared_with",
        "engine",
        "description",
        "used_by",
        "last_commit",
        "errors_discarded_at",
        "type",
        "alpha_extra",
        "zeta_extra",
    ]
    assert list(shown["engine"]) == ["engine", "partition_key", "sorting_key"]
    assert list(shown["alpha_extra"][0]) == ["x", "y"]
    assert shown == {**_DATASOURCE, "version": 0, "statistics": {"row_count": 5, "bytes": 10}}
