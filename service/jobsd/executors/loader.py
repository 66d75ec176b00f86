"""The import pipeline, run on one data-plane thread: records -> typed rows in staging -> the data source.

Batch by batch (at most `BATCH_ROWS` records or `BATCH_BYTES` of input): the values go as text into a small
temporary table, and DuckDB casts them to the column types in one statement; rows where every value casts (and
every non-Nullable column has a value) go to a staging copy of the target, the others to a staging quarantine table
with their values as text, `c__error` saying which columns failed and why, `c__line` and `c__import_id`. Only when
the whole file is read does one write transaction move staging into the data source (`append` adds, `replace`
swaps the contents, `create` requires it to be new) and the quarantine rows into `<name>_quarantine`. Until then
the data source is untouched, so a failed or aborted import leaves it exactly as it was — including not creating
it when it did not exist.

An import in which not a single record could be parsed fails (the file is not in the format it was read as); one
with some good records succeeds, and reports the rest in `quarantine_rows`, `invalid_lines` and `errors`.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from jobsd.domain.json_depth import DEFAULT_MAX_JSON_DEPTH
from jobsd.executors.coltypes import Column, ColumnType, type_from_duckdb
from jobsd.executors.dataplane import STAGING_SCHEMA, DataSource, Session, TableStats
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.inference import SAMPLE_BYTES, SAMPLE_RECORDS, infer_csv_columns, infer_ndjson_columns
from jobsd.executors.limits import DEFAULT_IMPORT_LIMITS, ImportLimits
from jobsd.executors.records import (
    CsvRecords,
    Format,
    InvalidLine,
    NdjsonRecords,
    Record,
    choose_format,
    peek_first_line,
    text_lines,
)
from jobsd.executors.sources import ImportAborted, OpenedSource
from jobsd.executors.sqltext import quote_ident

__all__ = ["BATCH_BYTES", "BATCH_ROWS", "MAX_LINE_ERRORS", "ImportOutcome", "ImportProgress", "ImportRequest", "Loader"]

BATCH_ROWS = 5_000
# ASCII record separator: joins a batch's column into one bound string (see Loader._insert_raw).
_SEPARATOR = "\x1e"
BATCH_BYTES = 4 * 1024 * 1024
# Invalid lines listed one by one in `errors`; the rest are counted.
MAX_LINE_ERRORS = 10
Mode = Literal["append", "replace", "create"]


@dataclass(frozen=True, slots=True)
class ImportRequest:
    workspace: str
    datasource: str
    mode: Mode
    import_id: str
    format: str | None = None
    delimiter: str | None = None
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    limits: ImportLimits = DEFAULT_IMPORT_LIMITS


@dataclass(frozen=True, slots=True)
class ImportProgress:
    bytes_read: int
    total_bytes: int | None
    records: int
    rows: int
    quarantine_rows: int
    invalid_lines: int

    @property
    def percentage(self) -> float | None:
        if not self.total_bytes:
            return None
        return min(99.0, 100.0 * self.bytes_read / self.total_bytes)


@dataclass(slots=True)
class ImportOutcome:
    datasource: DataSource
    created: bool
    format: Format
    statistics: TableStats
    bytes_read: int
    records: int
    written_rows: int
    written_bytes: int
    quarantine_rows: int
    invalid_lines: int
    errors: list[str] = field(default_factory=list)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class _CastPlan:
    """The SQL that checks and casts one batch of text values (`c0`, `c1`, ... in `raw`) to the columns."""

    def __init__(self, columns: list[tuple[str, ColumnType]]) -> None:
        problems: list[str] = []
        casts: list[str] = []
        checks: list[str] = []
        for index, (name, column_type) in enumerate(columns):
            value = f"c{index}"
            label = _literal(f'column "{name}": ')
            missing = "NULL" if column_type.nullable else f"{label} || 'missing value (the column is not Nullable)'"
            if column_type.is_text:
                casts.append(value)
                if not column_type.nullable:
                    checks.append(f"{value} IS NOT NULL")
                problems.append(f"CASE WHEN {value} IS NULL THEN {missing} END")
                continue
            cast = f"TRY_CAST({value} AS {column_type.duckdb})"
            fits = f"{cast} IS NOT NULL"
            if column_type.is_integer:
                fits += f" AND regexp_full_match(trim({value}), '[+-]?[0-9]+')"
            bad = f"""{label} || 'cannot parse "' || {value} || {_literal('" as ' + column_type.name)}"""
            casts.append(f"CASE WHEN {value} = '' THEN NULL ELSE {cast} END")
            present = f"nullif({value}, '') IS NOT NULL"
            checks.append(f"({present} AND {fits})" if not column_type.nullable else f"(NOT {present} OR ({fits}))")
            problems.append(f"CASE WHEN nullif({value}, '') IS NULL THEN {missing} WHEN NOT ({fits}) THEN {bad} END")
        self.casts = ", ".join(casts)
        # `fits` is the cheap test every row takes; `error` (text building) runs only for the rows that fail it.
        self.fits = " AND ".join(f"coalesce({check}, false)" for check in checks) or "true"
        self.error = f"concat_ws('; ', {', '.join(problems)})"


class Loader:
    """One import. Construct and call `run()` on a data-plane thread (inside `DataPlane.run`)."""

    def __init__(
        self,
        session: Session,
        request: ImportRequest,
        source: OpenedSource,
        *,
        on_progress: Callable[[ImportProgress], None],
        abort: threading.Event,
    ) -> None:
        self._session = session
        self._request = request
        self._source = source
        self._on_progress = on_progress
        self._abort = abort
        self._records = 0
        self._rows = 0
        self._quarantined = 0
        self._invalid = 0
        self._line_errors: list[str] = []
        label = uuid.uuid4().hex
        self._stage_name = f"{label}_rows"
        self._stage = session.staging_table(self._stage_name)
        self._stage_quarantine = session.staging_table(f"{label}_quarantine")
        self._raw = quote_ident(f"_jobsd_raw_{label}")
        # Figures go out after each batch, and between batches after each chunk read (a slow origin fills a
        # batch slowly): a report only merges figures, the worker SDK sends them at most once per its interval.
        source.reader.on_chunk = self._chunk_read

    # -- the steps

    def run(self) -> ImportOutcome:
        try:
            return self._run()
        finally:
            for table in (self._stage, self._stage_quarantine, f"temp.main.{self._raw}"):
                self._session.drop_table(table)

    def _run(self) -> ImportOutcome:
        session, request = self._session, self._request
        first, lines = peek_first_line(text_lines(self._source.reader, request.limits))
        fmt = choose_format(request.format, self._source.path, first)
        if first is None:
            raise ExecutionFailed("The file is empty: there is nothing to import")
        reader: CsvRecords | NdjsonRecords = (
            CsvRecords(lines, request.delimiter) if fmt == "csv" else NdjsonRecords(lines, request.max_json_depth)
        )
        target = session.find(request.datasource)
        if target is not None and request.mode == "create":
            raise ExecutionFailed(f'Data source "{request.datasource}" already exists (mode "create" makes a new one)')
        if isinstance(reader, CsvRecords):
            self._check_width(len(reader.header), "The CSV header")
        records: Iterator[Record | InvalidLine] = iter(reader)
        if target is not None:
            columns = [
                Column(name, type_from_duckdb(duck, nullable))
                for name, duck, nullable in session.table_columns(request.datasource)
            ]
            if isinstance(reader, CsvRecords):
                self._check_header(reader.header, columns)
        else:
            sample = self._take_sample(records)
            columns = self._infer(reader, sample)
            records = itertools.chain(sample, records)
        names = [c.name for c in columns]
        project: Callable[[Any], list[str | None]] | None = reader.projector(names)
        self._create_staging(columns)
        plan = _CastPlan([(c.name, c.type) for c in columns])
        self._load(records, project, plan, len(columns))
        if self._rows == 0 and self._quarantined == 0 and self._invalid:
            raise ExecutionFailed(
                f"No line of the file could be read as {fmt.upper()}: is it a {fmt.upper()} file? "
                f"({self._line_errors[0]})",
                errors=self._line_errors,
            )
        written = session.table_stats(self._stage_name, STAGING_SCHEMA)
        target, created = self._commit(target, columns, fmt, reader)
        return ImportOutcome(
            datasource=target,
            created=created,
            format=fmt,
            statistics=session.stats(target),
            bytes_read=self._source.reader.bytes_read,
            records=self._records,
            written_rows=self._rows,
            written_bytes=written.bytes,
            quarantine_rows=self._quarantined,
            invalid_lines=self._invalid,
            errors=self._summary(target),
        )

    def _check_header(self, header: list[str], columns: list[Column]) -> None:
        known = {c.name for c in columns}
        unknown = [name for name in header if name not in known]
        if unknown:
            raise ExecutionFailed(
                f'The CSV header has columns that data source "{self._request.datasource}" does not have: '
                f"{', '.join(unknown)} (its columns: {', '.join(c.name for c in columns)})"
            )

    def _check_width(self, count: int, what: str) -> None:
        problem = self._session.plane.limits.column_count_problem(count, what)
        if problem is not None:
            raise ExecutionFailed(problem)

    def _take_sample(self, records: Iterator[Record | InvalidLine]) -> list[Record | InvalidLine]:
        """The first records, up to SAMPLE_RECORDS good ones or SAMPLE_BYTES of text (lines may be long)."""
        sample: list[Record | InvalidLine] = []
        good = 0
        reader = self._source.reader
        until = reader.bytes_decoded + SAMPLE_BYTES
        for item in records:
            sample.append(item)
            if not isinstance(item, InvalidLine):
                good += 1
                if good >= SAMPLE_RECORDS or reader.bytes_decoded > until:
                    break
        return sample

    def _infer(self, reader: CsvRecords | NdjsonRecords, sample: list[Record | InvalidLine]) -> list[Column]:
        good = [item[1] for item in sample if not isinstance(item, InvalidLine)]
        if not good:
            invalid = [item.describe() for item in sample if isinstance(item, InvalidLine)]
            kind = "CSV" if isinstance(reader, CsvRecords) else "NDJSON"
            detail = f" ({invalid[0]})" if invalid else ""
            raise ExecutionFailed(
                f"No line of the file could be read as {kind}, so no schema can be inferred{detail}",
                errors=invalid[:MAX_LINE_ERRORS],
            )
        if isinstance(reader, CsvRecords):
            return infer_csv_columns(self._session, reader.header, good)
        return infer_ndjson_columns(self._session, good, check_width=self._check_width)

    def _create_staging(self, columns: list[Column]) -> None:
        typed = ", ".join(f"{quote_ident(c.name)} {c.type.duckdb}" for c in columns)
        text = ", ".join(f"{quote_ident(c.name)} VARCHAR" for c in columns)
        raw = ", ".join(f"c{i} VARCHAR" for i in range(len(columns)))
        self._session.execute(f"CREATE TABLE {self._stage} ({typed})")
        self._session.execute(
            f"CREATE TABLE {self._stage_quarantine} ({text}, c__error VARCHAR, c__line BIGINT, c__import_id VARCHAR)"
        )
        self._session.execute(f"CREATE TEMP TABLE {self._raw} (c__line BIGINT, {raw})")

    def _load(
        self,
        records: Iterator[Record | InvalidLine],
        project: Callable[[Any], list[str | None]] | None,
        plan: _CastPlan,
        width: int,
    ) -> None:
        reader = self._source.reader
        batch_lines: list[int] = []
        batch_values: list[list[str | None]] = []
        # Batches are bounded by the text they hold (decompressed), not by what was transferred.
        batch_start = reader.bytes_decoded
        for item in records:
            if isinstance(item, InvalidLine):
                self._invalid += 1
                if len(self._line_errors) < MAX_LINE_ERRORS:
                    self._line_errors.append(item.describe())
                continue
            line, payload = item
            batch_lines.append(line)
            batch_values.append(payload if project is None else project(payload))
            if len(batch_lines) >= BATCH_ROWS or reader.bytes_decoded - batch_start >= BATCH_BYTES:
                self._records += len(batch_lines)
                self._flush(batch_lines, batch_values, plan, width)
                batch_lines, batch_values = [], []
                batch_start = reader.bytes_decoded
        self._records += len(batch_lines)
        self._flush(batch_lines, batch_values, plan, width)

    def _flush(self, lines: list[int], values: list[list[str | None]], plan: _CastPlan, width: int) -> None:
        if self._abort.is_set():
            raise ImportAborted
        session = self._session
        if lines:
            self._insert_raw(lines, values, width)
            good = session.execute(
                f"INSERT INTO {self._stage} SELECT {plan.casts} FROM {self._raw} WHERE {plan.fits}"
            ).fetchone()
            text_columns = ", ".join(f"c{i}" for i in range(width))
            bad = session.execute(
                f"INSERT INTO {self._stage_quarantine} SELECT {text_columns}, {plan.error}, c__line, $1 "
                f"FROM {self._raw} WHERE NOT ({plan.fits})",
                [self._request.import_id],
            ).fetchone()
            session.execute(f"DELETE FROM {self._raw}")
            self._rows += int(good[0]) if good else 0
            self._quarantined += int(bad[0]) if bad else 0
        self._report()

    def _chunk_read(self) -> None:
        self._report()

    def _report(self) -> None:
        self._on_progress(
            ImportProgress(
                bytes_read=self._source.reader.bytes_read,
                total_bytes=self._source.total_bytes,
                records=self._records,
                rows=self._rows,
                quarantine_rows=self._quarantined,
                invalid_lines=self._invalid,
            )
        )

    def _insert_raw(self, lines: list[int], values: list[list[str | None]], width: int) -> None:
        """The batch's text values into `raw`, one column per parameter.

        A column goes as one string joined by a separator and split by DuckDB when it can (no NULLs, no separator
        inside): binding one string is several times cheaper than binding a Python list of strings."""
        selects = ["unnest(string_split($1, ','))::BIGINT"]
        parameters: list[Any] = [",".join(map(str, lines))]
        for index, column in enumerate(zip(*values, strict=True)):
            if None not in column:
                joined = _SEPARATOR.join(column)
                if joined.count(_SEPARATOR) == len(column) - 1:
                    selects.append(f"unnest(string_split(${index + 2}, chr({ord(_SEPARATOR)})))")
                    parameters.append(joined)
                    continue
            selects.append(f"unnest(${index + 2}::VARCHAR[])")
            parameters.append(list(column))
        self._session.execute(f"INSERT INTO {self._raw} SELECT {', '.join(selects)}", parameters)

    def _commit(
        self, target: DataSource | None, columns: list[Column], fmt: Format, reader: CsvRecords | NdjsonRecords
    ) -> tuple[DataSource, bool]:
        session, request = self._session, self._request
        headers = {"cached_delimiter": reader.delimiter} if isinstance(reader, CsvRecords) else {}
        if self._abort.is_set():
            raise ImportAborted
        with session.writing():
            created = target is None
            if target is None:
                target = session.create(request.datasource, columns, type=fmt, headers=headers)
            elif request.mode == "replace":
                session.execute(f"DELETE FROM {target.table_sql}")
            session.execute(f"INSERT INTO {target.table_sql} BY NAME SELECT * FROM {self._stage}")
            if self._quarantined:
                quarantine = session.qualified(target.quarantine_name)
                session.execute(
                    f"CREATE TABLE IF NOT EXISTS {quarantine} AS SELECT * FROM {self._stage_quarantine} LIMIT 0"
                )
                session.execute(f"INSERT INTO {quarantine} BY NAME SELECT * FROM {self._stage_quarantine}")
            target = session.touch(target, headers)
        return target, created

    def _summary(self, target: DataSource) -> list[str]:
        if not self._quarantined and not self._invalid:
            return []
        parts = []
        if self._quarantined:
            parts.append(f"{self._quarantined} rows in quarantine (see data source {target.quarantine_name})")
        if self._invalid:
            parts.append(f"{self._invalid} invalid lines")
        summary = [f"There was an error with file contents: {' and '.join(parts)}."]
        more = self._invalid - len(self._line_errors)
        return summary + self._line_errors + ([f"... and {more} more invalid lines"] if more > 0 else [])
