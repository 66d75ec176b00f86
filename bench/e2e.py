"""jobsd's side of the end-to-end no-op figure, as a user would run it: a producer and a worker, each its own process,
both on the client SDK (the same shape as the Celery peer: bench/celery_peer.py).

    python -m bench.e2e worker  --target HOST:PORT --token T --concurrency 32
    python -m bench.e2e produce --target HOST:PORT --token T --workspace W --jobs 3000 [--ids-out FILE]

The producer opens a WatchJobs stream on the done jobs of the workspace first (the SDK's way to learn jobs are
done, as `join_native` is Celery's), then creates the jobs with `create_jobs` in batches of 100 (at most 32 calls
in flight), and prints one JSON line when it has seen every one of them done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from pathlib import Path

from jobsd_client import AsyncJobsClient, EventType, JobContext, Worker, pb, run_until_signalled

KIND = "query"
BATCH = 100


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def noop(ctx: JobContext) -> None:
    """The no-op job: what both systems run, so the figure is the systems' own cost per job."""
    return None


async def work(target: str, token: str, concurrency: int) -> None:
    worker = Worker(target, token, {KIND: noop}, concurrency=concurrency, worker_id="bench-e2e-worker")
    print(json.dumps({"pid": __import__("os").getpid()}), flush=True)
    await run_until_signalled(worker, grace=1.0)


async def produce(target: str, token: str, workspace: str, jobs: int, in_flight: int, ids_out: str | None) -> None:
    async with AsyncJobsClient(target, token) as client:
        await client.get_workspace()  # connected before the clock starts (a running service, not a new process)
        done_ids: set[str] = set()
        created: list[str] = []
        all_done = asyncio.Event()
        watching = asyncio.Event()

        async def watch() -> None:
            async for event in client.watch_jobs(kind=KIND, status="done", workspace_id=workspace):
                if event.type is EventType.SYNCED:
                    watching.set()
                elif event.HasField("job") and event.job.status == pb.JOB_STATUS_DONE:
                    done_ids.add(event.job.id)
                    if len(created) == jobs and done_ids.issuperset(created):
                        all_done.set()
                        return

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(watching.wait(), 30)
        request = pb.CreateJobRequest(workspace_id=workspace, kind=KIND, query_sql="SELECT 1")
        slots = asyncio.Semaphore(in_flight)
        cpu0, t0 = _cpu(), time.perf_counter()

        async def batch(n: int) -> None:
            async with slots:
                for result in await client.create_jobs([request] * n):
                    if isinstance(result, Exception):
                        raise result
                    created.append(result.id)

        await asyncio.gather(*(batch(min(BATCH, jobs - i)) for i in range(0, jobs, BATCH)))
        if done_ids.issuperset(created):
            all_done.set()
        await asyncio.wait_for(all_done.wait(), 600)
        seconds = time.perf_counter() - t0
        cpu = _cpu() - cpu0
        watcher.cancel()
        if ids_out:
            await asyncio.to_thread(Path(ids_out).write_text, "\n".join(created))
    print(json.dumps({"jobs": jobs, "seconds": seconds, "producer_cpu": cpu}), flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e")
    parser.add_argument("role", choices=("worker", "produce"))
    parser.add_argument("--target", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--workspace", default="")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--ids-out", default=None)
    args = parser.parse_args(argv)
    if args.role == "worker":
        asyncio.run(work(args.target, args.token, args.concurrency))
    else:
        asyncio.run(produce(args.target, args.token, args.workspace, args.jobs, args.in_flight, args.ids_out))


if __name__ == "__main__":
    main(sys.argv[1:])
