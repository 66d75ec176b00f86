"""`python -m bench`: every figure of docs/contract.md#performance next to its limit anchor, measured in the same run.

Flow: bare SQLite anchor -> seed the store to N/grow jobs -> jobsd (small store): GetJob, ListJobs, RSS ->
grow the store to N -> jobsd (full store): GetJob, ListJobs, RSS, lifecycle, CreateJob, gateway, WatchJob
fan-out -> bare grpc.aio echo (unary + streaming fan-out) -> bare aiohttp hello. Every server is its own
process; this process only generates load. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import timestamp_pb2

from bench import report
from bench.load import LoadResult, Phase, channels, close_all, drive, fanout, merge, percentile
from bench.procs import ServerProcess
from bench.seed import ADMIN_TOKEN, SERVICE_TOKEN, count_jobs, sample, seed_to, verify
from jobsd_client import pb

__all__ = ["main"]

FIGURES = ("getjob", "listjobs", "lifecycle", "watch", "gateway", "memory", "create", "seed")
_ROOT = Path(__file__).resolve().parent.parent
RESULTS = _ROOT / "bench" / "results"


@dataclass
class Options:
    jobs: int
    grow: int
    quick: bool
    only: set[str]
    phase: Phase
    streams: int
    rounds: int
    data_dir: Path | None
    keep: bool
    profile: bool
    out: Path

    @property
    def profile_path(self) -> Path:
        part = "all" if set(FIGURES) <= self.only else "-".join(sorted(self.only))
        return self.out / f"profile-{part}.prof"

    def wants(self, *names: str) -> bool:
        return any(n in self.only for n in names)


@dataclass
class Run:
    """Everything measured, by name, before it becomes figures."""

    loads: dict[str, LoadResult] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _ts(dt: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(dt)
    return ts


def _list_requests() -> list[tuple[str, bytes]]:
    """ListJobs pages of 100 with the filters of docs/contract.md#rest-gateway (each alone, and two combined),
    newest first."""
    now = datetime.now(UTC)
    requests = {
        "none": pb.ListJobsRequest(page_size=100),
        "kind": pb.ListJobsRequest(page_size=100, kind="import"),
        "status": pb.ListJobsRequest(page_size=100, status="error"),
        "pipe_id": pb.ListJobsRequest(page_size=100, pipe_id="t_pipe_0007"),
        "pipe_name": pb.ListJobsRequest(page_size=100, pipe_name="pipe_11"),
        "created_before": pb.ListJobsRequest(page_size=100, created_before=_ts(now - timedelta(hours=40))),
        "kind+created_after": pb.ListJobsRequest(
            page_size=100, kind="copy", created_after=_ts(now - timedelta(hours=24))
        ),
        "status+kind": pb.ListJobsRequest(page_size=100, kind="query", status="done"),
    }
    return [(name, r.SerializeToString()) for name, r in requests.items()]


def _workspace_id(db: Path, name: str = "default") -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return str(conn.execute("SELECT id FROM workspaces WHERE name = ?", (name,)).fetchone()[0])
    finally:
        conn.close()


# ---------------------------------------------------------------- calls (one per load; raw bytes both ways)

Call = Callable[[int], Awaitable[object]]


@dataclass
class Load:
    call: Call
    server: ServerProcess


async def interleave(loads: dict[str, Load], phase: Phase, rounds: int) -> dict[str, LoadResult]:
    """Each load in turn, `rounds` times (order reversed every other round), merged per load. A figure and its
    anchor thus share the machine's background noise (other work on a shared machine moves both alike)."""
    window = Phase(phase.warmup, phase.seconds / rounds, phase.concurrency, phase.channels)
    parts: dict[str, list[LoadResult]] = {name: [] for name in loads}
    for r in range(rounds):
        for name in list(loads) if r % 2 == 0 else list(reversed(loads)):
            parts[name].append(await drive(loads[name].call, window, loads[name].server.stats))
    return {name: merge(results) for name, results in parts.items()}


def get_job_call(chans: list[grpc.aio.Channel], ids: list[str]) -> Call:
    md = _md(ADMIN_TOKEN)
    reqs = [pb.GetJobRequest(job_id=i).SerializeToString() for i in ids]
    callers = [
        c.unary_unary("/jobsd.v1.Jobs/GetJob", request_serializer=None, response_deserializer=None) for c in chans
    ]

    async def call(i: int) -> object:
        return await callers[i % len(callers)](reqs[i % len(reqs)], metadata=md)

    return call


