"""SQL text jobsd writes itself: quoted identifiers, qualified names, readable DuckDB errors.

Names jobsd puts into SQL are always quoted identifiers, so a data-source name can never inject SQL. What users
write is checked by `sqlcheck`, the one checker of user SQL.
"""

from __future__ import annotations

import re

__all__ = [
    "NAME_PATTERN",
    "describe_duckdb_error",
    "quote_ident",
    "split_qualified_name",
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
