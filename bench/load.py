"""Load generation (runs in the bench's own process; every server runs in another).

The client does the same, minimal work for a figure and its anchor: requests are serialised once up front and
responses are taken as raw bytes (`unary_unary` without (de)serialisers), so the client's cost per call is
the transport's alone and the difference between a figure and its anchor is the server's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

__all__ = [
    "CHANNEL_OPTIONS",
    "FanoutResult",
    "LoadResult",
    "Phase",
    "ServerProcessStats",
    "channels",
    "drive",
    "fanout",
    "merge",
    "percentile",
]

# Streams opened at once (then the next wave, once these have their first message).
OPEN_WAVE = 200
# One connection per channel (a local subchannel pool: channels with equal arguments would otherwise share one).
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


@dataclass(frozen=True, slots=True)
class Phase:
    warmup: float
    seconds: float
    concurrency: int
    channels: int


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


class ServerProcessStats:
    """CPU time and RSS of a server process, from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ticks = 100.0
        try:
            import os

            self._ticks = float(os.sysconf("SC_CLK_TCK"))
        except (ValueError, OSError, AttributeError):
            pass

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks

    def rss_mb(self) -> float:
        return self.memory_mb().get("VmRSS", float("nan"))

    def memory_mb(self) -> dict[str, float]:
        """VmRSS and its parts, in MB: RssAnon (the heap, SQLite's page cache), RssFile (the interpreter's and the
        libraries' file pages, which the kernel may drop while the process idles), RssShmem."""
        parts = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                parts[name] = int(value.split()[0]) / 1024.0
        return parts


class _Percentiles:
    """The median and the 99th percentile of `latencies` (seconds), in milliseconds."""

    latencies: list[float]

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 0.50) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies, 0.99) * 1000


@dataclass
class LoadResult(_Percentiles):
    calls: int
    seconds: float
    latencies: list[float] = field(repr=False)
    errors: int = 0
    server_cpu: float = float("nan")
    first_error: str = ""
    client_cpu: float = float("nan")

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds > 0 else 0.0

    @property
    def client_cpu_us(self) -> float:
        """This (load-generating) process's CPU time per call: near 1 s/s means the client is the limit."""
        return self.client_cpu / self.calls * 1e6 if self.calls else float("nan")

    @property
    def server_cpu_us(self) -> float:
        """Server CPU time per call (microseconds), over the measured window."""
        return self.server_cpu / self.calls * 1e6 if self.calls else float("nan")


def merge(results: Sequence[LoadResult]) -> LoadResult:
    """Several measured windows of one load as one result."""
    first = next((r.first_error for r in results if r.first_error), "")
    return LoadResult(
        calls=sum(r.calls for r in results),
        seconds=sum(r.seconds for r in results),
        latencies=[x for r in results for x in r.latencies],
        errors=sum(r.errors for r in results),
        server_cpu=sum(r.server_cpu for r in results),
        first_error=first,
        client_cpu=sum(r.client_cpu for r in results),
    )


async def drive(
    call: Callable[[int], Awaitable[object]],
    phase: Phase,
    server: ServerProcessStats | None = None,
) -> LoadResult:
    """`phase.concurrency` loops each awaiting `call(i)` back to back: warm up, then measure for `phase.seconds`.

    The calls that complete inside the measured window count (rate, and their latency; the warm-up keeps the
    load steady before the window opens, so a call that started in it is a steady-state call). Errors are counted and
    the first is kept; a benchmark whose calls fail reports it rather than a fast rate of failures.
    """
    loop_time = time.perf_counter
    started = loop_time()
    window_start = started + phase.warmup
    window_end = window_start + phase.seconds
    latencies: list[float] = []
    errors = 0
    first_error = ""
    counter = 0
    cpu_marks: list[float] = []

    async def worker() -> None:
        nonlocal counter, errors, first_error
        while True:
            t0 = loop_time()
            if t0 >= window_end:
                return
            counter += 1
            try:
                await call(counter)
            except Exception as exc:
                errors += 1
                if not first_error:
                    first_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                if errors > 1000:
                    return
                continue
            t1 = loop_time()
            if window_start <= t1 <= window_end:
                latencies.append(t1 - t0)

    async def cpu_sampler() -> None:
        await asyncio.sleep(max(0.0, window_start - loop_time()))
        cpu_marks.extend((server.cpu_seconds() if server else float("nan"), time.process_time()))
        await asyncio.sleep(max(0.0, window_end - loop_time()))
        cpu_marks.extend((server.cpu_seconds() if server else float("nan"), time.process_time()))

    await asyncio.gather(cpu_sampler(), *(worker() for _ in range(phase.concurrency)))
    cpu = cpu_marks[2] - cpu_marks[0] if len(cpu_marks) == 4 else float("nan")
    client = cpu_marks[3] - cpu_marks[1] if len(cpu_marks) == 4 else float("nan")
    return LoadResult(len(latencies), phase.seconds, latencies, errors, cpu, first_error, client)


