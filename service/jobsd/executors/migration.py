"""Moving a data plane of the older single-file layout into one file per workspace.

The older layout kept every workspace in one DuckDB file (`dataplane.duckdb`): a schema per workspace (named by
its id) holding its tables, and `_jobsd.datasources` / `_jobsd.results` with a `workspace` column. Each workspace
is written to `<id>.duckdb.partial` — its tables with their column types and NOT NULL constraints, then its
registry rows — and renamed to `<id>.duckdb` once complete, so a migration that stops midway is simply redone
for the workspaces it had not finished. When every workspace is done the old file is renamed
`dataplane.duckdb.migrated` (kept, not deleted: the operator removes it). This runs before any tenant connection
is open, on a connection of its own with file access (it has to attach the old file); no user SQL runs on it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import duckdb

from jobsd.executors.sqltext import quote_ident

__all__ = ["migrate_single_file"]

_log = logging.getLogger("jobsd.executors")
_INTERNAL_SCHEMAS = ("main", "_jobsd", "_jobsd_staging", "information_schema", "pg_catalog")
_LEGACY = "legacy"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _workspaces(conn: duckdb.DuckDBPyConnection) -> list[str]:
    """Every workspace of the old file: its schemas, and the workspaces its registries name."""
    placeholders = ", ".join("?" for _ in _INTERNAL_SCHEMAS)
    schemas = conn.execute(
        f"SELECT schema_name FROM duckdb_schemas() WHERE database_name = '{_LEGACY}' "
        f"AND schema_name NOT IN ({placeholders})",
        list(_INTERNAL_SCHEMAS),
    ).fetchall()
    found = {str(name) for (name,) in schemas}
    for registry in ("datasources", "results"):
        if _has_table(conn, "_jobsd", registry):
            rows = conn.execute(f'SELECT DISTINCT workspace FROM {_LEGACY}."_jobsd".{registry}').fetchall()
            found.update(str(name) for (name,) in rows if name)
    return sorted(found)


def _has_table(conn: duckdb.DuckDBPyConnection, schema: str, table: str) -> bool:
    row = conn.execute(
        f"SELECT count(*) FROM duckdb_tables() WHERE database_name = '{_LEGACY}' AND schema_name = ? "
        "AND table_name = ?",
        [schema, table],
    ).fetchone()
    return bool(row and row[0])


def _copy_workspace(conn: duckdb.DuckDBPyConnection, workspace: str, target: Path) -> int:
    """Write one workspace's tables and registry rows into `target`; the number of tables copied."""
    conn.execute(f"ATTACH {_literal(str(target))} AS dest")
    try:
        conn.execute('CREATE SCHEMA IF NOT EXISTS dest."_jobsd"')
        conn.execute('CREATE TABLE IF NOT EXISTS dest."_jobsd".datasources (name VARCHAR, meta VARCHAR)')
        conn.execute('CREATE TABLE IF NOT EXISTS dest."_jobsd".results (name VARCHAR, created_at BIGINT)')
        tables = conn.execute(
            f"SELECT table_name FROM duckdb_tables() WHERE database_name = '{_LEGACY}' AND schema_name = ? "
            "ORDER BY table_name",
            [workspace],
        ).fetchall()
        for (table,) in tables:
            columns = conn.execute(
                f"SELECT column_name, data_type, is_nullable FROM duckdb_columns() WHERE database_name = '{_LEGACY}' "
                "AND schema_name = ? AND table_name = ? ORDER BY column_index",
                [workspace, table],
            ).fetchall()
            declarations = ", ".join(
                f"{quote_ident(str(name))} {data_type}{'' if nullable else ' NOT NULL'}"
                for name, data_type, nullable in columns
            )
            destination = f"dest.main.{quote_ident(str(table))}"
            conn.execute(f"CREATE TABLE {destination} ({declarations})")
            conn.execute(
                f"INSERT INTO {destination} SELECT * FROM {_LEGACY}.{quote_ident(workspace)}.{quote_ident(str(table))}"
            )
        if _has_table(conn, "_jobsd", "datasources"):
            conn.execute(
                f'INSERT INTO dest."_jobsd".datasources SELECT name, meta FROM {_LEGACY}."_jobsd".datasources '
                "WHERE workspace = ?",
                [workspace],
            )
        if _has_table(conn, "_jobsd", "results"):
            conn.execute(
                f'INSERT INTO dest."_jobsd".results SELECT name, created_at FROM {_LEGACY}."_jobsd".results '
                "WHERE workspace = ?",
                [workspace],
            )
        return len(tables)
    finally:
        conn.execute("DETACH dest")


def migrate_single_file(legacy_file: Path, root: Path, memory_limit_bytes: int | None = None) -> list[str]:
    """Copy every workspace of `legacy_file` into `root/<id>.duckdb`; rename the old file; the workspaces moved.

    `memory_limit_bytes`: DuckDB's memory limit for the copy (the plane's; DuckDB's own default is most of the
    machine)."""
    from jobsd.executors.dataplane import validate_workspace_id

    config: dict[str, str | bool | int | float | list[str]] = {}
    if memory_limit_bytes is not None:
        config["memory_limit"] = f"{memory_limit_bytes}B"
    conn = duckdb.connect(":memory:", config=config)
    try:
        conn.execute(f"ATTACH {_literal(str(legacy_file))} AS {_LEGACY} (READ_ONLY)")
        workspaces = _workspaces(conn)
        for workspace in workspaces:
            final = root / f"{validate_workspace_id(workspace)}.duckdb"
            if final.exists():
                continue  # moved by an earlier run that stopped before renaming the old file
            partial = final.with_name(final.name + ".partial")
            for leftover in (partial, partial.with_name(partial.name + ".wal")):
                leftover.unlink(missing_ok=True)
            tables = _copy_workspace(conn, workspace, partial)
            os.replace(partial, final)
            _log.info("data plane: moved workspace %s (%d tables) into its own file", workspace, tables)
        conn.execute(f"DETACH {_LEGACY}")
    finally:
        conn.close()
    for suffix in ("", ".wal"):
        old = legacy_file.with_name(legacy_file.name + suffix)
        if old.exists():
            os.replace(old, old.with_name(old.name.replace(legacy_file.name, legacy_file.name + ".migrated", 1)))
    _log.info("data plane: migrated %d workspaces out of %s", len(workspaces), legacy_file.name)
    return workspaces
