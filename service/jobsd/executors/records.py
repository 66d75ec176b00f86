"""From a byte stream to records: text lines, the CSV and NDJSON readers, and which one a file needs.

Everything here is a generator over bounded pieces: lines are cut from 256 KiB chunks, a line longer than
`JOBSD_IMPORT_MAX_LINE_BYTES` stops the import (that is not a CSV or NDJSON file), and nothing holds more than one
record.
Text is UTF-8 (a BOM is skipped); undecodable bytes become U+FFFD rather than failing the import.

What counts as an invalid line (and so in `invalid_lines`, with its line number in `errors`):
- CSV: a record the csv module cannot parse (a quote inside a quoted field not followed by the delimiter, a field
  over 128 KiB, a quoted field left open at the end of the file — it swallows the lines after its opening quote
  up to the next closing quote, so they are one invalid record), or a record whose number of fields differs from
  the header's. Blank lines are skipped.
- NDJSON: a line that is not JSON, JSON that is not an object, or JSON nested deeper than the JSON depth limit
  (`JOBSD_MAX_JSON_DEPTH`). Blank lines are skipped.
Anything else is a record; whether its values fit the columns is the loader's business (quarantine).
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jobsd.domain.json_depth import DEFAULT_MAX_JSON_DEPTH, json_depth_within
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.limits import DEFAULT_IMPORT_LIMITS, ImportLimits
from jobsd.executors.sources import ByteSource

__all__ = [
    "CsvRecords",
    "Format",
    "InvalidLine",
    "NdjsonRecords",
    "Record",
    "choose_format",
    "json_value_text",
    "peek_first_line",
    "text_lines",
]

Format = Literal["csv", "ndjson"]
_DELIMITERS = (",", ";", "\t", "|")
_FORMAT_NAMES: dict[str, Format] = {"csv": "csv", "tsv": "csv", "ndjson": "ndjson", "jsonl": "ndjson", "json": "ndjson"}


# A parsed record: (the file line it starts on, 1-based; its payload — CSV: the fields, aligned with the header;
# NDJSON: the object). A plain tuple because millions are made: a class would cost a Python-level __init__ each.
Record = tuple[int, Any]


@dataclass(slots=True)
class InvalidLine:
    line: int
    problem: str

    def describe(self) -> str:
        return f"line {self.line}: {self.problem}"


def text_lines(source: ByteSource, limits: ImportLimits = DEFAULT_IMPORT_LIMITS) -> Iterator[str]:
    """The lines of the stream, each with its "\\n" (the last one may lack it); LimitExceeded as soon as a line
    is longer than `limits.max_line_bytes` (its newline not counted), without holding more of it than that.

    Lines are cut from the bytes (a "\\n" byte never occurs inside a UTF-8 character), so a line's length is
    exact in bytes whatever it holds; each chunk's complete lines are then decoded at once."""
    limit = limits.max_line_bytes
    pending: list[bytes] = []  # the start of a line that continues in the next chunk
    pending_bytes = 0
    lines = 0
    head: bytes | None = b""  # the stream's first bytes, until it is known whether they are a BOM (skipped)
    while True:
        chunk = source.read()
        ended = not chunk
        if head is not None:
            head += chunk
            if len(head) < len(codecs.BOM_UTF8) and not ended:
                continue
            chunk, head = head.removeprefix(codecs.BOM_UTF8), None
        if ended and not chunk:
            break
        if not chunk:
            continue
        first_newline = chunk.find(b"\n")
        if first_newline < 0:
            pending.append(chunk)
            pending_bytes += len(chunk)
            if pending_bytes > limit:
                raise limits.line_too_long(lines + 1)
            continue
        if pending_bytes + first_newline > limit:
            raise limits.line_too_long(lines + 1)
        last_newline = chunk.rfind(b"\n")
        if len(chunk) > limit:
            # Only a chunk longer than the limit can hold a whole line that is too long.
            inner = chunk[first_newline + 1 : last_newline].split(b"\n")
            too_long = next((i for i, part in enumerate(inner) if len(part) > limit), None)
            if too_long is not None:
                raise limits.line_too_long(lines + 2 + too_long)
        rest = chunk[last_newline + 1 :]
        if len(rest) > limit:
            raise limits.line_too_long(lines + chunk.count(b"\n", 0, last_newline + 1) + 1)
        complete = chunk[: last_newline + 1]
        if pending:
            complete = b"".join(pending) + complete
        text = complete.decode("utf-8", "replace").split("\n")
        text.pop()  # the empty string after the last newline
        lines += len(text)
        for line in text:
            yield line + "\n"
        pending, pending_bytes = ([rest], len(rest)) if rest else ([], 0)
    if pending:
        yield b"".join(pending).decode("utf-8", "replace")