def list_jobs_call(chans: list[grpc.aio.Channel], rows: dict[str, int]) -> Call:
    md = _md(ADMIN_TOKEN)
    reqs = _list_requests()
    callers = [
        c.unary_unary("/jobsd.v1.Jobs/ListJobs", request_serializer=None, response_deserializer=None) for c in chans
    ]

    async def call(i: int) -> object:
        name, req = reqs[i % len(reqs)]
        body = await callers[i % len(callers)](req, metadata=md)
        if name not in rows:
            rows[name] = len(pb.ListJobsResponse.FromString(body).jobs)
        return body

    return call


def list_probe_call(chan: grpc.aio.Channel, per_filter: dict[str, list[float]]) -> Call:
    """One ListJobs at a time, filters in turn, latency kept per filter set."""
    md = _md(ADMIN_TOKEN)
    reqs = _list_requests()
    caller = chan.unary_unary("/jobsd.v1.Jobs/ListJobs", request_serializer=None, response_deserializer=None)

    async def call(i: int) -> object:
        name, req = reqs[i % len(reqs)]
        t0 = time.perf_counter()
        body = await caller(req, metadata=md)
        per_filter.setdefault(name, []).append(time.perf_counter() - t0)
        return body

    return call


def echo_call(chans: list[grpc.aio.Channel], payload: bytes) -> Call:
    md = _md(ADMIN_TOKEN)  # the same metadata as the jobsd calls carry
    callers = [c.unary_unary("/bench.Echo/Unary", request_serializer=None, response_deserializer=None) for c in chans]

    async def call(i: int) -> object:
        return await callers[i % len(callers)](payload, metadata=md)

    return call


def lifecycle_call(chans: list[grpc.aio.Channel], ws: str, concurrency: int, counters: dict[str, int]) -> Call:
    """create -> claim -> heartbeat -> finish, as a service and its worker do it (4 RPCs per job)."""
    md = _md(SERVICE_TOKEN)
    create = [
        c.unary_unary("/jobsd.v1.Jobs/CreateJob", request_serializer=None, response_deserializer=None) for c in chans
    ]
    claim = [
        c.unary_unary("/jobsd.v1.Workers/ClaimJob", request_serializer=None, response_deserializer=None) for c in chans
    ]
    heartbeat = [
        c.unary_unary("/jobsd.v1.Workers/Heartbeat", request_serializer=None, response_deserializer=None) for c in chans
    ]
    finish = [
        c.unary_unary("/jobsd.v1.Workers/FinishJob", request_serializer=None, response_deserializer=None) for c in chans
    ]
    # A copy job's concurrency key is its target: more targets than workers keeps every job claimable.
    creates = []
    for w in range(concurrency * 2):
        req = pb.CreateJobRequest(workspace_id=ws, kind="copy", query_sql="SELECT 1", mode="append")
        req.datasource.update({"name": f"bench_target_{w}"})
        creates.append(req.SerializeToString())
    claim_req = pb.ClaimJobRequest(worker_id="bench-worker", kinds=["copy"], wait_seconds=5).SerializeToString()

    async def call(i: int) -> object:
        c = i % len(chans)
        await create[c](creates[i % len(creates)], metadata=md)
        for _ in range(20):
            got = pb.ClaimJobResponse.FromString(await claim[c](claim_req, metadata=md))
            if got.HasField("job"):
                break
            counters["claim_retries"] = counters.get("claim_retries", 0) + 1
        else:
            raise RuntimeError("ClaimJob found nothing to claim 20 times")
        job_id, lease = got.job.id, got.lease_token
        hb = pb.HeartbeatRequest(job_id=job_id, lease_token=lease)
        hb.progress.progress_percentage = 50
        await heartbeat[c](hb.SerializeToString(), metadata=md)
        fin = pb.FinishJobRequest(job_id=job_id, lease_token=lease, status=pb.JOB_STATUS_DONE)
        fin.progress.progress_percentage = 100
        fin.progress.processed_data.read_rows = 1000
        fin.progress.processed_data.written_rows = 1000
        return await finish[c](fin.SerializeToString(), metadata=md)

    return call


def create_call(chans: list[grpc.aio.Channel], ws: str) -> Call:
    md = _md(SERVICE_TOKEN)
    callers = [
        c.unary_unary("/jobsd.v1.Jobs/CreateJob", request_serializer=None, response_deserializer=None) for c in chans
    ]
    req = pb.CreateJobRequest(workspace_id=ws, kind="import", url="https://example.com/data.csv")
    req.datasource.update({"name": "bench_imports"})
    body = req.SerializeToString()

    async def call(i: int) -> object:
        return await callers[i % len(callers)](body, metadata=md)

    return call


