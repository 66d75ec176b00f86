"""The `copy` executor: the result of an SQL query into a data source, appended or replacing its contents.

Job fields: `datasource.name` (the target; created from the query's columns if missing), params `sql` (one SELECT;
`query_sql` is used when params.sql is absent) and `mode` (append — the default — or replace). The copy is one
transaction: a failure or a cancel leaves the target as it was. Cancellable while working: a cancel request
interrupts the running statement (DuckDB rolls it back) and the job ends CANCELLED.

`processed_data` is measured: `read_rows` = rows the query scanned (DuckDB's profiler), `read_bytes` = those rows
times the average row size of the data source each was scanned from, `written_rows` = rows inserted,
`written_bytes` = the growth of the target (for replace: its new size). `statistics` = the target's bytes and rows;
`result.datasource` = the target's full metadata object after the copy (the job detail's `datasource`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb

from jobsd.executors.abortable import Interrupted, run_cancellable
from jobsd.executors.context import ExecutionContext, JobInput
from jobsd.executors.dataplane import DataPlane, DataSource, Session, TableStats
from jobsd.executors.errors import ExecutionCancelled, ExecutionFailed
from jobsd.executors.sqltext import split_qualified_name

__all__ = ["CopyOutcome", "run_copy", "scanned_bytes"]


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    read_rows: int
    read_bytes: int
    written_rows: int
    written_bytes: int
    statistics: TableStats
    datasource: DataSource  # the target, as it is after the copy


def _scans(operator: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """(table as catalog.schema.table, rows scanned) for every table scan in a DuckDB JSON profile."""
    table = (operator.get("extra_info") or {}).get("Table")
    if table and "rows_scanned" in operator:
        yield str(table), int(operator["rows_scanned"])
    # The profile's root lists its plan under "operator"; operators list theirs under "children".
    for child in (*(operator.get("operator") or ()), *(operator.get("children") or ())):
        yield from _scans(child)


def scanned_bytes(session: Session, profile: dict[str, Any]) -> tuple[int, int]:
    """(rows, bytes) read by the profiled statement, bytes estimated from each scanned table's average row size."""
    rows = int((profile.get("query") or {}).get("total_rows_scanned") or 0)
    total_bytes = 0
    average: dict[str, float] = {}
    for table, scanned in _scans(profile):
        if table not in average:
            parts = split_qualified_name(table)
            own = len(parts) == 3 and parts[0] == session.workspace
            stats = session.table_stats(parts[2], parts[1]) if own else TableStats(0, 0)
            average[table] = stats.bytes / stats.row_count if stats.row_count else 0.0
        total_bytes += round(scanned * average[table])
    return rows, total_bytes


def _copy(session: Session, stopping: threading.Event, job: JobInput, target: str, sql: str, mode: str) -> CopyOutcome:
    sql = session.check_query(sql, "params.sql")
    try:
        session.execute(f"DESCRIBE {sql}")
    except duckdb.Error as error:
        raise session.sql_failure(error, "params.sql") from None
    try:
        with session.writing():
            source = session.find(target) or session.create_from_query(target, sql)
            before = session.stats(source) if mode == "append" else TableStats(0, 0)
            if mode == "replace":
                session.execute(f"DELETE FROM {source.table_sql}")
            if stopping.is_set():
                raise Interrupted
            # EXPLAIN ANALYZE runs the INSERT and returns its profile: the plane's configuration is locked, so
            # profiling cannot be switched on with a PRAGMA.
            plan = session.execute(
                f"EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO {source.table_sql} BY NAME SELECT * FROM ({sql})"
            ).fetchone()
            profile = json.loads(str(plan[1])) if plan else {}
            after = session.stats(source)
            source = session.touch(source)
    except duckdb.InterruptException:
        raise Interrupted from None
    except duckdb.Error as error:
        raise session.sql_failure(error, "params.sql") from None
    read_rows, read_bytes = scanned_bytes(session, profile)
    return CopyOutcome(
        read_rows=read_rows,
        read_bytes=read_bytes,
        written_rows=after.row_count - before.row_count,
        written_bytes=max(0, after.bytes - before.bytes),
        statistics=after,
        datasource=source,
    )


async def run_copy(ctx: ExecutionContext, plane: DataPlane) -> None:
    job = JobInput.of(ctx)
    target = job.require_datasource()
    sql = job.text_param("sql", required=True, fallback=job.query_sql)
    mode = job.mode or "append"
    if mode not in ("append", "replace"):
        raise ExecutionFailed(f"Unknown copy mode {mode!r}: use append or replace")
    if ctx.cancel_requested:
        raise ExecutionCancelled
    outcome = await run_cancellable(
        ctx, plane, job.workspace, lambda session, stopping: _copy(session, stopping, job, target, sql, mode)
    )
    ctx.report(
        progress_percentage=100.0,
        processed_data={
            "read_rows": outcome.read_rows,
            "read_bytes": outcome.read_bytes,
            "written_rows": outcome.written_rows,
            "written_bytes": outcome.written_bytes,
        },
        statistics=outcome.statistics.json(),
        result={"datasource": outcome.datasource.job_json(outcome.statistics)},
    )
