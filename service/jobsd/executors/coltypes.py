"""Column types: the Tinybird names users write (`Int64`, `Nullable(String)`, ...) and the DuckDB types behind them.

A data source column is declared with a Tinybird-style type. Every type but `Nullable(T)` is NOT NULL in DuckDB, as
in ClickHouse: an import row with an empty or missing value for such a column goes to quarantine instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Column", "ColumnType", "parse_column_type", "type_from_duckdb"]

# Tinybird (ClickHouse) type name -> DuckDB type. Kept small on purpose: the types a CSV or NDJSON file carries.
_DUCKDB_BY_NAME: dict[str, str] = {
    "Int8": "TINYINT",
    "Int16": "SMALLINT",
    "Int32": "INTEGER",
    "Int64": "BIGINT",
    "UInt8": "UTINYINT",
    "UInt16": "USMALLINT",
    "UInt32": "UINTEGER",
    "UInt64": "UBIGINT",
    "Float32": "FLOAT",
    "Float64": "DOUBLE",
    "String": "VARCHAR",
    "DateTime": "TIMESTAMP",
    "DateTime64": "TIMESTAMP",
    "Date": "DATE",
    "Bool": "BOOLEAN",
    "UUID": "UUID",
}
# Also accepted on input, written back with the canonical name.
_ALIASES = {"Boolean": "Bool", "Int": "Int32", "Float": "Float64", "Text": "String"}
# DuckDB type -> the Tinybird name shown for tables created from a query.
_NAME_BY_DUCKDB = {duck: name for name, duck in _DUCKDB_BY_NAME.items() if name != "DateTime64"}
_INTEGER_DUCKDB = frozenset(
    {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
)
_NULLABLE = re.compile(r"^Nullable\((.+)\)$")
# DateTime64(3), DateTime('UTC'), DateTime64(6, 'UTC'): precision and zone do not change the DuckDB type.
_PARAMETRIC = re.compile(r"^(DateTime64|DateTime)\(.*\)$")


@dataclass(frozen=True, slots=True)
class ColumnType:
    """One column type: `name` as users write it, `duckdb` as stored, and whether NULL is allowed."""

    name: str
    duckdb: str
    nullable: bool

    @property
    def is_text(self) -> bool:
        """Text columns keep an empty value as ''; every other type reads an empty value as missing."""
        return self.duckdb == "VARCHAR"

    @property
    def is_integer(self) -> bool:
        return self.duckdb in _INTEGER_DUCKDB

    @property
    def declaration(self) -> str:
        return self.duckdb if self.nullable else f"{self.duckdb} NOT NULL"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type.name}


def parse_column_type(text: str) -> ColumnType:
    """`Int64`, `Nullable(String)`, `DateTime64(3)`... -> ColumnType; ValueError names the accepted types."""
    raw = text.strip()
    nullable = False
    match = _NULLABLE.match(raw)
    if match:
        nullable, raw = True, match.group(1).strip()
    parametric = _PARAMETRIC.match(raw)
    base = parametric.group(1) if parametric else _ALIASES.get(raw, raw)
    duck = _DUCKDB_BY_NAME.get(base)
    if duck is None:
        accepted = ", ".join(sorted(_DUCKDB_BY_NAME))
        raise ValueError(f"unknown type {text!r}; use one of {accepted}, optionally as Nullable(T)")
    name = raw if parametric else base
    return ColumnType(name=f"Nullable({name})" if nullable else name, duckdb=duck, nullable=nullable)


def type_from_duckdb(duckdb_type: str, nullable: bool) -> ColumnType:
    """The type of a column DuckDB made (CREATE TABLE AS a query): known types get their Tinybird name."""
    base = _NAME_BY_DUCKDB.get(duckdb_type, duckdb_type)
    return ColumnType(name=f"Nullable({base})" if nullable else base, duckdb=duckdb_type, nullable=nullable)
