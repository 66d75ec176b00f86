"""The REST port's listener: how many connections may be open, and what happens when the process runs out of files.

`GuardedSite` replaces aiohttp's `TCPSite` (which hands the socket to `loop.create_server`) with its own accept
loop, `GuardedListener`, for two reasons:

- **A connection cap** (`ConnectionLimits.max_connections`, `JOBSD_HTTP_MAX_CONNECTIONS`): a connection accepted
  while that many are open gets `503` with a JSON body and `Retry-After: 1` at once, and is closed; no protocol
  handler, parser or task is made for it.
- **The file-descriptor limit.** asyncio's accept loop, on `EMFILE`/`ENFILE` (`accept()` out of descriptors),
  logs `socket.accept() out of system resource` with a traceback and retries after a second — once for each of
  the up to `backlog` (128) attempts it makes per readiness event, so at the limit it writes hundreds of records a
  second and the clients waiting in the backlog hang. This listener keeps one spare descriptor: out of
  descriptors, it closes the spare, accepts the waiting connection, answers it `503` and closes it, and takes the
  spare back — so each waiting client gets a clear refusal and the backlog drains.

  Between closing the spare and the accept (or between closing a refused connection and taking the spare back)
  any other thread of the process may get the freed number first: grpc core's listener thread retries its own
  accept once a second, and a connection it accepts that way stays open up to the gRPC handshake time-out. Left
  at that, REST would have nothing to refuse with and its clients would wait unanswered. So when an accept fails
  for want of a descriptor and no spare can be had, the listener gives up the oldest of its connections that is
  waiting for a request with nothing of one received (a silent new connection or a kept-alive one between
  requests: HTTP lets a server close those at any time, and no request is lost), stops watching the socket, and
  looks again as soon as a connection of its own has closed — that descriptor is then free — or else after a
  back-off growing from 50 ms to 1 s (with no such connection to give up, what frees a descriptor is another part
  of the process). A request in flight is never given up. Either way it logs one WARNING when the condition
  starts, at most one more a minute while it lasts (how many connections were refused and given up), and one INFO
  when connections are accepted normally again after five seconds without running out.

Everything it starts (the accept callbacks, the back-off timer, the tasks that hand a socket to the protocol) is
owned here and ended by `close()` / `wait_closed()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from jobsd.gateway.protocol import ConnectionLimits, GatewayProtocol, raw_response

__all__ = ["GuardedListener", "GuardedSite"]

log = logging.getLogger("jobsd.gateway")

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FIRST_BACKOFF = 0.05
_MAX_BACKOFF = 1.0
# While descriptors stay short, at most one WARNING per this many seconds.
_REPORT_EVERY = 60.0
# Descriptors count as available again after this long without running out.
_QUIET = 5.0


class GuardedListener:
    """Accepts connections on bound, listening sockets for `protocol_factory` (aiohttp's `web.Server`).

    Looks enough like an `asyncio.Server` for aiohttp's runner (`sockets`, `close()`, `wait_closed()`).
    """

    def __init__(
        self,
        protocol_factory: Callable[[], RequestHandler],
        sockets: list[socket.socket],
        limits: ConnectionLimits,
        *,
        backlog: int = 128,
    ) -> None:
        self._factory = protocol_factory
        self.sockets = sockets
        self._limits = limits
        self._backlog = backlog
        self._loop = asyncio.get_running_loop()
        self.open_connections = 0
        # The connections being served, oldest first (the one to give up for a descriptor is the oldest idle one).
        self._serving: dict[GatewayProtocol, None] = {}
        self._connecting: set[asyncio.Task[None]] = set()
        self._watching: set[int] = set()
        # While the sockets are not watched: the call that watches them again (the back-off timer, or a call soon
        # after one of our connections has closed and given its descriptor back).
        self._resume: asyncio.Handle | None = None
        self._backoff = _FIRST_BACKOFF
        self._spare: int | None = None
        self._closed = False
        # The out-of-descriptors episode: refused connections, idle ones given up, when it was last reported.
        self._short = False
        self._short_refused = 0
        self._short_given_up = 0
        self._short_reported_at = 0.0
        self._short_seen_at = 0.0
        self.refused_at_cap = 0
        self.refused_out_of_descriptors = 0
        self.given_up_out_of_descriptors = 0

    def start(self) -> None:
        self._take_spare()
        for sock in self.sockets:
            sock.setblocking(False)
            self._watch(sock)

    # ------------------------------------------------------------------ accepting

    def _watch(self, sock: socket.socket) -> None:
        if not self._closed and sock.fileno() not in self._watching:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)
            self._watching.add(sock.fileno())

    def _unwatch_all(self) -> None:
        for fd in self._watching:
            self._loop.remove_reader(fd)
        self._watching.clear()

    def _on_readable(self, sock: socket.socket) -> None:
        # Bounded per readiness event, as asyncio's own loop: other callbacks run between bursts of connections.
        for _ in range(self._backlog):
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._out_of_descriptors(sock, exc)
                else:
                    log.warning("REST gateway: accept failed: %s", exc)
                return
            self._accepted_again()
            if self.open_connections >= self._limits.max_connections:
                self.refused_at_cap += 1
                _refuse(conn, f"Too many connections to this server (limit {self._limits.max_connections})")
                continue
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        self.open_connections += 1
        released = False
        made: GatewayProtocol | None = None

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.open_connections -= 1
                if made is not None:
                    self._serving.pop(made, None)
                self._connection_ended()

        def protocol() -> GatewayProtocol:
            nonlocal made
            handler = self._factory()
            # Only GatewayProtocol reports its end, which the count needs (CleanErrorsRunner makes them).
            assert isinstance(handler, GatewayProtocol), type(handler)
            handler.on_connection_lost(release)
            made = handler
            self._serving[handler] = None
            return handler

        async def connect() -> None:
            try:
                await self._loop.connect_accepted_socket(protocol, sock=conn)
            except BaseException:
                release()
                conn.close()
                raise

        task = self._loop.create_task(connect())
        self._connecting.add(task)
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[None]) -> None:
        self._connecting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("REST gateway: a connection failed as it was made: %r", task.exception())

    # ------------------------------------------------------------------ out of descriptors

    def _take_spare(self) -> None:
        if self._spare is None:
            with contextlib.suppress(OSError):
                self._spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def _out_of_descriptors(self, sock: socket.socket, exc: OSError) -> None:
        self._note_short(exc)
        for _ in range(self._backlog):
            # Taken back after each refusal. Another thread may have got that descriptor first: then the accept
            # below, without a spare to free, tells whether a client waits (EMFILE) or none does.
            self._take_spare()
            if self._spare is not None:
                os.close(self._spare)
                self._spare = None
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                self._take_spare()
                return  # the backlog is drained; the next connection wakes us
            except ConnectionAbortedError:
                continue
            except OSError as failed:
                if failed.errno in _OUT_OF_DESCRIPTORS:
                    break  # another thread of the process got the freed descriptor first
                log.debug("REST gateway: accept failed while out of file descriptors: %s", failed)
                self._take_spare()
                self._look_again_later()
                return
            self._short_refused += 1
            self.refused_out_of_descriptors += 1
            _refuse(conn, "The server is out of file descriptors; try again shortly")
        else:
            self._take_spare()
            return  # a whole backlog refused; the next readiness event goes on
        # A client waits and there is no descriptor to refuse it with. Give one of our idle connections up for it:
        # its descriptor is free once it has closed, and then we look again (or after the back-off, when there
        # is none to give up and only another part of the process can free one).
        self._give_up_an_idle_connection()
        self._look_again_later()

    def _give_up_an_idle_connection(self) -> None:
        for handler in self._serving:  # oldest first
            if handler.awaiting_request:
                self._short_given_up += 1
                self.given_up_out_of_descriptors += 1
                log.debug("REST gateway: closed an idle connection to free a descriptor for a refusal")
                handler.give_up()
                return

    def _look_again_later(self) -> None:
        self._unwatch_all()
        if self._resume is None and not self._closed:
            self._resume = self._loop.call_later(self._backoff, self._look_again)
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF)

    def _connection_ended(self) -> None:
        # Called from the protocol's connection_lost, which asyncio calls just before it closes the socket: the
        # descriptor is free by the time a callback scheduled now runs. No sooner than that, and no busy loop:
        # at most one look per connection that ends.
        if self._resume is not None and not self._closed:
            self._resume.cancel()
            self._resume = self._loop.call_soon(self._look_again)

    def _look_again(self) -> None:
        self._resume = None
        self._take_spare()
        for sock in self.sockets:
            self._watch(sock)

    def _note_short(self, exc: OSError) -> None:
        now = self._loop.time()
        self._short_seen_at = now
        if not self._short:
            self._short = True
            self._short_refused = 0
            self._short_given_up = 0
            self._short_reported_at = now
            log.warning(
                "REST gateway: out of file descriptors (%s); new connections are refused until some close",
                exc.strerror or exc,
            )
        elif now - self._short_reported_at >= _REPORT_EVERY:
            self._short_reported_at = now
            log.warning(
                "REST gateway: still out of file descriptors; %d connections refused so far, %d idle ones closed "
                "to refuse them",
                self._short_refused,
                self._short_given_up,
            )

    def _accepted_again(self) -> None:
        if self._spare is None:
            self._take_spare()
        # The episode ends after a quiet spell, not at the first accept: at the edge of the limit, accepts and
        # refusals alternate, and each flip must not cost two log lines.
        if self._short and self._loop.time() - self._short_seen_at >= _QUIET:
            self._short = False
            self._backoff = _FIRST_BACKOFF
            log.info(
                "REST gateway: accepting connections again (%d refused while out of file descriptors, %d idle ones "
                "closed to refuse them)",
                self._short_refused,
                self._short_given_up,
            )

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Stop accepting (safe twice); connections already made are the runner's to end."""
        if self._closed:
            return
        self._closed = True
        self._unwatch_all()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for task in self._connecting:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    async def wait_closed(self) -> None:
        pending = list(self._connecting)
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _refuse(conn: socket.socket, message: str) -> None:
    """Answer a connection no handler will serve with a JSON 503, and close it."""
    try:
        conn.setblocking(False)
        conn.send(raw_response(503, message, (("Retry-After", "1"),)))
    except OSError:
        pass
    finally:
        conn.close()


def _listening_sockets(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Bound, listening sockets for `host` (None or empty: every interface) and `port`, as asyncio would make."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, str]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, str(address[0])) in seen:
                continue
            seen.add((family, str(address[0])))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Every address of an ephemeral port shares the port the first one got.
            sock.bind((address[0], port, *address[2:]))
            sock.listen(backlog)
            port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class GuardedSite(web.BaseSite):
    """`web.TCPSite`, accepting through a `GuardedListener` (the connection cap, the descriptor limit)."""

    def __init__(
        self, runner: web.BaseRunner, host: str | None, port: int, limits: ConnectionLimits, *, backlog: int = 128
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limits = limits

    @property
    def name(self) -> str:
        return f"http://{self._host or '0.0.0.0'}:{self._port}"

    @property
    def listener(self) -> GuardedListener | None:
        server = self._server
        return server if isinstance(server, GuardedListener) else None

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        sockets = _listening_sockets(self._host, self._port, self._backlog)
        listener = GuardedListener(server, sockets, self._limits, backlog=self._backlog)
        self._server = listener  # type: ignore[assignment]
        listener.start()

    async def stop(self) -> None:
        listener = self.listener
        await super().stop()
        if listener is not None:
            await listener.wait_closed()
