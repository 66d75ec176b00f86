"""The embedded data plane: one DuckDB file in which a data source is a table.

Layout inside the file:
- one schema per workspace (named by the workspace id) holding its data sources, `<name>_quarantine` tables and
  background-query results (`_query_<job id hex>`); user SQL runs with that schema as the default, so it names
  data sources the way users know them;
- schema `_jobsd`: the data-source registry (`datasources`: one row per data source with its metadata object);
- schema `_jobsd_staging`: per-job staging tables, so an import or copy that fails leaves its target as it was.
  Leftovers of a crashed process are dropped when the plane opens.

DuckDB calls block, so every call runs on the plane's own thread pool (never on the event loop, and never starving
the loop's default executor that other parts of jobsd use), each with its own cursor. Writes to data sources and the
registry go through `Session.writing()`: one writer at a time, in one transaction, which keeps concurrent jobs on
one data source from failing on DuckDB's optimistic write conflicts. File access from SQL is disabled database-wide
(`enable_external_access=false`): user SQL cannot read or write files on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from jobsd.domain.clock import Clock, SystemClock, from_micros, to_micros
from jobsd.domain.model import datasource_id_for
from jobsd.errors import AlreadyExists, InvalidArgument, NotFound
from jobsd.executors.coltypes import Column, ColumnType, parse_column_type, type_from_duckdb
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.sqltext import NAME_PATTERN, describe_duckdb_error, quote_ident, split_qualified_name

__all__ = [
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

INTERNAL_SCHEMA = "_jobsd"
STAGING_SCHEMA = "_jobsd_staging"
QUARANTINE_SUFFIX = "_quarantine"
_REGISTRY = f"{quote_ident(INTERNAL_SCHEMA)}.datasources"
# Background-query results: kept for as long as their jobs are visible, then pruned.
_RESULTS = f"{quote_ident(INTERNAL_SCHEMA)}.results"

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


def _statistics_json(statistics: TableStats | None) -> dict[str, int] | None:
    return None if statistics is None else {"bytes": statistics.bytes, "row_count": statistics.row_count}


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
        return f"{quote_ident(self.workspace)}.{quote_ident(self.name)}"

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
            "statistics": _statistics_json(statistics),
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


class Session:
    """One cursor on one worker thread. Every method blocks; call them only inside `DataPlane.run`."""

    def __init__(self, plane: DataPlane, cursor: duckdb.DuckDBPyConnection) -> None:
        self.plane = plane
        self.cursor = cursor
        self._in_write = False

    @property
    def clock(self) -> Clock:
        return self.plane.clock

    def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> duckdb.DuckDBPyConnection:
        return self.cursor.execute(sql, parameters) if parameters is not None else self.cursor.execute(sql)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Session]:
        """One writer at a time, in one transaction: commit on success, roll back on any exception."""
        if self._in_write:
            yield self
            return
        with self.plane._write_lock:
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

    def schema_exists(self, schema: str) -> bool:
        row = self.execute("SELECT count(*) FROM duckdb_schemas() WHERE schema_name = ?", [schema]).fetchone()
        return bool(row and row[0])

    def use_workspace(self, workspace: str) -> None:
        """Make the workspace's schema the default for unqualified names (created on first use)."""
        if not self.schema_exists(workspace):
            with self.writing():
                self.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(workspace)}")
        self.execute(f"USE {quote_ident(workspace)}")

    def check_tables(self, sql: str, workspace: str, what: str) -> None:
        """User SQL may name only its own workspace's tables (unqualified, or qualified by its schema)."""
        try:
            names = self.cursor.get_table_names(sql, qualified=True)
        except duckdb.Error as error:
            raise ExecutionFailed(f"Invalid SQL in {what}: {describe_duckdb_error(error)}") from None
        outside = sorted(
            name for name in names if len(parts := split_qualified_name(name)) > 1 and parts[0] != workspace
        )
        if outside:
            raise ExecutionFailed(
                f"Invalid SQL in {what}: it may only read this workspace's data sources, by name "
                f"(not {', '.join(outside)})"
            )

    def table_exists(self, schema: str, table: str) -> bool:
        row = self.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ? AND table_name = ?", [schema, table]
        ).fetchone()
        return bool(row and row[0])

    def table_columns(self, schema: str, table: str) -> list[tuple[str, str, bool]]:
        """[(name, DuckDB type, nullable)] in table order."""
        rows = self.execute(
            "SELECT column_name, data_type, is_nullable FROM duckdb_columns() "
            "WHERE schema_name = ? AND table_name = ? ORDER BY column_index",
            [schema, table],
        ).fetchall()
        return [(str(name), str(data_type), bool(nullable)) for name, data_type, nullable in rows]

    def find(self, workspace: str, name: str) -> DataSource | None:
        row = self.execute(
            f"SELECT meta FROM {_REGISTRY} WHERE workspace = ? AND name = ?", [workspace, name]
        ).fetchone()
        if row is None:
            return None
        real = {n: type_from_duckdb(t, nullable) for n, t, nullable in self.table_columns(workspace, name)}
        return DataSource._from_registry(workspace, name, str(row[0]), real)

    def get(self, workspace: str, name: str) -> DataSource:
        found = self.find(workspace, name)
        if found is None:
            raise NotFound(f'Data source "{name}" not found')
        return found

    def list(self, workspace: str) -> list[DataSource]:
        names = self.execute(f"SELECT name FROM {_REGISTRY} WHERE workspace = ? ORDER BY name", [workspace]).fetchall()
        return [ds for (name,) in names if (ds := self.find(workspace, str(name))) is not None]

    def create(
        self,
        workspace: str,
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
            if self.find(workspace, name) is not None:
                raise AlreadyExists(f'Data source "{name}" already exists')
            self.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(workspace)}")
            declarations = ", ".join(f"{quote_ident(c.name)} {c.type.declaration}" for c in columns)
            self.execute(f"CREATE TABLE {quote_ident(workspace)}.{quote_ident(name)} ({declarations})")
            return self._register(workspace, name, tuple(columns), type, description, headers, engine)

    def create_from_query(self, workspace: str, name: str, select_sql: str) -> DataSource:
        """Create an empty table shaped like the query's result and register it (populate / copy targets)."""
        validate_datasource_name(name)
        with self.writing():
            table = f"{quote_ident(workspace)}.{quote_ident(name)}"
            self.execute(f"CREATE TABLE {table} AS SELECT * FROM ({select_sql}) LIMIT 0")
            columns = tuple(Column(n, type_from_duckdb(t, True)) for n, t, _ in self.table_columns(workspace, name))
            return self._register(workspace, name, columns, "query", "", None, None)

    def _register(
        self,
        workspace: str,
        name: str,
        columns: tuple[Column, ...],
        type: str,
        description: str,
        headers: Mapping[str, str] | None,
        engine: Mapping[str, str] | None,
    ) -> DataSource:
        now = self.clock.now()
        source = DataSource(
            workspace=workspace,
            name=name,
            # The id jobs on this data source carry too (the service derives it the same way).
            id=datasource_id_for(workspace, name),
            columns=columns,
            created_at=now,
            updated_at=now,
            type=type,
            description=description,
            headers=dict(headers or {}),
            engine=dict(engine or {}),
        )
        self.execute(f"INSERT INTO {_REGISTRY} VALUES (?, ?, ?)", [workspace, name, source._registry_json()])
        return source

    def touch(self, source: DataSource, headers: Mapping[str, str] | None = None) -> DataSource:
        """Mark the data source changed now (the metadata's updated_at), inside a write."""
        changed = replace(source, updated_at=self.clock.now(), headers={**source.headers, **(headers or {})})
        with self.writing():
            self.execute(
                f"UPDATE {_REGISTRY} SET meta = ? WHERE workspace = ? AND name = ?",
                [changed._registry_json(), source.workspace, source.name],
            )
        return changed

    def drop(self, workspace: str, name: str) -> None:
        with self.writing():
            if self.find(workspace, name) is None:
                raise NotFound(f'Data source "{name}" not found')
            self.execute(f"DROP TABLE IF EXISTS {quote_ident(workspace)}.{quote_ident(name)}")
            self.execute(f"DROP TABLE IF EXISTS {quote_ident(workspace)}.{quote_ident(name + QUARANTINE_SUFFIX)}")
            self.execute(f"DELETE FROM {_REGISTRY} WHERE workspace = ? AND name = ?", [workspace, name])

    def table_stats(self, schema: str, table: str) -> TableStats:
        """Rows, and bytes as the uncompressed size of the values (see _FIXED_WIDTH)."""
        fixed = 0
        variable: list[str] = []
        for name, data_type, _ in self.table_columns(schema, table):
            width = _FIXED_WIDTH.get(data_type)
            if width is not None:
                fixed += width
            elif data_type == "VARCHAR":
                variable.append(f"coalesce(sum(strlen({quote_ident(name)})), 0)")
            else:
                variable.append(f"coalesce(sum(strlen(CAST({quote_ident(name)} AS VARCHAR))), 0)")
        sums = "".join(", " + expression for expression in variable)
        row = self.execute(f"SELECT count(*){sums} FROM {quote_ident(schema)}.{quote_ident(table)}").fetchone()
        assert row is not None
        rows = int(row[0])
        return TableStats(bytes=rows * fixed + sum(int(v) for v in row[1:]), row_count=rows)

    def stats(self, source: DataSource) -> TableStats:
        return self.table_stats(source.workspace, source.name)

    def record_result(self, workspace: str, table: str) -> None:
        """Remember a query-result table so `DataPlane.prune_results` can drop it once its job is gone."""
        with self.writing():
            self.execute(f"DELETE FROM {_RESULTS} WHERE workspace = ? AND name = ?", [workspace, table])
            self.execute(f"INSERT INTO {_RESULTS} VALUES (?, ?, ?)", [workspace, table, to_micros(self.clock.now())])

    def staging_table(self, label: str) -> str:
        """A fresh staging-table name (quoted, schema-qualified) for one job step."""
        return f"{quote_ident(STAGING_SCHEMA)}.{quote_ident(label)}"

    def drop_table(self, table_sql: str) -> None:
        """Best-effort cleanup of a staging or temporary table."""
        with contextlib.suppress(duckdb.Error):
            self.execute(f"DROP TABLE IF EXISTS {table_sql}")

    def drop_view(self, view_sql: str) -> None:
        with contextlib.suppress(duckdb.Error):
            self.execute(f"DROP VIEW IF EXISTS {view_sql}")


