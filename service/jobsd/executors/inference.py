"""Schema inference for an import into a data source that does not exist yet (as Tinybird does).

The types come from the first records of the file (the sample, at most `SAMPLE_RECORDS`):
- CSV: a column is the narrowest of Int64, Float64, Date, DateTime, Bool that every non-empty sample value casts to
  (checked by DuckDB itself, with the same casts the loader then uses), else String. A non-String column with an
  empty value in the sample is Nullable; String keeps empty values as ''.
- NDJSON: JSON types decide: integers -> Int64, numbers -> Float64, booleans -> Bool, strings -> Date / DateTime
  when every sample string is one, else String; mixed or nested values -> String (nested ones as JSON text).
  A key missing or null in some sample object makes the column Nullable; columns are the keys in order of first
  appearance.
Later rows that do not fit the inferred types go to quarantine, like rows that do not fit any other schema.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jobsd.executors.coltypes import Column, parse_column_type
from jobsd.executors.dataplane import Session
from jobsd.executors.errors import ExecutionFailed

__all__ = ["SAMPLE_RECORDS", "infer_csv_columns", "infer_ndjson_columns"]

SAMPLE_RECORDS = 1000
# ... or fewer, when their text passes this many bytes: the sample is held whole while the schema is decided.
SAMPLE_BYTES = 4 * 1024 * 1024
_INT64 = (-(2**63), 2**63 - 1)

# (type, SQL that is TRUE when non-empty value `v` does NOT fit it), narrowest first.
_TEXT_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("Int64", "NOT (regexp_full_match(trim(v), '[+-]?[0-9]+') AND TRY_CAST(v AS BIGINT) IS NOT NULL)"),
    ("Float64", "TRY_CAST(v AS DOUBLE) IS NULL"),
    ("Date", r"NOT (regexp_full_match(trim(v), '\d{4}-\d{2}-\d{2}') AND TRY_CAST(v AS DATE) IS NOT NULL)"),
    (
        "DateTime",
        r"NOT (regexp_matches(trim(v), '^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}') AND TRY_CAST(v AS TIMESTAMP) IS NOT NULL)",
    ),
    ("Bool", "lower(trim(v)) NOT IN ('true', 'false')"),
)


def _text_types(session: Session, samples: Sequence[Sequence[str | None]]) -> list[tuple[str, bool]]:
    """Per sample column: (narrowest fitting type, whether some value was empty or missing)."""
    results: list[tuple[str, bool]] = []
    for values in samples:
        present = [v for v in values if v]
        if not present:
            results.append(("String", True))
            continue
        checks = ", ".join(f"count(*) FILTER (WHERE {misfit})" for _, misfit in _TEXT_CANDIDATES)
        row = session.execute(f"SELECT {checks} FROM (SELECT unnest($1::VARCHAR[]) AS v)", [present]).fetchone()
        assert row is not None
        fitting = (name for (name, _), misfits in zip(_TEXT_CANDIDATES, row, strict=True) if misfits == 0)
        chosen = next(fitting, "String")
        results.append((chosen, len(present) != len(values)))
    return results


def infer_csv_columns(session: Session, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[Column]:
    samples = [[row[i] for row in rows] for i in range(len(header))]
    columns: list[Column] = []
    for name, (type_name, has_empty) in zip(header, _text_types(session, samples), strict=True):
        nullable = has_empty and type_name != "String"
        columns.append(Column(name, parse_column_type(f"Nullable({type_name})" if nullable else type_name)))
    return columns


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "float"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "nested"


def infer_ndjson_columns(
    session: Session, objects: Sequence[Mapping[str, Any]], check_width: Callable[[int, str], None] | None = None
) -> list[Column]:
    """`check_width(count, what)` raises when the keys seen so far are more columns than a data source may have:
    it is asked after every object, so a sample of wide objects stops at the first one that is too wide."""
    order: dict[str, set[str]] = {}
    for obj in objects:
        for key, value in obj.items():
            order.setdefault(key, set()).add(_json_kind(value))
        if check_width is not None:
            check_width(len(order), "The NDJSON sample")
    if not order:
        raise ExecutionFailed("The NDJSON objects have no keys: there are no columns to create")
    string_keys = [key for key, kinds in order.items() if kinds - {"null"} == {"str"}]
    string_types = dict(
        zip(string_keys, _text_types(session, [[obj.get(k) for obj in objects] for k in string_keys]), strict=True)
    )
    columns: list[Column] = []
    for key, kinds in order.items():
        present = kinds - {"null"}
        if present == {"int"}:
            type_name = "Int64"
        elif present and present <= {"int", "float"}:
            type_name = "Float64"
        elif present == {"bool"}:
            type_name = "Bool"
        elif key in string_types and string_types[key][0] in ("Date", "DateTime"):
            type_name = string_types[key][0]
        else:
            type_name = "String"
        missing = "null" in kinds or any(key not in obj for obj in objects)
        columns.append(Column(key, parse_column_type(f"Nullable({type_name})" if missing else type_name)))
    return columns
