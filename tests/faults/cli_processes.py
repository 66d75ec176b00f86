"""The CLIs as a person runs them: the venv's `jobsd` and `jobsctl` entry points as real subprocesses.

`run` runs a command to its end ((exit status, stdout, stderr); `tests.support.subprocess_server`'s); `Served`
is a `jobsd serve --banner` on ephemeral ports whose addresses are read back from its banner, stopped with SIGTERM
(or killed) at the end.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.subprocess_server import environment as environment
from tests.support.subprocess_server import run as run

BIN = Path(sys.executable).parent
JOBSD = str(BIN / "jobsd")
JOBSCTL = str(BIN / "jobsctl")
ADMIN = "jobsd_cli-admin-token-0123456789abcdef"
WORKER = "jobsd_cli-worker-token-0123456789abcdef"
# Starting a process (imports, the store, DuckDB) on a loaded machine: generous; a hang still fails.
START = 60.0
_SERVING = re.compile(r"jobsd is serving gRPC on (\S+?)(?: and REST on (\S+))?$")


def one_error_line(err: str) -> str:
    """The whole of stderr, asserted to be a single `error: ...` line (no traceback, no log lines)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


@dataclass
class Served:
    process: asyncio.subprocess.Process
    target: str
    http: str | None
    banner: list[str]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def logged(self, text: str) -> None:
        """Until a line of stderr holds `text` (its file is appended to as the process logs)."""
        async with asyncio.timeout(START):
            while text not in self.stderr():  # noqa: ASYNC110 -- a file's growth: nothing to wait on
                await asyncio.sleep(0.05)

    async def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(START):
            return await self.process.wait()


@asynccontextmanager
async def served(
    cwd: Path, env: Mapping[str, str] | None = None, *args: str, stderr_name: str = "serve.err"
) -> AsyncIterator[Served]:
    """`jobsd serve --banner` in `cwd` (on ephemeral ports unless `env` says otherwise) until the block ends."""
    settings = {
        "JOBSD_GRPC_ADDR": "127.0.0.1:0",
        "JOBSD_HTTP_ADDR": "127.0.0.1:0",
        "JOBSD_ADMIN_TOKEN": ADMIN,
        "JOBSD_LOG_FORMAT": "text",
        **(env or {}),
    }
    stderr_path = cwd / stderr_name
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            JOBSD,
            "serve",
            "--banner",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            stdin=asyncio.subprocess.DEVNULL,
            env=environment(settings),
            cwd=cwd,
        )
    drain: asyncio.Task[bytes] | None = None
    try:
        assert process.stdout is not None
        banner: list[str] = []
        async with asyncio.timeout(START):
            while True:
                raw = await process.stdout.readline()
                if not raw:
                    raise AssertionError(f"jobsd serve exited before serving:\n{stderr_path.read_text()[-3000:]}")
                banner.append(raw.decode().rstrip("\n"))
                # The banner ends with an empty line after the worker's command.
                if banner[-1].startswith("  .venv/bin/jobsd worker"):
                    break
        drain = asyncio.create_task(process.stdout.read())
        match = next(m for line in banner if (m := _SERVING.search(line)))
        yield Served(process, match.group(1), match.group(2), banner, stderr_path)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if drain is not None:
            drain.cancel()
