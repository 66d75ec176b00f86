"""Finding 2 — cross-workspace reads: populateview's `partition_by` was not checked like `params.sql` (a scalar
subquery on another workspace's table inside a CAST printed its rows), catalog functions listed every workspace's
tables, columns, row counts and the server's path, and an unknown table's error could suggest another workspace's.

Every attack here is a real job created over gRPC by the attacker workspace (beta) against a real jobsd whose other
workspace (alpha) holds SECRET_ROW; each must fail (or show only beta's own objects) and leak nothing of alpha's —
not its rows, its names, its id, nor the server's paths — in any job field, event, REST body or log record.
"""

from __future__ import annotations

from typing import Any

from jobsd.domain.model import datasource_id_for
from jobsd_client import pb

from .conftest import ALPHA_COLUMN, SECRET_ROW, LogRecords, Stack, seed_alpha_secrets

SOURCE_SQL = "SELECT id, count(*) AS n FROM events GROUP BY id"


async def seed_beta_events(stack: Stack) -> None:
    (stack.imports / "events.csv").write_text("id,label\n1,a\n2,b\n3,c\n")
    token = stack.beta.tokens["admin"]
    done = await stack.run(token, "import", "events", url=f"file://{stack.imports}/events.csv")
    assert done.status == pb.JOB_STATUS_DONE, done.error


async def seed(stack: Stack, logs: LogRecords) -> None:
    await seed_alpha_secrets(stack)
    await seed_beta_events(stack)
    stack.said.clear()
    logs.records.clear()


def assert_nothing_of_alpha(stack: Stack, logs: LogRecords) -> None:
    """Nothing the attacker could not have typed itself: alpha's rows, a column no attack names, alpha's data
    source id, the server's paths — in no response, job field, event, or log record."""
    said = stack.everything_said()
    alpha_source_id = datasource_id_for(stack.alpha.workspace_id, "secrets")
    for leaked in (SECRET_ROW, ALPHA_COLUMN, alpha_source_id, str(stack.state)):
        assert leaked not in said, leaked
        assert leaked not in logs.text(), leaked


async def test_partition_by_cannot_read_another_workspace(stack: Stack, logs: LogRecords) -> None:
    await seed(stack, logs)
    alpha = stack.alpha.workspace_id
    attacker = stack.beta.tokens["admin"]
    attempts = [
        # The finding's attack: the CAST error message would print the row.
        f'CAST((SELECT max(secret) FROM "{alpha}".secrets) AS INTEGER)',
        f'CAST((SELECT max(secret) FROM "{alpha}".main.secrets) AS INTEGER)',
        "CAST((SELECT max(secret) FROM secrets) AS INTEGER)",
        "CAST((SELECT string_agg(meta, ',') FROM _jobsd.datasources) AS INTEGER)",
        "CAST((SELECT string_agg(path, ',') FROM duckdb_databases()) AS INTEGER)",
        "CAST((SELECT string_agg(table_name, ',') FROM duckdb_tables) AS INTEGER)",
        "CAST(current_setting('temp_directory') AS INTEGER)",
        "id) FROM events; SELECT (1",
    ]
    for expression in attempts:
        job = await stack.run(
            attacker,
            "populateview",
            "by_id",
            query_sql=SOURCE_SQL,
            params={"source": "events", "partition_by": expression},
        )
        assert job.status == pb.JOB_STATUS_ERROR, expression
        assert job.error.startswith("Invalid SQL in params.partition_by: "), job.error
    status, listed = await stack.get("/v0/datasources", attacker)
    assert status == 200 and [d["name"] for d in listed["datasources"]] == ["events"]
    assert_nothing_of_alpha(stack, logs)


async def test_sql_and_delete_condition_cannot_read_another_workspace(stack: Stack, logs: LogRecords) -> None:
    await seed(stack, logs)
    alpha = stack.alpha.workspace_id
    attacker = stack.beta.tokens["admin"]
    queries = [
        f'SELECT * FROM "{alpha}".secrets',
        f'SELECT * FROM "{alpha}".main.secrets',
        "SELECT * FROM secrets",
        "SELECT * FROM _jobsd.datasources",
        "SELECT * FROM duckdb_tables()",
        "SELECT * FROM duckdb_columns()",
        "SELECT * FROM duckdb_databases()",
        "SELECT * FROM duckdb_databases",
        "SELECT * FROM pragma_table_info('secrets')",
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM query_table('secrets')",
        "SELECT current_setting('temp_directory')",
        "SUMMARIZE events",
    ]
    for sql in queries:
        for kind, datasource in (("query", None), ("copy", "copied")):
            job = await stack.run(attacker, kind, datasource, query_sql=sql)
            assert job.status == pb.JOB_STATUS_ERROR, (kind, sql)
            assert job.error.startswith("Invalid SQL in params.sql: "), job.error
    for condition in (f'id IN (SELECT id FROM "{alpha}".secrets)', "id IN (SELECT id FROM secrets)"):
        job = await stack.run(attacker, "delete_data", "events", params={"delete_condition": condition})
        assert job.status == pb.JOB_STATUS_ERROR
        assert job.error.startswith("Invalid SQL in delete_condition: "), job.error
    status, events = await stack.get("/v0/datasources/events", attacker)
    assert status == 200 and events["statistics"]["row_count"] == 3
    assert_nothing_of_alpha(stack, logs)


async def test_an_unknown_table_never_suggests_another_workspace_s(stack: Stack, logs: LogRecords) -> None:
    """alpha has `secrets`; beta asks for `secret`. The error can only ever suggest beta's own tables."""
    await seed(stack, logs)
    job = await stack.run(stack.beta.tokens["admin"], "query", None, query_sql="SELECT * FROM secret")
    assert job.status == pb.JOB_STATUS_ERROR
    assert job.error == "Invalid SQL in params.sql: Catalog Error: Table with name secret does not exist!"
    assert_nothing_of_alpha(stack, logs)


async def test_the_workspace_s_own_catalog_is_all_a_job_sees(stack: Stack, logs: LogRecords) -> None:
    """A job of beta that legitimately summarises its own data gets its own figures; alpha's never appear."""
    await seed(stack, logs)
    job = await stack.run(
        stack.beta.tokens["admin"], "query", None, query_sql="SELECT count(*) AS n, max(label) AS last FROM events"
    )
    assert job.status == pb.JOB_STATUS_DONE, job.error
    result: dict[str, Any] = {k: v for k, v in job.result.items()}
    assert list(result["preview"][0]) == [3, "c"]
    assert_nothing_of_alpha(stack, logs)
