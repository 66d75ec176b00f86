"""The figures a handler reports (progress, queries, statistics, ...): checked, accumulated, sent as updates.

Kept apart from the worker's life-cycle code: `validate_report` turns `JobContext.report(...)` arguments into
plain values (or InvalidArgument naming the bad one), `Figures` remembers them and which changed since last sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from jobsd_client import pb
from jobsd_client._requests import to_struct
from jobsd_client.errors import InvalidArgument

__all__ = ["PROCESSED_DATA_KEYS", "QUERY_STATUSES", "STATISTICS_KEYS", "Figures", "ReportFigures", "validate_report"]


class ReportFigures(TypedDict, total=False):
    """What `JobContext.report(...)` takes: every figure optional, None meaning "not given this time"."""

    progress_percentage: float | None
    queries: Sequence[Mapping[str, str]] | None
    statistics: Mapping[str, int] | None
    quarantine_rows: int | None
    invalid_lines: int | None
    processed_data: Mapping[str, int] | None
    result: Mapping[str, Any] | None
    errors: Sequence[str] | None


QUERY_STATUSES = frozenset({"waiting", "working", "done", "error", "cancelled"})
STATISTICS_KEYS = ("bytes", "row_count")
PROCESSED_DATA_KEYS = ("read_rows", "read_bytes", "written_rows", "written_bytes")


def _non_negative_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument.for_field(field, f"expected an integer, got {value!r}")
    if value < 0:
        raise InvalidArgument.for_field(field, f"must not be negative, got {value}")
    return value


def _figures(field: str, value: Mapping[str, int], keys: Sequence[str]) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise InvalidArgument.for_field(field, f"expected a mapping of {', '.join(keys)}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise InvalidArgument.for_field(field, f"unknown key(s) {', '.join(unknown)}; expected {', '.join(keys)}")
    return {key: _non_negative_int(f"{field}.{key}", figure) for key, figure in value.items()}


def _queries(value: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidArgument.for_field("queries", "expected a list of {query_id, status}")
    queries = []
    for index, query in enumerate(value):
        field = f"queries[{index}]"
        if not isinstance(query, Mapping):
            raise InvalidArgument.for_field(field, "expected a mapping with query_id and status")
        query_id, status = query.get("query_id"), query.get("status")
        if not isinstance(query_id, str) or not query_id:
            raise InvalidArgument.for_field(f"{field}.query_id", "must be a non-empty string")
        if status not in QUERY_STATUSES:
            raise InvalidArgument.for_field(
                f"{field}.status", f"must be one of {', '.join(sorted(QUERY_STATUSES))}, got {status!r}"
            )
        queries.append({"query_id": query_id, "status": str(status)})
    return queries


class Figures:
    """Everything a handler reported, and which parts changed since they were last sent.

    Values are cumulative (statistics and processed_data merge key by key), so a heartbeat lost in transit only
    has to mark its fields dirty again, and FinishJob can always send the whole picture.
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._dirty: set[str] = set()

    def merge(self, changes: Mapping[str, Any]) -> None:
        for name, value in changes.items():
            if name in ("statistics", "processed_data"):
                value = {**self._values.get(name, {}), **value}
            self._values[name] = value
            self._dirty.add(name)

    @property
    def pending(self) -> bool:
        """Whether some figure changed since it was last sent."""
        return bool(self._dirty)

    def take(self) -> tuple[pb.ProgressUpdate | None, set[str]]:
        """The changed figures as an update (None if nothing changed); they count as sent until `restore`."""
        taken, self._dirty = self._dirty, set()
        return (self._update(taken) if taken else None), taken

    def add_errors(self, errors: Sequence[str]) -> None:
        self.merge({"errors": [*self._values.get("errors", []), *errors]})

    def restore(self, fields: Iterable[str]) -> None:
        self._dirty.update(fields)

    def everything(self) -> pb.ProgressUpdate | None:
        return self._update(set(self._values)) if self._values else None

    def _update(self, fields: set[str]) -> pb.ProgressUpdate:
        values = self._values
        update = pb.ProgressUpdate()
        if "progress_percentage" in fields:
            update.progress_percentage = values["progress_percentage"]
        if "queries" in fields:
            update.queries.extend(pb.QueryProgress(**q) for q in values["queries"])
        if "statistics" in fields:
            update.statistics.CopyFrom(pb.Statistics(**values["statistics"]))
        if "quarantine_rows" in fields:
            update.quarantine_rows = values["quarantine_rows"]
        if "invalid_lines" in fields:
            update.invalid_lines = values["invalid_lines"]
        if "processed_data" in fields:
            update.processed_data.CopyFrom(pb.ProcessedData(**values["processed_data"]))
        if "result" in fields:
            update.result.CopyFrom(values["result"])
        if "errors" in fields:
            update.errors.extend(values["errors"])
        return update


def validate_report(figures: ReportFigures) -> dict[str, Any]:
    """The given figures as plain values, keyed by ProgressUpdate field; InvalidArgument on the first bad one."""
    unknown = sorted(set(figures) - set(ReportFigures.__annotations__))
    if unknown:
        raise TypeError(f"report() got an unexpected keyword argument {unknown[0]!r}")
    progress_percentage = figures.get("progress_percentage")
    queries = figures.get("queries")
    statistics = figures.get("statistics")
    quarantine_rows = figures.get("quarantine_rows")
    invalid_lines = figures.get("invalid_lines")
    processed_data = figures.get("processed_data")
    result = figures.get("result")
    errors = figures.get("errors")
    changes: dict[str, Any] = {}
    if progress_percentage is not None:
        if (
            isinstance(progress_percentage, bool)
            or not isinstance(progress_percentage, int | float)
            or not math.isfinite(progress_percentage)
            or not 0 <= progress_percentage <= 100
        ):
            raise InvalidArgument.for_field(
                "progress_percentage", f"must be a number from 0 to 100, got {progress_percentage!r}"
            )
        changes["progress_percentage"] = float(progress_percentage)
    if queries is not None:
        changes["queries"] = _queries(queries)
    if statistics is not None:
        changes["statistics"] = _figures("statistics", statistics, STATISTICS_KEYS)
    if quarantine_rows is not None:
        changes["quarantine_rows"] = _non_negative_int("quarantine_rows", quarantine_rows)
    if invalid_lines is not None:
        changes["invalid_lines"] = _non_negative_int("invalid_lines", invalid_lines)
    if processed_data is not None:
        changes["processed_data"] = _figures("processed_data", processed_data, PROCESSED_DATA_KEYS)
    if result is not None:
        changes["result"] = to_struct(result, "result")
    if errors is not None:
        if isinstance(errors, str | bytes) or not all(isinstance(e, str) for e in errors):
            raise InvalidArgument.for_field("errors", "expected a list of strings")
        changes["errors"] = list(errors)
    return changes
