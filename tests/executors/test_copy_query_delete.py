"""The copy, query and delete_data executors on a real data plane."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.domain.model import datasource_id_for
from jobsd.executors.background_query import run_query
from jobsd.executors.copy_data import run_copy
from jobsd.executors.dataplane import DataPlane, TableStats
from jobsd.executors.delete_data import run_delete
from jobsd.executors.errors import ExecutionCancelled, ExecutionFailed

from .conftest import WORKSPACE, RecordingContext, make_job

ROWS = 50


async def seed(plane: DataPlane) -> None:
    await plane.create_datasource("events", [("id", "Int64"), ("kind", "String")], workspace=WORKSPACE)

    def insert(session: Any) -> None:
        # kind is 'a' or 'bb': 8 + 1 or 8 + 2 bytes a row.
        session.execute(
            f"INSERT INTO events SELECT i, CASE WHEN i % 2 = 0 THEN 'a' ELSE 'bb' END FROM range({ROWS}) t(i)"
        )

    await plane.run(WORKSPACE, insert)


EVENTS_BYTES = ROWS * 8 + (ROWS // 2) * 1 + (ROWS // 2) * 2


async def test_copy_appends_and_replaces_with_measured_processed_data(plane: DataPlane) -> None:
    await seed(plane)
    sql = "SELECT id, kind FROM events WHERE kind = 'bb'"
    first = RecordingContext(make_job("copy", datasource="odd", params={"sql": sql}))
    await run_copy(first, plane)

    written_bytes = (ROWS // 2) * (8 + 2)
    assert first.figures["processed_data"] == {
        "read_rows": ROWS,
        "read_bytes": EVENTS_BYTES,
        "written_rows": ROWS // 2,
        "written_bytes": written_bytes,
    }
    assert first.figures["statistics"] == {"bytes": written_bytes, "row_count": ROWS // 2}
    odd = await plane.get_datasource("odd", workspace=WORKSPACE)
    assert first.figures["result"] == {"datasource": odd.job_json(TableStats(written_bytes, ROWS // 2))}
    assert (odd.id, odd.type) == (datasource_id_for(WORKSPACE, "odd"), "query")

    again = RecordingContext(make_job("copy", datasource="odd", query_sql=sql, mode="append"))
    await run_copy(again, plane)
    assert again.figures["statistics"]["row_count"] == ROWS
    assert again.figures["processed_data"]["written_bytes"] == written_bytes

    replace = RecordingContext(
        make_job("copy", datasource="odd", params={"sql": "SELECT 1 AS id, 'z' AS kind"}, mode="replace")
    )
    await run_copy(replace, plane)
    assert replace.figures["statistics"] == {"bytes": 9, "row_count": 1}
    assert replace.figures["result"]["datasource"]["statistics"] == {"bytes": 9, "row_count": 1}
    assert await plane.query("SELECT id, kind FROM odd", workspace=WORKSPACE) == [(1, "z")]


async def test_a_copy_cancelled_before_it_starts_writes_nothing(plane: DataPlane) -> None:
    await seed(plane)
    ctx = RecordingContext(make_job("copy", datasource="copied", params={"sql": "SELECT * FROM events"}))
    ctx.request_cancel()
    with pytest.raises(ExecutionCancelled):
        await run_copy(ctx, plane)
    assert await plane.find_datasource("copied", workspace=WORKSPACE) is None


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT * FROM nowhere", "Invalid SQL in params.sql: Catalog Error: Table with name nowhere does not exist"),
        ("SELECT id FROM events; DELETE FROM events", "expected one SELECT query, got 2 statements"),
        ("SELEC id FROM events", "Invalid SQL in params.sql: Parser Error"),
        ("SELECT 'x' AS colour", 'does not have a column with name "colour"'),
        ("SELECT * FROM other_workspace.events", "it may only read this workspace's data sources"),
    ],
)
async def test_a_bad_copy_fails_and_leaves_the_target_as_it_was(plane: DataPlane, sql: str, message: str) -> None:
    await seed(plane)
    before = await plane.stats("events", workspace=WORKSPACE)
    ctx = RecordingContext(make_job("copy", datasource="events", params={"sql": sql}, mode="replace"))
    with pytest.raises(ExecutionFailed) as failure:
        await run_copy(ctx, plane)
    assert message in failure.value.message
    assert await plane.stats("events", workspace=WORKSPACE) == before


async def test_query_keeps_the_result_and_reports_its_size(plane: DataPlane) -> None:
    await seed(plane)
    ctx = RecordingContext(
        make_job(
            "query", datasource=None, query_sql="SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind"
        )
    )
    await run_query(ctx, plane)

    # Two rows: ('a', 25) and ('bb', 25): text 1 + 2 bytes, counts 8 bytes each.
    assert ctx.figures["statistics"] == {"bytes": 3 + 16, "row_count": 2}
    result = ctx.figures["result"]
    assert result["columns"] == [{"name": "kind", "type": "Nullable(String)"}, {"name": "n", "type": "Nullable(Int64)"}]
    assert result["preview"] == [["a", ROWS // 2], ["bb", ROWS // 2]]
    kept = await plane.query(f'SELECT * FROM "{result["table"]}" ORDER BY kind', workspace=WORKSPACE)
    assert kept == [("a", ROWS // 2), ("bb", ROWS // 2)]
    # A result is not a data source.
    assert [d.name for d in await plane.list_datasources(workspace=WORKSPACE)] == ["events"]


async def test_a_query_with_bad_sql_fails_naming_the_problem(plane: DataPlane) -> None:
    await seed(plane)
    ctx = RecordingContext(make_job("query", datasource=None, params={"sql": "SELECT missing_column FROM events"}))
    with pytest.raises(ExecutionFailed) as failure:
        await run_query(ctx, plane)
    assert failure.value.message.startswith(
        'Invalid SQL in params.sql: Binder Error: Referenced column "missing_column"'
    )


async def test_delete_data_removes_the_matching_rows(plane: DataPlane, clock: ManualClock) -> None:
    await seed(plane)
    clock.advance(timedelta(seconds=30))
    ctx = RecordingContext(make_job("delete_data", params={"delete_condition": "kind = 'bb' AND id < 10"}))
    await run_delete(ctx, plane)

    after = TableStats(bytes=EVENTS_BYTES - 5 * 10, row_count=ROWS - 5)
    assert ctx.figures["statistics"] == {"bytes": after.bytes, "row_count": after.row_count}
    events = await plane.get_datasource("events", workspace=WORKSPACE)
    assert ctx.figures["result"] == {"rows_affected": 5, "datasource": events.job_json(after)}
    assert events.updated_at == clock.now() != events.created_at


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"params": {"delete_condition": "no_such_column = 1"}}, "Invalid SQL in delete_condition: Binder Error"),
        ({"params": {"delete_condition": "1=1); DROP TABLE events; --"}}, "it must be one boolean expression"),
        ({"params": {}}, "The job needs params.delete_condition"),
        ({"datasource": "missing", "params": {"delete_condition": "true"}}, 'Data source "missing" not found'),
    ],
)
async def test_a_bad_delete_fails_and_changes_nothing(plane: DataPlane, fields: dict[str, Any], message: str) -> None:
    await seed(plane)
    before = await plane.stats("events", workspace=WORKSPACE)
    with pytest.raises(ExecutionFailed) as failure:
        await run_delete(RecordingContext(make_job("delete_data", **fields)), plane)
    assert message in failure.value.message
    assert await plane.stats("events", workspace=WORKSPACE) == before


async def test_unknown_data_sources_fail_every_kind_that_reads_one(plane: DataPlane) -> None:
    with pytest.raises(ExecutionFailed, match="Table with name ghost does not exist"):
        await run_copy(RecordingContext(make_job("copy", datasource="t", params={"sql": "SELECT * FROM ghost"})), plane)
    with pytest.raises(ExecutionFailed, match="Table with name ghost does not exist"):
        await run_query(RecordingContext(make_job("query", params={"sql": "SELECT * FROM ghost"})), plane)
    assert await plane.list_datasources(workspace=WORKSPACE) == []


async def test_query_results_are_dropped_once_older_than_the_window(plane: DataPlane, clock: Any) -> None:
    await seed(plane)
    old = RecordingContext(make_job("query", datasource=None, params={"sql": "SELECT 1 AS one"}))
    await run_query(old, plane)
    clock.advance(timedelta(hours=47))
    recent = RecordingContext(make_job("query", datasource=None, params={"sql": "SELECT 2 AS two"}))
    await run_query(recent, plane)
    clock.advance(timedelta(hours=2))

    assert await plane.prune_results(clock.now() - timedelta(hours=48)) == 1
    tables = await plane.query(
        "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE '_query_%'", workspace=WORKSPACE
    )
    assert tables == [(recent.figures["result"]["table"],)]
