"""How `jobsctl` shows jobs and data sources to a person.

The `ls` table, the `details` listing, the `watch` progress line; and data sources (`datasource ls` / `show`)
from the REST gateway's JSON.

Pure functions from messages to text, so they are tested without a terminal.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from jobsd_client import pb
from jobsd_client.convert import from_timestamp, status_name

__all__ = [
    "DATASOURCE_COLUMNS",
    "LIST_COLUMNS",
    "ProgressClock",
    "clock_text",
    "datasource_text",
    "datasources_table",
    "details_text",
    "duration_text",
    "follow_header",
    "follow_row",
    "follow_table",
    "human_bytes",
    "job_figures",
    "jobs_table",
    "kinds_table",
    "log_table",
    "progress_line",
    "queries_summary",
    "table",
    "time_text",
]

LIST_COLUMNS = ("id", "kind", "status", "created_at", "datasource")
DATASOURCE_COLUMNS = ("name", "id", "type", "rows", "bytes", "updated_at")


def time_text(stamp: Timestamp, *, micros: bool = False) -> str:
    """UTC as "YYYY-MM-DD HH:MM:SS" (the REST API's shape, with micros on request); "-" when unset."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return "-"
    when: datetime = from_timestamp(stamp)
    return when.strftime("%Y-%m-%d %H:%M:%S.%f" if micros else "%Y-%m-%d %H:%M:%S")


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, headers upper-cased."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [[h.upper() for h in headers], *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def _datasource_name(job: pb.Job) -> str:
    if job.datasource_ref.name:
        return job.datasource_ref.name
    name = job.datasource.fields.get("name")
    return name.string_value if name is not None and name.string_value else "-"


def jobs_table(jobs: Sequence[pb.Job]) -> str:
    rows = [
        [job.id, job.kind, status_name(job.status), time_text(job.created_at), _datasource_name(job)] for job in jobs
    ]
    return table(LIST_COLUMNS, rows)


# `jobsctl ls --follow`: one fixed-width row per job, so rows printed one by one (into a pipe) line up too.
_FOLLOW = (("id", 36), ("kind", 12), ("status", 10), ("progress", 8), ("rows", 11), ("bytes", 9), ("created_at", 19))


def follow_header() -> str:
    cells = [
        name.upper().rjust(width) if i in (4, 5) else name.upper().ljust(width)
        for i, (name, width) in enumerate(_FOLLOW)
    ]
    return "  ".join([*cells, "DATASOURCE"])


def follow_row(job: pb.Job) -> str:
    """The job's row of the live table: id, kind, status, progress, rows, bytes, created_at, data source."""
    rows, size = job_figures(job)
    cells = [
        job.id,
        job.kind,
        status_name(job.status) + ("*" if job.returns else ""),
        f"{job.progress_percentage:.1f}%",
        f"{rows:,}" if rows is not None else "-",
        human_bytes(size) if size is not None else "-",
        time_text(job.created_at),
    ]
    text = [
        cell.ljust(width) if i < 4 else cell.rjust(width) if i < 6 else cell.ljust(width)
        for i, (cell, (_, width)) in enumerate(zip(cells, _FOLLOW, strict=True))
    ]
    return "  ".join([*text, _datasource_name(job)])


def follow_table(jobs: Sequence[pb.Job], height: int) -> str:
    """The live table: the header and the newest jobs that fit in `height` lines (a `*` marks a restarted run)."""
    newest = sorted(jobs, key=lambda job: (job.created_at.seconds, job.created_at.nanos, job.id), reverse=True)
    shown = newest[: max(1, height - 1)]
    lines = [follow_header(), *(follow_row(job) for job in shown)]
    if len(newest) > len(shown):
        lines[-1] = f"... and {len(newest) - len(shown) + 1} more"
    return "\n".join(lines)


def duration_text(value: float) -> str:
    """Seconds as a person reads them: 30s, 10m, 24h; 0 as "none"."""
    if value <= 0:
        return "none"
    for unit, size in (("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"


def kinds_table(kinds: Sequence[pb.Kind]) -> str:
    """`jobsctl kinds`: each kind's rules, one row per kind."""
    rows = [
        [
            kind.name,
            "built-in" if kind.builtin else "declared",
            "yes" if kind.cancellable_while_working else "waiting only",
            f"{kind.concurrency_key}, {kind.concurrency_limit}",
            duration_text(kind.lease_seconds),
            str(kind.max_attempts),
            duration_text(kind.time_limit_seconds),
            duration_text(kind.retention_hours * 3600),
            kind.description,
        ]
        for kind in kinds
    ]
    headers = ("kind", "origin", "cancellable", "key, limit", "lease", "attempts", "time_limit", "retention", "about")
    return table(headers, rows)


def log_table(entries: Sequence[pb.JobLogEntry]) -> str:
    rows = [
        [time_text(e.updated_at), e.job_id, e.job_type, e.status, e.error if e.HasField("error") else ""]
        for e in entries
    ]
    return table(("updated_at", "job_id", "job_type", "status", "error"), rows)


def job_figures(job: pb.Job) -> tuple[int | None, int | None]:
    """(rows, bytes) as far as the worker reported them: written figures of a copy, else the statistics.

    An import's bytes are the source's bytes as transferred (what its percentage counts), while it runs and once
    done: never the size of what it wrote, which is another measure (DuckDB's, of decompressed values) and read
    as a drop from 8.6 MB to 7.0 MB at the end. `details` shows both.
    """
    if job.HasField("processed_data"):
        data = job.processed_data
        if job.kind == "import" or job.HasField("url"):
            return data.written_rows or data.read_rows, data.read_bytes
        return data.written_rows or data.read_rows, data.written_bytes or data.read_bytes
    if job.HasField("statistics"):
        return job.statistics.row_count, job.statistics.bytes
    return None, None


def clock_text(seconds: float) -> str:
    """Seconds as a watch shows them: 0:07, 12:30, 1:02:03."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _seconds_of(stamp: Timestamp) -> float:
    return stamp.seconds + stamp.nanos / 1e9


class ProgressClock:
    """Elapsed time, rate and ETA of one job, from the states a watch sees of it.

    Pure: every time is given (`now`: when the watch saw the state; a progress write does not move a job's
    `updated_at`, which is its last status change), so it is tested without waiting. Elapsed counts from the job's
    `started_at` (to its `updated_at` once it ended). The rate is over the last `window` seconds of the current run
    (a run after a return starts over, and so does its rate); the ETA is the percentage's own rate to 100 %.
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        # (updated_at, percentage, rows, bytes) of the current run, oldest first.
        self._samples: deque[tuple[float, float, int, int]] = deque()
        self._run = -1

    def update(self, job: pb.Job, now: datetime) -> None:
        if job.returns != self._run:
            self._samples.clear()
            self._run = job.returns
        if job.status not in (pb.JOB_STATUS_WORKING, pb.JOB_STATUS_CANCELLING, pb.JOB_STATUS_DONE):
            return
        rows, size = job_figures(job)
        sample = (now.timestamp(), job.progress_percentage, rows or 0, size or 0)
        samples = self._samples
        if samples and sample[0] <= samples[-1][0]:
            samples[-1] = sample
        else:
            samples.append(sample)
        while len(samples) > 2 and samples[1][0] <= sample[0] - self.window:
            samples.popleft()

    def text(self, job: pb.Job, now: datetime) -> str:
        """`elapsed 0:12  1.2 MB/s  ETA 0:08`, as far as each is known."""
        if not job.HasField("started_at"):
            return ""
        started = _seconds_of(job.started_at)
        terminal = job.status in (pb.JOB_STATUS_DONE, pb.JOB_STATUS_ERROR, pb.JOB_STATUS_CANCELLED)
        end = _seconds_of(job.updated_at) if terminal else now.timestamp()
        parts = [f"elapsed {clock_text(end - started)}"]
        if len(self._samples) >= 2:
            (t0, p0, r0, b0), (t1, p1, r1, b1) = self._samples[0], self._samples[-1]
            span = t1 - t0
            if span > 0:
                if b1 > b0:
                    parts.append(f"{human_bytes(round((b1 - b0) / span))}/s")
                elif r1 > r0:
                    parts.append(f"{(r1 - r0) / span:,.0f} rows/s")
                if not terminal and p1 > p0 and p1 < 100:
                    parts.append(f"ETA {clock_text((100 - p1) / ((p1 - p0) / span))}")
        return "  ".join(parts)


def progress_line(job: pb.Job, width: int = 100, *, ascii_only: bool = False, timing: str = "") -> str:
    """One line: id, bar, percentage, status, restart, `timing`, queries, rows, bytes; cut to `width` characters."""
    percentage = max(0.0, min(100.0, job.progress_percentage))
    bar_width = 24
    filled = round(bar_width * percentage / 100)
    full, empty = ("#", "-") if ascii_only else ("\u2588", "\u2591")
    bar = f"[{full * filled}{empty * (bar_width - filled)}]"
    parts = [job.id[:8], bar, f"{percentage:5.1f}%", status_name(job.status)]
    if job.returns:
        parts.append(f"run {job.returns + 1} (restarted)")
    if timing:
        parts.append(timing)
    if job.queries:
        done = sum(1 for q in job.queries if q.status == "done")
        parts.append(f"queries {done}/{len(job.queries)}")
    rows, size = job_figures(job)
    parts.append(f"rows {rows:,}" if rows is not None else "rows -")
    parts.append(f"bytes {human_bytes(size)}" if size is not None else "bytes -")
    if job.quarantine_rows:
        parts.append(f"quarantined {job.quarantine_rows:,}")
    if job.invalid_lines:
        parts.append(f"invalid {job.invalid_lines:,}")
    line = "  ".join(parts)
    if len(line) <= width:
        return line
    ellipsis = "~" if ascii_only else "\u2026"
    return line[: max(width - 1, 0)] + ellipsis


def _whole_numbers(value: Any) -> Any:
    """Struct numbers are doubles: show the integral ones as integers (rows 2, not 2.0)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


def _struct_json(message: Message, *, leave_out: str = "") -> str:
    plain = {k: v for k, v in json_format.MessageToDict(message).items() if k != leave_out}
    return json.dumps(_whole_numbers(plain), sort_keys=True) if plain else ""


# `details` lists the failed queries up to this many (`--queries`: every query).
MAX_QUERIES_SHOWN = 20
_QUERY_ORDER = ("done", "working", "waiting", "error", "cancelled")


def queries_summary(queries: Sequence[pb.QueryProgress]) -> str:
    """`900 (880 done, 15 working, 5 error)`: the count by status, in the order a job moves through them."""
    counts = Counter(q.status for q in queries)
    order = [*_QUERY_ORDER, *sorted(set(counts) - set(_QUERY_ORDER))]
    return f"{len(queries)} ({', '.join(f'{counts[s]} {s}' for s in order if counts[s])})"


def details_text(job: pb.Job, *, all_queries: bool = False) -> str:
    """Everything a person asks about a job, one `name: value` per line, skipping what does not apply.

    Queries are summarised by status with the failed (error, cancelled) ones listed; `all_queries` lists each.
    """
    lines: list[tuple[str, str]] = [
        ("id", job.id),
        ("kind", job.kind),
        ("status", status_name(job.status) + (" (cancellable)" if job.is_cancellable else "")),
        ("created_at", time_text(job.created_at, micros=True)),
        ("started_at", time_text(job.started_at, micros=True)),
        ("updated_at", time_text(job.updated_at, micros=True)),
        ("workspace_id", job.workspace_id),
    ]
    if job.HasField("datasource_ref") and job.datasource_ref.name:
        lines.append(("datasource", f"{job.datasource_ref.name} ({job.datasource_ref.id})"))
    for name in ("pipe_name", "pipe_id", "query_id", "query_sql", "mode", "url", "import_id"):
        if job.HasField(name):
            lines.append((name, str(getattr(job, name))))
    if job.progress_percentage or job.queries:
        lines.append(("progress", f"{job.progress_percentage:.1f}%"))
    if job.queries:
        lines.append(("queries", queries_summary(job.queries)))
    shown = job.queries if all_queries else [q for q in job.queries if q.status in ("error", "cancelled")]
    for query in shown[: None if all_queries else MAX_QUERIES_SHOWN]:
        lines.append(("query", f"{query.query_id}  {query.status}"))
    if len(shown) > MAX_QUERIES_SHOWN and not all_queries:
        lines.append(("query", f"... and {len(shown) - MAX_QUERIES_SHOWN} more (--queries lists them all)"))
    if job.HasField("statistics"):
        stats = job.statistics
        lines.append(("statistics", f"rows {stats.row_count:,}, bytes {human_bytes(stats.bytes)}"))
    if job.HasField("processed_data"):
        data = job.processed_data
        lines.append(("read", f"rows {data.read_rows:,}, bytes {human_bytes(data.read_bytes)}"))
        lines.append(("written", f"rows {data.written_rows:,}, bytes {human_bytes(data.written_bytes)}"))
    if job.kind == "import" or job.quarantine_rows or job.invalid_lines:
        lines.append(("quarantine_rows", f"{job.quarantine_rows:,}"))
        lines.append(("invalid_lines", f"{job.invalid_lines:,}"))
    if job.HasField("error"):
        lines.append(("error", job.error))
    for error in job.errors:
        lines.append(("errors", error))
    if job.params.fields:
        lines.append(("params", _struct_json(job.params)))
    # The data source's full object (result.datasource) is `jobsctl datasource show`'s business, not a details line.
    result = _struct_json(job.result, leave_out="datasource")
    if result:
        lines.append(("result", result))
    lines.append(("revision", str(job.revision)))
    if job.attempt:
        lines.append(("attempt", str(job.attempt)))
    if job.returns:
        lines.append(("returns", str(job.returns)))
    if job.HasField("note"):
        lines.append(("note", job.note))
    if job.HasField("worker_id"):
        lines.append(("worker_id", job.worker_id))
    width = max(len(name) for name, _ in lines) + 1
    return "\n".join(f"{(name + ':').ljust(width)}  {value}" for name, value in lines)


# ------------------------------------------------------------------ data sources (REST JSON)


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else "-"


def _whole(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _statistics(source: Mapping[str, Any]) -> tuple[int | None, int | None]:
    stats = source.get("statistics")
    if not isinstance(stats, Mapping):
        return None, None
    return _whole(stats.get("row_count")), _whole(stats.get("bytes"))


def _seconds(stamp: Any) -> str:
    """`2024-07-22 11:47:58.207606` -> `2024-07-22 11:47:58` (the `ls` tables show whole seconds)."""
    return stamp.split(".", 1)[0] if isinstance(stamp, str) and stamp else "-"


def datasources_table(sources: Sequence[Mapping[str, Any]]) -> str:
    """`jobsctl datasource ls`: one row per data source, from `GET /v0/datasources`."""
    rows = []
    for source in sources:
        count, size = _statistics(source)
        rows.append(
            [
                _text(source.get("name")),
                _text(source.get("id")),
                _text(source.get("type")),
                f"{count:,}" if count is not None else "-",
                human_bytes(size) if size is not None else "-",
                _seconds(source.get("updated_at")),
            ]
        )
    return table(DATASOURCE_COLUMNS, rows)


def datasource_text(source: Mapping[str, Any]) -> str:
    """`jobsctl datasource show`: the object of `GET /v0/datasources/{name}`, one `name: value` per line."""
    lines: list[tuple[str, str]] = [
        ("name", _text(source.get("name"))),
        ("id", _text(source.get("id"))),
        ("type", _text(source.get("type"))),
        ("created_at", _text(source.get("created_at"))),
        ("updated_at", _text(source.get("updated_at"))),
    ]
    engine = source.get("engine")
    if isinstance(engine, Mapping):
        lines.append(("engine", _text(engine.get("engine"))))
        for key in ("sorting_key", "partition_key"):
            if engine.get(key):
                lines.append((key, str(engine[key])))
    if source.get("description"):
        lines.append(("description", str(source["description"])))
    headers = source.get("headers")
    if isinstance(headers, Mapping):
        lines.extend((str(key), str(value)) for key, value in headers.items())
    count, size = _statistics(source)
    lines.append(("rows", f"{count:,}" if count is not None else "-"))
    lines.append(("bytes", human_bytes(size) if size is not None else "-"))
    columns = source.get("columns")
    if isinstance(columns, Sequence) and not isinstance(columns, str):
        for column in columns:
            if isinstance(column, Mapping):
                lines.append(("column", f"{_text(column.get('name'))}  {_text(column.get('type'))}"))
    width = max(len(name) for name, _ in lines) + 1
    return "\n".join(f"{(name + ':').ljust(width)}  {value}" for name, value in lines)
