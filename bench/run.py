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
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.protobuf import timestamp_pb2

from bench import report
from bench.load import LoadResult, Phase, ServerProcessStats, channels, close_all, drive, fanout, merge, percentile
from bench.procs import ServerProcess
from bench.seed import (
    ADMIN_TOKEN,
    SERVICE_TOKEN,
    count_jobs,
    expires_soon,
    sample,
    seed_to,
    seeded_without_log,
    verify,
)
from jobsd_client import pb

__all__ = ["main"]

FIGURES = ("getjob", "listjobs", "lifecycle", "lifecycle_v2", "watch", "gateway", "memory", "create", "seed", "peers")
# Figures a plain `make bench` measures; `peers` needs `--peers` (or `--only peers`): it installs nothing itself.
DEFAULT_FIGURES = tuple(f for f in FIGURES if f != "peers")
# Jobs per CreateJobs call in the batched-create and lifecycle v2 loads.
CREATE_BATCH = 50
# A seeded store is re-seeded when its first job would expire within this much of the run's start: a run takes
# ~10 minutes, so this leaves every sampled job alive until its end.
FRESH_MARGIN = timedelta(minutes=30)
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
    peers_python: Path = Path(".venv-peers/bin/python")
    celery_pool: str = "threads"

    @property
    def profile_path(self) -> Path:
        part = "all" if set(DEFAULT_FIGURES) <= self.only else "-".join(sorted(self.only))
        return self.out / f"profile-{part}.prof"

    def wants(self, *names: str) -> bool:
        return any(n in self.only for n in names)


@dataclass
class Run:
    """Everything measured, by name, before it becomes figures."""

    loads: dict[str, LoadResult] = field(default_factory=dict)
    # Each load's measured windows, in order (a figure's window r is next to its anchor's window r).
    windows: dict[str, list[LoadResult]] = field(default_factory=dict)
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


WindowFn = Callable[[Phase], Awaitable[LoadResult]]


async def interleave(
    loads: Mapping[str, Load | WindowFn], phase: Phase, rounds: int, run: Run | None = None
) -> dict[str, LoadResult]:
    """Each load in turn, `rounds` times (order reversed every other round: A B B A A B), merged per load; with
    `run`, each window is kept too (`run.windows`), so figures are judged on the median of the rounds. A figure
    and its anchor thus share the machine's background noise (other work on a shared machine moves both alike)."""
    window = Phase(phase.warmup, phase.seconds / rounds, phase.concurrency, phase.channels)
    parts: dict[str, list[LoadResult]] = {name: [] for name in loads}
    for r in range(rounds):
        names = list(loads)
        for name in names if r % 2 == 0 else names[::-1]:
            load = loads[name]
            if isinstance(load, Load):
                parts[name].append(await drive(load.call, window, load.server.stats))
            else:
                parts[name].append(await load(window))
    if run is not None:
        run.windows.update(parts)
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


