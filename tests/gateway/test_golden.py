"""Golden tests: the JSON of every kind has the keys, types and values of the reference document's examples.

Each golden file in golden/ holds an example (verbatim from the reference where it has one, else built from
docs/contract.md#rest-gateway). The test drives a real job into the same state with the same inputs through the
Workers RPCs, then compares key sets and value types recursively, and every value that does not depend on the
clock or on ids.
Run against the in-process gateway and the standalone one over gRPC.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from jobsd_client import pb

from .support import TIMESTAMP, Gateway, load_golden, struct

# Values that differ run to run; they are checked for format and consistency instead.
_VARYING = {"id", "job_id", "import_id", "created_at", "updated_at", "started_at"}


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    raise AssertionError(f"not a JSON scalar: {value!r}")


def shape(value: Any, opaque: frozenset[str] = frozenset()) -> Any:
    """Key sets and value types, recursively; keys in `opaque` only by type."""
    if isinstance(value, dict):
        return {k: ("object" if k in opaque else shape(v)) for k, v in value.items()}
    if isinstance(value, list):
        return sorted({json.dumps(shape(item), sort_keys=True) for item in value})
    return _type(value)


def assert_matches_golden(body: dict[str, Any], golden: dict[str, Any]) -> None:
    expected = {**golden["example"], **golden.get("spec_additions", {})}
    opaque = frozenset(golden.get("opaque", ()))
    assert shape(body, opaque) == shape(expected, opaque)
    for key, value in expected.items():
        if key not in _VARYING and key not in opaque:
            assert body[key] == value, key
    assert body["job_id"] == body["id"]
    for key in ("created_at", "updated_at", "started_at"):
        if body.get(key) is not None:
            assert TIMESTAMP.match(body[key]), (key, body[key])


def _progress(example: dict[str, Any]) -> pb.ProgressUpdate:
    """The worker's final report that produces the example's figures."""
    progress = pb.ProgressUpdate()
    if example.get("statistics"):
        progress.statistics.CopyFrom(pb.Statistics(**example["statistics"]))
    if example.get("processed_data"):
        progress.processed_data.CopyFrom(pb.ProcessedData(**example["processed_data"]))
    for key in ("quarantine_rows", "invalid_lines"):
        if key in example:
            setattr(progress, key, example[key])
    if "result" in example:
        progress.result.CopyFrom(struct(example["result"]))
    if example.get("rows_affected") is not None:
        progress.result.CopyFrom(struct({"rows_affected": example["rows_affected"]}))
    return progress


def _create_fields(example: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {"datasource": example["datasource"]} if example.get("datasource") else {}
    for key in ("url", "mode", "pipe_id", "pipe_name", "query_id", "query_sql"):
        if example.get(key) is not None:
            fields[key] = example[key]
    if "delete_condition" in example:
        fields["params"] = {"delete_condition": example["delete_condition"]}
    if example["kind"] == "populateview":
        fields["params"] = {"sql": "SELECT * FROM source"}  # what the populate runs; not shown in the detail
    return fields


@pytest.mark.parametrize("kind", ["import", "copy", "query", "delete_data", "sink"])
async def test_detail_of_a_finished_job_matches_the_golden_example(any_gw: Gateway, kind: str) -> None:
    golden = load_golden(kind)
    example = golden["example"]
    created = await any_gw.create(kind, **_create_fields(example))
    any_gw.clock.advance(timedelta(seconds=1))
    claim = await any_gw.claim(kind)
    for _ in range(2):  # 54 s of work, heartbeating within the 30 s lease
        any_gw.clock.advance(timedelta(seconds=27))
        await any_gw.heartbeat(claim, pb.ProgressUpdate())
    await any_gw.finish(claim, progress=_progress(example))

    reply = await any_gw.get(f"/v0/jobs/{created.id}")

    assert reply.status == 200, reply.body
    assert reply.headers["Content-Type"].startswith("application/json")
    assert_matches_golden(reply.body, golden)
    assert reply.body["id"] == created.id
    if kind == "import":
        assert reply.body["import_id"] == created.id
    # The seed: once done, updated_at - created_at is the total time including the queue.
    assert (reply.body["created_at"], reply.body["started_at"], reply.body["updated_at"]) == (
        "2026-06-01 12:00:00.000000",
        "2026-06-01 12:00:01.000000",
        "2026-06-01 12:00:55.000000",
    )


async def test_populate_cancelled_while_working_answers_the_golden_cancelling_example(any_gw: Gateway) -> None:
    golden = load_golden("populateview")
    example = golden["example"]
    created = await any_gw.create("populateview", **_create_fields(example))
    claim = await any_gw.claim("populateview")
    queries = [pb.QueryProgress(**q) for q in example["queries"]]
    await any_gw.heartbeat(claim, pb.ProgressUpdate(queries=queries, progress_percentage=50.0))

    reply = await any_gw.post(f"/v0/jobs/{created.id}/cancel")

    assert reply.status == 200, reply.body
    assert_matches_golden(reply.body, golden)
    # The same shape when read back.
    assert_matches_golden((await any_gw.get(f"/v0/jobs/{created.id}")).body, golden)


async def test_import_shows_null_started_at_and_statistics_until_it_runs(any_gw: Gateway) -> None:
    example = load_golden("import")["example"]
    created = await any_gw.create("import", **_create_fields(example))

    waiting = (await any_gw.get(f"/v0/jobs/{created.id}")).body
    assert (waiting["status"], waiting["started_at"], waiting["statistics"]) == ("waiting", None, None)
    assert waiting["is_cancellable"] is True
    assert set(waiting) == set(example)

    await any_gw.claim("import")
    working = (await any_gw.get(f"/v0/jobs/{created.id}")).body
    assert working["status"] == "working"
    assert TIMESTAMP.match(working["started_at"])
    assert working["statistics"] is None
    assert working["is_cancellable"] is False  # imports stop only while waiting


async def test_list_items_match_the_golden_example_newest_first(any_gw: Gateway) -> None:
    golden = load_golden("list")
    older, newer = golden["example"]["jobs"][1], golden["example"]["jobs"][0]
    failing = await any_gw.create("import", datasource=older["datasource"])
    await any_gw.finish(await any_gw.claim("import"), status=pb.JOB_STATUS_ERROR, error="bad CSV")
    any_gw.clock.advance(timedelta(seconds=24))
    succeeding = await any_gw.create("import", datasource=newer["datasource"])
    await any_gw.finish(await any_gw.claim("import"))

    reply = await any_gw.get("/v0/jobs")

    assert reply.status == 200
    assert set(reply.body) == {"jobs"}  # no `next`: everything fits in one page
    items = reply.body["jobs"]
    assert [item["id"] for item in items] == [succeeding.id, failing.id]
    additions = golden["spec_additions"]
    for item, example in zip(items, (newer, older), strict=True):
        assert shape(item) == shape({**example, **additions})
        assert (item["kind"], item["status"], item["datasource"]) == (
            example["kind"],
            example["status"],
            example["datasource"],
        )
        assert item["job_url"] == f"{any_gw.base}/v0/jobs/{item['id']}"
        assert item["is_cancellable"] is False
        assert TIMESTAMP.match(item["created_at"]) and TIMESTAMP.match(item["updated_at"])


async def test_list_items_carry_pipe_fields_only_when_the_job_has_a_pipe(any_gw: Gateway) -> None:
    populate = await any_gw.create("populateview")
    imported = await any_gw.create("import")

    items = {item["id"]: item for item in (await any_gw.get("/v0/jobs")).body["jobs"]}

    assert (items[populate.id]["pipe_id"], items[populate.id]["pipe_name"]) == ("t_pipe", "top_product_per_day")
    assert "pipe_id" not in items[imported.id] and "pipe_name" not in items[imported.id]


async def test_failed_import_detail_carries_the_error(any_gw: Gateway) -> None:
    created = await any_gw.create("import")
    progress = pb.ProgressUpdate(errors=["line 3: expected 4 columns, got 2"], invalid_lines=1)
    await any_gw.finish(await any_gw.claim("import"), status=pb.JOB_STATUS_ERROR, error="bad CSV", progress=progress)

    body = (await any_gw.get(f"/v0/jobs/{created.id}")).body

    assert (body["status"], body["error"], body["errors"]) == (
        "error",
        "bad CSV",
        ["line 3: expected 4 columns, got 2"],
    )
    assert body["invalid_lines"] == 1
