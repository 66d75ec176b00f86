"""The embedded data plane: one DuckDB database file per workspace, in which a data source is a table.

Isolation is how the plane is wired, not a filter on SQL text: a workspace's statements run on a connection to that
workspace's file and nothing else, so another workspace's tables are not in its catalog at all — catalog functions
(`duckdb_tables()`, `information_schema`, ...) list only its own objects, and an error can only name its own. Each
file is opened with file access off (`enable_external_access=false`: no ATTACH of files, no read_csv, no COPY ...
TO), extension loading off, Python replacement scans off and the configuration locked (`lock_configuration`: no SET
or PRAGMA can change a setting afterwards). What SQL still could show of the server (the file's path in
`duckdb_databases()`, the temp directory in `current_setting`) the SQL checker (`sqlcheck`) refuses, and error
texts have the plane's directory replaced.

Layout of `<root>/<workspace id>.duckdb`:
- schema `main`: the workspace's data sources, `<name>_quarantine` tables and background-query results
  (`_query_<job id hex>`); user SQL names them the way users know them;
- schema `_jobsd`: the workspace's data-source registry (`datasources`: one row per data source with its metadata
  object) and its query results (`results`);
- schema `_jobsd_staging`: per-job staging tables, so an import or copy that fails leaves its target as it was.
  Leftovers of a crashed process are dropped the first time this process opens the file.

At most `max_open` workspace files are open at once (least recently used idle ones are closed; one in use is never
closed, so the bound can be exceeded only while more workspaces than that are busy — at most one per plane thread).
A data plane of the older single-file layout (`dataplane.duckdb`, one schema per workspace) is migrated into this
one when the plane opens: every table and registry row is copied, and the old file is renamed `*.migrated`.

DuckDB calls block, so every call runs on the plane's own thread pool (never on the event loop), each with its own
cursor. Writes go through `Session.writing()`: one writer per workspace at a time, in one transaction, which keeps
concurrent jobs on one data source from failing on DuckDB's optimistic write conflicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from jobsd.domain.clock import Clock, SystemClock, from_micros, to_micros
from jobsd.domain.model import datasource_id_for
from jobsd.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from jobsd.executors.coltypes import Column, ColumnType, parse_column_type, type_from_duckdb
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.limits import LimitExceeded, PlaneLimits, format_bytes
from jobsd.executors.sqlcheck import TableName, check_expression, check_query
from jobsd.executors.sqltext import NAME_PATTERN, describe_duckdb_error, quote_ident

__all__ = [
    "DEFAULT_MAX_OPEN_WORKSPACES",
    "INTERNAL_SCHEMA",
    "STAGING_SCHEMA",
    "DataPlane",
    "DataSource",
    "Session",
    "TableStats",
    "parse_columns",
    "validate_datasource_name",
]

T = TypeVar("T")

_log = logging.getLogger("jobsd.executors")

INTERNAL_SCHEMA = "_jobsd"
STAGING_SCHEMA = "_jobsd_staging"
QUARANTINE_SUFFIX = "_quarantine"
DEFAULT_MAX_OPEN_WORKSPACES = 16
_FILE_SUFFIX = ".duckdb"
# Workspace ids name files: only these characters (the store's ids are UUIDs), so an id can never be a path.
_WORKSPACE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_REGISTRY = f"{quote_ident(INTERNAL_SCHEMA)}.datasources"
# Background-query results: kept for as long as their jobs are visible, then pruned.
_RESULTS = f"{quote_ident(INTERNAL_SCHEMA)}.results"
# How every workspace file is opened. lock_configuration last: after it, no statement can change a setting.
_CONNECT_CONFIG: dict[str, str | bool] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "allow_unsigned_extensions": False,
    "python_enable_replacements": False,
    "lock_configuration": True,
}

# Bytes per value of fixed-width DuckDB types; `stats` counts text by its UTF-8 length and anything else by the
# length of its text form. This is the uncompressed size of the data, which is what `statistics.bytes` reports.
_FIXED_WIDTH = {
    "BOOLEAN": 1,
    "TINYINT": 1,
    "UTINYINT": 1,
    "SMALLINT": 2,
    "USMALLINT": 2,
    "INTEGER": 4,
    "UINTEGER": 4,
    "FLOAT": 4,
    "DATE": 4,
    "BIGINT": 8,
    "UBIGINT": 8,
    "DOUBLE": 8,
    "TIMESTAMP": 8,
    "TIMESTAMP WITH TIME ZONE": 8,
    "TIME": 8,
    "HUGEINT": 16,
    "UHUGEINT": 16,
    "UUID": 16,
    "INTERVAL": 16,
}


def _timestamp_text(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass(frozen=True, slots=True)
class TableStats:
    bytes: int
    row_count: int

    def json(self) -> dict[str, int]:
        """`{"bytes", "row_count"}`: the `statistics` of a job, and of a data source's metadata."""
        return {"bytes": self.bytes, "row_count": self.row_count}


