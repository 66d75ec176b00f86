"""The `populateview` executor: a materialized node (a SELECT over a source) populates a target, partition by partition.

Job fields: `datasource.name` (the target; created from the query's columns if missing) and params `sql` (one SELECT
over the source; `query_sql` is used when params.sql is absent), `source` (the source data source) and optionally
`partition_by` (an SQL expression over the source's columns, e.g. `toYYYYMM(date)` style: `date_trunc('month', d)`).

One query per partition — one per distinct value of `partition_by` over the source, in order; a single query when
there is no partition_by — each with a ULID in `queries[]` and a status waiting -> working -> done (error if it
fails). For each query the source name, inside the SQL, means only that partition's rows: a temporary view of the
same name shadows the table. `progress_percentage` = done / total * 100 as they finish.

Cancellable while working: after each partition the executor flushes its figures (which also refreshes the
cancel flag), and a cancel request interrupts the partition in flight (its transaction is rolled back). It stops
with the finished partitions kept in the target, the remaining queries left "waiting" (as the reference shows
them while cancelling), and the job ends CANCELLED.

When partitions were written (done, or cancelled after some): `statistics` of the target, `result.written_rows`, and
`result.datasource` = the target's full metadata object as it is then (the job detail's `datasource`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import duckdb

from jobsd.domain.clock import Clock
from jobsd.executors.abortable import Interrupted, run_interruptible
from jobsd.executors.context import ExecutionContext, JobInput
from jobsd.executors.dataplane import DataPlane, DataSource, Session, TableStats, validate_datasource_name
from jobsd.executors.errors import ExecutionCancelled, ExecutionFailed
from jobsd.executors.ids import new_query_id
from jobsd.executors.sqltext import quote_ident

__all__ = ["MAX_PARTITIONS", "run_populate"]

MAX_PARTITIONS = 1000
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Plan:
    workspace: str
    target: str
    source: str
    sql: str
    partition_by: str
    # Table of the partition values, numbered from 0 (only with partition_by).
    partitions_table: str
    partitions: int


def _source_name(job: JobInput) -> str:
    name = job.text_param("source", required=True)
    try:
        return validate_datasource_name(name, "params.source")
    except Exception as error:
        raise ExecutionFailed(str(error)) from None


def _plan(session: Session, job: JobInput, target: str, source: str, sql: str, partition_by: str) -> _Plan:
    """Check everything before writing anything: the source exists, the SQL binds, the partitions are few enough."""
    if source == target:
        raise ExecutionFailed(f'The target data source cannot be the source "{source}"')
    if session.find(source) is None:
        raise ExecutionFailed(f'Data source "{source}" not found (params.source)')
    sql = session.check_query(sql, "params.sql")
    try:
        session.execute(f"DESCRIBE {sql}")
    except duckdb.Error as error:
        raise session.sql_failure(error, "params.sql") from None
    if not partition_by:
        return _Plan(job.workspace, target, source, sql, "", "", 1)
    partition_by = session.check_expression(partition_by, "params.partition_by")
    table = session.staging_table(f"{uuid.uuid4().hex}_partitions")
    source_sql = session.qualified(source)
    try:
        session.execute(
            f"CREATE TABLE {table} AS SELECT v, (row_number() OVER (ORDER BY v NULLS LAST)) - 1 AS i "
            f"FROM (SELECT DISTINCT ({partition_by}) AS v FROM {source_sql})"
        )
    except duckdb.Error as error:
        raise session.sql_failure(error, "params.partition_by") from None
    row = session.execute(f"SELECT count(*) FROM {table}").fetchone()
    count = int(row[0]) if row else 0
    if count > MAX_PARTITIONS:
        session.drop_table(table)
        raise ExecutionFailed(
            f"params.partition_by gives {count} partitions, at most {MAX_PARTITIONS} are allowed: "
            "use a coarser expression (e.g. a month instead of a day)"
        )
    # An empty source still gets one query, over no rows.
    return _Plan(job.workspace, target, source, sql, partition_by, table, max(count, 1))


def _ensure_target(session: Session, plan: _Plan) -> None:
    if session.find(plan.target) is None:
        try:
            session.create_from_query(plan.target, plan.sql)
        except duckdb.Error as error:
            raise session.sql_failure(error, "params.sql") from None


def _run_partition(session: Session, plan: _Plan, index: int) -> int:
    """Insert one partition's rows into the target; the number of rows written."""
    view = f"temp.main.{quote_ident(plan.source)}"
    if plan.partition_by:
        source_sql = session.qualified(plan.source)
        session.execute(
            f"CREATE OR REPLACE TEMP VIEW {quote_ident(plan.source)} AS SELECT * FROM {source_sql} "
            f"WHERE ({plan.partition_by}) IS NOT DISTINCT FROM "
            f"(SELECT v FROM {plan.partitions_table} WHERE i = {int(index)})"
        )
    try:
        with session.writing():
            target = session.get(plan.target)
            row = session.execute(f"INSERT INTO {target.table_sql} BY NAME SELECT * FROM ({plan.sql})").fetchone()
            session.touch(target)
    except duckdb.Error as error:
        raise session.sql_failure(error, "params.sql") from None
    finally:
        if plan.partition_by:
            session.drop_view(view)
    return int(row[0]) if row else 0


