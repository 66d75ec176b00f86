"""Start a bench server (`python -m bench.servers ...`) in its own process, wait until it is ready, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

from bench.load import ServerProcessStats

__all__ = ["ServerProcess"]

_ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    def __init__(self, kind: str, *args: str, log_path: Path) -> None:
        self.kind = kind
        self.args = args
        self.log_path = log_path
        self.info: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._log: Any = None

    @property
    def stats(self) -> ServerProcessStats:
        assert self._proc is not None
        return ServerProcessStats(self._proc.pid)

    @property
    def grpc_port(self) -> int:
        return int(self.info["grpc"])

    @property
    def http_port(self) -> int:
        return int(self.info["http"])

    async def __aenter__(self) -> ServerProcess:
        self._log = self.log_path.open("ab")
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.servers",
            self.kind,
            *self.args,
            cwd=_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=self._log,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert self._proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._proc.stdout.readline(), 120)
            if not line:
                raise RuntimeError(f"bench server {self.kind!r} exited before it was ready; see {self.log_path}")
            self.info = json.loads(line)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            await terminate(proc, within=60)
        if self._log is not None:
            self._log.close()
            self._log = None


async def terminate(proc: asyncio.subprocess.Process, within: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited `within` seconds; waits for the exit either way (none if it has
    exited already)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