def http_call(session: aiohttp.ClientSession, url_for: Callable[[int], str], sizes: list[int]) -> Call:
    async def call(i: int) -> object:
        async with session.get(url_for(i)) as response:
            body = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
            if not sizes:
                sizes.append(len(body))
            return body

    return call


async def _watch(opts: Options, server: ServerProcess, ws: str, run: Run) -> None:
    """One job, `opts.streams` WatchJob streams on it; each Heartbeat (and the final FinishJob) is one update."""
    (chan,) = channels(server.grpc_port, 1)
    try:
        svc = _md(SERVICE_TOKEN)
        req = pb.CreateJobRequest(workspace_id=ws, kind="query", query_sql="SELECT 1")
        create = chan.unary_unary("/jobsd.v1.Jobs/CreateJob", request_serializer=None, response_deserializer=None)
        job = pb.Job.FromString(await create(req.SerializeToString(), metadata=svc))
        claim_req = pb.ClaimJobRequest(worker_id="bench-watch", kinds=["query"], wait_seconds=5)
        got = pb.ClaimJobResponse.FromString(
            await chan.unary_unary("/jobsd.v1.Workers/ClaimJob", request_serializer=None, response_deserializer=None)(
                claim_req.SerializeToString(), metadata=svc
            )
        )
        if got.job.id != job.id:
            raise RuntimeError(f"watch: claimed {got.job.id or 'nothing'}, expected {job.id}")
        heartbeat = chan.unary_unary("/jobsd.v1.Workers/Heartbeat", request_serializer=None, response_deserializer=None)
        finish = chan.unary_unary("/jobsd.v1.Workers/FinishJob", request_serializer=None, response_deserializer=None)
        rounds = opts.rounds

        async def trigger(r: int) -> None:
            if r < rounds:
                hb = pb.HeartbeatRequest(job_id=job.id, lease_token=got.lease_token)
                hb.progress.progress_percentage = 10 * r
                await heartbeat(hb.SerializeToString(), metadata=svc)
            else:
                fin = pb.FinishJobRequest(job_id=job.id, lease_token=got.lease_token, status=pb.JOB_STATUS_DONE)
                await finish(fin.SerializeToString(), metadata=svc)

        run.values["watch"] = await fanout(
            server.grpc_port,
            streams=opts.streams,
            per_channel=100,
            method="/jobsd.v1.Jobs/WatchJob",
            request=pb.WatchJobRequest(job_id=job.id).SerializeToString(),
            metadata=_md(ADMIN_TOKEN),
            trigger=trigger,
            rounds=rounds,
            closes_on_last=True,
            server=server.stats,
        )
        event = pb.JobEvent(type=pb.JobEvent.TYPE_PROGRESS, job=job, revision=9)
        run.values["event_bytes"] = len(event.SerializeToString())
    finally:
        await chan.close(None)


async def _echo_fanout(opts: Options, echo: ServerProcess, run: Run) -> None:
    event = b"e" * int(run.values.get("event_bytes", 1000))
    (ctl,) = channels(echo.grpc_port, 1)
    fire = ctl.unary_unary("/bench.Echo/Fire", request_serializer=None, response_deserializer=None)

    async def trigger(r: int) -> None:
        await fire(event)

    try:
        run.values["echo_fanout"] = await fanout(
            echo.grpc_port,
            streams=opts.streams,
            per_channel=100,
            method="/bench.Echo/Subscribe",
            request=event,
            metadata=_md(ADMIN_TOKEN),
            trigger=trigger,
            rounds=opts.rounds,
            closes_on_last=False,
            server=echo.stats,
        )
    finally:
        await ctl.close(None)


async def _sqlite_anchor(opts: Options, run: Run) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.servers",
        "sqlite",
        "--seconds",
        str(opts.phase.seconds / 2),
        cwd=_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    run.values["sqlite"] = json.loads(out)


