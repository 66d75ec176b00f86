"""The one checker every SQL-bearing job input goes through: `params.sql` / `query_sql`, `partition_by`,
`delete_condition`, and any input added later.

Isolation itself comes from construction (see `dataplane`): a job's statement runs on a connection to its own
workspace's DuckDB file only, opened with file access off and its configuration locked. This checker is the second
wall and the source of clear errors. It parses the text with DuckDB itself (`json_serialize_sql`, the parser DuckDB
then runs, on a private in-memory connection that holds no data) and walks the syntax tree:

- a query is exactly one SELECT; an expression is exactly one expression (it is parsed wrapped as
  `SELECT (<expression>)` and must come back as that and nothing else, so `1); DROP ...` cannot escape);
- every table reference is a name: a CTE in scope, or a table of the workspace's own `main` schema, unqualified or
  qualified by `main` / the workspace's catalog (the resolution against the workspace's catalog happens in
  `Session.check_query`, which knows its tables); never jobsd's internal schemas, `information_schema`,
  `pg_catalog`, the system catalog's views (`duckdb_databases`, `duckdb_settings`, ...), files or other catalogs;
- table functions only from a short allow-list (`range`, `generate_series`, `unnest`, `json_each`, `json_tree`):
  the catalog and metadata ones (`duckdb_*()`, `pragma_*()`), the readers (`read_csv`, ...) and the ones that run
  SQL from a string (`query`, `query_table`, `json_execute_serialized_sql`) are refused;
- scalar functions that reveal the server (`current_setting`: it shows the data directory) are refused.

Errors start with `Invalid SQL in <field>:` and never name anything outside the workspace.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import duckdb

from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.sqltext import describe_duckdb_error

__all__ = [
    "ALLOWED_TABLE_FUNCTIONS",
    "REFUSED_FUNCTIONS",
    "CheckedSql",
    "TableName",
    "check_expression",
    "check_query",
]

ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree"})
# Scalar functions (and macros) a job may not call. current_setting shows the temp directory, i.e. the server's data
# path; the others run SQL given as a string, which this checker could not see.
REFUSED_FUNCTIONS = frozenset({"current_setting", "query", "query_table", "json_execute_serialized_sql"})
# Table-reference kinds a SELECT may use. SHOW_REF (DESCRIBE, SUMMARIZE, SHOW) and anything new are refused.
_ALLOWED_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "PIVOT"})
_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})


@dataclass(frozen=True, slots=True)
class TableName:
    """A table reference as written: catalog and schema are "" when not given."""

    catalog: str
    schema: str
    table: str

    def __str__(self) -> str:
        return ".".join(part for part in (self.catalog, self.schema, self.table) if part)


@dataclass(frozen=True, slots=True)
class CheckedSql:
    """SQL that passed the syntactic checks: its text (trimmed) and the tables it names outside CTEs."""

    text: str
    tables: tuple[TableName, ...]


class _Parser:
    """DuckDB's parser on a private in-memory database: no catalog of jobsd's, no file access."""

    def __init__(self) -> None:
        self._conn = duckdb.connect(":memory:", config={"enable_external_access": False})
        self._lock = threading.Lock()
        rows = self._conn.execute(
            "SELECT lower(view_name) FROM duckdb_views() WHERE database_name = 'system' "
            "UNION SELECT lower(table_name) FROM duckdb_tables() WHERE database_name = 'system'"
        ).fetchall()
        # Names the system catalog answers for (duckdb_databases, sqlite_master, ...): never a CTE's name, so a CTE
        # used out of its scope can only fall back to the workspace's own tables.
        self.system_names = frozenset(str(name) for (name,) in rows)

    def statements(self, sql: str) -> list[duckdb.Statement]:
        with self._lock:
            return list(self._conn.extract_statements(sql))

    def tree(self, sql: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
        assert row is not None
        parsed: dict[str, Any] = json.loads(str(row[0]))
        return parsed


_parser_lock = threading.Lock()
_parser_instance: _Parser | None = None


def _parser() -> _Parser:
    # One per process, made on first use: the parser holds no state but DuckDB's own (the connection).
    global _parser_instance
    with _parser_lock:
        if _parser_instance is None:
            _parser_instance = _Parser()
        return _parser_instance


def _fail(field: str, problem: str) -> ExecutionFailed:
    return ExecutionFailed(f"Invalid SQL in {field}: {problem}")


def _one_select_tree(sql: str, field: str) -> dict[str, Any]:
    parser = _parser()
    try:
        statements = parser.statements(sql)
    except duckdb.Error as error:
        raise _fail(field, describe_duckdb_error(error)) from None
    if len(statements) != 1:
        raise _fail(field, f"expected one SELECT query, got {len(statements)} statements")
    if statements[0].type != duckdb.StatementType.SELECT:
        raise _fail(field, f"expected a SELECT query, got a {statements[0].type.name} statement")
    tree = parser.tree(sql)
    if tree.get("error"):
        raise _fail(field, str(tree.get("error_message") or "it cannot be parsed"))
    listed = tree.get("statements") or []
    if len(listed) != 1:
        raise _fail(field, "expected one SELECT query")
    statement: dict[str, Any] = listed[0]
    return statement


class _Walker:
    """Walks one statement's tree: refuses what a job may not use, collects the table names it reads."""

    def __init__(self, field: str, system_names: frozenset[str]) -> None:
        self.field = field
        self.system_names = system_names
        self.tables: list[TableName] = []

    def walk(self, node: Any, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type")
        if isinstance(kind, str) and "class" not in node:
            if kind in _QUERY_NODES:
                self._query_node(node, ctes)
                return
            if "alias" in node and "sample" in node:
                self._table_ref(node, kind, ctes)
        if node.get("class") == "FUNCTION":
            self._function(node)
        for value in node.values():
            if isinstance(value, dict | list):
                self.walk(value, ctes)

    def _query_node(self, node: dict[str, Any], ctes: frozenset[str]) -> None:
        """A query node sees the CTEs of the scopes around it and its own; a CTE's body sees the earlier ones."""
        visible = set(ctes)
        for entry in (node.get("cte_map") or {}).get("map") or ():
            name = str(entry.get("key", "")).lower()
            if name in self.system_names:
                raise _fail(self.field, f'"{entry.get("key")}" is a reserved name: give the CTE another name')
            # The body sees itself (WITH RECURSIVE) and the CTEs defined before it, not the later ones.
            self.walk(entry.get("value"), frozenset(visible | {name}))
            visible.add(name)
        recursive = node.get("cte_name")
        if node.get("type") == "RECURSIVE_CTE_NODE" and isinstance(recursive, str):
            visible.add(recursive.lower())
        scope = frozenset(visible)
        for key, value in node.items():
            if key != "cte_map" and isinstance(value, dict | list):
                self.walk(value, scope)

    def _table_ref(self, node: dict[str, Any], kind: str, ctes: frozenset[str]) -> None:
        if kind not in _ALLOWED_REFS:
            shown = "DESCRIBE, SUMMARIZE and SHOW" if kind == "SHOW_REF" else kind
            raise _fail(self.field, f"{shown} cannot be used in a job: read the data sources with SELECT")
        if kind == "BASE_TABLE":
            name = TableName(
                str(node.get("catalog_name") or ""), str(node.get("schema_name") or ""), str(node.get("table_name"))
            )
            if name.catalog or name.schema or name.table.lower() not in ctes:
                self.tables.append(name)
        elif kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            called = str(function.get("function_name") or "").lower()
            if called not in ALLOWED_TABLE_FUNCTIONS or function.get("catalog") or function.get("schema"):
                allowed = ", ".join(sorted(ALLOWED_TABLE_FUNCTIONS))
                raise _fail(self.field, f"table function {called}() cannot be used in a job (these can: {allowed})")

    def _function(self, node: dict[str, Any]) -> None:
        called = str(node.get("function_name") or "").lower()
        if called in REFUSED_FUNCTIONS or called.startswith(("duckdb_", "pragma_")):
            raise _fail(self.field, f"function {called}() cannot be used in a job")


def _walk(statement: dict[str, Any], field: str) -> tuple[TableName, ...]:
    walker = _Walker(field, _parser().system_names)
    walker.walk(statement.get("node"), frozenset())
    return tuple(dict.fromkeys(walker.tables))


def check_query(sql: str, field: str) -> CheckedSql:
    """One SELECT, with nothing a job may not use; the table names it reads are left to the session to resolve."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise _fail(field, "it is empty; give one SELECT query")
    return CheckedSql(text, _walk(_one_select_tree(text, field), field))


def check_expression(expression: str, field: str, *, what: str = "expression") -> CheckedSql:
    """One SQL expression (`what` says which kind, for the error: "boolean expression"), subqueries included."""
    text = expression.strip()
    if not text:
        raise _fail(field, f"it is empty; give one {what}")
    try:
        statement = _one_select_tree(f"SELECT ({text})", field)
    except ExecutionFailed as failure:
        if "statements" in failure.message or "expected a SELECT" in failure.message:
            raise _fail(field, f"it must be one {what}") from None
        raise
    node = statement.get("node") or {}
    alone = (
        node.get("type") == "SELECT_NODE"
        and len(node.get("select_list") or ()) == 1
        and (node.get("from_table") or {}).get("type") == "EMPTY"
        and not any(node.get(key) for key in ("where_clause", "group_expressions", "having", "qualify", "sample"))
        and not node.get("modifiers")
        and not (node.get("cte_map") or {}).get("map")
    )
    if not alone:
        raise _fail(field, f"it must be one {what}")
    return CheckedSql(text, _walk(statement, field))