@dataclass(frozen=True, slots=True)
class DataSource:
    """A registered data source and the Tinybird-style metadata object its jobs render."""

    workspace: str
    name: str
    id: str
    columns: tuple[Column, ...]
    created_at: datetime
    updated_at: datetime
    # How it came to be: "csv" / "ndjson" (an import), "query" (a populate or copy target), "api".
    type: str = "csv"
    description: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    engine: Mapping[str, str] = field(default_factory=dict)

    @property
    def table_sql(self) -> str:
        """The table, fully qualified (a populate's temporary view of the same name must not shadow it)."""
        return qualified(self.workspace, self.name)

    @property
    def quarantine_name(self) -> str:
        return self.name + QUARANTINE_SUFFIX

    def job_json(self, statistics: TableStats | None = None) -> dict[str, Any]:
        """The object as the reference's job detail shows it under "datasource", plus its statistics.

        What the executors report as `result.datasource` once a job has changed the data source (the gateway renders
        it as the detail's `datasource`); the columns are left to `to_json`, so a job stays small.
        """
        return {
            "id": self.id,
            "name": self.name,
            "cluster": "default",
            "tags": {},
            "created_at": _timestamp_text(self.created_at),
            "updated_at": _timestamp_text(self.updated_at),
            "replicated": False,
            "version": 0,
            "project": None,
            "headers": dict(self.headers),
            "shared_with": [],
            "engine": {
                "engine": self.engine.get("engine", "MergeTree"),
                "partition_key": self.engine.get("partition_key", ""),
                "sorting_key": self.engine.get("sorting_key", ""),
            },
            "description": self.description,
            "used_by": [],
            "last_commit": {"content_sha": "", "status": "changed", "path": ""},
            "errors_discarded_at": None,
            "type": self.type,
            "statistics": None if statistics is None else statistics.json(),
        }

    def to_json(self, statistics: TableStats | None = None) -> dict[str, Any]:
        """`job_json` plus the columns: what `GET /v0/datasources/{name}` answers."""
        shown = self.job_json(statistics)
        statistics_json = shown.pop("statistics")
        return {**shown, "columns": [column.to_json() for column in self.columns], "statistics": statistics_json}

    def _registry_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "columns": [column.to_json() for column in self.columns],
                "created_at": to_micros(self.created_at),
                "updated_at": to_micros(self.updated_at),
                "type": self.type,
                "description": self.description,
                "headers": dict(self.headers),
                "engine": dict(self.engine),
            }
        )

    @classmethod
    def _from_registry(cls, workspace: str, name: str, raw: str, real_types: Mapping[str, ColumnType]) -> DataSource:
        meta = json.loads(raw)
        columns = tuple(Column(c["name"], _column_type(c["type"], real_types.get(c["name"]))) for c in meta["columns"])
        return cls(
            workspace=workspace,
            name=name,
            # Derived, not read: a data source registered before ids were derived gets the id its jobs carry.
            id=datasource_id_for(workspace, name),
            columns=columns,
            created_at=from_micros(int(meta["created_at"])),
            updated_at=from_micros(int(meta["updated_at"])),
            type=meta.get("type", "csv"),
            description=meta.get("description", ""),
            headers=meta.get("headers", {}),
            engine=meta.get("engine", {}),
        )


def _column_type(declared: str, real: ColumnType | None) -> ColumnType:
    """The declared Tinybird type; for columns DuckDB typed itself (a query's DECIMAL, LIST...), the real one."""
    try:
        return parse_column_type(declared)
    except ValueError:
        return real or ColumnType(name=declared, duckdb=declared, nullable=True)


