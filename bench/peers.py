"""The peers, measured in the same run with the same loads as jobsd (`python -m bench --peers`, `make bench-peers`).

- End-to-end no-op jobs: jobsd (server + one SDK worker process, concurrency 32 + one SDK producer process) against
  Celery + Redis (redis-server with AOF `appendfsync everysec` + one Celery worker process, concurrency 32 + one
  producer process), 3,000 jobs a window, windows alternating (A B B A A B ...).
- REST reads with wrk (1 thread, 32 connections, 8 s a window, alternating): jobsd `GET /v0/jobs/{id}` against
  Flower 2.2 `GET /api/task/info/{id}` (ids drawn in turn from 5,000 finished jobs/tasks each), and
  `GET /v0/jobs?limit=100` against `GET /api/tasks?limit=100`.

Every process listens on 127.0.0.1 and is started and stopped here. The peers run in their own virtual environment
(`--peers-python`, made by `make bench-peers`), so nothing of theirs is a dependency of jobsd.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.load import ServerProcessStats
from bench.procs import ServerProcess, terminate
from bench.seed import ADMIN_TOKEN, SERVICE_TOKEN, seed_to

__all__ = ["PeerOptions", "PeerWindow", "measure_peers"]

_ROOT = Path(__file__).resolve().parent.parent
E2E_JOBS = 3_000
READ_JOBS = 5_000


@dataclass
class PeerOptions:
    python: Path
    rounds: int
    e2e_jobs: int
    wrk_seconds: float
    celery_pool: str
    out: Path


@dataclass
class PeerWindow:
    """One measured window: a rate, and CPU seconds per op of every process involved."""

    rate: float
    cpu_us: float
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class PeerResults:
    windows: dict[str, list[PeerWindow]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Proc:
    """A peer process (redis, a Celery worker, Flower, a jobsd worker), stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.log_path, self.env = name, argv, log, env
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> _Proc:
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            cwd=_ROOT,
            stdout=log,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
        )
        log.close()
        return self

    @property
    def stats(self) -> ServerProcessStats:
        assert self.proc is not None
        return ServerProcessStats(self.proc.pid)

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            await terminate(proc, within=20)


async def _wait_port(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:g} s") from None
            await asyncio.sleep(0.1)


async def _run_json(argv: list[str], limit_seconds: float = 900) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit_seconds)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed ({proc.returncode}): {err.decode()[-800:]}")
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def _cpu(*procs: ServerProcessStats) -> float:
    return sum(p.cpu_seconds() for p in procs)


_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_PCT = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def _wrk_script(path: Path, prefix: str, ids: list[str], header: str | None) -> None:
    quoted = ",".join(json.dumps(prefix + i) for i in ids)
    lines = [f"local paths = {{{quoted}}}", "local i = 0"]
    if header:
        lines.append(f'wrk.headers["Authorization"] = {json.dumps(header)}')
    lines += ["request = function()", "  i = i % #paths + 1", '  return wrk.format("GET", paths[i])', "end"]
    path.write_text("\n".join(lines) + "\n")


async def _wrk(url: str, script: Path, seconds: float, server: list[ServerProcessStats]) -> PeerWindow:
    cpu0 = _cpu(*server)
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", "-c32", f"-d{seconds:g}s", "--latency", "-s", str(script), url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    cpu = _cpu(*server) - cpu0
    text = out.decode()
    match = _WRK_RATE.search(text)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed: {err.decode()[-400:]} {text[-400:]}")
    if "Non-2xx" in text:
        raise RuntimeError(f"wrk saw error answers from {url}: {text[-400:]}")
    rate = float(match.group(1))
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    pct = {int(m.group(1)): float(m.group(2)) * scale[m.group(3)] for m in _WRK_PCT.finditer(text)}
    return PeerWindow(rate, cpu / max(1.0, rate * seconds) * 1e6, pct.get(50), pct.get(99))