def channels(port: int, count: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) for _ in range(count)]


async def close_all(chans: Sequence[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(c.close(None) for c in chans))


def unary_callers(chans: Sequence[grpc.aio.Channel], method: str) -> list[grpc.aio.UnaryUnaryMultiCallable]:  # type: ignore[type-arg]
    """Raw-bytes callables for `method`, one per channel."""
    return [c.unary_unary(method, request_serializer=None, response_deserializer=None) for c in chans]


@dataclass
class FanoutResult(_Percentiles):
    streams: int
    rounds: list[float]  # seconds from the trigger to the last stream receiving, per round
    latencies: list[float] = field(repr=False)  # every stream's delivery latency, every round
    open_seconds: float = 0.0
    server_cpu: float = float("nan")

    @property
    def median(self) -> float:
        return statistics.median(self.rounds) if self.rounds else float("nan")


async def fanout(
    port: int,
    *,
    streams: int,
    per_channel: int,
    method: str,
    request: bytes,
    metadata: tuple[tuple[str, str], ...],
    trigger: Callable[[int], Awaitable[object]],
    rounds: int,
    closes_on_last: bool,
    server: ServerProcessStats | None = None,
    wait_seconds: float = 60.0,
) -> FanoutResult:
    """Open `streams` server streams (`per_channel` on each of several channels), wait until every one has its
    first message, then `rounds` times: note the time, `await trigger(r)`, and wait until every stream has
    received its next message. Messages are counted, not decoded, exactly alike for jobsd and the anchor."""
    n_channels = -(-streams // per_channel)
    chans = channels(port, n_channels)
    callers = [c.unary_stream(method, request_serializer=None, response_deserializer=None) for c in chans]
    received = [0] * (rounds + 1)
    arrivals: list[list[float]] = [[] for _ in range(rounds + 1)]
    done = [asyncio.Event() for _ in range(rounds + 1)]
    trigger_at = [0.0] * (rounds + 1)
    ended = asyncio.Event()
    closed = 0
    failures: list[str] = []

    def check() -> None:
        if failures:
            raise RuntimeError(f"{len(failures)} of {streams} streams failed; first: {failures[0]}")

    async def reader(i: int) -> None:
        nonlocal closed
        call = callers[i % n_channels](request, metadata=metadata)
        index = 0
        try:
            async for _message in call:
                now = time.perf_counter()
                if index <= rounds:
                    received[index] += 1
                    arrivals[index].append(now)
                    if received[index] == streams:
                        done[index].set()
                index += 1
                if index > rounds and not closes_on_last:
                    call.cancel()
                    break
        except grpc.aio.AioRpcError as exc:
            if not (exc.code() == grpc.StatusCode.CANCELLED and index > rounds):
                failures.append(f"{exc.code().name}: {exc.details()}")
                for event in done:
                    event.set()
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            for event in done:
                event.set()
        finally:
            closed += 1
            if closed == streams:
                ended.set()

    started = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    try:
        # Open in waves, each waiting for its first messages: a gRPC server cancels calls beyond its pending-request
        # limit (1,000 by default) when thousands arrive in one instant.
        deadline = started + wait_seconds
        for first in range(0, streams, OPEN_WAVE):
            last = min(streams, first + OPEN_WAVE)
            tasks += [asyncio.create_task(reader(i)) for i in range(first, last)]
            while received[0] < last and not failures:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"only {received[0]} of {streams} streams opened in {wait_seconds:g} s")
                await asyncio.sleep(0.002)
            check()
        check()
        opened = time.perf_counter() - started
        cpu0 = server.cpu_seconds() if server else float("nan")
        for r in range(1, rounds + 1):
            await asyncio.sleep(0.05)  # let the previous round settle
            trigger_at[r] = time.perf_counter()
            await trigger(r)
            await asyncio.wait_for(done[r].wait(), wait_seconds)
            check()
        cpu = (server.cpu_seconds() - cpu0) if server else float("nan")
        if closes_on_last:
            await asyncio.wait_for(ended.wait(), wait_seconds)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(chans)
    per_round = [max(arrivals[r]) - trigger_at[r] for r in range(1, rounds + 1)]
    latencies = [t - trigger_at[r] for r in range(1, rounds + 1) for t in arrivals[r]]
    return FanoutResult(streams, per_round, latencies, opened, cpu)