def qualified(workspace: str, table: str, schema: str = "main") -> str:
    """`"<workspace>".<schema>."<table>"`: the workspace's catalog is named after its file, i.e. its id."""
    return f"{quote_ident(workspace)}.{quote_ident(schema)}.{quote_ident(table)}"


def validate_workspace_id(workspace: str) -> str:
    if not isinstance(workspace, str) or not _WORKSPACE_ID.match(workspace):
        raise InvalidArgument("workspace_id", f"{workspace!r} is not a workspace id the data plane accepts")
    return workspace


def validate_datasource_name(name: Any, field_name: str = "name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidArgument(
            field_name,
            f"{name!r} is not a valid data source name: use letters, digits and underscores, not starting with a "
            "digit, at most 255 characters",
        )
    if name.endswith(QUARANTINE_SUFFIX) or name.startswith("_query_"):
        raise InvalidArgument(field_name, f"{name!r} is reserved (quarantine tables and query results use it)")
    return name


def parse_columns(raw: Sequence[Any], field_name: str = "schema") -> tuple[Column, ...]:
    """[(name, type)] or [{"name", "type"}] -> columns; InvalidArgument names the bad entry."""
    if not raw:
        raise InvalidArgument(field_name, "a data source needs at least one column")
    columns: list[Column] = []
    seen: set[str] = set()
    for index, entry in enumerate(raw):
        where = f"{field_name}[{index}]"
        if isinstance(entry, Mapping):
            name, type_text = entry.get("name"), entry.get("type")
        elif isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) == 2:
            name, type_text = entry[0], entry[1]
        else:
            raise InvalidArgument(where, 'expected {"name": ..., "type": ...} or [name, type]')
        if not isinstance(name, str) or not name.strip() or len(name) > 255:
            raise InvalidArgument(where, "a column needs a non-empty name of at most 255 characters")
        if name in seen:
            raise InvalidArgument(where, f"column {name!r} appears twice")
        if not isinstance(type_text, str):
            raise InvalidArgument(where, f"column {name!r} needs a type such as Int64 or String")
        try:
            column_type = parse_column_type(type_text)
        except ValueError as error:
            raise InvalidArgument(where, f"column {name!r}: {error}") from None
        seen.add(name)
        columns.append(Column(name, column_type))
    return tuple(columns)


class _OpenWorkspace:
    """One workspace's open DuckDB file, and how many sessions use it now."""

    __slots__ = ("conn", "users", "workspace")

    def __init__(self, workspace: str, conn: duckdb.DuckDBPyConnection) -> None:
        self.workspace = workspace
        self.conn = conn
        self.users = 0


