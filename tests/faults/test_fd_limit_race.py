"""At the descriptor limit another thread of the process takes the descriptor the REST listener freed to refuse with.

The REST listener keeps one spare descriptor; out of descriptors it closes it, accepts the waiting connection,
answers it 503 and takes the spare back. Between that close and that accept any other thread of the process may
open something and get the freed number first — grpc core's listener thread does, when its once-a-second retry of
its own accept lands there. The listener then has nothing to refuse with, and a REST client would wait, unanswered,
until some connection of the process closed (a silent gRPC one: up to its handshake time-out).

Here that race is made certain: the test runs a real `GuardedListener` in-process under a lowered RLIMIT_NOFILE,
fills every descriptor, and hands the listener a listening socket whose `accept()` first lets another thread take
the lowest free descriptor, if there is one, as many times as the test says. Each test asserts what a REST client
sees: an answer (503) instead of silence, and which of the open connections the server gave up for it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from jobsd.gateway.connections import GuardedListener
from jobsd.gateway.protocol import CleanErrorsRunner, ConnectionLimits

WAIT = 10.0
# No time-out of the gateway's may close a connection during a test: what closes one here is the listener.
LIMITS = ConnectionLimits(header_timeout=120, body_timeout=120, idle_timeout=120)
# Descriptors above what the process holds when a test starts: its sockets, both ends of each connection.
HEADROOM = 64
REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class RacingSocket(socket.socket):
    """A listening socket whose next `steals` accepts are each preceded by another thread of the process taking
    the lowest free descriptor — when there is one: at the limit, only just after the listener freed its spare."""

    def __init__(self, listening: socket.socket) -> None:
        super().__init__(listening.family, listening.type, listening.proto, fileno=listening.detach())
        self.steals = 0
        self.stolen: list[int] = []
        self.stole = asyncio.Event()  # accept() runs on the listener's loop, so it may set it

    def accept(self) -> tuple[socket.socket, Any]:
        if self.steals > 0:
            thief = threading.Thread(target=self._steal, name="descriptor-thief")
            thief.start()
            thief.join()
            if self.stolen:
                self.stole.set()
        return super().accept()

    def _steal(self) -> None:
        try:
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as failed:
            assert failed.errno == errno.EMFILE, failed
            return  # nothing free to take
        self.stolen.append(fd)
        self.steals -= 1

    def give_back(self) -> None:
        while self.stolen:
            os.close(self.stolen.pop())


@contextmanager
def descriptor_limit_reached() -> Iterator[list[int]]:
    """The process at its RLIMIT_NOFILE (lowered just above what it holds): every descriptor below it taken by a
    /dev/null the caller may close to free one. The limit and the descriptors are given back at the end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(name) for name in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, highest + HEADROOM), hard))
    filling: list[int] = []
    try:
        while True:
            try:
                filling.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as failed:
                if failed.errno != errno.EMFILE:
                    raise
                break
        yield filling
    finally:
        for fd in filling:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@dataclass
class Rest:
    """A `GuardedListener` on 127.0.0.1 serving `GET /hello` (200 at once) and `GET /hold` (200 once `held_done`
    is set; `held` is set when its handler starts). `made` gets each connection's handler as the listener makes it."""

    listener: GuardedListener
    listening: RacingSocket
    port: int
    held: asyncio.Event
    held_done: asyncio.Event
    made: asyncio.Queue[RequestHandler]

    async def client(self) -> socket.socket:
        """A connection the server has accepted and made a handler for (its descriptors are taken now)."""
        loop = asyncio.get_running_loop()
        sock = unconnected()
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        async with asyncio.timeout(WAIT):
            await self.made.get()
        return sock


def unconnected() -> socket.socket:
    """A client socket made now (while descriptors are free), to connect later."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


@pytest.fixture
async def rest() -> AsyncIterator[Rest]:
    held, held_done = asyncio.Event(), asyncio.Event()

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def hold(_request: web.Request) -> web.Response:
        held.set()
        await held_done.wait()
        return web.Response(text="held")

    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/hold", hold)
    runner = CleanErrorsRunner(app, limits=LIMITS, access_log=None, shutdown_timeout=1)
    await runner.setup()
    server = runner.server
    assert server is not None
    made: asyncio.Queue[RequestHandler] = asyncio.Queue()

    def make_handler() -> RequestHandler:
        one = server()
        made.put_nowait(one)
        return one

    listening = RacingSocket(socket.create_server(("127.0.0.1", 0)))
    listener = GuardedListener(make_handler, [listening], LIMITS)
    listener.start()
    try:
        yield Rest(listener, listening, listening.getsockname()[1], held, held_done, made)
    finally:
        held_done.set()
        listening.give_back()
        listener.close()
        await listener.wait_closed()
        await runner.cleanup()


async def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends on `sock` until it closes it (within WAIT: silence fails the test)."""
    loop = asyncio.get_running_loop()
    chunks = []
    async with asyncio.timeout(WAIT):
        while chunk := await loop.sock_recv(sock, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def _response(sock: socket.socket, request: bytes = REQUEST) -> bytes:
    """Send `request` on a kept-alive connection and read its whole (small) response."""
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, request)
    received = b""
    async with asyncio.timeout(WAIT):
        while not received.endswith((b"hello", b"held")):
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, f"closed after {received!r}"
            received += chunk
    return received


