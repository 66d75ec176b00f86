"""ExecutorRunner: the built-in executors as one worker-SDK Worker over one DuckDB data plane.

Started by `jobsd serve` when executors are on (with an internal JOBS:EXECUTE token on every workspace, held in
memory only) and by `jobsd worker --grpc-target ... --token ...` against a remote jobsd. What imports may read
(the file root, the networks) is one `ImportPolicy` built from the settings; a file root that overlaps the data
directory or the store stops the runner from being built at all. The executors themselves know nothing of the
SDK: `_adapt` turns their ExecutionFailed / ExecutionCancelled into the SDK's JobFailed / JobCancelled, and a
DuckDB error nobody anticipated into a JobFailed with DuckDB's message (never a stack trace).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import aiohttp
import duckdb

from jobsd.domain.clock import Clock, SystemClock
from jobsd.domain.model import JobKind
from jobsd.errors import Unavailable
from jobsd.executors.background_query import run_query
from jobsd.executors.context import ExecutionContext
from jobsd.executors.copy_data import run_copy
from jobsd.executors.dataplane import DataPlane, PlaneInUse
from jobsd.executors.delete_data import run_delete
from jobsd.executors.errors import ExecutionCancelled, ExecutionFailed
from jobsd.executors.import_data import run_import
from jobsd.executors.limits import ImportLimits, PlaneLimits, format_bytes
from jobsd.executors.outbound import ImportPolicy, client_session
from jobsd.executors.populate_view import run_populate
from jobsd.settings import Settings
from jobsd.stopping import stop_within
from jobsd_client.worker import Handler, JobCancelled, JobContext, JobFailed, Worker

__all__ = [
    "DATAPLANE_DIR",
    "LEGACY_DATAPLANE_FILE",
    "ExecutorRunner",
    "data_dir_for",
    "import_limits_for",
    "import_policy_for",
    "plane_limits_for",
]

_log = logging.getLogger("jobsd.executors")
# One DuckDB file per workspace in <data dir>/dataplane/; the older single file is migrated from.
DATAPLANE_DIR = "dataplane"
LEGACY_DATAPLANE_FILE = "dataplane.duckdb"
_SQLITE_PREFIX = "sqlite:///"
_PRUNE_EVERY_SECONDS = 3600.0
# What each part of a stop after the worker's gets (they end at once unless something is wrong).
_PART_SECONDS = 1.0

Executor = Callable[[ExecutionContext], Awaitable[None]]


def data_dir_for(settings: Settings) -> Path:
    """`settings.data_dir`; else the directory of the SQLite store file; else ./.jobsd."""
    if settings.data_dir:
        return Path(settings.data_dir)
    if settings.store.startswith(_SQLITE_PREFIX):
        return Path(settings.store[len(_SQLITE_PREFIX) :]).parent
    return Path(".jobsd")


def state_paths_for(settings: Settings) -> list[Path]:
    """Where jobsd keeps state on this machine: the data directory and the SQLite store's directory."""
    paths = [data_dir_for(settings)]
    if settings.store.startswith(_SQLITE_PREFIX):
        paths.append(Path(settings.store[len(_SQLITE_PREFIX) :]).parent)
    return paths


def import_policy_for(settings: Settings, extra_state: Sequence[Path] = ()) -> ImportPolicy:
    """The settings' ImportPolicy; InvalidArgument when the file root overlaps a state directory."""
    return ImportPolicy.build(
        file_root=settings.import_file_root or None,
        allow_networks=settings.import_allow_networks,
        max_redirects=settings.import_max_redirects,
        state_paths=[*state_paths_for(settings), *extra_state],
    )


def import_limits_for(settings: Settings) -> ImportLimits:
    """The settings' limits on one import's source."""
    return ImportLimits(
        timeout_seconds=settings.import_timeout_seconds,
        min_bytes_per_second=settings.import_min_bytes_per_second,
        rate_window_seconds=settings.import_rate_window_seconds,
        max_bytes=settings.import_max_bytes,
        max_decompressed_bytes=settings.import_max_decompressed_bytes,
        max_line_bytes=settings.import_max_line_bytes,
    )


def plane_limits_for(settings: Settings) -> PlaneLimits:
    """The settings' limits on the data plane's DuckDB databases."""
    return PlaneLimits(
        job_memory_bytes=settings.job_memory_limit,
        plane_memory_bytes=settings.dataplane_memory_limit,
        job_threads=settings.job_threads,
        job_temp_disk_bytes=settings.job_temp_disk_limit,
        max_columns=settings.max_columns,
    )