# ---------------------------------------------------------------- the run


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _copy_store(src: Path, dst: Path) -> None:
    """A consistent copy of the small store (the large one grows from it, so it holds the same jobs and more)."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dst}{suffix}").unlink(missing_ok=True)
    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


async def _measure(opts: Options, data_dir: Path) -> Run:
    run = Run()
    big_db, small_db = data_dir / "jobs.db", data_dir / "jobs-small.db"
    log = opts.out / "servers.log"
    log.write_text("")
    small = max(1, opts.jobs // opts.grow)
    rpc = opts.wants("getjob", "listjobs", "lifecycle", "watch")
    need_small = opts.wants("getjob", "listjobs", "memory")
    need_jobsd = opts.wants("getjob", "listjobs", "lifecycle", "watch", "gateway", "memory", "create", "seed")
    rounds = 3

    if opts.wants("create", "seed"):
        _say("anchor: bare SQLite inserts")
        await _sqlite_anchor(opts, run)
    if not need_jobsd:
        return run

    # Seeding: the small store, then the large one grown from a copy of it.
    if need_small:
        if count_jobs(small_db) > small:
            raise SystemExit(f"{small_db} holds more than {small:,} jobs; use another --data-dir")
        _say(f"seeding the small store: {small:,} jobs")
        run.values["seed_small"] = await asyncio.to_thread(seed_to, small_db, small)
        if count_jobs(big_db) < small:
            await asyncio.to_thread(_copy_store, small_db, big_db)
    _say(f"seeding the large store: {opts.jobs:,} jobs")
    run.values["seed"] = await asyncio.to_thread(seed_to, big_db, opts.jobs)
    await asyncio.to_thread(verify, big_db, await asyncio.to_thread(sample, big_db, 50))
    ws = _workspace_id(big_db)

    async with contextlib.AsyncExitStack() as stack:
        profile = ["--profile", str(opts.profile_path)] if opts.profile else []
        _say(
            f"servers: jobsd on {count_jobs(big_db):,} jobs{' (cProfile)' if opts.profile else ''}"
            + (f", jobsd on {small:,} jobs" if need_small else "")
            + ", echo, hello"
        )
        big = await stack.enter_async_context(
            ServerProcess("jobsd", "--store", str(big_db), "--http", *profile, log_path=log)
        )
        little = None
        if need_small:
            little = await stack.enter_async_context(
                ServerProcess("jobsd", "--store", str(small_db), "--http", log_path=log)
            )
        echo = await stack.enter_async_context(ServerProcess("echo", log_path=log)) if rpc else None
        hello_size = 0
        big_ch = channels(big.grpc_port, opts.phase.channels)
        small_ch = channels(little.grpc_port, opts.phase.channels) if little else []
        echo_ch = channels(echo.grpc_port, opts.phase.channels) if echo else []
        stack.push_async_callback(close_all, [*big_ch, *small_ch, *echo_ch])
        ids = await asyncio.to_thread(sample, big_db, 5_000)
        reply = await get_job_call(big_ch, ids)(0)
        assert isinstance(reply, bytes), reply  # raw calls: the serialised Job
        job_bytes = len(reply)
        run.values["job_bytes"] = job_bytes
        echo_load = Load(echo_call(echo_ch, b"j" * job_bytes), echo) if echo else None

        if opts.wants("getjob", "memory"):
            _say("  GetJob | echo" + (" | GetJob on the small store" if little else ""))
            loads = {"getjob": Load(get_job_call(big_ch, ids), big)}
            if echo_load:
                loads["echo@getjob"] = echo_load
            if little:
                small_ids = await asyncio.to_thread(sample, small_db, 5_000)
                loads["getjob_small"] = Load(get_job_call(small_ch, small_ids), little)
            run.loads.update(await interleave(loads, opts.phase, rounds))
        if opts.wants("listjobs", "memory"):
            _say("  ListJobs | echo" + (" | ListJobs on the small store" if little else ""))
            rows: dict[str, int] = {}
            loads = {"listjobs": Load(list_jobs_call(big_ch, rows), big)}
            if echo_load:
                loads["echo@listjobs"] = echo_load
            if little:
                loads["listjobs_small"] = Load(list_jobs_call(small_ch, {}), little)
            run.loads.update(await interleave(loads, opts.phase, rounds))
            run.values["list_rows"] = rows
            if little:
                _say("  ListJobs one at a time: large | small store")
                per_big: dict[str, list[float]] = {}
                per_small: dict[str, list[float]] = {}
                # Tails are noisy on a shared machine: many samples, and many short alternating windows.
                probe = Phase(0.2, 3.0 if opts.quick else 10.0, 1, 1)
                run.loads.update(
                    await interleave(
                        {
                            "listjobs_probe": Load(list_probe_call(big_ch[0], per_big), big),
                            "listjobs_probe_small": Load(list_probe_call(small_ch[0], per_small), little),
                        },
                        probe,
                        6,
                    )
                )
                for key, per in (("list_probe", per_big), ("list_probe_small", per_small)):
                    run.values[key] = {
                        n: (percentile(v, 0.5) * 1000, percentile(v, 0.99) * 1000) for n, v in per.items()
                    }
        if little:
            run.values["rss"], run.values["rss_small"] = big.stats.rss_mb(), little.stats.rss_mb()
        if opts.wants("lifecycle"):
            _say("  lifecycle (create -> claim -> heartbeat -> finish) | echo")
            counters: dict[str, int] = {}
            loads = {"lifecycle": Load(lifecycle_call(big_ch, ws, opts.phase.concurrency, counters), big)}
            if echo_load:
                loads["echo@lifecycle"] = echo_load
            run.loads.update(await interleave(loads, opts.phase, rounds))
            run.values["claim_retries"] = counters.get("claim_retries", 0)
        if opts.wants("create"):
            _say("  CreateJob")
            run.loads["create"] = await drive(create_call(big_ch, ws), opts.phase, big.stats)
        if opts.wants("gateway"):
            if big.info.get("http") is None:
                run.notes.append("gateway: the jobsd server did not start the REST gateway")
            else:
                sizes: list[int] = []
                session = await stack.enter_async_context(
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=opts.phase.concurrency),
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                    )
                )
                base = f"http://127.0.0.1:{big.http_port}/v0/jobs/"
                gateway = http_call(session, lambda i: base + ids[i % len(ids)], sizes)
                await gateway(0)
                hello_size = sizes[0]
                hello = await stack.enter_async_context(ServerProcess("hello", "--size", str(hello_size), log_path=log))
                url = f"http://127.0.0.1:{hello.http_port}/hello"
                _say("  gateway GET /v0/jobs/{id} | aiohttp hello")
                loads = {"gateway": Load(gateway, big), "hello": Load(http_call(session, lambda i: url, []), hello)}
                run.loads.update(await interleave(loads, opts.phase, rounds))
                run.values["gateway_bytes"] = hello_size
        if opts.wants("watch") and echo is not None:
            _say(f"  one update to {opts.streams:,} WatchJob streams | the same on a bare streaming server")
            await _watch(opts, big, ws, run)
            await _echo_fanout(opts, echo, run)
        run.values["rss_end"] = big.stats.rss_mb()
    return run


def _parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--jobs", type=int, default=None, help="jobs in the store (default 1,000,000; --quick 50,000)")
    parser.add_argument("--grow", type=int, default=10, help="the store grows by this factor between the two scales")
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer jobs, streams and seconds")
    parser.add_argument("--only", action="append", choices=FIGURES, help="measure only this figure (repeatable)")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per load")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    parser.add_argument("--streams", type=int, default=None, help="WatchJob streams (default 10,000; --quick 2,000)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the seeded store here (reused if present)")
    parser.add_argument("--profile", action="store_true", help="run the full-store jobsd under cProfile")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results go")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    seconds = args.seconds if args.seconds is not None else (2.0 if quick else 5.0)
    return Options(
        jobs=args.jobs if args.jobs is not None else (50_000 if quick else 1_000_000),
        grow=max(2, args.grow),
        quick=quick,
        only=set(args.only or FIGURES),
        phase=Phase(warmup=0.5 if quick else 1.0, seconds=seconds, concurrency=args.concurrency, channels=4),
        streams=args.streams if args.streams is not None else (2_000 if quick else 10_000),
        rounds=4 if quick else 6,
        data_dir=args.data_dir,
        keep=args.data_dir is not None,
        profile=bool(args.profile),
        out=args.out,
    )


def main(argv: list[str] | None = None) -> int:
    opts = _parse(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    data_dir = opts.data_dir or Path(tempfile.mkdtemp(prefix="jobsd-bench-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # The load generator's own pauses land in the latencies it measures: collect its garbage rarely (what it
    # allocates per call is freed by reference counting; only the set-up is cyclic, and frozen).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    try:
        run = asyncio.run(_measure(opts, data_dir))
    finally:
        if not opts.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    figures = report.figures(run, opts)
    meta = report.Meta(
        jobs=opts.jobs,
        small=max(1, opts.jobs // opts.grow),
        quick=opts.quick,
        seconds=opts.phase.seconds,
        concurrency=opts.phase.concurrency,
        channels=opts.phase.channels,
        streams=opts.streams,
        elapsed=time.perf_counter() - started,
        profiled=opts.profile,
    )
    # Numbers measured under cProfile are not the product's: they never replace latest.*.
    report.write(figures, run, meta, opts.out, stem="profiled" if opts.profile else "latest")
    if opts.profile:
        report.write_profile(opts.profile_path, opts.profile_path.with_suffix(".txt"))
    return 0
