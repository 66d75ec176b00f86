"""The populateview executor: partition by partition, every query reported, cancellable between partitions."""

from __future__ import annotations

from typing import Any

import pytest

from jobsd.executors.dataplane import DataPlane
from jobsd.executors.errors import ExecutionCancelled, ExecutionFailed
from jobsd.executors.populate_view import run_populate

from .conftest import WORKSPACE, RecordingContext, make_job

DAYS = 4
ROWS_PER_DAY = 25
SQL = "SELECT day, count(*) AS n, sum(amount) AS total FROM events GROUP BY day"


async def seed_events(plane: DataPlane) -> None:
    await plane.create_datasource("events", [("day", "Date"), ("amount", "Int64")], workspace=WORKSPACE)

    def insert(session: Any) -> None:
        session.execute(
            f"INSERT INTO events SELECT DATE '2024-01-01' + CAST(i % {DAYS} AS INTEGER), i "
            f"FROM range({DAYS * ROWS_PER_DAY}) t(i)"
        )

    await plane.run(WORKSPACE, insert)


def populate_job(**params: Any) -> RecordingContext:
    fields = {"sql": SQL, "source": "events", "partition_by": "day", **params}
    return RecordingContext(make_job("populateview", datasource="daily", params=fields))


async def test_one_query_per_partition_each_reported_done_and_progress_reaches_100(
    plane: DataPlane, clock: Any
) -> None:
    await seed_events(plane)
    ctx = populate_job()
    await run_populate(ctx, plane, clock=clock)

    queries = ctx.figures["queries"]
    assert len(queries) == DAYS
    assert all(q["status"] == "done" for q in queries)
    assert all(len(q["query_id"]) == 26 for q in queries)
    assert len({q["query_id"] for q in queries}) == DAYS
    # Each query went waiting -> working -> done, and progress rose with each one.
    first_seen = [r["queries"][0]["status"] for r in ctx.reports if "queries" in r]
    assert first_seen[:3] == ["waiting", "working", "done"]
    percentages = [r["progress_percentage"] for r in ctx.reports if "progress_percentage" in r]
    assert percentages == [0.0, 25.0, 50.0, 75.0, 100.0, 100.0]
    assert ctx.figures["statistics"]["row_count"] == DAYS
    rows = await plane.query("SELECT n FROM daily ORDER BY day", workspace=WORKSPACE)
    assert rows == [(ROWS_PER_DAY,)] * DAYS
    target = await plane.get_datasource("daily", workspace=WORKSPACE)
    assert [c.name for c in target.columns] == ["day", "n", "total"]
    stats = await plane.stats("daily", workspace=WORKSPACE)
    assert ctx.figures["result"] == {"written_rows": DAYS, "datasource": target.job_json(stats)}


async def test_without_partition_by_it_is_one_query(plane: DataPlane, clock: Any) -> None:
    await seed_events(plane)
    ctx = populate_job(partition_by="")
    await run_populate(ctx, plane, clock=clock)
    assert [q["status"] for q in ctx.figures["queries"]] == ["done"]
    assert ctx.figures["statistics"]["row_count"] == DAYS


async def test_cancel_between_partitions_keeps_the_finished_ones(plane: DataPlane, clock: Any) -> None:
    await seed_events(plane)

    def cancel_after_first_done(ctx: RecordingContext, update: dict[str, Any]) -> None:
        # What a heartbeat answer does when a user cancels while the first partition runs.
        if update.get("queries", [{}])[0].get("status") == "done":
            ctx.request_cancel()

    ctx = RecordingContext(
        make_job("populateview", datasource="daily", params={"sql": SQL, "source": "events", "partition_by": "day"}),
        on_report=cancel_after_first_done,
    )
    with pytest.raises(ExecutionCancelled):
        await run_populate(ctx, plane, clock=clock)

    assert [q["status"] for q in ctx.figures["queries"]] == ["done", "waiting", "waiting", "waiting"]
    assert ctx.figures["progress_percentage"] == 25.0
    # The finished partition stays, so the target changed: its figures and object are reported as they are now.
    assert ctx.figures["statistics"]["row_count"] == 1
    assert ctx.figures["result"]["written_rows"] == 1
    assert ctx.figures["result"]["datasource"]["statistics"] == ctx.figures["statistics"]
    assert await plane.query("SELECT day, n FROM daily", workspace=WORKSPACE) == [
        (await plane.query("SELECT min(day) FROM events", workspace=WORKSPACE))[0] + (ROWS_PER_DAY,)
    ]


async def test_an_existing_target_is_appended_to(plane: DataPlane, clock: Any) -> None:
    await seed_events(plane)
    await run_populate(populate_job(), plane, clock=clock)
    ctx = populate_job()
    await run_populate(ctx, plane, clock=clock)
    assert ctx.figures["statistics"]["row_count"] == 2 * DAYS


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sql": "SELECT nope FROM events"}, 'Invalid SQL in params.sql: Binder Error: Referenced column "nope"'),
        ({"sql": "SELECT 1; DROP TABLE events"}, "expected one SELECT query, got 2 statements"),
        ({"sql": "DELETE FROM events"}, "expected a SELECT query, got a DELETE statement"),
        ({"source": "missing"}, 'Data source "missing" not found (params.source)'),
        ({"partition_by": "no_such_column"}, "Invalid SQL in params.partition_by"),
        ({"partition_by": "day); DROP TABLE events; --"}, "Invalid SQL in params.partition_by"),
        ({"partition_by": "amount"}, "params.partition_by gives 100 partitions, at most"),
    ],
)
async def test_bad_input_fails_before_writing_anything(
    plane: DataPlane, clock: Any, params: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("jobsd.executors.populate_view.MAX_PARTITIONS", 50)
    await seed_events(plane)
    with pytest.raises(ExecutionFailed) as failure:
        await run_populate(populate_job(**params), plane, clock=clock)
    assert message in failure.value.message
    assert await plane.find_datasource("daily", workspace=WORKSPACE) is None
    assert (await plane.stats("events", workspace=WORKSPACE)).row_count == DAYS * ROWS_PER_DAY
