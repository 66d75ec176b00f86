"""Fair share against a real jobsd: one workspace flooding the queue with slow jobs cannot starve another.

A real JobsdApp (gRPC on an ephemeral 127.0.0.1 port, the SQLite store) and a real SDK worker on worker protocol v2
(one `Workers.Connect` stream, the server assigning jobs to its free slots, as the built-in executors are served).
The handlers block on events the test sets, so every assertion is about which jobs were started, and in what
order — never about time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from jobsd.domain.clock import ManualClock
from jobsd_client import JobContext, Worker, pb
from tests.support.server import Server, make_settings, running_server

PATIENCE = 30.0


@dataclass
class Starts:
    """What the worker started, in order, and a way to wait for the n-th start or for a job's end."""

    order: list[str] = field(default_factory=list)
    workspace_of: dict[str, str] = field(default_factory=dict)
    release: dict[str, asyncio.Event] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def until(self, ready: Callable[[], bool]) -> None:
        async with asyncio.timeout(PATIENCE), self.changed:
            await self.changed.wait_for(ready)


@contextlib.asynccontextmanager
async def working(server: Server, starts: Starts, slots: int, fast: set[str]) -> AsyncIterator[Worker]:
    """An SDK worker with `slots` slots running `query` jobs: a job of a workspace in `fast` ends at once, any
    other when the test releases it."""

    async def handle(ctx: JobContext) -> None:
        workspace = ctx.job.workspace_id
        async with starts.changed:
            starts.order.append(ctx.job_id)
            starts.workspace_of[ctx.job_id] = workspace
            starts.changed.notify_all()
        if workspace not in fast:
            await starts.release.setdefault(ctx.job_id, asyncio.Event()).wait()
        async with starts.changed:
            starts.finished.append(ctx.job_id)
            starts.changed.notify_all()

    worker = Worker(server.target, server.worker, {"query": handle}, concurrency=slots, wait_seconds=1.0)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        for event in starts.release.values():
            event.set()
        await worker.stop(grace=5.0)
        async with asyncio.timeout(PATIENCE):
            await task


async def _queries(server: Server, token: str, count: int) -> list[str]:
    """`count` query jobs of the token's workspace, one millisecond apart on the server's clock (so FIFO is the
    order they were created in)."""
    ids = []
    for _ in range(count):
        server.clock.advance(timedelta(milliseconds=1))
        ids.append((await server.create_kind("query", target=None, token=token)).id)
    return ids


def _release(starts: Starts, job_id: str) -> None:
    starts.release.setdefault(job_id, asyncio.Event()).set()


async def test_a_flood_of_slow_jobs_does_not_hold_back_another_workspace_s_job(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with running_server(make_settings(tmp_path), clock) as server:
        flooder = await server.token("flooder", "ADMIN")
        other = await server.token("other", "ADMIN")
        flood = await _queries(server, flooder, 12)
        starts = Starts()
        async with working(server, starts, slots=2, fast=set()):
            await starts.until(lambda: len(starts.order) == 2)
            assert starts.order == flood[:2]  # alone: the flooder may take every slot, FIFO
            (lone,) = await _queries(server, other, 1)
            _release(starts, flood[0])
            await starts.until(lambda: len(starts.order) == 3)
            # The next free slot goes to the other workspace, not to the flooder's ten waiting jobs.
            assert starts.order[2] == lone
            for job_id in [lone, *flood]:
                _release(starts, job_id)
            await starts.until(lambda: len(starts.finished) == 13)
        assert starts.order == [*flood[:2], lone, *flood[2:]]
        final = await server.get(lone, other)
        assert final.status == pb.JOB_STATUS_DONE


async def test_a_workspace_holds_at_most_its_share_of_a_worker_while_another_waits(
    tmp_path: Path, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, max_workspace_share=0.5)
    async with running_server(settings, clock) as server:
        slow_token = await server.token("slow", "ADMIN")
        fast_token = await server.token("fast", "ADMIN")
        slow = await _queries(server, slow_token, 6)
        fast = await _queries(server, fast_token, 8)
        fast_workspace = (await server.get(fast[0], fast_token)).workspace_id
        slow_started_while_fast_waited: list[int] = []
        starts = Starts()
        async with working(server, starts, slots=4, fast={fast_workspace}):
            # Until the fast workspace is done, or the slow one got a third slot (which must not be while the fast
            # one still waits: then the assertion below fails at once, rather than the fast jobs waiting for ever).
            await starts.until(
                lambda: all(j in starts.finished for j in fast) or sum(1 for j in starts.order if j in slow) > 2
            )
            for n, job_id in enumerate(starts.order):
                if job_id in slow:
                    fast_started_before = sum(1 for j in starts.order[:n] if j in fast)
                    if fast_started_before < len(fast):
                        slow_started_while_fast_waited.append(n)
            # Of 4 slots, the slow workspace held 2 (its share) while the fast one still had jobs waiting; the
            # fast one's 8 jobs went through the other 2, in turns with nobody.
            assert len(slow_started_while_fast_waited) == 2
            # Once the fast workspace has nothing waiting, the slow one may use every slot.
            await starts.until(lambda: sum(1 for j in starts.order if j in slow) == 4)
            for job_id in slow:
                _release(starts, job_id)
            await starts.until(lambda: len(starts.finished) == 14)
        assert [j for j in starts.order if j in slow] == slow  # FIFO within the workspace
        assert [j for j in starts.order if j in fast] == fast
