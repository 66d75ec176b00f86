"""The process runs out of file descriptors: `jobsd serve` under a small RLIMIT_NOFILE, flooded with sockets.

A real subprocess (the limit is per process), both ports, raw sockets that stay silent. While the process has no
descriptor left, a new REST connection is refused with a JSON 503 instead of hanging in the backlog, the log gains
a handful of lines rather than asyncio's `socket.accept() out of system resource` in a loop, and once the
sockets close both ports answer again.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.subprocess_server import serve_process

DESCRIPTORS = 256
START = 30.0  # seconds: the process coming up, the ports coming back
WAIT = 10.0


def _limit_descriptors() -> None:  # runs in the child, before exec
    resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


def _healthz(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        body: bytes = response.read()
        return body


async def _until(check: Callable[[], object], what: str) -> None:
    """Poll `check()` (a blocking call, in a thread) until it succeeds, within START. An attempt that fails with
    OSError (the port does not answer yet) is tried again; the last such failure is named if START runs out."""
    last: BaseException | None = None
    try:
        async with asyncio.timeout(START):
            while True:
                try:
                    await asyncio.to_thread(check)
                    return
                except OSError as failed:
                    last = failed
                    await asyncio.sleep(0.05)  # polling another process's port until it answers
    except TimeoutError:
        raise AssertionError(f"{what} within {START:g} s; the last attempt: {last!r}") from None


def _grpc_serving(port: int) -> None:
    """Raises OSError while the port does not answer SERVING yet (unreachable, too slow, or not serving)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError as failed:
            if failed.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise OSError(f"gRPC health check: {failed.code().name}") from failed
            raise
        if answer.status != health_pb2.HealthCheckResponse.SERVING:
            raise OSError(f"gRPC health is {answer.status}, not SERVING")


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


async def test_at_the_descriptor_limit_rest_refuses_cleanly_logs_little_and_both_ports_come_back(
    tmp_path: Path, held: list[socket.socket]
) -> None:
    # Silent sockets must stay open for the test, not be closed by the time-outs (tests/security tests those).
    settings = {
        "store": f"sqlite:///{tmp_path}/jobsd.db",
        "executors": "off",
        "http_header_timeout_seconds": 120,
        "grpc_handshake_timeout_seconds": 120,
        "log_level": "INFO",
    }
    async with serve_process(tmp_path / "serve.log", settings, preexec_fn=_limit_descriptors) as serve:
        grpc_port, http_port, log_path = serve.grpc_port, serve.http_port, serve.log
        assert http_port is not None
        await _until(lambda: _healthz(http_port), "the REST port never answered")

        # Silent connections to both ports, more than the process has descriptors: the REST ones take what is
        # left, the gRPC ones wait in the kernel's backlog (grpc core cannot accept them either).
        for port, count in ((http_port, DESCRIPTORS), (grpc_port, 64)):
            for _ in range(count):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=WAIT))
        lines_before = log_path.read_text().count("\n")

        # Out of descriptors: each new REST connection is answered 503 at once (not left hanging in the backlog).
        refusals = 0
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", http_port), timeout=WAIT) as probe:
                probe.settimeout(WAIT)
                answer = probe.recv(4096)
            if answer.startswith(b"HTTP/1.1 503"):
                refusals += 1
                assert b"out of file descriptors" in answer
        assert refusals == 50, f"only {refusals} of 50 connections were refused with a 503"
        text = log_path.read_text()
        added = text.count("\n") - lines_before
        # One WARNING from the gateway, and grpc core's own "File descriptor limit reached" once a second.
        assert added <= 10, text.splitlines()[lines_before:][:20]
        assert "socket.accept() out of system resource" not in text
        assert "out of file descriptors" in text

        for sock in held:
            sock.close()
        held.clear()
        await _until(lambda: _healthz(http_port), "the REST port did not come back")
        await _until(lambda: _grpc_serving(grpc_port), "the gRPC port did not come back")

        code, _ = await serve.terminate(START)
        assert code == 0, serve.log_text()[-2000:]
