"""The `import` executor: a CSV or NDJSON file from an http(s):// or file:// URL into a data source.

Job fields: `url`, `datasource.name`, `mode` (append — the default —, replace, or create), and optional params
`format` (csv / ndjson; else the URL's suffix, else sniffed from the first line) and `dialect_delimiter` (CSV; else
guessed from the header). The file is streamed and loaded batch by batch (see `loader` for the rules on
quarantine and invalid lines, `records` for what an invalid line is, `inference` for the schema of a new data
source). Figures: `progress_percentage` by bytes while it runs (when the size is known), `quarantine_rows`,
`invalid_lines`, `errors`, `processed_data` (records read, bytes transferred, rows and bytes written), and on
success `statistics` = bytes and rows of the whole data source, plus `result.datasource` = the data source's full
metadata object as it is after the import (`DataSource.job_json`: what the job detail renders as `datasource`).
"""

from __future__ import annotations

import asyncio
import threading
from typing import cast

import aiohttp

from jobsd.domain.json_depth import DEFAULT_MAX_JSON_DEPTH
from jobsd.executors.abortable import Interrupted, run_interruptible
from jobsd.executors.context import ExecutionContext, JobInput
from jobsd.executors.dataplane import DataPlane
from jobsd.executors.errors import ExecutionCancelled, ExecutionFailed
from jobsd.executors.limits import DEFAULT_IMPORT_LIMITS, ImportLimits
from jobsd.executors.loader import ImportOutcome, ImportProgress, ImportRequest, Loader, Mode
from jobsd.executors.outbound import ImportPolicy
from jobsd.executors.sources import ImportAborted, open_source

__all__ = ["run_import"]

_MODES = ("append", "replace", "create")


def _request(job: JobInput, max_json_depth: int, limits: ImportLimits) -> tuple[ImportRequest, str]:
    name = job.require_datasource()
    mode = job.mode or "append"
    if mode not in _MODES:
        raise ExecutionFailed(f"Unknown import mode {mode!r}: use append, replace or create")
    url = job.url or job.text_param("url", required=True)
    request = ImportRequest(
        workspace=job.workspace,
        datasource=name,
        mode=cast(Mode, mode),
        import_id=job.job_id,
        format=job.text_param("format") or None,
        delimiter=job.text_param("dialect_delimiter") or None,
        max_json_depth=max_json_depth,
        limits=limits,
    )
    if request.delimiter is not None and len(request.delimiter) != 1:
        raise ExecutionFailed(f"params.dialect_delimiter must be one character, got {request.delimiter!r}")
    return request, url


def _processed(read_rows: int, read_bytes: int, written_rows: int, written_bytes: int) -> dict[str, int]:
    """An import's `processed_data` figures: records and bytes read from the source, rows and bytes written."""
    return {
        "read_rows": read_rows,
        "read_bytes": read_bytes,
        "written_rows": written_rows,
        "written_bytes": written_bytes,
    }


def _report_progress(ctx: ExecutionContext, progress: ImportProgress) -> None:
    ctx.report(
        progress_percentage=progress.percentage,
        quarantine_rows=progress.quarantine_rows,
        invalid_lines=progress.invalid_lines,
        processed_data=_processed(progress.records, progress.bytes_read, progress.rows, 0),
    )


def _report_outcome(ctx: ExecutionContext, outcome: ImportOutcome) -> None:
    ctx.report(
        progress_percentage=100.0,
        statistics=outcome.statistics.json(),
        quarantine_rows=outcome.quarantine_rows,
        invalid_lines=outcome.invalid_lines,
        processed_data=_processed(outcome.records, outcome.bytes_read, outcome.written_rows, outcome.written_bytes),
        errors=outcome.errors or None,
        result={"datasource": outcome.datasource.job_json(outcome.statistics)},
    )


async def run_import(
    ctx: ExecutionContext,
    plane: DataPlane,
    *,
    policy: ImportPolicy | None = None,
    http: aiohttp.ClientSession | None = None,
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    limits: ImportLimits = DEFAULT_IMPORT_LIMITS,
) -> None:
    """Run one import job to the end; raises ExecutionFailed with a message for the user when it cannot.

    `policy` says what may be read (the default: no file, public addresses only); `http`, when given, must come
    from `outbound.client_session(policy)`."""
    request, url = _request(JobInput.of(ctx), max_json_depth, limits)
    loop = asyncio.get_running_loop()
    abort = threading.Event()

    def on_progress(progress: ImportProgress) -> None:
        # Called on the loader's thread; the context belongs to the event loop.
        loop.call_soon_threadsafe(_report_progress, ctx, progress)

    source_opened = open_source(url, abort=abort, policy=policy or ImportPolicy(), session=http, limits=limits)
    try:
        async with source_opened as source:
            outcome = await run_interruptible(
                plane,
                request.workspace,
                lambda session, stopping: Loader(
                    session, request, source, on_progress=on_progress, abort=stopping
                ).run(),
                ctx.wait_cancel_requested,
                stopping=abort,
            )
    except (Interrupted, ImportAborted):
        # Only a cancel request gets here (a stopped task ends in CancelledError); imports of the built-in kind
        # are not cancellable while working, but a declared kind running this executor may be.
        raise ExecutionCancelled from None
    _report_outcome(ctx, outcome)
