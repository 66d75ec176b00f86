"""The CLIs as a person runs them: the venv's `jobsd` and `jobsctl` entry points as real subprocesses.

`run` runs a command to its end ((exit status, stdout, stderr)) and `served` a `jobsd serve --banner` on ephemeral
ports (`serve_process`, killed at the end if a test has not stopped it): both `tests.support.subprocess_server`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from tests.support.subprocess_server import START as START
from tests.support.subprocess_server import ServeProcess, serve_process
from tests.support.subprocess_server import environment as environment
from tests.support.subprocess_server import run as run

BIN = Path(sys.executable).parent
JOBSD = str(BIN / "jobsd")
JOBSCTL = str(BIN / "jobsctl")
ADMIN = "jobsd_cli-admin-token-0123456789abcdef"
WORKER = "jobsd_cli-worker-token-0123456789abcdef"


def one_error_line(err: str) -> str:
    """The whole of stderr, asserted to be a single `error: ...` line (no traceback, no log lines)."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one error line, got:\n{err}"
    assert "Traceback" not in err
    return lines[0]


def served(
    cwd: Path, env: Mapping[str, str] | None = None, *, stderr_name: str = "serve.err"
) -> AbstractAsyncContextManager[ServeProcess]:
    """`jobsd serve --banner` from the venv's entry point in `cwd` (on ephemeral ports unless `env`, of `JOBSD_*`
    variables, says otherwise; the admin token ADMIN, text logs) until the block ends, then killed if still up."""
    settings = {"admin_token": ADMIN, "log_format": "text"}
    settings.update({name.removeprefix("JOBSD_").lower(): value for name, value in (env or {}).items()})
    return serve_process(cwd / stderr_name, settings, on_exit="kill", jobsd=(JOBSD,), cwd=cwd)
