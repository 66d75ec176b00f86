"""`jobsd serve` as a real subprocess: for the suites whose subject is the process itself (faults, signals,
descriptor limits, replicas on one database, the CLI).

`serve_process` runs `python -m jobsd.cli serve --banner` with exactly the settings it is given (as `JOBSD_*`
variables; the test run's own `JOBSD_*` environment is dropped), gRPC and REST on ephemeral 127.0.0.1 ports read
back from the banner (no free-port race), its log (stderr) in a file. It yields once the banner says the process
serves and gRPC health answers SERVING; on the way out a process still running is stopped (SIGTERM, then SIGKILL
if it does not exit in time; or SIGKILL at once, where the test asks).

The in-process server of the other end-to-end suites is `tests.support.server.running_app`.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["START", "ServeProcess", "environment", "jobsd_env", "run", "run_jobsd", "serve_process", "spawned"]

# A fresh interpreter importing grpc, protobuf, DuckDB and jobsd, opening its store, on a loaded machine:
# generous, and a hang still fails.
START = 60.0
_BANNER = re.compile(r"jobsd is serving gRPC on 127\.0\.0\.1:(\d+)(?: and REST on http://127\.0\.0\.1:(\d+))?")
# The banner's last line: the command of a worker.
_BANNER_END = "  .venv/bin/jobsd worker"
# `python -m jobsd.cli`: the CLI without its entry point script.
_JOBSD_MODULE = (sys.executable, "-m", "jobsd.cli")


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any `JOBSD_` variable, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("JOBSD_")}
    env.update(extra or {})
    return env


def jobsd_env(**settings: object) -> dict[str, str]:
    """`environment()` plus `settings` (Settings field names, e.g. `grace_seconds=1`) as `JOBSD_GRACE_SECONDS=1`."""
    return environment({f"JOBSD_{name.upper()}": str(value) for name, value in settings.items()})


@asynccontextmanager
async def spawned(
    *command: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, **options: Any
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`command` started with `environment(env)` (`options` as for `asyncio.create_subprocess_exec`), killed at
    the end of the block if it is still running."""
    process = await asyncio.create_subprocess_exec(*command, env=environment(env), cwd=cwd, **options)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run(*command: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    """Run a command to its end (within START), with `environment(env)`: (exit status, stdout, stderr)."""
    pipes = asyncio.subprocess.PIPE
    async with spawned(
        *command, env=env, cwd=cwd, stdout=pipes, stderr=pipes, stdin=asyncio.subprocess.DEVNULL
    ) as process:
        async with asyncio.timeout(START):
            out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def run_jobsd(*args: str, **settings: object) -> tuple[int, str, str]:
    """`python -m jobsd.cli ARGS` run to its end with these settings (as in `jobsd_env`)."""
    return await run(
        sys.executable, "-m", "jobsd.cli", *args, env={f"JOBSD_{k.upper()}": str(v) for k, v in settings.items()}
    )


@dataclass
class ServeProcess:
    """A running `jobsd serve`: its process, the ports it serves on, its log."""

    process: asyncio.subprocess.Process
    grpc_port: int
    http_port: int | None  # None: started without REST
    log: Path
    banner: list[str] = field(default_factory=list)  # what it printed on stdout when it started

    @property
    def target(self) -> str:
        """The gRPC address (`127.0.0.1:PORT`)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        """The base URL of the REST gateway."""
        assert self.http_port is not None, "started without REST (http_addr empty)"
        return f"http://127.0.0.1:{self.http_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def logged(self, text: str) -> None:
        """Until a line of the log holds `text` (its file is appended to as the process logs); within START."""
        async with asyncio.timeout(START):
            while text not in self.log_text():  # noqa: ASYNC110 -- a file's growth: nothing to wait on
                await asyncio.sleep(0.05)

    async def terminate(self, within: float = START) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds until the process had exited). A process not out `within` seconds
        fails the test."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout=within)
        return code, time.monotonic() - started

    def kill(self) -> None:
        """SIGKILL: no shutdown, no release, no goodbye to the store."""
        if self.process.returncode is None:
            self.process.kill()

    async def stop(self, within: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited `within` seconds; waits for the exit either way."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), timeout=within)
        self.kill()
        await self.process.wait()


async def _health_serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            answer = await health.Check(health_pb2.HealthCheckRequest())
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return
            await asyncio.sleep(0.1)  # another process's readiness: there is no event to wait on


@asynccontextmanager
async def serve_process(
    log: Path,
    settings: Mapping[str, object],
    *,
    on_exit: Literal["stop", "kill"] = "stop",
    preexec_fn: Callable[[], object] | None = None,
    jobsd: Sequence[str] = _JOBSD_MODULE,
    cwd: Path | None = None,
) -> AsyncIterator[ServeProcess]:
    """`jobsd serve --banner` with these settings (gRPC and REST on ephemeral ports unless given), its log
    (stderr) in `log`; yielded once it serves. `preexec_fn` runs in the child before exec (e.g. an rlimit);
    `jobsd` is the command that runs the CLI (e.g. the venv's entry point), `cwd` where it runs."""
    env = jobsd_env(**{"grpc_addr": "127.0.0.1:0", "http_addr": "127.0.0.1:0", **settings})
    await asyncio.to_thread(log.parent.mkdir, parents=True, exist_ok=True)
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *jobsd,
            "serve",
            "--banner",
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            preexec_fn=preexec_fn,
        )
    drain: asyncio.Task[bytes] | None = None
    served: ServeProcess | None = None
    try:
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START):
                banner: list[str] = []
                while not banner or not banner[-1].startswith(_BANNER_END):
                    raw = await process.stdout.readline()
                    if not raw:
                        raise AssertionError("jobsd serve exited before serving")
                    banner.append(raw.decode().rstrip("\n"))
                # Whatever else it prints is read, so a full pipe can never block it.
                drain = asyncio.create_task(process.stdout.read())
                match = next((m for line in banner if (m := _BANNER.search(line))), None)
                if match is None:
                    raise AssertionError(f"no address in the banner: {banner}")
                http_port = int(match.group(2)) if match.group(2) else None
                served = ServeProcess(process, int(match.group(1)), http_port, log, banner)
                await _health_serving(served.target)
        except (AssertionError, TimeoutError, grpc.aio.AioRpcError) as failed:
            text = await asyncio.to_thread(log.read_text, errors="replace")
            raise AssertionError(f"jobsd serve did not come up ({failed!r}):\n{text[-3000:]}") from None
        yield served
    finally:
        if served is not None and on_exit == "stop":
            await served.stop()
        if process.returncode is None:
            process.kill()
            await process.wait()
        if drain is not None:
            drain.cancel()
