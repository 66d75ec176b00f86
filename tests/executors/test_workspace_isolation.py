"""One DuckDB file per workspace: what a workspace's connection can reach, and the one SQL checker in front of it.

The first tests run SQL on a workspace's session *without* the checker, to show that isolation holds by
construction; the checker tests then show the second wall and its errors, for every SQL-bearing job field.
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Any

import duckdb
import pytest

from jobsd.domain.clock import ManualClock
from jobsd.executors.background_query import run_query
from jobsd.executors.copy_data import run_copy
from jobsd.executors.dataplane import DataPlane, Session
from jobsd.executors.delete_data import run_delete
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.populate_view import run_populate

from .conftest import WORKSPACE, RecordingContext, make_job


def _insert(session: Session, n: int) -> Any:
    return session.execute("INSERT INTO t VALUES (?)", [n])


OTHER = "8f7d2c1e-0000-4000-8000-00000000000b"
SECRET = "other-workspace-secret-row"


async def seed_two_workspaces(plane: DataPlane) -> None:
    await plane.create_datasource("events", [("id", "Int64"), ("day", "Date")], workspace=WORKSPACE)
    await plane.create_datasource("private_notes", [("note", "String")], workspace=OTHER)

    def mine(session: Session) -> None:
        session.execute("INSERT INTO events SELECT i, DATE '2024-01-01' + CAST(i % 3 AS INTEGER) FROM range(9) t(i)")

    def theirs(session: Session) -> None:
        session.execute("INSERT INTO private_notes VALUES (?)", [SECRET])

    await plane.run(WORKSPACE, mine)
    await plane.run(OTHER, theirs)


def everything_in(result: Any) -> str:
    return repr(result)


CATALOG_QUERIES = [
    "SELECT table_name, estimated_size FROM duckdb_tables()",
    "SELECT table_name, column_name FROM duckdb_columns()",
    "SELECT table_schema, table_name FROM information_schema.tables",
    "SELECT table_name, column_name FROM information_schema.columns",
    "SELECT schema_name, database_name FROM duckdb_schemas()",
    "SELECT database_name FROM duckdb_databases()",
    "SELECT * FROM pragma_table_info('events')",
    "SELECT name, meta FROM _jobsd.datasources",
]


async def test_catalog_functions_on_a_workspace_connection_list_only_its_own_objects(plane: DataPlane) -> None:
    await seed_two_workspaces(plane)
    for sql in CATALOG_QUERIES:
        shown = everything_in(await plane.query(sql, workspace=WORKSPACE))
        assert shown != "[]", sql  # it does show the workspace's own objects
        assert OTHER not in shown, sql
        assert "private_notes" not in shown, sql
        assert SECRET not in shown, sql


async def test_another_workspace_s_table_is_not_in_the_catalog_at_all(plane: DataPlane) -> None:
    await seed_two_workspaces(plane)
    for sql in (
        "SELECT * FROM private_notes",
        f'SELECT * FROM "{OTHER}".private_notes',
        f'SELECT * FROM "{OTHER}".main.private_notes',
    ):
        with pytest.raises(duckdb.CatalogException) as refused:
            await plane.query(sql, workspace=WORKSPACE)
        # DuckDB's "did you mean" can only suggest this workspace's own tables.
        described = plane.describe_error(refused.value)
        assert SECRET not in described
        assert "private_notes" not in described.split("does not exist", 1)[-1]


UNCHECKED_STATEMENTS = [
    "SET threads = 1",
    "PRAGMA enable_profiling",
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "ATTACH '{other}' AS stolen",
    "SELECT * FROM read_csv('{other}')",
    "COPY events TO '{copy}'",
    "INSTALL httpfs",
    "LOAD httpfs",
]


async def test_a_workspace_connection_cannot_change_settings_or_reach_files(plane: DataPlane, tmp_path: Path) -> None:
    await seed_two_workspaces(plane)
    for statement in UNCHECKED_STATEMENTS:
        sql = statement.format(other=plane.path_of(OTHER), copy=tmp_path / "copied.csv")
        with pytest.raises(duckdb.Error):
            await plane.query(sql, workspace=WORKSPACE)
    assert not (tmp_path / "copied.csv").exists()
    assert await plane.query("SELECT current_setting('threads') > 0", workspace=WORKSPACE) == [(True,)]
    assert await plane.query("SELECT count(*) FROM duckdb_databases()", workspace=WORKSPACE) == [(3,)]


async def test_open_workspace_files_are_bounded_and_closed_ones_keep_their_data(
    tmp_path: Path, clock: ManualClock
) -> None:
    workspaces = [f"8f7d2c1e-0000-4000-8000-{i:012d}" for i in range(6)]
    async with DataPlane(tmp_path / "plane", clock=clock, max_open=2) as plane:
        for index, workspace in enumerate(workspaces):
            await plane.create_datasource("t", [("n", "Int64")], workspace=workspace)
            await plane.run(workspace, functools.partial(_insert, n=index))
            assert plane.open_workspaces <= 2
        # Each file was closed and opened again: its data is all there, and only its own.
        for index, workspace in enumerate(workspaces):
            assert await plane.query("SELECT n FROM t", workspace=workspace) == [(index,)]
            assert plane.open_workspaces <= 2
        assert plane.workspaces() == sorted(workspaces)


async def test_concurrent_jobs_on_several_workspaces_stay_correct_under_a_small_bound(
    tmp_path: Path, clock: ManualClock
) -> None:
    workspaces = [f"8f7d2c1e-0000-4000-8000-{i:012d}" for i in range(4)]
    async with DataPlane(tmp_path / "plane", clock=clock, max_open=1, threads=4) as plane:
        for workspace in workspaces:
            await plane.create_datasource("src", [("n", "Int64")], workspace=workspace)
            await plane.run(workspace, lambda s: s.execute("INSERT INTO src SELECT * FROM range(100)"))
        copies = [
            run_copy(RecordingContext(make_job("copy", datasource="dst", workspace=w, params={"sql": q})), plane)
            for w in workspaces
            for q in ("SELECT n FROM src WHERE n < 50", "SELECT n FROM src WHERE n >= 50")
        ]
        await asyncio.gather(*copies)
        for workspace in workspaces:
            assert await plane.query("SELECT count(*), sum(n) FROM dst", workspace=workspace) == [(100, 4950)]
        assert plane.open_workspaces <= 1


async def test_workspace_ids_that_are_not_plain_names_are_refused(plane: DataPlane) -> None:
    for bad in ("../escape", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(Exception, match="is not a workspace id the data plane accepts"):
            await plane.list_datasources(workspace=bad)


# ---------------------------------------------------------------------------------------------- the checker


def failure_of(exc: pytest.ExceptionInfo[ExecutionFailed]) -> str:
    return exc.value.message


REFUSED_QUERIES = [
    ("SELECT * FROM duckdb_databases()", "table function duckdb_databases() cannot be used"),
    ("SELECT * FROM duckdb_tables()", "table function duckdb_tables() cannot be used"),
    ("SELECT * FROM pragma_table_info('events')", "table function pragma_table_info() cannot be used"),
    ("SELECT * FROM duckdb_databases", "Table with name duckdb_databases does not exist"),
    ("SELECT * FROM information_schema.tables", "it may only read this workspace's data sources"),
    ("SELECT * FROM _jobsd.datasources", "it may only read this workspace's data sources"),
    ("SELECT * FROM _jobsd_staging.x", "it may only read this workspace's data sources"),
    ("SELECT * FROM system.main.duckdb_settings", "it may only read this workspace's data sources"),
    (f'SELECT * FROM "{OTHER}".private_notes', "it may only read this workspace's data sources"),
    ("SELECT * FROM private_notes", "Table with name private_notes does not exist"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv() cannot be used"),
    ("SELECT * FROM '/etc/passwd'", "does not exist"),
    ("SELECT * FROM query('SELECT 1')", "table function query() cannot be used"),
    ("SELECT * FROM query_table('events')", "table function query_table() cannot be used"),
    ("SELECT current_setting('temp_directory')", "function current_setting() cannot be used"),
    ("DESCRIBE events", "DESCRIBE, SUMMARIZE and SHOW cannot be used"),
    ("SHOW TABLES", "DESCRIBE, SUMMARIZE and SHOW cannot be used"),
    ("SELECT 1; SELECT 2", "expected one SELECT query, got 2 statements"),
    ("ATTACH 'x.duckdb' AS x", "expected a SELECT query, got a ATTACH statement"),
    ("SET threads = 1", "expected a SELECT query"),
    ("WITH duckdb_databases AS (SELECT 1) SELECT * FROM duckdb_databases", "is a reserved name"),
    # A CTE used outside its scope is a table name again: it must then be one of the workspace's.
    ("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x), x", "Table with name x does not exist"),
    ("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", "Table with name b does not exist"),
]


async def test_the_checker_refuses_every_query_that_reaches_beyond_the_workspace(plane: DataPlane) -> None:
    await seed_two_workspaces(plane)
    for sql, problem in REFUSED_QUERIES:
        query = RecordingContext(make_job("query", datasource=None, params={"sql": sql}))
        with pytest.raises(ExecutionFailed) as refused:
            await run_query(query, plane)
        assert failure_of(refused).startswith("Invalid SQL in params.sql: "), sql
        assert problem in failure_of(refused), (sql, failure_of(refused))
        copy = RecordingContext(make_job("copy", datasource="copied", query_sql=sql))
        with pytest.raises(ExecutionFailed) as refused:
            await run_copy(copy, plane)
        assert problem in failure_of(refused), sql
    assert await plane.find_datasource("copied", workspace=WORKSPACE) is None
    assert [name for (name,) in await plane.query("SHOW TABLES", workspace=WORKSPACE)] == ["events"]


REFUSED_EXPRESSIONS = [
    ("(SELECT note FROM private_notes)", "Table with name private_notes does not exist"),
    (f'CAST((SELECT max(note) FROM "{OTHER}".private_notes) AS INTEGER)', "may only read this workspace's"),
    ("CAST((SELECT max(meta) FROM _jobsd.datasources) AS INTEGER)", "may only read this workspace's"),
    ("(SELECT count(*) FROM duckdb_tables())", "table function duckdb_tables() cannot be used"),
    ("current_setting('temp_directory')", "function current_setting() cannot be used"),
    ("day) FROM events; SELECT (1", "it must be one"),
    ("1) FROM private_notes --", "it must be one"),
    ("day) AS v FROM events WHERE (true", "it must be one"),
]


@pytest.mark.parametrize("field", ["params.partition_by", "delete_condition"])
async def test_expressions_go_through_the_same_checker(plane: DataPlane, clock: ManualClock, field: str) -> None:
    await seed_two_workspaces(plane)
    before = await plane.stats("events", workspace=WORKSPACE)
    for expression, problem in REFUSED_EXPRESSIONS:
        with pytest.raises(ExecutionFailed) as refused:
            if field == "delete_condition":
                await run_delete(RecordingContext(make_job("delete_data", params={field: expression})), plane)
            else:
                sql = "SELECT day, count(*) AS n FROM events GROUP BY day"
                params = {"sql": sql, "source": "events", "partition_by": expression}
                ctx = RecordingContext(make_job("populateview", datasource="daily", params=params))
                await run_populate(ctx, plane, clock=clock)
        assert failure_of(refused).startswith(f"Invalid SQL in {field}: "), expression
        assert problem in failure_of(refused), (expression, failure_of(refused))
        assert SECRET not in failure_of(refused)
    assert await plane.stats("events", workspace=WORKSPACE) == before
    assert await plane.find_datasource("daily", workspace=WORKSPACE) is None


ACCEPTED_QUERIES = [
    "SELECT day, count(*) AS n FROM events GROUP BY day",
    f'SELECT * FROM "{WORKSPACE}".events',
    f'SELECT * FROM "{WORKSPACE}".main.events',
    "SELECT * FROM main.events e JOIN events_copy c USING (id)",
    "WITH recent AS (SELECT * FROM events WHERE id > 3) SELECT count(*) FROM recent",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT * FROM range(3) t(i) JOIN events ON events.id = t.i",
    "SELECT unnest([1, 2, 3]) AS x",
    "FROM events SELECT id WHERE id IN (SELECT id FROM events_copy)",
    "SELECT * FROM (VALUES (1), (2)) v(x)",
    "SELECT id, sum(id) OVER (ORDER BY id) FROM events QUALIFY row_number() OVER () < 5",
]


async def test_ordinary_sql_over_the_workspace_s_own_data_sources_is_accepted(plane: DataPlane) -> None:
    await seed_two_workspaces(plane)
    copy = RecordingContext(make_job("copy", datasource="events_copy", params={"sql": "SELECT * FROM events"}))
    await run_copy(copy, plane)
    for sql in ACCEPTED_QUERIES:
        ctx = RecordingContext(make_job("query", datasource=None, params={"sql": sql}))
        await run_query(ctx, plane)
        assert ctx.figures["statistics"]["row_count"] >= 1, sql


async def test_a_data_plane_error_never_shows_the_server_s_paths(plane: DataPlane) -> None:
    described = plane.describe_error(duckdb.IOException(f"IO Error: could not write {plane.root}/x.duckdb.tmp/a"))
    assert str(plane.root) not in described
    assert "<data plane>" in described
