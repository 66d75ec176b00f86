"""A data plane of the older single-file layout (one schema per workspace in `dataplane.duckdb`) moves into one
file per workspace when the plane opens, losing nothing: tables, types, NOT NULL, quarantine, query results."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from jobsd.domain.clock import ManualClock, to_micros
from jobsd.executors.dataplane import DataPlane
from jobsd.executors.runner import DATAPLANE_DIR, LEGACY_DATAPLANE_FILE, ExecutorRunner
from jobsd.settings import Settings

A = "8f7d2c1e-0000-4000-8000-0000000000a1"
B = "8f7d2c1e-0000-4000-8000-0000000000b2"


def write_legacy_plane(path: Path, clock: ManualClock) -> None:
    """What the single-file data plane wrote: schema per workspace, registries with a workspace column."""
    now = to_micros(clock.now())

    def meta(columns: list[dict[str, str]], type_: str = "csv") -> str:
        return json.dumps(
            {"id": "t_x", "columns": columns, "created_at": now, "updated_at": now, "type": type_, "description": ""}
        )

    conn = duckdb.connect(str(path))
    conn.execute("CREATE SCHEMA _jobsd")
    conn.execute("CREATE TABLE _jobsd.datasources (workspace VARCHAR, name VARCHAR, meta VARCHAR)")
    conn.execute("CREATE TABLE _jobsd.results (workspace VARCHAR, name VARCHAR, created_at BIGINT)")
    conn.execute("CREATE SCHEMA _jobsd_staging")
    conn.execute("CREATE TABLE _jobsd_staging.leftover (a INT)")
    for workspace, rows in ((A, 3), (B, 2)):
        conn.execute(f'CREATE SCHEMA "{workspace}"')
        conn.execute(f'CREATE TABLE "{workspace}".events (id BIGINT NOT NULL, label VARCHAR, amount DOUBLE)')
        conn.execute(
            f"INSERT INTO \"{workspace}\".events SELECT i, 'w{workspace[-2:]}-' || i, i * 1.5 FROM range({rows}) t(i)"
        )
        columns = [
            {"name": "id", "type": "Int64"},
            {"name": "label", "type": "Nullable(String)"},
            {"name": "amount", "type": "Nullable(Float64)"},
        ]
        conn.execute("INSERT INTO _jobsd.datasources VALUES (?, 'events', ?)", [workspace, meta(columns)])
    conn.execute(f'CREATE TABLE "{A}".events_quarantine (id VARCHAR, c__error VARCHAR)')
    conn.execute(f"INSERT INTO \"{A}\".events_quarantine VALUES ('x', 'column \"id\": cannot parse')")
    conn.execute(f'CREATE TABLE "{A}"._query_abc AS SELECT 42 AS answer')
    conn.execute("INSERT INTO _jobsd.results VALUES (?, '_query_abc', ?)", [A, now])
    conn.close()


async def test_a_single_file_plane_moves_into_one_file_per_workspace(tmp_path: Path) -> None:
    clock = ManualClock()
    legacy = tmp_path / LEGACY_DATAPLANE_FILE
    write_legacy_plane(legacy, clock)

    async with DataPlane(tmp_path / DATAPLANE_DIR, clock=clock, legacy_file=legacy) as plane:
        assert plane.workspaces() == [A, B]
        for workspace, rows in ((A, 3), (B, 2)):
            events = await plane.get_datasource("events", workspace=workspace)
            assert [(c.name, c.type.name) for c in events.columns] == [
                ("id", "Int64"),
                ("label", "Nullable(String)"),
                ("amount", "Nullable(Float64)"),
            ]
            stored = await plane.query("SELECT id, label FROM events ORDER BY id", workspace=workspace)
            assert stored == [(i, f"w{workspace[-2:]}-{i}") for i in range(rows)]
            assert (await plane.stats("events", workspace=workspace)).row_count == rows
        assert await plane.query("SELECT count(*) FROM events_quarantine", workspace=A) == [(1,)]
        assert await plane.query("SELECT answer FROM _query_abc", workspace=A) == [(42,)]
        # The result is still pruned once its job is gone.
        assert await plane.prune_results(clock.now().replace(year=clock.now().year + 1)) == 1
        # B sees nothing of A.
        tables = "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
        assert await plane.query(tables, workspace=B) == [("events",)]

    assert not legacy.exists()
    assert (tmp_path / f"{LEGACY_DATAPLANE_FILE}.migrated").is_file()
    # Opening again does not migrate twice, and the data is still there.
    async with DataPlane(tmp_path / DATAPLANE_DIR, clock=clock, legacy_file=legacy) as again:
        assert (await again.stats("events", workspace=A)).row_count == 3


async def test_a_migration_that_stopped_midway_is_finished_on_the_next_start(tmp_path: Path) -> None:
    clock = ManualClock()
    legacy = tmp_path / LEGACY_DATAPLANE_FILE
    write_legacy_plane(legacy, clock)
    root = tmp_path / DATAPLANE_DIR
    root.mkdir()
    # A half-written file of a run that died: it is redone, not trusted.
    (root / f"{B}.duckdb.partial").write_bytes(b"not a database")

    async with DataPlane(root, clock=clock, legacy_file=legacy) as plane:
        assert (await plane.stats("events", workspace=B)).row_count == 2
    assert not (root / f"{B}.duckdb.partial").exists()


async def test_the_runner_migrates_the_data_dir_of_an_older_make_run(tmp_path: Path) -> None:
    clock = ManualClock()
    write_legacy_plane(tmp_path / LEGACY_DATAPLANE_FILE, clock)
    runner = ExecutorRunner(Settings(data_dir=str(tmp_path)), "127.0.0.1:1", "token", clock=clock, wait_seconds=0.1)
    await runner.start()
    try:
        assert (await runner.dataplane.stats("events", workspace=A)).row_count == 3
    finally:
        await runner.stop()
