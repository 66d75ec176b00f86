"""The DuckDB data plane: data sources as tables, their metadata object, statistics, and what it refuses."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.domain.model import datasource_id_for
from jobsd.errors import AlreadyExists, InvalidArgument, NotFound
from jobsd.executors.copy_data import run_copy
from jobsd.executors.dataplane import STAGING_SCHEMA, DataPlane, TableStats
from jobsd.executors.import_data import run_import
from jobsd.executors.populate_view import run_populate
from jobsd.executors.runner import ExecutorRunner, data_dir_for
from jobsd.settings import Settings

from .conftest import LOCAL, WORKSPACE, FileServer, RecordingContext, make_job

OTHER_WORKSPACE = "8f7d2c1e-0000-4000-8000-000000000002"


async def test_a_data_source_renders_the_reference_metadata_shape(plane: DataPlane, clock: ManualClock) -> None:
    created = await plane.create_datasource(
        "events",
        [{"name": "day", "type": "Date"}, ("n", "Nullable(Int64)")],
        workspace=WORKSPACE,
        description="daily events",
        engine={"sorting_key": "day"},
    )
    shown = created.to_json()
    assert list(shown)[:18] == [
        "id",
        "name",
        "cluster",
        "tags",
        "created_at",
        "updated_at",
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
        "columns",
    ]
    assert shown["id"] == datasource_id_for(WORKSPACE, "events")
    assert shown["created_at"] == clock.now().strftime("%Y-%m-%d %H:%M:%S.%f")
    assert shown["engine"] == {"engine": "MergeTree", "partition_key": "", "sorting_key": "day"}
    assert shown["last_commit"] == {"content_sha": "", "status": "changed", "path": ""}
    assert shown["columns"] == [{"name": "day", "type": "Date"}, {"name": "n", "type": "Nullable(Int64)"}]
    assert shown["statistics"] is None


async def test_the_job_object_is_the_reference_shape_with_statistics_and_no_columns(plane: DataPlane) -> None:
    created = await plane.create_datasource("events", [("a", "Int64")], workspace=WORKSPACE)

    shown = created.job_json(TableStats(bytes=16, row_count=2))

    full = created.to_json(TableStats(bytes=16, row_count=2))
    assert shown == {k: v for k, v in full.items() if k != "columns"}
    assert list(shown)[-2:] == ["type", "statistics"]
    assert shown["statistics"] == {"bytes": 16, "row_count": 2}
    assert created.job_json()["statistics"] is None


async def test_every_data_source_the_plane_creates_has_the_id_jobs_carry(
    plane: DataPlane, files: FileServer, clock: ManualClock
) -> None:
    """Created over the API, by an import, a copy or a populate: one id per (workspace, name), the service's."""
    await plane.create_datasource("declared", [("a", "Int64")], workspace=WORKSPACE)
    await plane.create_datasource("declared", [("a", "Int64")], workspace=OTHER_WORKSPACE)
    url = files.write("imported.csv", "a\n1\n2\n")
    await run_import(RecordingContext(make_job("import", datasource="imported", url=url)), plane, policy=LOCAL)
    await run_copy(
        RecordingContext(make_job("copy", datasource="copied", params={"sql": "SELECT a FROM imported"})), plane
    )
    populate = make_job(
        "populateview", datasource="populated", params={"sql": "SELECT a FROM copied", "source": "copied"}
    )
    await run_populate(RecordingContext(populate), plane, clock=clock)

    sources = await plane.list_datasources(workspace=WORKSPACE)
    assert {s.name: s.id for s in sources} == {
        name: datasource_id_for(WORKSPACE, name) for name in ("copied", "declared", "imported", "populated")
    }
    other = await plane.get_datasource("declared", workspace=OTHER_WORKSPACE)
    assert other.id == datasource_id_for(OTHER_WORKSPACE, "declared") != datasource_id_for(WORKSPACE, "declared")


async def test_a_data_source_registered_with_another_id_reads_back_with_the_derived_one(plane: DataPlane) -> None:
    """Data planes written before ids were derived stored random ones: those are not what jobs carry."""
    await plane.create_datasource("events", [("a", "Int64")], workspace=WORKSPACE)

    def register_old_id(session: Any) -> None:
        with session.writing():
            session.execute(
                'UPDATE _jobsd.datasources SET meta = json_merge_patch(meta, \'{"id": "t_0123456789abcdef"}\')'
            )

    await plane.run(WORKSPACE, register_old_id)
    stored = await plane.query("SELECT meta->>'id' FROM _jobsd.datasources", workspace=WORKSPACE)
    assert stored == [("t_0123456789abcdef",)]
    assert (await plane.get_datasource("events", workspace=WORKSPACE)).id == datasource_id_for(WORKSPACE, "events")


