"""SQL text that users hand to executors: quoting identifiers, accepting exactly one SELECT, readable errors.

User SQL runs on the shared DuckDB data plane, so it is checked before it runs: one statement, and a SELECT
(`extract_statements` parses it the way DuckDB will). Names jobsd puts into SQL are always quoted identifiers, so a
data-source name can never inject SQL. File access from SQL is switched off for the whole database (see dataplane).
"""

from __future__ import annotations

import re

import duckdb

from jobsd.executors.errors import ExecutionFailed

__all__ = [
    "NAME_PATTERN",
    "check_delete_condition",
    "check_expression",
    "check_select",
    "describe_duckdb_error",
    "quote_ident",
    "split_qualified_name",
    "sql_failure",
]

# Data-source names: letters, digits and underscores, not starting with a digit (Tinybird's rule).
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def quote_ident(name: str) -> str:
    """A DuckDB quoted identifier: any string, embedded quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


_NAME_PART = re.compile(r'"((?:[^"]|"")*)"|([^."]+)')


def split_qualified_name(name: str) -> list[str]:
    """`db."my schema".t` -> ["db", "my schema", "t"] (DuckDB writes qualified names like this)."""
    return [quoted.replace('""', '"') if quoted else plain for quoted, plain in _NAME_PART.findall(name)]


def describe_duckdb_error(error: BaseException) -> str:
    """DuckDB's message without the caret diagram: 'Catalog Error: Table with name x does not exist!'."""
    text = str(error).strip()
    head = text.split("\n\nLINE ", 1)[0]
    return " ".join(line.strip() for line in head.splitlines() if line.strip())


def _statements(sql: str, what: str) -> list[duckdb.Statement]:
    try:
        return list(duckdb.extract_statements(sql))
    except duckdb.Error as error:
        raise ExecutionFailed(f"Invalid SQL in {what}: {describe_duckdb_error(error)}") from None


def check_select(sql: str, what: str = "sql") -> str:
    """The SQL without a trailing semicolon, if it is exactly one SELECT; ExecutionFailed otherwise."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise ExecutionFailed(f"Invalid SQL in {what}: it is empty; give one SELECT query")
    statements = _statements(text, what)
    if len(statements) != 1:
        raise ExecutionFailed(f"Invalid SQL in {what}: expected one SELECT query, got {len(statements)} statements")
    if statements[0].type != duckdb.StatementType.SELECT:
        kind = statements[0].type.name
        raise ExecutionFailed(f"Invalid SQL in {what}: expected a SELECT query, got a {kind} statement")
    return text


def check_expression(expression: str, what: str) -> str:
    """An SQL expression that stays one expression once wrapped (no `1); DROP ...` escapes)."""
    text = expression.strip()
    if not text:
        raise ExecutionFailed(f"Invalid SQL in {what}: it is empty")
    check_select(f"SELECT ({text})", what)
    return text


def check_delete_condition(condition: str, table_sql: str) -> str:
    """The DELETE statement for a user's condition, checked to be one DELETE of this table only."""
    text = condition.strip()
    if not text:
        raise ExecutionFailed("Invalid delete_condition: it is empty; give an SQL boolean expression, e.g. id < 100")
    statement = f"DELETE FROM {table_sql} WHERE ({text})"
    statements = _statements(statement, "delete_condition")
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.DELETE:
        raise ExecutionFailed("Invalid SQL in delete_condition: it must be one boolean expression")
    return statement


def sql_failure(error: duckdb.Error, what: str) -> ExecutionFailed:
    """The ExecutionFailed for a DuckDB error raised by user SQL (`what` names the job field that held it)."""
    return ExecutionFailed(f"Invalid SQL in {what}: {describe_duckdb_error(error)}")