def _adapt(kind: str, executor: Executor, plane: DataPlane) -> Handler:
    async def handle(ctx: JobContext) -> None:
        try:
            await executor(ctx)
        except ExecutionFailed as failure:
            raise JobFailed(failure.message, failure.errors) from None
        except ExecutionCancelled:
            raise JobCancelled() from None
        except duckdb.Error as error:
            exceeded = plane.resource_failure(error)
            if exceeded is not None:
                raise JobFailed(exceeded.message) from None
            described = plane.describe_error(error)
            _log.warning("job %s (%s): data plane error: %s", ctx.job_id, kind, described, extra={"job_id": ctx.job_id})
            raise JobFailed(f"The data plane failed: {described}") from None

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
        worker_id: str | None = None,
        wait_seconds: float = 5.0,
    ) -> None:
        self.settings = settings
        self.target = target
        self.clock: Clock = clock or SystemClock()
        self.data_dir = data_dir_for(settings)
        self.import_policy = import_policy_for(settings)
        self.import_limits = import_limits_for(settings)
        self.dataplane = DataPlane(
            self.data_dir / DATAPLANE_DIR,
            clock=self.clock,
            threads=settings.dataplane_threads or settings.executor_concurrency + 2,
            max_open=settings.dataplane_max_open_workspaces,
            legacy_file=self.data_dir / LEGACY_DATAPLANE_FILE,
            limits=plane_limits_for(settings),
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
            await run_import(
                ctx,
                plane,
                policy=self.import_policy,
                http=self._http,
                max_json_depth=self.settings.max_json_depth,
                limits=self.import_limits,
            )

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
        return {str(kind): _adapt(str(kind), executor, plane) for kind, executor in executors.items()}

    async def start(self) -> None:
        if self._task is not None or self._stopped:
            return
        try:
            await self.dataplane.open()
        except PlaneInUse as exc:
            raise Unavailable(
                f"the data directory {self.data_dir} (JOBSD_DATA_DIR / --data-dir) is in use by {exc.holder}: "
                "give each jobsd process its own, e.g. --data-dir .jobsd/worker-2"
            ) from None
        self._http = client_session(self.import_policy)
        self._worker = Worker(
            self.target,
            self._token,
            self.handlers(),
            worker_id=self._worker_id,
            concurrency=self.settings.executor_concurrency,
            wait_seconds=self._wait_seconds,
            progress_interval=self.settings.progress_interval_seconds,
        )
        self._task = asyncio.create_task(self._run(self._worker), name="jobsd-executors")
        self._pruner = asyncio.create_task(self._prune_results_forever(), name="jobsd-executors-prune")
        _log.info(
            "executors running against %s, data plane %s (%s of DuckDB memory per workspace, %d threads per job)",
            self.target,
            self.dataplane.root,
            format_bytes(self.dataplane.memory_per_database),
            self.dataplane.limits.job_threads,
        )

    async def _run(self, worker: Worker) -> None:
        try:
            await worker.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A fatal refusal (bad token or scope): the executors stop, jobsd keeps serving and says why.
            self.failure = exc
            _log.exception("executors stopped: the worker could not run against %s", self.target)

    def running_jobs(self) -> list[tuple[str, str]]:
        """(job id, kind) of each job the executors are running now."""
        return [] if self._worker is None else self._worker.running_jobs

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
        """Stop claiming, let running jobs finish within the grace period (then release them), close the plane.

        Within the grace plus JOBSD_SHUTDOWN_MARGIN_SECONDS (and a few seconds at most for the parts after one
        that overran): a part that does not end in its time is cancelled and named in an error (`stop_within`)."""
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        margin = self.settings.shutdown_margin_seconds
        # Half the margin for the worker past its grace, half for the plane's statements (`DataPlane.close`).
        worker_gives_up = loop.time() + self.settings.grace_seconds + margin / 2
        if self._worker is not None:
            await stop_within(
                "the executors' worker",
                self._worker.stop(grace=self.settings.grace_seconds),
                worker_gives_up - loop.time(),
                _log,
            )
        if self._pruner is not None:
            self._pruner.cancel()
            await stop_within("the executors' result pruner", self._pruner, _PART_SECONDS, _log)
        if self._task is not None:
            # Ends by itself once the worker has stopped; cancelled if the worker's stop overran.
            await stop_within("the executors' worker loop", self._task, _PART_SECONDS, _log)
        if self._http is not None:
            await stop_within("the executors' HTTP client", self._http.close(), _PART_SECONDS, _log)
        await self.dataplane.close(give_up_after=margin / 2)