async def measure_peers(opts: PeerOptions, log: Path) -> PeerResults:
    """Every peer figure; see the module doc."""
    if not opts.python.exists():
        raise SystemExit(f"{opts.python} is missing: `make bench-peers` installs the peers (Celery, Redis, Flower)")
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: `make bench-peers` installs it")
    results = PeerResults()
    tmp = Path(tempfile.mkdtemp(prefix="jobsd-bench-peers-"))
    procs: list[_Proc] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            # ---- Celery + Redis + Flower
            redis_port, flower_port = _free_port(), _free_port()
            (tmp / "redis").mkdir()
            redis = await _Proc(
                "redis",
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--appendonly", "yes",
                 "--appendfsync", "everysec", "--save", "", "--dir", str(tmp / "redis"), "--protected-mode", "yes"],
                log,
            ).start()  # fmt: skip
            procs.append(redis)
            await _wait_port(redis_port)
            broker = f"redis://127.0.0.1:{redis_port}/0"
            peer = [str(opts.python), "-m", "bench.celery_peer"]
            concurrency = "1" if opts.celery_pool == "solo" else "32"
            prefetch = "64" if opts.celery_pool == "solo" else "4"
            celery_worker = await _Proc(
                "celery worker",
                [*peer, "worker", "--broker", broker, "--pool", opts.celery_pool, "--concurrency", concurrency,
                 "--prefetch", prefetch],
                log,
            ).start()  # fmt: skip
            procs.append(celery_worker)
            flower = await _Proc(
                "flower", [*peer, "flower", "--broker", broker, "--port", str(flower_port)], log,
                env={"FLOWER_UNAUTHENTICATED_API": "true"},
            ).start()  # fmt: skip
            procs.append(flower)
            await _wait_port(flower_port)

            # ---- jobsd: a fresh store, the server, one SDK worker process
            db = tmp / "jobsd.db"
            await asyncio.to_thread(seed_to, db, 0, progress=False)
            server = await stack.enter_async_context(
                ServerProcess(
                    "jobsd",
                    "--store",
                    str(db),
                    "--http",
                    "--limits",
                    "query=64",
                    "--watch-buffer",
                    "8192",
                    log_path=log,
                )
            )
            target = f"127.0.0.1:{server.grpc_port}"
            jobs_worker = await _Proc(
                "jobsd worker",
                [sys.executable, "-m", "bench.e2e", "worker", "--target", target, "--token", SERVICE_TOKEN],
                log,
            ).start()  # fmt: skip
            procs.append(jobsd_worker := jobs_worker)
            from bench.run import _workspace_id  # the bench's own helper (no cycle at import time)

            ws = _workspace_id(db)

            async def jobsd_window(jobs: int, ids_out: Path | None = None) -> PeerWindow:
                cpu0 = _cpu(server.stats, jobsd_worker.stats)
                argv = [sys.executable, "-m", "bench.e2e", "produce", "--target", target, "--token", SERVICE_TOKEN,
                        "--workspace", ws, "--jobs", str(jobs)]  # fmt: skip
                got = await _run_json([*argv, *(["--ids-out", str(ids_out)] if ids_out else [])])
                cpu = _cpu(server.stats, jobsd_worker.stats) - cpu0 + got["producer_cpu"]
                return PeerWindow(jobs / got["seconds"], cpu / jobs * 1e6)

            async def celery_window(jobs: int, ids_out: Path | None = None) -> PeerWindow:
                cpu0 = _cpu(redis.stats, celery_worker.stats)
                argv = [*peer, "produce", "--broker", broker, "--jobs", str(jobs)]
                got = await _run_json([*argv, *(["--ids-out", str(ids_out)] if ids_out else [])])
                cpu = _cpu(redis.stats, celery_worker.stats) - cpu0 + got["producer_cpu"]
                return PeerWindow(jobs / got["seconds"], cpu / jobs * 1e6)

            # ---- the 5,000 finished jobs/tasks the REST reads look at (also warms both systems up)
            await jobsd_window(READ_JOBS, tmp / "jobsd-ids")
            await celery_window(READ_JOBS, tmp / "celery-ids")
            jobsd_ids = (tmp / "jobsd-ids").read_text().split()
            celery_ids = (tmp / "celery-ids").read_text().split()
            await _flower_sees(flower_port, celery_ids[-1])

            gateway = f"http://127.0.0.1:{server.http_port}"
            flower_url = f"http://127.0.0.1:{flower_port}"
            scripts = {
                "rest_get_jobsd": (gateway, "/v0/jobs/", jobsd_ids, f"Bearer {ADMIN_TOKEN}", [server.stats]),
                "rest_get_flower": (flower_url, "/api/task/info/", celery_ids, None, [flower.stats]),
                "rest_list_jobsd": (gateway, "/v0/jobs?limit=100", [""], f"Bearer {ADMIN_TOKEN}", [server.stats]),
                "rest_list_flower": (flower_url, "/api/tasks?limit=100", [""], None, [flower.stats]),
            }
            for name, (_base, prefix, ids, header, _stats) in scripts.items():
                _wrk_script(tmp / f"{name}.lua", prefix, ids, header)

            async def rest(name: str) -> PeerWindow:
                base, _prefix, _ids, _header, stats = scripts[name]
                return await _wrk(base, tmp / f"{name}.lua", opts.wrk_seconds, stats)

            pairs: dict[str, tuple[Callable[[], Awaitable[PeerWindow]], Callable[[], Awaitable[PeerWindow]]]] = {
                "e2e": (lambda: jobsd_window(opts.e2e_jobs), lambda: celery_window(opts.e2e_jobs)),
                "rest_get": (lambda: rest("rest_get_jobsd"), lambda: rest("rest_get_flower")),
                "rest_list": (lambda: rest("rest_list_jobsd"), lambda: rest("rest_list_flower")),
            }
            for name in ("rest_get", "rest_list", "e2e"):
                ours, theirs = pairs[name]
                mine: list[PeerWindow] = []
                peer_windows: list[PeerWindow] = []
                for r in range(opts.rounds):
                    order = (ours, theirs) if r % 2 == 0 else (theirs, ours)
                    for fn in order:
                        window = await fn()
                        (mine if fn is ours else peer_windows).append(window)
                results.windows[name] = mine
                results.windows[name + "@peer"] = peer_windows
            results.notes.append(
                f"peers: Celery worker pool `{opts.celery_pool}` (concurrency {concurrency}, prefetch {prefetch},"
                " acks late), results and AOF everysec in Redis, task events on; jobsd limits query=64"
            )
    finally:
        for proc in reversed(procs):
            await proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


async def _flower_sees(port: int, task_id: str, seconds: float = 60.0) -> None:
    """Wait until Flower has the last task's events (it learns of tasks from the worker's event stream)."""
    import aiohttp

    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/api/task/info/{task_id}") as response:
                if response.status == 200 and (await response.json()).get("state") == "SUCCESS":
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("Flower did not see the tasks finish")
            await asyncio.sleep(0.2)