def choose_format(requested: str | None, path: str, first_line: str | None) -> Format:
    """The `format` param, else the file name's suffix, else a look at the first line."""
    if requested:
        chosen = _FORMAT_NAMES.get(requested.strip().lower())
        if chosen is None:
            raise ExecutionFailed(f"Unknown format {requested!r}: use csv or ndjson")
        return chosen
    name = path.lower().removesuffix(".gz")
    for suffix, chosen in _FORMAT_NAMES.items():
        if name.endswith("." + suffix):
            return chosen
    if first_line is not None and first_line.lstrip().startswith("{"):
        return "ndjson"
    return "csv"


def peek_first_line(lines: Iterator[str]) -> tuple[str | None, Iterator[str]]:
    """The first non-blank line (None for an empty file) and an iterator that still yields every line."""
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if line.strip():
            return line, itertools.chain(seen, lines)
    return None, iter(seen)


def _guess_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in _DELIMITERS}
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


class CsvRecords:
    """Records of a CSV file with a header row. `header` is known once constructed."""

    def __init__(self, lines: Iterator[str], delimiter: str | None = None) -> None:
        first, lines = peek_first_line(lines)
        if first is None:
            raise ExecutionFailed("The file is empty: a CSV import needs a header row and data")
        self.delimiter = delimiter or _guess_delimiter(first)
        self._reader = csv.reader(lines, delimiter=self.delimiter, strict=True)
        self._consumed = 0
        self.header = self._read_header()

    def _read_header(self) -> list[str]:
        while True:
            try:
                fields = next(self._reader)
            except csv.Error as error:
                line = self._reader.line_num
                raise ExecutionFailed(f"The CSV header (line {line}) cannot be parsed: {error}") from None
            self._consumed = self._reader.line_num
            if fields:
                break
        names: list[str] = []
        seen: set[str] = set()  # a set: a header of thousands of names must not take a quadratic look-up
        for index, raw in enumerate(fields):
            name = raw.strip() or f"column_{index:02d}"
            if name in seen:
                raise ExecutionFailed(f"The CSV header names column {name!r} twice")
            seen.add(name)
            names.append(name)
        return names

    def __iter__(self) -> Iterator[Record | InvalidLine]:
        width = len(self.header)
        reader = self._reader
        while True:
            start = self._consumed + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                self._consumed = reader.line_num
                yield InvalidLine(start, f"cannot be parsed as CSV ({error})")
                continue
            self._consumed = reader.line_num
            if not fields:
                continue
            if len(fields) != width:
                yield InvalidLine(start, f"has {len(fields)} fields, the header has {width}")
                continue
            yield (start, fields)

    def projector(self, columns: Sequence[str]) -> Callable[[list[str]], list[str | None]] | None:
        """Fields -> values in `columns` order (a column missing from the header is None: missing); None when the
        fields already are in that order."""
        index = {name: i for i, name in enumerate(self.header)}
        positions = [index.get(name) for name in columns]
        if positions == list(range(len(self.header))):
            return None
        return lambda fields: [None if p is None else fields[p] for p in positions]


def json_value_text(value: Any) -> str | None:
    """A JSON value as the text the loader casts: null -> None, booleans lower-case, nested values as JSON."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class NdjsonRecords:
    """Records of a newline-delimited JSON file: one object per line."""

    def __init__(self, lines: Iterator[str], max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> None:
        self._lines = lines
        self._max_depth = max_depth

    def __iter__(self) -> Iterator[Record | InvalidLine]:
        limit = self._max_depth
        for number, line in enumerate(self._lines, start=1):
            if not line.strip():
                continue
            if not json_depth_within(line, limit):
                yield InvalidLine(number, f"is JSON nested more than {limit} levels deep")
                continue
            try:
                value = json.loads(line)
            except ValueError as error:
                yield InvalidLine(number, f"is not valid JSON ({error})")
                continue
            if not isinstance(value, dict):
                yield InvalidLine(number, f"is JSON but not an object (got {type(value).__name__})")
                continue
            yield (number, value)

    @staticmethod
    def projector(columns: Sequence[str]) -> Callable[[dict[str, Any]], list[str | None]]:
        """Object -> values in `columns` order; a key the object lacks is None (missing), extra keys are ignored."""
        names = list(columns)
        return lambda obj: [json_value_text(obj.get(name)) for name in names]