class Session:
    """One cursor on one workspace's file, on one worker thread. Every method blocks: call them only inside
    `DataPlane.run`. A session can reach its workspace's data and nothing else."""

    def __init__(self, plane: DataPlane, workspace: str, cursor: duckdb.DuckDBPyConnection) -> None:
        self.plane = plane
        self.workspace = workspace
        self.cursor = cursor
        self._in_write = False

    @property
    def clock(self) -> Clock:
        return self.plane.clock

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> duckdb.DuckDBPyConnection:
        return self.cursor.execute(sql, parameters) if parameters is not None else self.cursor.execute(sql)

    def qualified(self, table: str, schema: str = "main") -> str:
        return qualified(self.workspace, table, schema)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Session]:
        """One writer per workspace at a time, in one transaction: commit on success, roll back on any exception."""
        if self._in_write:
            yield self
            return
        with self.plane._write_lock(self.workspace):
            self._in_write = True
            self.cursor.execute("BEGIN TRANSACTION")
            try:
                yield self
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    self.cursor.execute("ROLLBACK")
                raise
            else:
                self.cursor.execute("COMMIT")
            finally:
                self._in_write = False

    # -- user SQL: checked, then run here

    def _own_tables(self) -> set[str]:
        rows = self.execute(
            "SELECT lower(table_name) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' "
            "UNION SELECT lower(view_name) FROM duckdb_views() WHERE database_name = ? AND schema_name = 'main'",
            [self.workspace, self.workspace],
        ).fetchall()
        return {str(name) for (name,) in rows}

    def _resolve(self, tables: Sequence[TableName], field: str) -> None:
        """Every table name must be one of this workspace's own tables (the checker left the names to us)."""
        own: set[str] | None = None
        catalog = self.workspace.lower()
        for name in tables:
            catalog_part, schema, table = name.catalog.lower(), name.schema.lower(), name.table.lower()
            if not catalog_part and schema == catalog:  # "<workspace id>".t: the catalog, its default schema
                catalog_part, schema = catalog, ""
            if catalog_part not in ("", catalog) or schema not in ("", "main"):
                raise ExecutionFailed(
                    f"Invalid SQL in {field}: it may only read this workspace's data sources, by name (not {name})"
                )
            if own is None:
                own = self._own_tables()
            if table not in own:
                raise ExecutionFailed(
                    f"Invalid SQL in {field}: Catalog Error: Table with name {name.table} does not exist!"
                )

    def check_query(self, sql: str, field: str) -> str:
        """The text of `sql` if it is one SELECT over this workspace's data sources (see `sqlcheck`)."""
        checked = check_query(sql, field)
        self._resolve(checked.tables, field)
        return checked.text

    def check_expression(self, expression: str, field: str, *, what: str = "expression") -> str:
        """The text of `expression` if it is one expression over this workspace's data sources."""
        checked = check_expression(expression, field, what=what)
        self._resolve(checked.tables, field)
        return checked.text

    def sql_failure(self, error: BaseException, field: str) -> ExecutionFailed:
        """The ExecutionFailed for a DuckDB error raised by user SQL (`field` names the job field that held it)."""
        return self.plane.resource_failure(error) or ExecutionFailed(
            f"Invalid SQL in {field}: {self.plane.describe_error(error)}"
        )

    # -- the catalog

    def table_exists(self, table: str, schema: str = "main") -> bool:
        row = self.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? AND table_name = ?",
            [self.workspace, schema, table],
        ).fetchone()
        return bool(row and row[0])

    def table_columns(self, table: str, schema: str = "main") -> list[tuple[str, str, bool]]:
        """[(name, DuckDB type, nullable)] in table order."""
        rows = self.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
            "WHERE database_name = ? AND schema_name = ? AND table_name = ? ORDER BY column_index",
            [self.workspace, schema, table],
        ).fetchall()
        return [(str(name), str(data_type), bool(nullable)) for name, data_type, nullable in rows]

    def find(self, name: str) -> DataSource | None:
        row = self.execute(f"SELECT meta FROM {_REGISTRY} WHERE name = ?", [name]).fetchone()
        if row is None:
            return None
        real = {n: type_from_duckdb(t, nullable) for n, t, nullable in self.table_columns(name)}
        return DataSource._from_registry(self.workspace, name, str(row[0]), real)

    def get(self, name: str) -> DataSource:
        found = self.find(name)
        if found is None:
            raise NotFound(f'Data source "{name}" not found')
        return found

    def list(self) -> list[DataSource]:
        names = self.execute(f"SELECT name FROM {_REGISTRY} ORDER BY name").fetchall()
        return [ds for (name,) in names if (ds := self.find(str(name))) is not None]

    def create(
        self,
        name: str,
        columns: Sequence[Column],
        *,
        type: str = "api",
        description: str = "",
        headers: Mapping[str, str] | None = None,
        engine: Mapping[str, str] | None = None,
    ) -> DataSource:
        """Create the table and register it, in the caller's write transaction if there is one."""
        validate_datasource_name(name)
        with self.writing():
            if self.find(name) is not None:
                raise AlreadyExists(f'Data source "{name}" already exists')
            declarations = ", ".join(f"{quote_ident(c.name)} {c.type.declaration}" for c in columns)
            self.execute(f"CREATE TABLE {self.qualified(name)} ({declarations})")
            return self._register(name, tuple(columns), type, description, headers, engine)

    def create_from_query(self, name: str, select_sql: str) -> DataSource:
        """Create an empty table shaped like the query's result and register it (populate / copy targets)."""
        validate_datasource_name(name)
        with self.writing():
            self.execute(f"CREATE TABLE {self.qualified(name)} AS SELECT * FROM ({select_sql}) LIMIT 0")
            columns = tuple(Column(n, type_from_duckdb(t, True)) for n, t, _ in self.table_columns(name))
            return self._register(name, columns, "query", "", None, None)

    def _register(
        self,
        name: str,
        columns: tuple[Column, ...],
        type: str,
        description: str,
        headers: Mapping[str, str] | None,
        engine: Mapping[str, str] | None,
    ) -> DataSource:
        now = self.clock.now()
        source = DataSource(
            workspace=self.workspace,
            name=name,
            # The id jobs on this data source carry too (the service derives it the same way).
            id=datasource_id_for(self.workspace, name),
            columns=columns,
            created_at=now,
            updated_at=now,
            type=type,
            description=description,
            headers=dict(headers or {}),
            engine=dict(engine or {}),
        )
        self.execute(f"INSERT INTO {_REGISTRY} VALUES (?, ?)", [name, source._registry_json()])
        return source

    def touch(self, source: DataSource, headers: Mapping[str, str] | None = None) -> DataSource:
        """Mark the data source changed now (the metadata's updated_at), inside a write."""
        changed = replace(source, updated_at=self.clock.now(), headers={**source.headers, **(headers or {})})
        with self.writing():
            self.execute(f"UPDATE {_REGISTRY} SET meta = ? WHERE name = ?", [changed._registry_json(), source.name])
        return changed

    def drop(self, name: str) -> None:
        with self.writing():
            if self.find(name) is None:
                raise NotFound(f'Data source "{name}" not found')
            self.execute(f"DROP TABLE IF EXISTS {self.qualified(name)}")
            self.execute(f"DROP TABLE IF EXISTS {self.qualified(name + QUARANTINE_SUFFIX)}")
            self.execute(f"DELETE FROM {_REGISTRY} WHERE name = ?", [name])

    def table_stats(self, table: str, schema: str = "main") -> TableStats:
        """Rows, and bytes as the uncompressed size of the values (see _FIXED_WIDTH)."""
        fixed = 0
        variable: list[str] = []
        for name, data_type, _ in self.table_columns(table, schema):
            width = _FIXED_WIDTH.get(data_type)
            if width is not None:
                fixed += width
            elif data_type == "VARCHAR":
                variable.append(f"coalesce(sum(strlen({quote_ident(name)})), 0)")
            else:
                variable.append(f"coalesce(sum(strlen(CAST({quote_ident(name)} AS VARCHAR))), 0)")
        sums = "".join(", " + expression for expression in variable)
        row = self.execute(f"SELECT count(*){sums} FROM {self.qualified(table, schema)}").fetchone()
        assert row is not None
        rows = int(row[0])
        return TableStats(bytes=rows * fixed + sum(int(v) for v in row[1:]), row_count=rows)

    def stats(self, source: DataSource) -> TableStats:
        return self.table_stats(source.name)

    def record_result(self, table: str) -> None:
        """Remember a query-result table so `DataPlane.prune_results` can drop it once its job is gone."""
        with self.writing():
            self.execute(f"DELETE FROM {_RESULTS} WHERE name = ?", [table])
            self.execute(f"INSERT INTO {_RESULTS} VALUES (?, ?)", [table, to_micros(self.clock.now())])

    def staging_table(self, label: str) -> str:
        """A fresh staging-table name (quoted, fully qualified) for one job step."""
        return self.qualified(label, STAGING_SCHEMA)

    def drop_table(self, table_sql: str) -> None:
        """Best-effort cleanup of a staging or temporary table."""
        with contextlib.suppress(duckdb.Error):
            self.execute(f"DROP TABLE IF EXISTS {table_sql}")

    def drop_view(self, view_sql: str) -> None:
        with contextlib.suppress(duckdb.Error):
            self.execute(f"DROP VIEW IF EXISTS {view_sql}")