async def test_data_sources_persist_and_stay_per_workspace(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "dataplane"
    async with DataPlane(path, clock=clock) as plane:
        first = await plane.create_datasource("events", [("a", "Int64")], workspace=WORKSPACE)
        await plane.create_datasource("events", [("b", "String")], workspace=OTHER_WORKSPACE)
    async with DataPlane(path, clock=clock) as reopened:
        again = await reopened.get_datasource("events", workspace=WORKSPACE)
        assert again.id == first.id
        assert [c.name for c in again.columns] == ["a"]
        other = await reopened.get_datasource("events", workspace=OTHER_WORKSPACE)
        assert [c.name for c in other.columns] == ["b"]
        assert [d.name for d in await reopened.list_datasources(workspace=WORKSPACE)] == ["events"]


async def test_stats_count_rows_and_value_bytes(plane: DataPlane) -> None:
    await plane.create_datasource("t", [("n", "Int32"), ("s", "Nullable(String)"), ("d", "Date")], workspace=WORKSPACE)

    def insert(session: Any) -> None:
        session.execute("INSERT INTO t VALUES (1, 'abc', DATE '2024-01-01'), (2, NULL, DATE '2024-01-02')")

    await plane.run(WORKSPACE, insert)
    stats = await plane.stats("t", workspace=WORKSPACE)
    assert (stats.row_count, stats.bytes) == (2, 2 * (4 + 4) + 3)


async def test_drop_removes_the_table_and_its_registration(plane: DataPlane) -> None:
    await plane.create_datasource("gone", [("a", "Int64")], workspace=WORKSPACE)
    await plane.drop("gone", workspace=WORKSPACE)
    assert await plane.find_datasource("gone", workspace=WORKSPACE) is None
    with pytest.raises(NotFound, match='Data source "gone" not found'):
        await plane.drop("gone", workspace=WORKSPACE)
    # The name is free again.
    await plane.create_datasource("gone", [("b", "String")], workspace=WORKSPACE)


@pytest.mark.parametrize(
    ("name", "columns", "field", "problem"),
    [
        ("1abc", [("a", "Int64")], "name", "is not a valid data source name"),
        ('x"; DROP TABLE y; --', [("a", "Int64")], "name", "is not a valid data source name"),
        ("x_quarantine", [("a", "Int64")], "name", "is reserved"),
        ("ok", [], "schema", "at least one column"),
        ("ok", [("a", "Decimal")], "schema[0]", "unknown type 'Decimal'"),
        ("ok", [("a", "Int64"), ("a", "String")], "schema[1]", "appears twice"),
        ("ok", [("", "Int64")], "schema[0]", "non-empty name"),
        ("ok", ["a Int64"], "schema[0]", "expected"),
    ],
)
async def test_bad_definitions_are_refused_naming_the_field(
    plane: DataPlane, name: str, columns: list[Any], field: str, problem: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await plane.create_datasource(name, columns, workspace=WORKSPACE)
    assert refused.value.field == field
    assert problem in refused.value.problem
    assert await plane.list_datasources(workspace=WORKSPACE) == []


async def test_a_name_is_created_once(plane: DataPlane) -> None:
    await plane.create_datasource("events", [("a", "Int64")], workspace=WORKSPACE)
    with pytest.raises(AlreadyExists):
        await plane.create_datasource("events", [("a", "Int64")], workspace=WORKSPACE)


async def test_writes_update_the_metadata_time(plane: DataPlane, clock: ManualClock, files: FileServer) -> None:
    created = await plane.create_datasource("events", [("a", "Int64")], workspace=WORKSPACE)
    clock.advance(timedelta(minutes=5))
    await run_import(RecordingContext(make_job("import", url=files.write("a.csv", "a\n1\n"))), plane, policy=LOCAL)
    changed = await plane.get_datasource("events", workspace=WORKSPACE)
    assert changed.created_at == created.created_at
    assert changed.updated_at == created.created_at + timedelta(minutes=5)


async def test_an_import_stopped_by_a_worker_shutdown_leaves_nothing_behind(
    plane: DataPlane, files: FileServer
) -> None:
    body = "n,label\n" + "".join(f"{i},label-{i}\n" for i in range(60_000))
    url = files.write("numbers.csv", body)
    started = asyncio.Event()
    ctx = RecordingContext(make_job("import", datasource="numbers", url=url), on_report=lambda *_: started.set())
    task = asyncio.create_task(run_import(ctx, plane, policy=LOCAL))
    await started.wait()  # the first batch is loaded: the import is mid-file
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await plane.find_datasource("numbers", workspace=WORKSPACE) is None
    staged = await plane.query(
        "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ?", [STAGING_SCHEMA], workspace=WORKSPACE
    )
    assert staged == [(0,)]


def test_the_data_directory_follows_the_settings(tmp_path: Path) -> None:
    assert data_dir_for(Settings(data_dir=str(tmp_path / "d"))) == tmp_path / "d"
    assert data_dir_for(Settings(store=f"sqlite:///{tmp_path}/x/jobsd.db")) == tmp_path / "x"
    assert data_dir_for(Settings(store="mongodb://127.0.0.1:1/jobsd")) == Path(".jobsd")


async def test_a_runner_stops_safely_twice_and_keeps_its_plane_closed(tmp_path: Path) -> None:
    runner = ExecutorRunner(Settings(data_dir=str(tmp_path)), "127.0.0.1:1", "token", wait_seconds=0.1)
    assert runner.dataplane.root == tmp_path / "dataplane"
    await runner.start()
    await runner.stop()
    await runner.stop()
    with pytest.raises(RuntimeError, match="not open"):
        await runner.dataplane.list_datasources(workspace=WORKSPACE)