class DataPlane:
    """The data plane over one DuckDB file. `await open()` (or `async with`) before use; `close()` is idempotent."""

    def __init__(self, path: Path, *, clock: Clock | None = None, threads: int = 6) -> None:
        self.path = Path(path)
        self.clock: Clock = clock or SystemClock()
        self._threads = threads
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._write_lock = threading.Lock()
        self._cursor_lock = threading.Lock()

    async def __aenter__(self) -> DataPlane:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._conn is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="jobsd-dataplane")
        loop = asyncio.get_running_loop()
        self._conn = await loop.run_in_executor(self._pool, self._connect)

    def _connect(self) -> duckdb.DuckDBPyConnection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = duckdb.connect(str(self.path), config={"enable_external_access": False})
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(INTERNAL_SCHEMA)}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_REGISTRY} (workspace VARCHAR, name VARCHAR, meta VARCHAR)")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {_RESULTS} (workspace VARCHAR, name VARCHAR, created_at BIGINT)")
        # Staging tables of a process that died mid-job: nothing references them any more.
        conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(STAGING_SCHEMA)} CASCADE")
        conn.execute(f"CREATE SCHEMA {quote_ident(STAGING_SCHEMA)}")
        return conn

    async def close(self) -> None:
        conn, pool = self._conn, self._pool
        self._conn, self._pool = None, None
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, pool.shutdown, True)
        if conn is not None:
            conn.close()

    def _session_call(self, fn: Callable[[Session], T]) -> T:
        if self._conn is None:
            raise RuntimeError("the data plane is closed")
        with self._cursor_lock:
            cursor = self._conn.cursor()
        try:
            return fn(Session(self, cursor))
        finally:
            cursor.close()

    async def run(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` with a fresh Session on the plane's thread pool and return its result."""
        if self._pool is None:
            raise RuntimeError("the data plane is not open")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._session_call, fn)

    @contextlib.asynccontextmanager
    async def writes_paused(self) -> AsyncIterator[None]:
        """Hold every writer at its next write (reads go on): e.g. for a consistent copy of the file."""
        acquired = asyncio.get_running_loop().run_in_executor(None, self._write_lock.acquire)
        try:
            await asyncio.shield(acquired)
        except asyncio.CancelledError:
            # The thread still takes the lock: give it back as soon as it has it.
            acquired.add_done_callback(lambda _: self._write_lock.release())
            raise
        try:
            yield
        finally:
            self._write_lock.release()

    async def prune_results(self, older_than: datetime) -> int:
        """Drop query-result tables created before `older_than`; how many were dropped."""

        def prune(session: Session) -> int:
            with session.writing():
                stale = session.execute(
                    f"SELECT workspace, name FROM {_RESULTS} WHERE created_at < ?", [to_micros(older_than)]
                ).fetchall()
                for workspace, name in stale:
                    session.execute(f"DROP TABLE IF EXISTS {quote_ident(workspace)}.{quote_ident(name)}")
                session.execute(f"DELETE FROM {_RESULTS} WHERE created_at < ?", [to_micros(older_than)])
            return len(stale)

        return await self.run(prune)

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
        return await self.run(
            lambda s: s.create(workspace, name, parsed, type=type, description=description, engine=engine)
        )

    async def find_datasource(self, name: str, *, workspace: str) -> DataSource | None:
        return await self.run(lambda s: s.find(workspace, name))

    async def get_datasource(self, name: str, *, workspace: str) -> DataSource:
        """The data source, or jobsd.errors.NotFound."""
        return await self.run(lambda s: s.get(workspace, name))

    async def list_datasources(self, *, workspace: str) -> list[DataSource]:
        return await self.run(lambda s: s.list(workspace))

    async def drop(self, name: str, *, workspace: str) -> None:
        await self.run(lambda s: s.drop(workspace, name))

    async def stats(self, name: str, *, workspace: str) -> TableStats:
        return await self.run(lambda s: s.stats(s.get(workspace, name)))

    async def query(
        self, sql: str, parameters: Sequence[Any] | None = None, *, workspace: str
    ) -> list[tuple[Any, ...]]:
        """Rows of a read query with the workspace as the default schema (tests and the demo use it)."""

        def fetch(session: Session) -> list[tuple[Any, ...]]:
            session.use_workspace(workspace)
            return list(session.execute(sql, parameters).fetchall())

        return await self.run(fetch)
