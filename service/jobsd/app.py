"""JobsdApp: everything wired in one place — store, watch hub, service, gRPC server, gateway, executors, sweeps.

start() brings the parts up in dependency order; stop() takes them down in reverse (stop accepting, let
in-flight RPCs finish within the grace period, close streams with a status, stop the executors so they release
their leases, then the store). Every background task is owned here, cancelled and awaited; every part of a stop
is given a bound (`jobsd.stopping`), so stop() returns even when a part does not end; stop() is safe twice.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from jobsd.api.codec import JobWireCodec
from jobsd.api.local import LocalJobsApi, LocalWorkersApi
from jobsd.api.servicers import GenericHandlersOnly, JobsServicer, WorkersServicer, add_servicer
from jobsd.domain.auth import (
    ADMIN,
    JOBS_CREATE,
    JOBS_EXECUTE,
    Principal,
    hash_token,
    new_token_secret,
    validate_scope,
)
from jobsd.domain.clock import Clock, SystemClock
from jobsd.domain.model import TokenRecord
from jobsd.errors import InvalidArgument, JobsdError, NotFound, Unavailable
from jobsd.metrics import Metrics
from jobsd.service.dispatch import Dispatcher
from jobsd.service.hub import WatchHub
from jobsd.service.jobs import JobService
from jobsd.service.ratelimit import TokenBuckets
from jobsd.settings import Settings, split_addr
from jobsd.stopping import stop_within
from jobsd.store import SqliteCommit, SqliteStore, open_store, store_shown
from jobsd.store.base import JobStore
from jobsd_client import pb

__all__ = [
    "MAX_SEND_MESSAGE_BYTES",
    "JobsdApp",
    "cannot_listen",
    "check_listen",
    "freeze_startup_objects",
    "grpc_server_options",
]

log = logging.getLogger(__name__)
_SERVICE_NAMES = (
    pb.DESCRIPTOR.services_by_name["Jobs"].full_name,
    pb.DESCRIPTOR.services_by_name["Workers"].full_name,
)
# The largest message the server sends (a list page is cut below it: JOBSD_MAX_PAGE_BYTES).
MAX_SEND_MESSAGE_BYTES = 16 * 1024 * 1024
# Retention purges are cheap but need not run on every lease sweep.
_PURGE_EVERY_SWEEPS = 10
# What each part of a stop still gets once the stop's own time is used up (so the store is still closed cleanly
# after a part that overran).
_PART_FLOOR_SECONDS = 1.0


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def grpc_server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments: message sizes and the connection limits, each from a setting.

    - `grpc.server_handshake_timeout_ms`: a connection that has not finished its handshake (for plaintext, sent
      the HTTP/2 preface) by then is closed: the gRPC face of the REST header time-out.
    - `grpc.max_connection_idle_ms`: a connection with no RPC in flight that long gets GOAWAY (clients reconnect
      transparently when they need it). Connection age is left unbounded: a watch stream may last for hours.
    - `grpc.keepalive_time_ms` / `grpc.keepalive_timeout_ms`: the server pings its peers and closes a connection
      whose peer stops answering, so a vanished client's watch streams end instead of holding their places.
    - `grpc.http2.min_recv_ping_interval_without_data_ms` / `grpc.http2.max_ping_strikes`: a client may ping no
      more often than that (with or without calls in flight, `grpc.keepalive_permit_without_calls`); more than
      the strikes allowed, and the connection is sent away (GOAWAY ENHANCE_YOUR_CALM, "too_many_pings").
    - `grpc.max_concurrent_streams`: HTTP/2 streams one connection may have open; a client beyond it waits for a
      stream to end (it is told so in the SETTINGS frame) rather than piling work onto the server.
    """
    return [
        ("grpc.max_receive_message_length", settings.max_request_bytes),
        ("grpc.max_send_message_length", MAX_SEND_MESSAGE_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.server_handshake_timeout_ms", _ms(settings.grpc_handshake_timeout_seconds)),
        ("grpc.max_connection_idle_ms", _ms(settings.grpc_max_connection_idle_seconds)),
        ("grpc.keepalive_time_ms", _ms(settings.grpc_keepalive_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(settings.grpc_keepalive_timeout_seconds)),
        # grpc core (1.85) closes a peer that leaves a ping unanswered after this one, not keepalive_timeout_ms.
        ("grpc.http2.ping_timeout_ms", _ms(settings.grpc_keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", round(settings.grpc_min_ping_interval_seconds * 1000)),
        ("grpc.http2.max_ping_strikes", settings.grpc_max_ping_strikes),
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
    ]


def freeze_startup_objects() -> None:
    """Take every object alive now (the modules, the started app) out of the cyclic collector's walks: what a
    serving process calls once, after its app has started. Those objects live as long as the process, yet every
    full collection walked them all; frozen, a collection walks only what requests made since (callgrind, GetJob
    one call at a time: 659k -> 647k instructions per call, the collector's own share 18k -> 2k). They are still
    freed by reference counting. Not part of `JobsdApp.start`: a process that starts and stops many apps (the
    tests) would keep the cyclic garbage of every app it froze."""
    gc.freeze()


def cannot_listen(what: str, variable: str, addr: str, error: OSError | None = None) -> Unavailable:
    """One line for a listener that could not bind: the address, its setting and why (the OS's reason).

    gRPC says only that it failed to bind; the reason is asked of the OS by binding the address once more."""
    if error is None:
        error = _bind_error(addr)
    reason = (error.strerror or str(error)).lower() if error is not None else "cannot bind"
    flag = "--" + variable.removeprefix("JOBSD_").lower().replace("_", "-")
    hint = ""
    if error is not None and error.errno == errno.EADDRINUSE:
        hint = (
            f" (another jobsd running? stop it, or choose another port: {flag} HOST:PORT, or port 0 for any free one)"
        )
    return Unavailable(f"cannot listen for {what} on {addr} ({variable} / {flag}): {reason}{hint}")


def check_listen(what: str, variable: str, addr: str) -> None:
    """Raise `cannot_listen` now if `addr` (a listen address; empty or port 0: nothing to check) is taken."""
    if addr and split_addr(variable, addr)[1]:
        taken = _bind_error(addr, reuse=True)
        if taken is not None:
            raise cannot_listen(what, variable, addr, taken)


def _bind_error(addr: str, *, reuse: bool = False) -> OSError | None:
    """Why `addr` cannot be bound now (None: it can). `reuse`: as the servers bind (SO_REUSEADDR), so a port
    whose old connections linger in TIME_WAIT is not taken for one in use."""
    try:
        host, port = split_addr("addr", addr)
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (JobsdError, OSError) as exc:
        return exc if isinstance(exc, OSError) else None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            if reuse:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                return exc
    return None


class JobsdApp:
    def __init__(self, settings: Settings, *, clock: Clock | None = None, store: JobStore | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        # Every job write stores the job's serialised message too; reads and write responses reuse those bytes.
        self.codec = JobWireCodec(settings.kind_registry)
        self.store: JobStore = store or open_store(
            settings.store,
            log_retention=settings.log_retention,
            encoder=self.codec,
            sqlite_commit=SqliteCommit(
                settings.sqlite_commit_window_ms / 1000,
                settings.sqlite_commit_max_writes,
                settings.sqlite_wal_limit_mb * 1024 * 1024,
            ),
        )
        self.metrics = Metrics()
        if isinstance(self.store, SqliteStore):
            self.metrics.watch_sqlite(self.store.stats)
        self.hub = WatchHub(
            self.store,
            capacity=settings.watch_buffer,
            max_subscribers=settings.max_watch_streams,
            max_per_workspace=settings.max_watch_streams_per_workspace,
        )
        self.service = JobService(
            self.store,
            self.clock,
            settings.kind_registry,
            self.hub,
            self.metrics,
            log_retention=settings.log_retention,
            max_create_batch=settings.max_create_batch,
            max_returns=settings.max_returns,
            struct_limits=settings.struct_limits,
            max_page_bytes=settings.max_page_bytes,
            rate_limits=TokenBuckets(self.clock, settings.rate_limit, settings.rate_limit_burst),
        )
        self.dispatcher = Dispatcher(
            self.service,
            max_streams=settings.max_worker_streams,
            max_slots=settings.max_worker_slots,
            max_workspace_share=settings.max_workspace_share,
        )
        self.api = LocalJobsApi(self.service, self.codec)
        self.workers_api = LocalWorkersApi(self.service, self.codec, self.dispatcher)
        self.grpc_port = 0
        self.http_port: int | None = None
        self.executors: Any = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._gateway: Any = None
        self._metrics_server: Any = None
        self.metrics_port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._stopped = False
        self._stop_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._started:
            return
        if self.settings.executors:
            from jobsd.executors.runner import import_policy_for

            # A file-import root that overlaps the store or the data plane: refuse to start, before anything listens.
            import_policy_for(self.settings)
        # Every listen address, asked of the OS before anything starts: a port in use is refused at once, in one
        # line naming it and its setting (not after the store, the executors and their log lines are up).
        for what, variable, addr in (
            ("gRPC", "JOBSD_GRPC_ADDR", self.settings.grpc_addr),
            ("REST", "JOBSD_HTTP_ADDR", self.settings.http_addr),
            ("metrics", "JOBSD_METRICS_ADDR", self.settings.metrics_addr),
        ):
            check_listen(what, variable, addr)
        self._started = True
        try:
            await self.store.open()
        except Unavailable as exc:
            raise Unavailable(
                f"cannot open the store {store_shown(self.settings.store)} (JOBSD_STORE): {exc}"
            ) from None
        await self.hub.start()
        await self._ensure_configured_tokens()
        await self.dispatcher.start()
        await self._start_grpc()
        self._spawn(self._sweep_loop, "jobsd-sweeper")
        self._spawn(self._health_loop, "jobsd-health")
        if self.settings.executors:
            await self._start_executors()
        if self.settings.http_addr:
            await self._start_gateway()
        if self.settings.metrics_addr:
            from jobsd.metrics_http import MetricsServer

            self._metrics_server = MetricsServer(self.metrics.registry, self.settings.metrics_addr)
            try:
                self.metrics_port = await self._metrics_server.start()
            except OSError as exc:
                raise cannot_listen("metrics", "JOBSD_METRICS_ADDR", self.settings.metrics_addr, exc) from None

    async def _start_grpc(self) -> None:
        server = grpc.aio.server(options=grpc_server_options(self.settings))
        add_servicer(server, "Jobs", JobsServicer(self.api, self.metrics))
        add_servicer(server, "Workers", WorkersServicer(self.workers_api, self.metrics))
        # Generic handlers only (see add_servicer): every registered method costs every call a wait on its request.
        generic_only: Any = GenericHandlersOnly(server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, generic_only)
        reflection.enable_server_reflection(
            (*_SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            generic_only,
        )
        host, port = split_addr("JOBSD_GRPC_ADDR", self.settings.grpc_addr)
        try:
            self.grpc_port = server.add_insecure_port(f"{host}:{port}")
        except RuntimeError:
            self.grpc_port = 0
        if self.grpc_port == 0:
            raise cannot_listen("gRPC", "JOBSD_GRPC_ADDR", self.settings.grpc_addr)
        await server.start()
        self._server = server
        await self._set_serving(True)

    async def _start_executors(self) -> None:
        from jobsd.executors.runner import ExecutorRunner

        # The executors' credential lives in this process's memory only: no token is stored per start.
        token = new_token_secret()
        self.service.accept_in_memory_token(
            token, Principal(token_name="internal-executors", workspace_id=None, scopes=frozenset({JOBS_EXECUTE}))
        )
        self.executors = ExecutorRunner(self.settings, f"127.0.0.1:{self.grpc_port}", token, clock=self.clock)
        await self.executors.start()

    async def _start_gateway(self) -> None:
        from aiohttp import web

        from jobsd.gateway.server import GatewayServer

        extra_routes: Callable[[web.Application], None] | None = None
        if self.executors is not None:
            from jobsd.executors.datasources_http import add_routes

            dataplane = self.executors.dataplane

            def extra_routes(app: web.Application) -> None:
                # The data plane lives in this process, so its data-source endpoints share the gateway.
                add_routes(app, dataplane, self.service.authenticate, max_json_depth=self.settings.max_json_depth)

        self._gateway = GatewayServer(self.api, self.settings, self.metrics.registry, extra_routes=extra_routes)
        try:
            self.http_port = await self._gateway.start()
        except OSError as exc:
            raise cannot_listen("REST", "JOBSD_HTTP_ADDR", self.settings.http_addr, exc) from None

    async def stop(self) -> None:
        """Stop every part (see the module), within the grace plus JOBSD_SHUTDOWN_MARGIN_SECONDS.

        A part still running when the stop's time is up is cancelled and named in an error line (`stop_within`),
        and the stop goes on with the next one, which still gets `_PART_FLOOR_SECONDS`: stop() always returns.
        Safe twice: a second call waits for the first."""
        if not self._started:
            self._stopped = True
            return
        if self._stop_task is None:
            self._stopped = True
            self._stop_task = asyncio.create_task(self._stop(), name="jobsd-stop")
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        loop = asyncio.get_running_loop()
        # One grace period for the whole stop, not one per part: running jobs, REST requests and RPCs share it.
        grace_ends = loop.time() + self.settings.grace_seconds
        gives_up = grace_ends + self.settings.shutdown_margin_seconds

        def left() -> float:
            return max(gives_up - loop.time(), _PART_FLOOR_SECONDS)

        await self._set_serving(False)
        self.service.close()
        # The REST gateway stops accepting at once and winds down while the executors finish or hand back their
        # jobs (their statements interrupted once the grace runs out).
        await asyncio.gather(
            stop_within("the executors", self._stop_executors(), left(), log),
            stop_within("the REST gateway", self._stop_http(), left(), log),
        )
        # After the executors (they give their jobs back over their worker stream): end every worker stream.
        await stop_within("the worker streams", self.dispatcher.stop(), left(), log)
        # Close watch streams so they end with a status instead of hanging the grace period.
        await stop_within("the watch streams", self.hub.stop(), left(), log)
        if self._server is not None:
            server_grace = max(0.0, grace_ends - loop.time())
            await stop_within("the gRPC server", self._server.stop(server_grace), max(server_grace + 1.0, left()), log)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            await stop_within(f"the background task {task.get_name()}", task, _PART_FLOOR_SECONDS, log)
        self._tasks.clear()
        await stop_within("the store", self.store.close(), left(), log)

    async def _stop_executors(self) -> None:
        if self.executors is not None:
            try:
                await self.executors.stop()
            except Exception:
                log.exception("the executors did not stop cleanly")

    async def _stop_http(self) -> None:
        if self._gateway is not None:
            await self._gateway.stop()
        if self._metrics_server is not None:
            await self._metrics_server.stop()

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    # ------------------------------------------------------------------ tokens

    async def create_token(
        self, workspace: str | None, scopes: list[str], name: str = "token", *, create_workspace: bool = True
    ) -> str:
        """A new random token (the secret is returned once; only its hash is stored).

        `create_workspace=False`: a workspace that does not exist yet is refused (NotFound), not made."""
        secret = new_token_secret()
        await self.ensure_token(secret, workspace, scopes, name, create_workspace=create_workspace)
        return secret

    async def ensure_token(
        self, secret: str, workspace: str | None, scopes: list[str], name: str, *, create_workspace: bool = True
    ) -> None:
        if not scopes:
            raise InvalidArgument("scope", "at least one scope is required")
        checked = tuple(validate_scope(s) for s in scopes)
        workspace_id = None
        if workspace is not None and not create_workspace:
            found = await self.store.find_workspace(workspace)
            if found is None:
                raise NotFound(
                    f"workspace {workspace!r} does not exist in {store_shown(self.settings.store)}; "
                    "check the name, or pass --create-workspace to create it"
                )
            workspace_id = found.id
        elif workspace is not None:
            workspace_id = (await self.store.ensure_workspace(workspace, self.clock.now())).id
        record = TokenRecord(hash_token(secret), name, workspace_id, checked, self.clock.now())
        await self.store.put_token(record)

    async def workspace_id_of(self, name: str) -> str:
        return (await self.store.ensure_workspace(name, self.clock.now())).id

    async def _ensure_configured_tokens(self) -> None:
        if self.settings.admin_token:
            await self.ensure_token(self.settings.admin_token, "default", [ADMIN], "admin (JOBSD_ADMIN_TOKEN)")
        else:
            await self.store.ensure_workspace("default", self.clock.now())
        if self.settings.worker_token:
            await self.ensure_token(
                self.settings.worker_token, "default", [JOBS_EXECUTE], "worker (JOBSD_WORKER_TOKEN)"
            )
        if self.settings.service_token:
            await self.ensure_token(
                self.settings.service_token, None, [JOBS_CREATE, JOBS_EXECUTE], "service (JOBSD_SERVICE_TOKEN)"
            )

    # ------------------------------------------------------------------ background work

    def _spawn(self, body: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self._tasks.append(asyncio.create_task(body(), name=name))

    async def _sweep_loop(self) -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                await self.service.sweep_leases()
                sweeps += 1
                if sweeps % _PURGE_EVERY_SWEEPS == 0:
                    await self.service.sweep_retention()
            except JobsdError as exc:
                log.warning("sweep failed: %s", exc)
            except Exception:
                log.exception("sweep failed")

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.probe_health()

    async def probe_health(self) -> bool:
        """Ping the store once and publish the result on grpc.health.v1 (NOT_SERVING while it is unreachable)."""
        try:
            await self.store.ping()
        except JobsdError as exc:
            log.warning("store unreachable: %s", exc)
            await self._set_serving(False)
            return False
        await self._set_serving(True)
        return True

    async def _set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *_SERVICE_NAMES):
            await self._health.set(name, status)