def _target_now(session: Session, plan: _Plan) -> tuple[DataSource, TableStats]:
    target = session.get(plan.target)
    return target, session.stats(target)


def _report_target(
    ctx: ExecutionContext, target: DataSource, stats: TableStats, written: int, progress: float | None = None
) -> None:
    """Statistics and the target's full metadata object (`result.datasource`), as they are now."""
    ctx.report(
        progress_percentage=progress,
        statistics=stats.json(),
        result={"written_rows": written, "datasource": target.job_json(stats)},
    )


async def run_populate(ctx: ExecutionContext, plane: DataPlane, *, clock: Clock) -> None:
    job = JobInput.of(ctx)
    target = job.require_datasource()
    source = _source_name(job)
    sql = job.text_param("sql", required=True, fallback=job.query_sql)
    partition_by = job.text_param("partition_by")

    def step(fn: Callable[[Session], T], *, cancellable: bool = False) -> Awaitable[T]:
        """One step on the plane, its statement interrupted when the job is stopped (and, if `cancellable`, on a
        cancel request: Interrupted)."""
        cancel = ctx.wait_cancel_requested if cancellable else None
        return run_interruptible(plane, job.workspace, lambda session, _: fn(session), cancel)

    # Planning and creating the target are short; a cancel request is noticed after them, before a partition.
    plan = await step(lambda session: _plan(session, job, target, source, sql, partition_by))
    try:
        queries = [{"query_id": new_query_id(clock), "status": "waiting"} for _ in range(plan.partitions)]
        ctx.report(queries=queries, progress_percentage=0.0)
        await ctx.flush()
        await step(lambda session: _ensure_target(session, plan))
        written = 0
        for index, query in enumerate(queries):
            if ctx.cancel_requested:
                if index:  # the finished partitions stay: the target changed
                    _report_target(ctx, *await plane.run(job.workspace, lambda s: _target_now(s, plan)), written)
                raise ExecutionCancelled
            query["status"] = "working"
            ctx.report(queries=queries)
            try:
                written += await step(functools.partial(_run_partition, plan=plan, index=index), cancellable=True)
            except Interrupted:
                # The partition's transaction was rolled back: it is as if it had not started.
                query["status"] = "waiting"
                ctx.report(queries=queries)
                if index:
                    _report_target(ctx, *await plane.run(job.workspace, lambda s: _target_now(s, plan)), written)
                raise ExecutionCancelled from None
            except Exception:
                query["status"] = "error"
                ctx.report(queries=queries)
                raise
            query["status"] = "done"
            ctx.report(queries=queries, progress_percentage=100.0 * (index + 1) / len(queries))
            await ctx.flush()
        _report_target(ctx, *await plane.run(job.workspace, lambda s: _target_now(s, plan)), written, 100.0)
    finally:
        if plan.partitions_table:
            await plane.run(job.workspace, lambda session: session.drop_table(plan.partitions_table))
