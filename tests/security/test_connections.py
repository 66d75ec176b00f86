"""Attacks on the connections themselves, from raw sockets against a real jobsd (REST and gRPC ports).

Each limit is set small (a fraction of a second) so the attack finishes quickly; the test then waits for the event
the limit promises (the server closing the socket, a GOAWAY) with a bound, never for a fixed time. Each asserts
the refusal, that nothing of the request (the token) came back or reached a log record, and that the server went
on answering others meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.security.conftest import WAIT, LogRecords, Stack, start_stack
from tests.support.raw_http2 import (
    ENHANCE_YOUR_CALM,
    GOAWAY,
    PING,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    RawHttp2,
    frame,
)
from tests.support.server import make_settings, running_app

SHORT = 0.5  # seconds: every time-out under attack here


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded: a socket left open fails the test)."""
    chunks = []
    async with asyncio.timeout(WAIT):
        while True:
            try:
                chunk = await reader.read(65536)
            except ConnectionError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def _status_and_body(raw: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.fixture
async def timed_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for started in start_stack(
        tmp_path,
        http_header_timeout_seconds=SHORT,
        http_body_timeout_seconds=SHORT,
        http_idle_timeout_seconds=SHORT,
        executors=False,  # jobs stay waiting: what an attack must not change is easy to see
    ):
        yield started


async def _served(stack: Stack) -> None:
    """The attacked server still answers a well-behaved client."""
    status, body = await stack.get("/v0/jobs", stack.alpha.tokens["admin"])
    assert status == 200 and "jobs" in body


# ------------------------------------------------------------------ REST


async def test_silent_and_partial_header_sockets_are_closed_and_others_still_served(
    timed_stack: Stack, logs: LogRecords
) -> None:
    stack = timed_stack
    assert stack.app.http_port is not None
    token = stack.alpha.tokens["admin"]
    partial = f"GET /v0/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n".encode()
    started = time.monotonic()
    silent = [await _connect(stack.app.http_port) for _ in range(25)]
    halves = [await _connect(stack.app.http_port) for _ in range(5)]
    for _reader, writer in halves:
        writer.write(partial)
    await _served(stack)

    said_to_silent = await asyncio.gather(*(_until_closed(reader) for reader, _ in silent))
    said_to_halves = await asyncio.gather(*(_until_closed(reader) for reader, _ in halves))
    closed_after = time.monotonic() - started

    assert said_to_silent == [b""] * 25  # closed, nothing said
    for raw in said_to_halves:
        status, body = _status_and_body(raw)
        assert status == 408
        assert body["error"] == f"Request timeout: the request line and headers did not arrive within {SHORT:g} seconds"
        assert token.encode() not in raw
    await _served(stack)
    assert closed_after < WAIT, closed_after
    assert not logs.errors()
    assert token not in logs.text()
    for _reader, writer in silent + halves:
        writer.close()


async def test_a_head_trickled_a_byte_at_a_time_is_cut_off(timed_stack: Stack) -> None:
    stack = timed_stack
    assert stack.app.http_port is not None
    reader, writer = await _connect(stack.app.http_port)
    head = b"GET /v0/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 10_000
    sent = 0
    received = b""
    async with asyncio.timeout(WAIT):
        # The attacker's pace: a byte every 50 ms, each one before the previous one could trip an idle timer.
        for byte in head:
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            try:
                received = await asyncio.wait_for(reader.read(65536), 0.05)
            except TimeoutError:
                continue
            break
    received += await _until_closed(reader)
    status, body = _status_and_body(received)
    assert status == 408, received
    assert "did not arrive within" in body["error"]
    assert sent < len(head)  # cut off mid-head, not after the attacker ran out of bytes
    writer.close()
    await _served(stack)


async def test_a_body_that_never_arrives_is_408_and_changes_nothing(timed_stack: Stack) -> None:
    stack = timed_stack
    assert stack.app.http_port is not None
    token = stack.alpha.tokens["admin"]
    job = await stack.create(token, "query", query_sql="SELECT 1")
    reader, writer = await _connect(stack.app.http_port)
    writer.write(
        f"POST /v0/jobs/{job.id}/cancel HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        'Content-Length: 1000\r\nContent-Type: application/json\r\n\r\n{"a": '.encode()
    )
    raw = await _until_closed(reader)
    status, body = _status_and_body(raw)
    assert status == 408
    assert body["error"] == f"Request timeout: the request body did not arrive within {SHORT:g} seconds"
    writer.close()
    # The cancel never ran: the job is as it was, and a cancel sent in full works.
    after = await stack.jobs.GetJob(pb.GetJobRequest(job_id=job.id), metadata=stack.md(token))
    assert after.status == pb.JOB_STATUS_WAITING and after.revision == job.revision
    status, cancelled = await stack.post(f"/v0/jobs/{job.id}/cancel", token)
    assert status == 200 and cancelled["status"] == "cancelled"


async def test_an_idle_kept_alive_connection_is_closed(timed_stack: Stack) -> None:
    stack = timed_stack
    assert stack.app.http_port is not None
    reader, writer = await _connect(stack.app.http_port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    assert head.startswith(b"HTTP/1.1 200")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    await asyncio.wait_for(reader.readexactly(length), WAIT)
    # Kept alive, then silent: closed after the idle time-out.
    assert await _until_closed(reader) == b""
    writer.close()


async def test_connections_beyond_the_cap_are_refused_503_and_served_again_once_one_closes(
    tmp_path: Path, logs: LogRecords
) -> None:
    async for stack in start_stack(tmp_path, http_max_connections=5, http_header_timeout_seconds=60):
        port = stack.app.http_port
        assert port is not None
        held = [await _connect(port) for _ in range(5)]
        # The sixth: refused at once, with the JSON body and Retry-After, and closed.
        reader, writer = await _connect(port)
        raw = await _until_closed(reader)
        writer.close()
        assert raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert b"\r\nRetry-After: 1\r\n" in raw
        status, body = _status_and_body(raw)
        assert status == 503 and body["error"] == "Too many connections to this server (limit 5)"

        # One of the five leaves: a new connection is served again (as soon as the server has seen it go).
        _first_reader, first_writer = held.pop()
        first_writer.close()
        async with asyncio.timeout(WAIT):
            while True:
                reader, writer = await _connect(port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                answer = await _until_closed(reader)
                writer.close()
                if answer.startswith(b"HTTP/1.1 200"):
                    break
                assert answer.startswith(b"HTTP/1.1 503"), answer
        for _reader, writer in held:
            writer.close()
    assert not logs.errors()


# ------------------------------------------------------------------ gRPC


async def test_silent_grpc_sockets_are_closed_after_the_handshake_time_out(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, grpc_handshake_timeout_seconds=SHORT)
    async with running_app(settings) as app:
        silent = [await RawHttp2.connect(app.grpc_port) for _ in range(10)]
        half = await RawHttp2.connect(app.grpc_port)
        await half.send(b"PRI * HTTP/2.0\r\n")  # half a preface
        async with asyncio.timeout(WAIT):
            assert all(await asyncio.gather(*(c.closed() for c in [*silent, half])))
        # A real client is served meanwhile.
        token = await app.create_token("default", ["ADMIN"], "admin")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            workspace = await asyncio.wait_for(
                pb_grpc.JobsStub(channel).GetWorkspace(
                    pb.GetWorkspaceRequest(), metadata=(("authorization", f"Bearer {token}"),)
                ),
                WAIT,
            )
            assert workspace.name == "default"
        for c in [*silent, half]:
            await c.close()


async def test_a_ping_flood_is_sent_away_with_enhance_your_calm(tmp_path: Path) -> None:
    async with running_app(make_settings(tmp_path)) as app:
        flood = await RawHttp2.connect(app.grpc_port)
        settings = await flood.handshake()
        assert settings.settings()[SETTINGS_MAX_CONCURRENT_STREAMS] == 1_000  # the default, advertised
        await flood.send(b"".join(frame(PING, 0, 0, bytes([i]) * 8) for i in range(10)))
        async with asyncio.timeout(WAIT):
            goaway = await flood.until(GOAWAY, answer_pings=False)
            assert goaway is not None
            _last, code, debug = goaway.goaway()
            assert code == ENHANCE_YOUR_CALM and debug == b"too_many_pings"
            assert await flood.closed()
        # Another connection is not affected.
        other = await RawHttp2.connect(app.grpc_port)
        assert (await asyncio.wait_for(other.handshake(), WAIT)).type == 0x4
        await other.close()


async def test_idle_grpc_connections_get_goaway_and_clients_reconnect(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, grpc_max_connection_idle_seconds=SHORT, grpc_max_concurrent_streams=7)
    async with running_app(settings) as app:
        raw = await RawHttp2.connect(app.grpc_port)
        advertised = (await asyncio.wait_for(raw.handshake(), WAIT)).settings()
        assert advertised[SETTINGS_MAX_CONCURRENT_STREAMS] == 7
        async with asyncio.timeout(WAIT):
            assert await raw.until(GOAWAY) is not None
            assert await raw.closed()
        # A grpcio channel that idles is sent away the same way, and its next call simply reconnects.
        token = await app.create_token("default", ["ADMIN"], "admin")
        md = (("authorization", f"Bearer {token}"),)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = pb_grpc.JobsStub(channel)
            await asyncio.wait_for(stub.GetWorkspace(pb.GetWorkspaceRequest(), metadata=md), WAIT)
            async with asyncio.timeout(WAIT):
                while channel.get_state() is grpc.ChannelConnectivity.READY:
                    await channel.wait_for_state_change(grpc.ChannelConnectivity.READY)
            again = await asyncio.wait_for(stub.GetWorkspace(pb.GetWorkspaceRequest(), metadata=md), WAIT)
            assert again.name == "default"


async def test_a_peer_that_stops_answering_pings_is_dropped(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        grpc_keepalive_seconds=SHORT,
        grpc_keepalive_timeout_seconds=SHORT,
        grpc_max_connection_idle_seconds=60,
    )
    async with running_app(settings) as app:
        dead = await RawHttp2.connect(app.grpc_port)
        await dead.handshake()
        async with asyncio.timeout(WAIT):
            ping = await dead.until(PING, answer_pings=False)
            assert ping is not None and not ping.is_ack  # the server's keepalive ping, left unanswered
            goaway = await dead.until(GOAWAY, answer_pings=False)
            assert goaway is not None and goaway.goaway()[2] == b"ping_timeout"
            assert await dead.closed()
