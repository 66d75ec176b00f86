"""ExecutorRunner: the built-in executors as one worker-SDK Worker over one DuckDB data plane.

Started by `jobsd serve` when executors are on (with an internal JOBS:EXECUTE token on every workspace) and by
`jobsd worker --grpc-target ... --token ...` against a remote jobsd. The executors themselves know nothing of the
SDK: `_adapt` turns their ExecutionFailed / ExecutionCancelled into the SDK's JobFailed / JobCancelled, and a
DuckDB error nobody anticipated into a JobFailed with DuckDB's message (never a stack trace).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import aiohttp
import duckdb

from jobsd.domain.clock import Clock, SystemClock
from jobsd.domain.model import JobKind
from jobsd.executors.background_query import run_query
from jobsd.executors.context import ExecutionContext
from jobsd.executors.copy_data import run_copy
from jobsd.executors.dataplane import DataPlane
from jobsd.executors.delete_data import run_delete
from jobsd.executors.errors import ExecutionCancelled, ExecutionFailed
from jobsd.executors.import_data import run_import
from jobsd.executors.populate_view import run_populate
from jobsd.executors.sqltext import describe_duckdb_error
from jobsd.settings import Settings
from jobsd_client.worker import Handler, JobCancelled, JobContext, JobFailed, Worker

__all__ = ["DATAPLANE_FILE", "ExecutorRunner", "data_dir_for"]

_log = logging.getLogger("jobsd.executors")
DATAPLANE_FILE = "dataplane.duckdb"
_SQLITE_PREFIX = "sqlite:///"
_PRUNE_EVERY_SECONDS = 3600.0

Executor = Callable[[ExecutionContext], Awaitable[None]]


def data_dir_for(settings: Settings) -> Path:
    """`settings.data_dir`; else the directory of the SQLite store file; else ./.jobsd."""
    if settings.data_dir:
        return Path(settings.data_dir)
    if settings.store.startswith(_SQLITE_PREFIX):
        return Path(settings.store[len(_SQLITE_PREFIX) :]).parent
    return Path(".jobsd")


def _adapt(kind: str, executor: Executor) -> Handler:
    async def handle(ctx: JobContext) -> None:
        try:
            await executor(ctx)
        except ExecutionFailed as failure:
            raise JobFailed(failure.message, failure.errors) from None
        except ExecutionCancelled:
            raise JobCancelled() from None
        except duckdb.Error as error:
            _log.warning("job %s (%s): data plane error: %s", ctx.job_id, kind, error, extra={"job_id": ctx.job_id})
            raise JobFailed(f"The data plane failed: {describe_duckdb_error(error)}") from None

    return handle


class ExecutorRunner:
    """Runs every built-in kind. `dataplane` exists from construction (routes can be mounted before `start`)."""

    def __init__(
        self,
        settings: Settings,
        target: str,
        token: str,
        *,
        clock: Clock | None = None,
        file_roots: Sequence[Path] | None = None,
        worker_id: str | None = None,
        wait_seconds: float = 5.0,
    ) -> None:
        self.settings = settings
        self.target = target
        self.clock: Clock = clock or SystemClock()
        self.data_dir = data_dir_for(settings)
        # file:// imports may read only under these directories: the working directory (the repository's
        # examples when run by `make run`) and the data directory, unless the caller says otherwise.
        self.file_roots: tuple[Path, ...] = (
            tuple(file_roots) if file_roots is not None else (Path(os.getcwd()), self.data_dir)
        )
        self.dataplane = DataPlane(
            self.data_dir / DATAPLANE_FILE, clock=self.clock, threads=settings.executor_concurrency + 2
        )
        self._token = token
        self._worker_id = worker_id
        self._wait_seconds = wait_seconds
        self._http: aiohttp.ClientSession | None = None
        self._worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._stopped = False
        # The fatal error that stopped the worker (a bad token or scope), if one did.
        self.failure: Exception | None = None

    def handlers(self) -> Mapping[str, Handler]:
        plane = self.dataplane

        async def import_job(ctx: ExecutionContext) -> None:
            await run_import(ctx, plane, http=self._http, file_roots=self.file_roots)

        async def populate_job(ctx: ExecutionContext) -> None:
            await run_populate(ctx, plane, clock=self.clock)

        async def copy_job(ctx: ExecutionContext) -> None:
            await run_copy(ctx, plane)

        async def query_job(ctx: ExecutionContext) -> None:
            await run_query(ctx, plane)

        async def delete_job(ctx: ExecutionContext) -> None:
            await run_delete(ctx, plane)

        executors: dict[str, Executor] = {
            JobKind.IMPORT: import_job,
            JobKind.POPULATEVIEW: populate_job,
            JobKind.COPY: copy_job,
            JobKind.QUERY: query_job,
            JobKind.DELETE_DATA: delete_job,
        }
        return {str(kind): _adapt(str(kind), executor) for kind, executor in executors.items()}

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            return
        await self.dataplane.open()
        self._http = aiohttp.ClientSession()
        self._worker = Worker(
            self.target,
            self._token,
            self.handlers(),
            worker_id=self._worker_id,
            concurrency=self.settings.executor_concurrency,
            wait_seconds=self._wait_seconds,
        )
        self._task = asyncio.create_task(self._run(self._worker), name="jobsd-executors")
        self._pruner = asyncio.create_task(self._prune_results_forever(), name="jobsd-executors-prune")
        _log.info("executors running against %s, data plane %s", self.target, self.dataplane.path)

    async def _run(self, worker: Worker) -> None:
        try:
            await worker.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A fatal refusal (bad token or scope): the executors stop, jobsd keeps serving and says why.
            self.failure = exc
            _log.exception("executors stopped: the worker could not run against %s", self.target)

    async def wait(self) -> None:
        """Until the worker stops by itself (see `failure`) — `jobsd worker` exits then instead of idling."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _prune_results_forever(self) -> None:
        """Query results live as long as their jobs are visible (the retention window), then are dropped."""
        retention = timedelta(hours=self.settings.retention_hours)
        while True:
            try:
                dropped = await self.dataplane.prune_results(self.clock.now() - retention)
                if dropped:
                    _log.info("dropped %d query results older than %s", dropped, retention)
            except Exception:
                _log.exception("could not prune query results")
            await asyncio.sleep(_PRUNE_EVERY_SECONDS)

    async def stop(self) -> None:
        """Stop claiming, let running jobs finish within the grace period (then release them), close the plane."""
        if self._stopped:
            return
        self._stopped = True
        if self._worker is not None:
            await self._worker.stop(grace=self.settings.grace_seconds)
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.close()
        await self.dataplane.close()