async def lifecycle_v2_window(
    chans: list[grpc.aio.Channel], ws: str, phase: Phase, server: ServerProcessStats, batch: int = 50
) -> LoadResult:
    """create -> claim -> heartbeat -> finish per job on worker protocol v2: producers send CreateJobs of `batch`
    jobs (keeping about `phase.concurrency` jobs queued), one Workers.Connect stream per connection runs
    `phase.concurrency / connections` jobs at once (a heartbeat with progress, then the finish with figures, each
    answered before the next step). The rate is finishes answered in the window; the latency is per job, from its
    assignment to its finish's answer."""
    md = _md(SERVICE_TOKEN)
    loop_time = time.perf_counter
    started = loop_time()
    window_start, window_end = started + phase.warmup, started + phase.warmup + phase.seconds
    creates = [
        c.unary_unary("/jobsd.v1.Jobs/CreateJobs", request_serializer=None, response_deserializer=None) for c in chans
    ]
    # Copy jobs on more targets than there are slots (a copy's concurrency key is its target), as the v1 load
    # does: every queued job stays claimable, so the figure measures the server's cost per job, not a concurrency
    # limit (a `query` job's is 4 per workspace, and jobs a closed window left working held those 4 until their
    # leases lapsed — a window could then assign nothing).
    targets = 2 * phase.concurrency
    bodies = []
    for b in range(targets // batch + 1):
        items = []
        for k in range(batch):
            item = pb.CreateJobRequest(workspace_id=ws, kind="copy", query_sql="SELECT 1", mode="append")
            item.datasource.update({"name": f"bench_v2_target_{(b * batch + k) % targets}"})
            items.append(item)
        bodies.append(pb.CreateJobsRequest(jobs=items).SerializeToString())
    latencies: list[float] = []
    counters = {"created": 0, "finished": 0, "settled": 0, "errors": 0}
    settled = asyncio.Event()  # after stop: every job created in the window finished
    first_error: list[str] = []
    stop = asyncio.Event()
    slots = max(1, phase.concurrency // len(chans))

    async def produce(c: int) -> None:
        while not stop.is_set():
            if counters["created"] - counters["settled"] > 2 * phase.concurrency:
                await asyncio.sleep(0.001)
                continue
            counters["created"] += batch
            await creates[c](bodies[(counters["created"] // batch) % len(bodies)], metadata=md)

    def let_go(leases: dict[str, str], job_id: str) -> None:
        leases.pop(job_id, None)
        counters["settled"] += 1
        if stop.is_set() and counters["settled"] >= counters["created"]:
            settled.set()

    async def work(c: int) -> None:
        queue: asyncio.Queue[pb.WorkerMessage | None] = asyncio.Queue()
        call = chans[c].stream_stream(
            "/jobsd.v1.Workers/Connect",
            request_serializer=pb.WorkerMessage.SerializeToString,
            response_deserializer=pb.ServerMessage.FromString,
        )

        async def requests() -> AsyncIterator[pb.WorkerMessage]:
            while (message := await queue.get()) is not None:
                yield message

        stream = call(requests(), metadata=md)
        queue.put_nowait(
            pb.WorkerMessage(hello=pb.ConnectHello(worker_id=f"bench-v2-{c}", kinds=["copy"], slots=slots))
        )
        assigned_at: dict[str, float] = {}
        leases: dict[str, str] = {}
        try:
            async for message in stream:
                out = pb.WorkerMessage()
                for a in message.assignments:
                    assigned_at[a.job.id] = loop_time()
                    leases[a.job.id] = a.lease_token
                    beat = out.heartbeats.add(ref=1, job_id=a.job.id, lease_token=a.lease_token)
                    beat.progress.progress_percentage = 50
                for h in message.heartbeats:
                    if h.HasField("error"):
                        counters["errors"] += 1
                        first_error[:] = first_error or [h.error.message]
                        let_go(leases, h.job_id)
                        continue
                    end = out.finishes.add(
                        ref=2, job_id=h.job_id, lease_token=leases[h.job_id], status=pb.JOB_STATUS_DONE
                    )
                    end.progress.progress_percentage = 100
                    end.progress.processed_data.read_rows = 1000
                    end.progress.processed_data.written_rows = 1000
                    out.add_slots += 1
                for f in message.finishes:
                    let_go(leases, f.job_id)
                    t0 = assigned_at.pop(f.job_id, None)
                    if f.HasField("error"):
                        counters["errors"] += 1
                        first_error[:] = first_error or [f.error.message]
                        continue
                    now = loop_time()
                    if window_start <= now <= window_end:
                        counters["finished"] += 1
                        if t0 is not None:
                            latencies.append(now - t0)
                if out.ByteSize():
                    queue.put_nowait(out)
        except grpc.aio.AioRpcError as exc:
            if not stop.is_set():
                raise
            del exc
        finally:
            queue.put_nowait(None)
            stream.cancel()

    tasks = [asyncio.create_task(work(c)) for c in range(len(chans))]
    tasks += [asyncio.create_task(produce(c)) for c in range(2)]
    await asyncio.sleep(max(0.0, window_start - loop_time()))
    cpu0, client0 = server.cpu_seconds(), time.process_time()
    await asyncio.sleep(max(0.0, window_end - loop_time()))
    cpu, client = server.cpu_seconds() - cpu0, time.process_time() - client0
    stop.set()
    # The window ends with its queue worked off: producers stop, workers finish every job created (up to 10 s),
    # then close. A window that closed its streams on held or queued jobs would hand the next one a longer queue
    # (each claim walks it) and jobs left working until their leases lapse.
    if counters["settled"] < counters["created"]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), 10.0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return LoadResult(
        counters["finished"],
        phase.seconds,
        latencies,
        counters["errors"],
        cpu,
        first_error[0] if first_error else "",
        client,
    )


def create_batched_call(chans: list[grpc.aio.Channel], ws: str, batch: int) -> Call:
    md = _md(SERVICE_TOKEN)
    callers = [
        c.unary_unary("/jobsd.v1.Jobs/CreateJobs", request_serializer=None, response_deserializer=None) for c in chans
    ]
    req = pb.CreateJobRequest(workspace_id=ws, kind="import", url="https://example.com/data.csv")
    req.datasource.update({"name": "bench_imports"})
    body = pb.CreateJobsRequest(jobs=[req] * batch).SerializeToString()

    async def call(i: int) -> object:
        return await callers[i % len(callers)](body, metadata=md)

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
        # A kind no other load creates, so the claim below gets this very job.
        req = pb.CreateJobRequest(workspace_id=ws, kind="populateview", query_sql="SELECT 1")
        req.datasource.update({"name": "bench_watch"})
        create = chan.unary_unary("/jobsd.v1.Jobs/CreateJob", request_serializer=None, response_deserializer=None)
        job = pb.Job.FromString(await create(req.SerializeToString(), metadata=svc))
        claim_req = pb.ClaimJobRequest(worker_id="bench-watch", kinds=["populateview"], wait_seconds=5)
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


async def _sqlite_rates(seconds: float) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.servers",
        "sqlite",
        "--seconds",
        str(seconds),
        cwd=_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return dict(json.loads(out))


async def _sqlite_anchor(opts: Options, run: Run) -> None:
    run.values["sqlite"] = await _sqlite_rates(opts.phase.seconds / 2)


def sqlite_window(samples: list[dict[str, float]]) -> WindowFn:
    """The bare SQLite insert+commit rate as a window of its own (its own process, as long as a window)."""

    async def window(phase: Phase) -> LoadResult:
        rates = await _sqlite_rates(phase.seconds)
        samples.append(rates)
        return LoadResult(round(rates["commit_rate"] * phase.seconds), phase.seconds, [], 0, float("nan"), "", 0.0)

    return window


# ---------------------------------------------------------------- the run


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def _store_commits(http_port: int | None) -> tuple[float, float] | None:
    """(COMMITs, writes they carried) of the embedded store so far, from the server's /metrics; None without it."""
    if http_port is None:
        return None
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{http_port}/metrics") as resp:
        text = await resp.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("jobsd_sqlite_commits_total", "jobsd_sqlite_committed_writes_total"):
            found[name] = float(value)
    return found.get("jobsd_sqlite_commits_total", 0.0), found.get("jobsd_sqlite_committed_writes_total", 0.0)


async def _grouped(
    run: Run, what: str, http_port: int | None, loads: Awaitable[dict[str, LoadResult]]
) -> dict[str, LoadResult]:
    """`loads`, noting how the store grouped the writes they made (the anchors' windows write nothing to jobsd)."""
    before = await _store_commits(http_port)
    measured = await loads
    after = await _store_commits(http_port)
    if before is not None and after is not None:
        commits, writes = after[0] - before[0], after[1] - before[1]
        run.notes.append(
            f"store during {what}: {writes:,.0f} writes in {commits:,.0f} COMMITs"
            + (f" ({writes / commits:.1f} writes a COMMIT)" if commits else "")
        )
    return measured


def _remove_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _copy_store(src: Path, dst: Path) -> None:
    """A consistent copy of a store: the small one to grow the large one from (so it holds the same jobs and
    more), the large one for the loads to write to."""
    _remove_store(dst)
    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()


async def _peers(opts: Options, run: Run, log: Path) -> None:
    if not opts.wants("peers"):
        return
    from bench.peers import PeerOptions, measure_peers

    _say("peers: end-to-end no-op jobs jobsd | Celery + Redis; REST reads jobsd | Flower (wrk)")
    peers = await measure_peers(
        PeerOptions(
            python=opts.peers_python,
            rounds=3,
            e2e_jobs=1_000 if opts.quick else 3_000,
            wrk_seconds=3.0 if opts.quick else 8.0,
            celery_pool=opts.celery_pool,
            out=opts.out,
        ),
        log,
    )
    run.values["peers"] = peers
    run.notes.extend(peers.notes)


async def _measure(opts: Options, data_dir: Path) -> Run:
    run = Run()
    big_db, small_db = data_dir / "jobs.db", data_dir / "jobs-small.db"
    log = opts.out / "servers.log"
    log.write_text("")
    small = max(1, opts.jobs // opts.grow)
    rpc = opts.wants("getjob", "listjobs", "lifecycle", "lifecycle_v2", "watch")
    need_small = opts.wants("getjob", "listjobs", "memory")
    need_jobsd = opts.wants(
        "getjob", "listjobs", "lifecycle", "lifecycle_v2", "watch", "gateway", "memory", "create", "seed"
    )
    rounds = 3

    if opts.wants("seed") and not opts.wants("create"):
        _say("anchor: bare SQLite inserts")
        await _sqlite_anchor(opts, run)
    if not need_jobsd:
        await _peers(opts, run, log)
        return run

    # Seeding: the small store, then the large one grown from a copy of it. Both go once either is about to lose
    # its first jobs to expiry (the large one holds the small one's jobs, so they age together).
    stale = any([await asyncio.to_thread(expires_soon, db, FRESH_MARGIN) for db in (small_db, big_db)])
    if stale:
        _say(f"the seeded stores' first jobs expire within {FRESH_MARGIN}; seeding them again")
    elif any([await asyncio.to_thread(seeded_without_log, db) for db in (small_db, big_db)]):
        stale = True
        _say("the kept stores were seeded without jobs_log rows (an earlier bench); seeding them again")
    if stale:
        for db in (small_db, big_db):
            _remove_store(db)
    # A run that needs only the large store still seeds the small one first when both are made anew, so the large
    # one always holds the small one's jobs.
    if need_small or stale or not big_db.exists():
        if count_jobs(small_db) > small:
            raise SystemExit(f"{small_db} holds more than {small:,} jobs; use another --data-dir")
        _say(f"seeding the small store: {small:,} jobs")
        run.values["seed_small"] = await asyncio.to_thread(seed_to, small_db, small)
        if count_jobs(big_db) < small:
            await asyncio.to_thread(_copy_store, small_db, big_db)
    if count_jobs(big_db) > opts.jobs:
        raise SystemExit(
            f"{big_db} holds more than {opts.jobs:,} jobs (an earlier version of the bench wrote its loads into it);"
            " delete it or use another --data-dir"
        )
    _say(f"seeding the large store: {opts.jobs:,} jobs")
    run.values["seed"] = await asyncio.to_thread(seed_to, big_db, opts.jobs)
    await asyncio.to_thread(verify, big_db, await asyncio.to_thread(sample, big_db, 50))
    ws = _workspace_id(big_db)
    # The loads write (a full run adds ~75,000 jobs and their log rows), so the server works on a copy: every run
    # starts from the same seeded store, which otherwise grew by each run's writes and made runs incomparable.
    run_db = data_dir / "jobs-run.db"
    _say(f"copying the large store to {run_db.name} (the loads write to the copy)")
    await asyncio.to_thread(_copy_store, big_db, run_db)

    async with contextlib.AsyncExitStack() as stack:
        stack.callback(_remove_store, run_db)
        profile = ["--profile", str(opts.profile_path)] if opts.profile else []
        _say(
            f"servers: jobsd on {count_jobs(big_db):,} jobs{' (cProfile)' if opts.profile else ''}"
            + (f", jobsd on {small:,} jobs" if need_small else "")
            + ", echo, hello"
        )
        big = await stack.enter_async_context(
            ServerProcess("jobsd", "--store", str(run_db), "--http", "--limits", "query=64", *profile, log_path=log)
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
            run.loads.update(await interleave(loads, opts.phase, rounds, run))
        if opts.wants("listjobs", "memory"):
            _say("  ListJobs | echo" + (" | ListJobs on the small store" if little else ""))
            rows: dict[str, int] = {}
            loads = {"listjobs": Load(list_jobs_call(big_ch, rows), big)}
            if echo_load:
                loads["echo@listjobs"] = echo_load
            if little:
                loads["listjobs_small"] = Load(list_jobs_call(small_ch, {}), little)
            run.loads.update(await interleave(loads, opts.phase, rounds, run))
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
            big_memory, small_memory = big.stats.memory_mb(), little.stats.memory_mb()
            run.values["rss"], run.values["rss_small"] = big_memory["VmRSS"], small_memory["VmRSS"]
            run.values["memory_parts"] = {"large": big_memory, "small": small_memory}
        if opts.wants("lifecycle"):
            _say("  lifecycle (create -> claim -> heartbeat -> finish) | echo")
            counters: dict[str, int] = {}
            loads = {"lifecycle": Load(lifecycle_call(big_ch, ws, opts.phase.concurrency, counters), big)}
            if echo_load:
                loads["echo@lifecycle"] = echo_load
            run.loads.update(
                await _grouped(run, "lifecycle v1", big.info.get("http"), interleave(loads, opts.phase, rounds, run))
            )
            run.values["claim_retries"] = counters.get("claim_retries", 0)
        if opts.wants("lifecycle_v2"):
            _say("  lifecycle on worker protocol v2 (CreateJobs -> stream: assign, heartbeat, finish) | echo")
            v2: dict[str, Load | WindowFn] = {
                "lifecycle_v2": lambda phase: lifecycle_v2_window(big_ch, ws, phase, big.stats, CREATE_BATCH)
            }
            if echo_load:
                v2["echo@lifecycle_v2"] = echo_load
            run.loads.update(
                await _grouped(run, "lifecycle v2", big.info.get("http"), interleave(v2, opts.phase, rounds, run))
            )
        if opts.wants("create"):
            _say(f"  CreateJob | CreateJobs of {CREATE_BATCH} | bare SQLite insert+commit")
            samples: list[dict[str, float]] = []
            batched = Phase(
                opts.phase.warmup, opts.phase.seconds, max(2, opts.phase.concurrency // 8), opts.phase.channels
            )
            creates: dict[str, Load | WindowFn] = {
                "create": Load(create_call(big_ch, ws), big),
                "create_batched": lambda phase: drive(
                    create_batched_call(big_ch, ws, CREATE_BATCH),
                    Phase(phase.warmup, phase.seconds, batched.concurrency, phase.channels),
                    big.stats,
                ),
                "sqlite": sqlite_window(samples),
            }
            run.loads.update(
                await _grouped(
                    run, "CreateJob and CreateJobs", big.info.get("http"), interleave(creates, opts.phase, rounds, run)
                )
            )
            run.values["sqlite"] = {
                "commit_rate": statistics.median(x["commit_rate"] for x in samples),
                "bulk_rate": statistics.median(x["bulk_rate"] for x in samples),
            }
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
                run.loads.update(await interleave(loads, opts.phase, rounds, run))
                run.values["gateway_bytes"] = hello_size
        if opts.wants("watch") and echo is not None:
            _say(f"  one update to {opts.streams:,} WatchJob streams | the same on a bare streaming server")
            await _watch(opts, big, ws, run)
            await _echo_fanout(opts, echo, run)
        run.values["rss_end"] = big.stats.rss_mb()
    await _peers(opts, run, log)
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
    parser.add_argument("--peers", action="store_true", help="also measure the peers (Celery + Redis, Flower)")
    parser.add_argument(
        "--peers-python", type=Path, default=_ROOT / ".venv-peers" / "bin" / "python", help="the peers' Python"
    )
    parser.add_argument("--celery-pool", choices=("threads", "solo"), default="threads", help="Celery worker pool")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    seconds = args.seconds if args.seconds is not None else (2.0 if quick else 5.0)
    return Options(
        jobs=args.jobs if args.jobs is not None else (50_000 if quick else 1_000_000),
        grow=max(2, args.grow),
        quick=quick,
        only=set(args.only or DEFAULT_FIGURES) | ({"peers"} if args.peers else set()),
        phase=Phase(warmup=0.5 if quick else 1.0, seconds=seconds, concurrency=args.concurrency, channels=4),
        streams=args.streams if args.streams is not None else (2_000 if quick else 10_000),
        rounds=4 if quick else 6,
        data_dir=args.data_dir,
        keep=args.data_dir is not None,
        profile=bool(args.profile),
        out=args.out,
        peers_python=args.peers_python,
        celery_pool=args.celery_pool,
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
