"""The servers a benchmark talks to, each run in its own process: `python -m bench.servers KIND [options]`.

- `jobsd`: the real JobsdApp on a seeded SQLite file (gRPC and, with --http, the REST gateway in-process).
- `echo`: the limit anchor for RPCs, a bare grpc.aio server with the same server options as jobsd:
  `/bench.Echo/Unary` returns the request bytes; `/bench.Echo/Subscribe` opens a stream that sends one
  message at once (like WatchJob's SNAPSHOT) and then one per `/bench.Echo/Fire`, which hands its payload to
  every open stream (what a fan-out must do, with nothing else around it).
- `hello`: the limit anchor for the gateway, a bare aiohttp app answering `GET /hello` with a fixed JSON body.
- `sqlite`: the limit anchor for writes, bare SQLite insert rates (prints JSON and exits).

A server prints one JSON line (`{"grpc": port, "http": port}`) when it is ready and stops on SIGTERM/SIGINT.
With `--profile FILE` the jobsd server runs under cProfile and writes the stats to FILE when it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from jobsd_client.signals import until_signalled

__all__ = ["SERVER_OPTIONS", "main"]

# The options JobsdApp._start_grpc gives its server (the anchor must run the same transport).
SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


def _ready(**ports: int | None) -> None:
    print(json.dumps({**ports, "pid": os.getpid()}), flush=True)


# ---------------------------------------------------------------- jobsd


async def _serve_jobsd(args: argparse.Namespace) -> None:
    from jobsd.app import JobsdApp, freeze_startup_objects
    from jobsd.settings import Settings, settings_from

    settings = Settings(
        grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0" if args.http else "",
        store=f"sqlite:///{args.store}",
        executors=False,
        log_level="WARNING",
        grace_seconds=1.0,
        # As JOBSD_CONCURRENCY_LIMITS would set them (the operator's setting).
        kind_limits=settings_from({"JOBSD_CONCURRENCY_LIMITS": args.limits}).kind_limits,
        # The end-to-end producer watches every completion on one WatchJobs stream (as Celery's join_native
        # follows every result): a buffer that holds a whole batch, so a busy producer is never cut off.
        watch_buffer=args.watch_buffer,
        # The fan-out figure opens 10,000 WatchJob streams on one job of one workspace: the per-workspace cap
        # (JOBSD_MAX_WATCH_STREAMS_PER_WORKSPACE, 1,000 by default) is raised to the process's own.
        max_watch_streams_per_workspace=20_000,
        # One token carries each whole load, which is not how tenants share a server: the per-token budget
        # (JOBSD_RATE_LIMIT, 5,000 a second) would answer 429 to part of a REST load that runs faster than that,
        # and the peers have no such limit. Raised past any load rather than off, so every call still pays the check.
        rate_limit=1_000_000,
        rate_limit_burst=1_000_000,
    )
    app = JobsdApp(settings)
    await app.start()
    freeze_startup_objects()  # as `jobsd serve` does once its app has started
    _ready(grpc=app.grpc_port, http=app.http_port)
    try:
        await until_signalled()
    finally:
        await app.stop()


# ---------------------------------------------------------------- echo


class _Fanout:
    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[bytes]] = set()

    async def unary(self, request: bytes, context: Any) -> bytes:
        return request

    async def subscribe(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.queues.add(queue)
        try:
            yield request
            while True:
                yield await queue.get()
        finally:
            self.queues.discard(queue)

    async def fire(self, request: bytes, context: Any) -> bytes:
        for queue in self.queues:
            queue.put_nowait(request)
        return len(self.queues).to_bytes(4, "big")


async def _serve_echo(args: argparse.Namespace) -> None:
    fanout = _Fanout()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(fanout.unary),
            "Subscribe": grpc.unary_stream_rpc_method_handler(fanout.subscribe),
            "Fire": grpc.unary_unary_rpc_method_handler(fanout.fire),
        },
    )
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    _ready(grpc=port)
    try:
        await until_signalled()
    finally:
        await server.stop(0.5)


# ---------------------------------------------------------------- hello


async def _serve_hello(args: argparse.Namespace) -> None:
    from aiohttp import web

    body = json.dumps({"hello": "x" * max(0, args.size - 14)}).encode()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    _ready(http=port)
    try:
        await until_signalled()
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- sqlite


def _sqlite_rates(seconds: float, row_bytes: int) -> dict[str, float]:
    """Rows/s of (a) one INSERT per committed transaction, WAL + synchronous=NORMAL as the store runs, and
    (b) batched executemany inserts with durability off, as the seeder runs. A table with a text primary key
    and a payload of `row_bytes`: the floor under any store write."""
    doc = "x" * row_bytes
    with tempfile.TemporaryDirectory(prefix="jobsd-bench-sqlite-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "anchor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, doc TEXT NOT NULL)")
        n = 0
        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            for _ in range(100):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t VALUES (?, ?, ?)", (os.urandom(16).hex(), n, doc))
                conn.execute("COMMIT")
                n += 1
        commit_rate = n / (time.perf_counter() - started)
        conn.execute("PRAGMA synchronous=OFF")
        n = 0
        started = time.perf_counter()
        end = started + seconds
        while time.perf_counter() < end:
            rows = [(os.urandom(16).hex(), i, doc) for i in range(10_000)]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
            n += len(rows)
        bulk_rate = n / (time.perf_counter() - started)
        conn.close()
    return {"commit_rate": commit_rate, "bulk_rate": bulk_rate}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servers")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("jobsd")
    p.add_argument("--store", required=True)
    p.add_argument("--http", action="store_true")
    p.add_argument("--profile", default="")
    p.add_argument("--limits", default="", help="JOBSD_CONCURRENCY_LIMITS, e.g. query=64")
    p.add_argument("--watch-buffer", type=int, default=256, help="events buffered per watcher")
    sub.add_parser("echo")
    p = sub.add_parser("hello")
    p.add_argument("--size", type=int, default=64)
    p = sub.add_parser("sqlite")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--row-bytes", type=int, default=1000)
    args = parser.parse_args(argv)

    if args.kind == "sqlite":
        print(json.dumps(_sqlite_rates(args.seconds, args.row_bytes)), flush=True)
        return
    body = {"jobsd": _serve_jobsd, "echo": _serve_echo, "hello": _serve_hello}[args.kind]
    if args.kind == "jobsd" and args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(body(args))
        finally:
            profiler.disable()
            profiler.dump_stats(args.profile)
        return
    asyncio.run(body(args))


if __name__ == "__main__":
    main(sys.argv[1:])
