"""The `delete_data` executor: delete the rows of a data source that match a condition.

Job fields: `datasource.name` and params `delete_condition` (an SQL boolean over the data source's columns, e.g.
`country = 'ES' AND day < DATE '2024-01-01'`). The condition is checked to stay one expression of one DELETE of
this data source (no `1=1); DROP ...`). One transaction: a bad condition, or a stop (the run-time limit, a
shutdown: the statement is interrupted), changes nothing. Figures: `statistics` of the data source after,
`result.rows_affected` = rows deleted, `result.datasource` = its full metadata object after.
"""

from __future__ import annotations

import threading

import duckdb

from jobsd.executors.abortable import Interrupted, run_cancellable
from jobsd.executors.context import ExecutionContext, JobInput
from jobsd.executors.dataplane import DataPlane, DataSource, Session, TableStats
from jobsd.executors.errors import ExecutionFailed

__all__ = ["run_delete"]


def _delete(
    session: Session, stopping: threading.Event, job: JobInput, name: str, condition: str
) -> tuple[int, DataSource, TableStats]:
    source = session.find(name)
    if source is None:
        raise ExecutionFailed(f'Data source "{name}" not found')
    condition = session.check_expression(condition, "delete_condition", what="boolean expression")
    if stopping.is_set():
        raise Interrupted
    try:
        with session.writing():
            row = session.execute(f"DELETE FROM {source.table_sql} WHERE ({condition})").fetchone()
            source = session.touch(source)
    except duckdb.InterruptException:
        raise Interrupted from None
    except duckdb.Error as error:
        raise session.sql_failure(error, "delete_condition") from None
    return (int(row[0]) if row else 0), source, session.stats(source)


async def run_delete(ctx: ExecutionContext, plane: DataPlane) -> None:
    job = JobInput.of(ctx)
    name = job.require_datasource()
    condition = job.text_param("delete_condition", required=True)
    deleted, source, stats = await run_cancellable(
        ctx, plane, job.workspace, lambda session, stopping: _delete(session, stopping, job, name, condition)
    )
    ctx.report(
        progress_percentage=100.0,
        statistics=stats.json(),
        result={"rows_affected": deleted, "datasource": source.job_json(stats)},
    )
