"""The published Tinybird CLIs against the gateway: `tinybird-cli` (`tb … job ls|details|cancel`) and `tinybird`
(`tb --cloud … job ls -s -k`, `job retry`, …). Asserts on what a person sees in the terminal.

Each CLI is pip-installed once into a virtual environment under `.cache/tb-cli/<package>-<version>/` in the
repository (reused between runs). The CLIs run with HOME and the working directory in tmp_path (they write a
`.tinyb` there), telemetry and the version check off, and every proxy variable pointing at a closed local port
with only 127.0.0.1 exempt, so nothing they do can leave this machine.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobsd_client import pb

from .support import Gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Pinned so that the cache key is the version and a new release cannot break the suite unannounced.
LEGACY_CLI = ("tinybird-cli", "6.5.5")
FORWARD_CLI = ("tinybird", "5.0.3")
_CACHE = Path(__file__).resolve().parents[2] / ".cache" / "tb-cli"
_COMPLETE = ".complete"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CLOSED_PORT_PROXY = "http://127.0.0.1:9"


def _install(package: str, version: str) -> Path:
    """The `tb` executable of `package==version`, installed once per version."""
    venv = _CACHE / f"{package}-{version}"
    tb = venv / "bin" / "tb"
    if (venv / _COMPLETE).exists() and tb.exists():
        return tb
    shutil.rmtree(venv, ignore_errors=True)  # a half-built environment from an interrupted run
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{package}=={version}",
        ],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            pytest.fail(
                f"could not install {package}=={version}: {' '.join(step)}\n{done.stdout}\n{done.stderr}"[-4000:]
            )
    (venv / _COMPLETE).write_text(f"{package}=={version}\n")
    return tb


@pytest.fixture(scope="session")
def legacy_tb() -> Path:
    return _install(*LEGACY_CLI)


@pytest.fixture(scope="session")
def forward_tb() -> Path:
    return _install(*FORWARD_CLI)


@dataclass
class Run:
    code: int
    output: str  # stdout and stderr, colours removed


async def tb(executable: Path, workdir: Path, *args: str) -> Run:
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    env = {
        "HOME": str(home),
        "PATH": f"{executable.parent}:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TB_CLI_TELEMETRY_OPTOUT": "1",
        "TB_VERSION_WARNING": "0",
        **{name: _CLOSED_PORT_PROXY for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")},
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    # The gateway runs on this event loop: the CLI must run as a subprocess we await, never a blocking call.
    process = await asyncio.create_subprocess_exec(
        str(executable),
        *args,
        cwd=workdir,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode is not None
    return Run(process.returncode, _ANSI.sub("", out.decode()))


def _listed(output: str) -> dict[str, dict[str, str]]:
    """`tb job ls` prints one block of `key: value` lines per job; keyed by id."""
    jobs: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in output.splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        if key == "id":
            current = jobs.setdefault(value.strip(), {})
        current[key] = value.strip()
    return jobs


async def _status(gw: Gateway, job_id: str) -> str:
    job = await gw.app.api.get_job(gw.admin, pb.GetJobRequest(job_id=job_id))
    return pb.JobStatus.Name(job.status).removeprefix("JOB_STATUS_").lower()


async def test_legacy_cli_lists_shows_and_cancels_jobs(gw: Gateway, legacy_tb: Path, tmp_path: Path) -> None:
    done = await gw.run("import")
    waiting = await gw.create("import")
    working = await gw.create("populateview")
    await gw.claim("populateview")
    cli = ("--host", gw.base, "--token", gw.admin)

    listing = await tb(legacy_tb, tmp_path, *cli, "job", "ls")
    details = await tb(legacy_tb, tmp_path, *cli, "job", "details", done.id)
    cancel_waiting = await tb(legacy_tb, tmp_path, *cli, "job", "cancel", waiting.id)
    cancel_working = await tb(legacy_tb, tmp_path, *cli, "job", "cancel", working.id)
    cancel_done = await tb(legacy_tb, tmp_path, *cli, "job", "cancel", done.id)
    cancel_missing = await tb(legacy_tb, tmp_path, *cli, "job", "cancel", "no-such-job")

    assert listing.code == 0, listing.output
    assert "** Jobs:" in listing.output
    jobs = _listed(listing.output)
    assert set(jobs) == {done.id, waiting.id, working.id}
    assert (jobs[done.id]["kind"], jobs[done.id]["status"]) == ("import", "done")
    assert (jobs[working.id]["kind"], jobs[working.id]["status"]) == ("populateview", "working")
    assert jobs[done.id]["job url"] == f"{gw.base}/v0/jobs/{done.id}"

    assert details.code == 0, details.output
    assert f"** Job: {done.id}" in details.output
    assert "kind: import" in details.output and "status: done" in details.output
    assert "datasource: {'id': 't_events', 'name': 'events'}" in details.output

    assert cancel_waiting.code == 0, cancel_waiting.output
    assert f"** Job with id '{waiting.id}' has been cancelled" in cancel_waiting.output
    assert await _status(gw, waiting.id) == "cancelled"
    assert cancel_working.code == 0, cancel_working.output
    assert "is now in cancelling status and will be cancelled eventually" in cancel_working.output
    assert await _status(gw, working.id) == "cancelling"
    assert cancel_done.code != 0 and "Job is not in cancellable status" in cancel_done.output
    assert cancel_missing.code != 0 and "Job with id 'no-such-job' does not exist" in cancel_missing.output


async def test_legacy_cli_with_a_bad_token_says_so(gw: Gateway, legacy_tb: Path, tmp_path: Path) -> None:
    run = await tb(legacy_tb, tmp_path, "--host", gw.base, "--token", "jobsd_wrong", "job", "ls")

    assert run.code != 0
    assert "invalid authentication token" in run.output


async def test_forward_cli_filters_lists_and_retries_jobs(gw: Gateway, forward_tb: Path, tmp_path: Path) -> None:
    imported = await gw.run("import")
    waiting_import = await gw.create("import")
    waiting_copy = await gw.create("copy")
    cancelled = await gw.cancelled("populateview")
    cli = ("--cloud", "--host", gw.base, "--token", gw.admin)

    waiting_imports = await tb(forward_tb, tmp_path, *cli, "job", "ls", "-s", "waiting", "-k", "import")
    done_or_cancelled = await tb(forward_tb, tmp_path, *cli, "job", "ls", "-s", "done", "-s", "cancelled")
    everything = await tb(forward_tb, tmp_path, *cli, "job", "ls")
    details = await tb(forward_tb, tmp_path, *cli, "job", "details", cancelled.id)
    retried = await tb(forward_tb, tmp_path, *cli, "job", "retry", cancelled.id)
    cancel = await tb(forward_tb, tmp_path, *cli, "job", "cancel", waiting_copy.id)

    for run in (waiting_imports, done_or_cancelled, everything, details, retried, cancel):
        assert run.code == 0, run.output
    assert set(_listed(waiting_imports.output)) == {waiting_import.id}
    assert set(_listed(done_or_cancelled.output)) == {imported.id, cancelled.id}
    assert set(_listed(everything.output)) == {imported.id, waiting_import.id, waiting_copy.id, cancelled.id}

    assert f"** Job: {cancelled.id}" in details.output
    assert "kind: populateview" in details.output and "status: cancelled" in details.output

    match = re.search(rf"\*\* Job '{cancelled.id}' retried as '([0-9a-f-]+)'", retried.output)
    assert match, retried.output
    assert await _status(gw, match.group(1)) == "waiting"

    assert f"** Job with id '{waiting_copy.id}' has been cancelled" in cancel.output
    assert await _status(gw, waiting_copy.id) == "cancelled"
