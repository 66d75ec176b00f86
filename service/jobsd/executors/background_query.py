"""The `query` executor: a background SQL query whose result is kept in the data plane.

Job fields: params `sql` (one SELECT; `query_sql` is used when params.sql is absent). The result is stored as table
`_query_<job id hex>` in the workspace's schema (not a data source: it does not appear in the list, and its name
cannot be taken by one), for as long as the job is visible (the runner prunes older results). Figures:
`statistics` = rows returned and the result's size in bytes (the same uncompressed measure as data sources),
`result` = {"table", "columns": [{name, type}], "row_count", "preview": first rows}.
The running statement is interrupted when the job is stopped — its run-time limit, a lost lease, a worker
shutdown — or cancelled (a `query` job is not cancellable by users while working, docs/contract.md#the-job; a
declared kind running this executor may be).
"""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid
from typing import Any

import duckdb

from jobsd.executors.abortable import Interrupted, run_cancellable
from jobsd.executors.coltypes import type_from_duckdb
from jobsd.executors.context import ExecutionContext, JobInput
from jobsd.executors.dataplane import DataPlane, Session, TableStats

__all__ = ["PREVIEW_ROWS", "result_table_name", "run_query"]

PREVIEW_ROWS = 10


def result_table_name(job_id: str) -> str:
    try:
        return "_query_" + uuid.UUID(job_id).hex
    except ValueError:
        return "_query_" + "".join(c for c in job_id if c.isalnum())[:64]


def _json_value(value: Any) -> Any:
    """A value the job's result Struct can hold (numbers, text, booleans, null, lists)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


def _query(session: Session, stopping: threading.Event, job: JobInput, sql: str) -> tuple[TableStats, dict[str, Any]]:
    sql = session.check_query(sql, "params.sql")
    name = result_table_name(job.job_id)
    table = session.qualified(name)
    if stopping.is_set():
        raise Interrupted
    try:
        session.execute(f"CREATE OR REPLACE TABLE {table} AS {sql}")
    except duckdb.InterruptException:
        raise Interrupted from None
    except duckdb.Error as error:
        raise session.sql_failure(error, "params.sql") from None
    session.record_result(name)
    stats = session.table_stats(name)
    columns = [
        {"name": column, "type": type_from_duckdb(duck, nullable).name}
        for column, duck, nullable in session.table_columns(name)
    ]
    preview = session.execute(f"SELECT * FROM {table} LIMIT {PREVIEW_ROWS}").fetchall()
    result = {
        "table": name,
        "columns": columns,
        "row_count": stats.row_count,
        "preview": [[_json_value(v) for v in row] for row in preview],
    }
    return stats, result


async def run_query(ctx: ExecutionContext, plane: DataPlane) -> None:
    job = JobInput.of(ctx)
    sql = job.text_param("sql", required=True, fallback=job.query_sql)
    stats, result = await run_cancellable(
        ctx, plane, job.workspace, lambda session, stopping: _query(session, stopping, job, sql)
    )
    ctx.report(progress_percentage=100.0, statistics=stats.json(), result=result)
