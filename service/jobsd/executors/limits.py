"""The limits a tenant's import and statements run under, and the one way a broken limit is said.

Every limit here is a setting (`JOBSD_*`, built from `Settings` in `runner`), and each is checked in one place:

- `ImportLimits`: what one import may take from its source — the download's total time and its minimum transfer
  rate (`sources._HttpReader`), the bytes transferred and the bytes they decompress to (`sources._Bounded`), the
  length of one line (`records.text_lines`) and the number of columns (`DataPlane.column_count_problem`, asked by
  the loader as soon as the header or the sample says how many there are).
- `PlaneLimits`: what the DuckDB data plane may use — memory and threads per workspace database and for the plane
  as a whole, and the disk a database may spill to (`DataPlane`, when it opens a workspace file).

A broken limit ends the job in `error` with `LimitExceeded`, whose message says what was too large, the limit and
the setting that holds it, e.g. `... more than 1 GiB (JOBSD_IMPORT_MAX_BYTES=1073741824)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobsd.executors.errors import ExecutionFailed

__all__ = [
    "DEFAULT_IMPORT_LIMITS",
    "ImportLimits",
    "LimitExceeded",
    "PlaneLimits",
    "format_bytes",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


def format_bytes(count: int) -> str:
    """Bytes for people: `1 GiB`, `1.5 MiB`, `700 bytes`."""
    for unit, size in (("TiB", 1024 * GiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} bytes"


class LimitExceeded(ExecutionFailed):
    """A job went past a limit: `what` happened, past `limit` (a readable figure), set by `setting`=`value`."""

    def __init__(self, what: str, *, setting: str, value: object) -> None:
        super().__init__(f"{what} ({setting}={value})")
        self.setting = setting


@dataclass(frozen=True, slots=True)
class ImportLimits:
    """What one import may take from its source. The defaults are the settings' defaults."""

    # The whole download, from the request to the last byte (JOBSD_IMPORT_TIMEOUT_SECONDS).
    timeout_seconds: float = 1800.0
    # Bytes per second the origin must keep up, measured over every window of time spent waiting for it
    # (JOBSD_IMPORT_MIN_BYTES_PER_SECOND; 0 turns the check off). Time the import spends loading what it already
    # has does not count, so a slow data plane never looks like a slow origin.
    min_bytes_per_second: int = 1024
    # The window (JOBSD_IMPORT_RATE_WINDOW_SECONDS); also how long the response's headers may take.
    rate_window_seconds: float = 30.0
    # Bytes transferred: what the origin sends, compressed or not (JOBSD_IMPORT_MAX_BYTES).
    max_bytes: int = 4 * GiB
    # Bytes after decompression (gzip files, gzip/deflate Content-Encoding) (JOBSD_IMPORT_MAX_DECOMPRESSED_BYTES).
    max_decompressed_bytes: int = 16 * GiB
    # Bytes of one line of the decompressed text, its newline not counted (JOBSD_IMPORT_MAX_LINE_BYTES).
    max_line_bytes: int = 4 * MiB

    def timed_out(self, shown_url: str) -> LimitExceeded:
        return LimitExceeded(
            f"Could not fetch {shown_url}: the download took longer than {self.timeout_seconds:g} s",
            setting="JOBSD_IMPORT_TIMEOUT_SECONDS",
            value=f"{self.timeout_seconds:g}",
        )

    def too_slow(self, shown_url: str, received: int, seconds: float) -> LimitExceeded:
        return LimitExceeded(
            f"Could not fetch {shown_url}: it sent {received} bytes in {seconds:.1f} s, slower than the "
            f"{self.min_bytes_per_second} bytes/s imports need (over {self.rate_window_seconds:g} s, "
            "JOBSD_IMPORT_RATE_WINDOW_SECONDS)",
            setting="JOBSD_IMPORT_MIN_BYTES_PER_SECOND",
            value=self.min_bytes_per_second,
        )

    def too_large(self, shown_url: str) -> LimitExceeded:
        return LimitExceeded(
            f"Could not fetch {shown_url}: it is larger than {format_bytes(self.max_bytes)}",
            setting="JOBSD_IMPORT_MAX_BYTES",
            value=self.max_bytes,
        )

    def decompresses_too_large(self) -> LimitExceeded:
        return LimitExceeded(
            f"The file decompresses to more than {format_bytes(self.max_decompressed_bytes)}",
            setting="JOBSD_IMPORT_MAX_DECOMPRESSED_BYTES",
            value=self.max_decompressed_bytes,
        )

    def line_too_long(self, line: int) -> LimitExceeded:
        return LimitExceeded(
            f"Line {line} is longer than {format_bytes(self.max_line_bytes)}: this does not look like a CSV or "
            "NDJSON file",
            setting="JOBSD_IMPORT_MAX_LINE_BYTES",
            value=self.max_line_bytes,
        )


DEFAULT_IMPORT_LIMITS = ImportLimits()


@dataclass(frozen=True, slots=True)
class PlaneLimits:
    """What the data plane's DuckDB databases may use. One workspace is one database, so the jobs of a workspace
    running at once share its memory."""

    # DuckDB memory of one workspace database (JOBSD_JOB_MEMORY_LIMIT).
    job_memory_bytes: int = 1 * GiB
    # Every workspace database open at once, together (JOBSD_DATAPLANE_MEMORY_LIMIT).
    plane_memory_bytes: int = 4 * GiB
    # DuckDB threads one statement may use (JOBSD_JOB_THREADS).
    job_threads: int = 2
    # Disk one workspace database may spill to while a statement runs (JOBSD_JOB_TEMP_DISK_LIMIT).
    job_temp_disk_bytes: int = 8 * GiB
    # Columns of one data source (JOBSD_MAX_COLUMNS).
    max_columns: int = 500

    def memory_per_database(self, databases_open_at_most: int) -> int:
        """The memory limit each workspace database gets, so that `databases_open_at_most` of them stay within
        the plane's limit: the job limit, or the plane's share when that is smaller (DuckDB needs a few MiB)."""
        share = self.plane_memory_bytes // max(1, databases_open_at_most)
        return max(16 * MiB, min(self.job_memory_bytes, share))

    def column_count_problem(self, count: int, what: str) -> str | None:
        """The message for `count` columns when that is more than allowed (`what`: "The CSV header", ...)."""
        if count <= self.max_columns:
            return None
        return (
            f"{what} has {count} columns, more than the {self.max_columns} a data source may have "
            f"(JOBSD_MAX_COLUMNS={self.max_columns})"
        )