def _gateway_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "jobsd.gateway" and r.levelno >= logging.WARNING]


async def test_the_spare_taken_by_another_thread_the_oldest_idle_connection_gives_way_and_the_client_gets_503(
    rest: Rest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="jobsd.gateway")
    loop = asyncio.get_running_loop()
    # Oldest first: a request in flight, a kept-alive connection between requests, a connection that sent nothing.
    busy = await rest.client()
    await loop.sock_sendall(busy, b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(WAIT):
        await rest.held.wait()
    kept = await rest.client()
    assert (await _response(kept)).startswith(b"HTTP/1.1 200")
    silent = await rest.client()
    probes = [unconnected() for _ in range(3)]
    try:
        with descriptor_limit_reached():
            rest.listening.steals = 1
            await loop.sock_connect(probes[0], ("127.0.0.1", rest.port))
            first = await _answer(probes[0])
            assert first.startswith(b"HTTP/1.1 503"), first
            assert b"out of file descriptors" in first
            assert rest.listening.stolen, "the other thread never got the freed descriptor: no race happened"
            # The connection given up for it: the oldest of those waiting for a request, closed without a word.
            assert await _answer(kept) == b""
            # The spare is back: the next clients are refused at once, and nothing else is closed for them.
            for probe in probes[1:]:
                await loop.sock_connect(probe, ("127.0.0.1", rest.port))
                refused = await _answer(probe)
                assert refused.startswith(b"HTTP/1.1 503"), refused
            assert rest.listener.open_connections == 2
        # The request in flight was never a candidate: it finishes; the silent connection is still served.
        rest.held_done.set()
        assert (await _response(busy, b"")).startswith(b"HTTP/1.1 200")
        assert (await _response(silent)).startswith(b"HTTP/1.1 200")
    finally:
        for sock in (busy, kept, silent, *probes):
            sock.close()
    assert len(_gateway_warnings(caplog)) == 1, _gateway_warnings(caplog)


async def test_each_time_the_spare_is_taken_again_another_idle_connection_gives_way(rest: Rest) -> None:
    loop = asyncio.get_running_loop()
    idle = [await rest.client() for _ in range(3)]
    probe = unconnected()
    try:
        with descriptor_limit_reached():
            rest.listening.steals = 2
            await loop.sock_connect(probe, ("127.0.0.1", rest.port))
            answer = await _answer(probe)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert len(rest.listening.stolen) == 2
            # Two given up, oldest first; the third is kept.
            assert [await _answer(sock) for sock in idle[:2]] == [b"", b""]
            assert rest.listener.open_connections == 1
        assert (await _response(idle[2])).startswith(b"HTTP/1.1 200")
    finally:
        for sock in (*idle, probe):
            sock.close()


async def test_with_no_idle_connection_to_give_up_the_client_is_refused_as_soon_as_a_descriptor_comes_free(
    rest: Rest,
) -> None:
    loop = asyncio.get_running_loop()
    busy = await rest.client()
    await loop.sock_sendall(busy, b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    async with asyncio.timeout(WAIT):
        await rest.held.wait()
    probe = unconnected()
    try:
        with descriptor_limit_reached() as filling:
            rest.listening.steals = 1
            await loop.sock_connect(probe, ("127.0.0.1", rest.port))
            async with asyncio.timeout(WAIT):
                await rest.listening.stole.wait()
            # Some other part of the process closes a file: the listener takes it as its spare and answers.
            os.close(filling.pop())
            answer = await _answer(probe)
            assert answer.startswith(b"HTTP/1.1 503"), answer
            assert b"out of file descriptors" in answer
        # The request in flight was not given up.
        rest.held_done.set()
        assert (await _response(busy, b"")).startswith(b"HTTP/1.1 200")
    finally:
        busy.close()
        probe.close()