def _prepare(conn: duckdb.DuckDBPyConnection, first_open: bool) -> None:
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(INTERNAL_SCHEMA)}")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_REGISTRY} (name VARCHAR, meta VARCHAR)")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_RESULTS} (name VARCHAR, created_at BIGINT)")
    if first_open:
        # Staging tables of a process that died mid-job: nothing references them any more. Only on this process's
        # first open of the file: a file closed while idle and opened again may hold a running job's staging.
        conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(STAGING_SCHEMA)} CASCADE")
    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(STAGING_SCHEMA)}")


LOCK_FILE = ".lock"


class PlaneInUse(Unavailable):
    """Another process (or another DataPlane of this one) has this directory open: DuckDB allows one writer."""

    def __init__(self, root: Path, holder: str) -> None:
        self.root = root
        self.holder = holder
        super().__init__(f"the data plane {root} is in use by {holder}")


class DataPlane:
    """The data plane over one directory of workspace files. `await open()` (or `async with`) before use;
    `close()` is idempotent.

    `legacy_file`: a data plane file of the older single-file layout to migrate into this one when it opens.
    """

    def __init__(
        self,
        root: Path,
        *,
        clock: Clock | None = None,
        threads: int = 6,
        max_open: int = DEFAULT_MAX_OPEN_WORKSPACES,
        legacy_file: Path | None = None,
        limits: PlaneLimits | None = None,
    ) -> None:
        if max_open < 1:
            raise ValueError("max_open must be at least 1")
        self.root = Path(root)
        self.clock: Clock = clock or SystemClock()
        self.max_open = max_open
        self.legacy_file = legacy_file
        self.limits = limits or PlaneLimits()
        self._threads = threads
        # Files open at once: at most max_open idle ones, or one per plane thread while more are busy (see
        # _close_idle_beyond_bound). Each gets an equal share of the plane's memory, so together they stay in it.
        self.databases_open_at_most = max(max_open, threads)
        self.memory_per_database = self.limits.memory_per_database(self.databases_open_at_most)
        self._connect_config: dict[str, str | bool | int] = {
            **_CONNECT_CONFIG,
            "memory_limit": f"{self.memory_per_database}B",
            "threads": self.limits.job_threads,
            "max_temp_directory_size": f"{self.limits.job_temp_disk_bytes}B",
        }
        # lock_configuration last: after it, no statement can change a setting.
        self._connect_config["lock_configuration"] = self._connect_config.pop("lock_configuration")
        self._pool: ThreadPoolExecutor | None = None
        # The directory's lock (an flock on LOCK_FILE, held while the plane is open).
        self._dir_lock: int | None = None
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _OpenWorkspace] = OrderedDict()
        self._opened_once: set[str] = set()
        self._write_locks: dict[str, threading.Lock] = {}
        # Cursors of the sessions running now (what interrupt_all reaches).
        self._active: set[duckdb.DuckDBPyConnection] = set()
        # Path prefixes never shown in an error: the root as given and as resolved.
        self._hidden = tuple(sorted({str(self.root), str(self.root.resolve())}, key=len, reverse=True))

    async def __aenter__(self) -> DataPlane:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="jobsd-dataplane")
        try:
            await asyncio.get_running_loop().run_in_executor(pool, self._open_root)
        except BaseException:
            pool.shutdown(wait=False)
            self._unlock_root()
            raise
        self._pool = pool

    def _open_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Tenants' data: readable by the server's user only.
        os.chmod(self.root, 0o700)
        self._lock_root()
        if self.legacy_file is not None and self.legacy_file.is_file():
            from jobsd.executors.migration import migrate_single_file

            migrate_single_file(self.legacy_file, self.root, self.limits.plane_memory_bytes)

    def _lock_root(self) -> None:
        """Take the directory's lock, or raise PlaneInUse naming the process that holds it.

        DuckDB would refuse the second process only when it first opens a workspace file (a job's traceback,
        minutes later); the lock makes it a start-up refusal. An flock ends with its process, so a killed
        jobsd leaves nothing to clean up."""
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise PlaneInUse(self.root, f"process {holder}" if holder.isdigit() else "another process") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._dir_lock = fd

    def _unlock_root(self) -> None:
        fd, self._dir_lock = self._dir_lock, None
        if fd is not None:
            os.close(fd)

    @property
    def open_workspaces(self) -> int:
        """How many workspace files are open now."""
        with self._lock:
            return len(self._open)

    def workspaces(self) -> list[str]:
        """Every workspace that has a file in the plane."""
        return sorted(
            path.name[: -len(_FILE_SUFFIX)]
            for path in self.root.glob(f"*{_FILE_SUFFIX}")
            if _WORKSPACE_ID.match(path.name[: -len(_FILE_SUFFIX)])
        )

    def path_of(self, workspace: str) -> Path:
        return self.root / f"{validate_workspace_id(workspace)}{_FILE_SUFFIX}"

    def describe_error(self, error: BaseException) -> str:
        """DuckDB's message without the caret diagram, and without the plane's paths."""
        text = describe_duckdb_error(error)
        for hidden in self._hidden:
            text = text.replace(hidden, "<data plane>")
        return text

    def interrupt_all(self) -> int:
        """Interrupt every statement running on the plane now (DuckDB rolls each back); how many sessions ran."""
        with self._lock:
            cursors = list(self._active)
        for cursor in cursors:
            with contextlib.suppress(duckdb.Error):
                cursor.interrupt()
        return len(cursors)

    def resource_failure(self, error: BaseException) -> LimitExceeded | None:
        """For DuckDB running out of the memory or the temporary disk a workspace may use: the error that says
        so and names the setting (None for any other error)."""
        if not isinstance(error, duckdb.OutOfMemoryException):
            return None
        limits = self.limits
        if "max_temp_directory_size" in str(error):
            spill = format_bytes(limits.job_temp_disk_bytes)
            return LimitExceeded(
                f"The job ran out of temporary disk: its workspace may spill {spill} to disk while its statements run",
                setting="JOBSD_JOB_TEMP_DISK_LIMIT",
                value=limits.job_temp_disk_bytes,
            )
        return LimitExceeded(
            f"The job ran out of memory: its workspace may use {format_bytes(self.memory_per_database)} of DuckDB "
            f"memory (the least of JOBSD_JOB_MEMORY_LIMIT and an equal share of JOBSD_DATAPLANE_MEMORY_LIMIT="
            f"{limits.plane_memory_bytes} among {self.databases_open_at_most} workspaces open at once)",
            setting="JOBSD_JOB_MEMORY_LIMIT",
            value=limits.job_memory_bytes,
        )

    async def close(self, give_up_after: float = 10.0) -> None:
        """Refuse new work, interrupt what runs, and close every file. Idempotent.

        Sessions still running are interrupted (again and again, as DuckDB forgets an interrupt between two
        statements) until their threads return; after `give_up_after` seconds the plane stops waiting, says so, and
        leaves the files still in use open (closing a connection under a running statement is not safe)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            finished = threading.Event()

            def wait_for_pool() -> None:
                pool.shutdown(wait=True)
                finished.set()

            # A daemon thread waits for the pool, so that a thread that never returns cannot also hold up the
            # event loop's default executor at exit.
            threading.Thread(target=wait_for_pool, name="jobsd-dataplane-close", daemon=True).start()
            loop = asyncio.get_running_loop()
            give_up = loop.time() + give_up_after
            while not finished.is_set():
                if loop.time() >= give_up:
                    _log.error(
                        "data plane: %d statements still running %.0f s after the plane began to close; leaving them",
                        self.interrupt_all(),
                        give_up_after,
                    )
                    break
                self.interrupt_all()
                await asyncio.sleep(0.02)
        with self._lock:
            entries = [entry for entry in self._open.values() if entry.users == 0]
            for entry in entries:
                del self._open[entry.workspace]
            still_open = bool(self._open)
        for entry in entries:
            entry.conn.close()
        if not still_open:
            self._unlock_root()

    def _write_lock(self, workspace: str) -> threading.Lock:
        with self._lock:
            return self._write_locks.setdefault(workspace, threading.Lock())

    def _acquire(self, workspace: str) -> tuple[_OpenWorkspace, duckdb.DuckDBPyConnection]:
        with self._lock:
            entry = self._open.get(workspace)
            if entry is None:
                path = self.path_of(workspace)
                conn = duckdb.connect(str(path), config=dict(self._connect_config))
                try:
                    _prepare(conn, first_open=workspace not in self._opened_once)
                except BaseException:
                    conn.close()
                    raise
                self._opened_once.add(workspace)
                entry = _OpenWorkspace(workspace, conn)
                self._open[workspace] = entry
            self._open.move_to_end(workspace)
            entry.users += 1
            try:
                cursor = entry.conn.cursor()
            except BaseException:
                entry.users -= 1
                raise
            self._close_idle_beyond_bound()
            return entry, cursor

    def _release(self, entry: _OpenWorkspace) -> None:
        with self._lock:
            entry.users -= 1
            self._close_idle_beyond_bound()

    def _close_idle_beyond_bound(self) -> None:
        """Close the least recently used idle files while more than `max_open` are open (under `_lock`)."""
        excess = len(self._open) - self.max_open
        if excess <= 0:
            return
        for workspace, entry in list(self._open.items()):
            if excess <= 0:
                break
            if entry.users == 0:
                del self._open[workspace]
                entry.conn.close()
                excess -= 1

    def _session_call(self, workspace: str, fn: Callable[[Session], T]) -> T:
        if self._pool is None:
            raise RuntimeError("the data plane is closed")
        entry, cursor = self._acquire(workspace)
        with self._lock:
            self._active.add(cursor)
        try:
            return fn(Session(self, workspace, cursor))
        finally:
            with self._lock:
                self._active.discard(cursor)
            cursor.close()
            self._release(entry)

    async def run(self, workspace: str, fn: Callable[[Session], T]) -> T:
        """Run `fn` with a fresh Session on the workspace's file, on the plane's thread pool; return its result."""
        if self._pool is None:
            raise RuntimeError("the data plane is not open")
        validate_workspace_id(workspace)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._session_call, workspace, fn)

    @contextlib.asynccontextmanager
    async def writes_paused(self, workspace: str) -> AsyncIterator[None]:
        """Hold every writer of the workspace at its next write (reads go on): e.g. for a consistent copy."""
        lock = self._write_lock(workspace)
        acquired = asyncio.get_running_loop().run_in_executor(None, lock.acquire)
        try:
            await asyncio.shield(acquired)
        except asyncio.CancelledError:
            # The thread still takes the lock: give it back as soon as it has it.
            acquired.add_done_callback(lambda _: lock.release())
            raise
        try:
            yield
        finally:
            lock.release()

    async def prune_results(self, older_than: datetime) -> int:
        """Drop query-result tables created before `older_than`, in every workspace; how many were dropped."""

        def prune(session: Session) -> int:
            with session.writing():
                stale = session.execute(
                    f"SELECT name FROM {_RESULTS} WHERE created_at < ?", [to_micros(older_than)]
                ).fetchall()
                for (name,) in stale:
                    session.execute(f"DROP TABLE IF EXISTS {session.qualified(str(name))}")
                session.execute(f"DELETE FROM {_RESULTS} WHERE created_at < ?", [to_micros(older_than)])
            return len(stale)

        dropped = 0
        for workspace in self.workspaces():
            dropped += await self.run(workspace, prune)
        return dropped

    async def create_datasource(
        self,
        name: str,
        columns: Sequence[Column] | Sequence[Any],
        *,
        workspace: str,
        description: str = "",
        engine: Mapping[str, str] | None = None,
        type: str = "api",
    ) -> DataSource:
        validate_datasource_name(name)
        parsed = tuple(c for c in columns if isinstance(c, Column))
        if not parsed or len(parsed) != len(columns):
            parsed = parse_columns(columns)
        problem = self.limits.column_count_problem(len(parsed), "The schema")
        if problem is not None:
            raise InvalidArgument("schema", problem)
        return await self.run(
            workspace, lambda s: s.create(name, parsed, type=type, description=description, engine=engine)
        )

    async def find_datasource(self, name: str, *, workspace: str) -> DataSource | None:
        return await self.run(workspace, lambda s: s.find(name))

    async def get_datasource(self, name: str, *, workspace: str) -> DataSource:
        """The data source, or jobsd.errors.NotFound."""
        return await self.run(workspace, lambda s: s.get(name))

    async def list_datasources(self, *, workspace: str) -> list[DataSource]:
        return await self.run(workspace, lambda s: s.list())

    async def drop(self, name: str, *, workspace: str) -> None:
        await self.run(workspace, lambda s: s.drop(name))

    async def stats(self, name: str, *, workspace: str) -> TableStats:
        return await self.run(workspace, lambda s: s.stats(s.get(name)))

    async def query(
        self, sql: str, parameters: Sequence[Any] | None = None, *, workspace: str
    ) -> list[tuple[Any, ...]]:
        """Rows of a read query on the workspace's file, unchecked (tests and the demo use it; jobs never do)."""
        return await self.run(workspace, lambda s: list(s.execute(sql, parameters).fetchall()))
