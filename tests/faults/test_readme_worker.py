"""The README's "Your own worker in five minutes", run as written: its kinds file, its worker script and its shell
commands (with the venv's `jobsd`, `jobsctl` and `python`) against a real `jobsd serve` laid out as `make run` lays
it out (`.jobsd/worker-token`, the banner's `export` line). Then the worker's cancellation path, and `jobsd worker`
beside `jobsd serve` on one host with no flag but the target.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from jobsd_client import AsyncJobsClient, pb
from tests.support.subprocess_server import spawned

from .cli_processes import ADMIN, JOBSCTL, JOBSD, START, WORKER, environment, run, served

README = Path(__file__).resolve().parents[2] / "README.md"
_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def readme_blocks(title: str) -> dict[str, str]:
    """The fenced blocks of one README section, by language (one of each)."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.index("\n## ", start + 1)
    blocks: dict[str, str] = {}
    for language, body in _FENCE.findall(text[start:end]):
        assert language not in blocks, f"two {language} blocks in {title}"
        blocks[language] = body
    return blocks


def laid_out_as_make_run(home: Path) -> None:
    """A checkout as `make run` leaves it: `.venv` (this one) and `.jobsd/` with the worker token."""
    (home / ".venv").symlink_to(Path(sys.executable).parent.parent)
    (home / ".jobsd").mkdir(mode=0o700)
    (home / ".jobsd" / "worker-token").write_text(WORKER + "\n")


def exports(banner: list[str]) -> dict[str, str]:
    """The banner's `export A=1 B=2` line as variables."""
    line = next(line for line in banner if line.strip().startswith("export JOBSD_TOKEN="))
    return dict(part.split("=", 1) for part in line.split()[1:])


async def wait_for(client: AsyncJobsClient, job_id: str, status: int, *, progressed: bool = False) -> pb.Job:
    async with asyncio.timeout(START):
        async for event in client.watch_job(job_id):
            if event.job.status == status and (not progressed or event.job.progress_percentage > 0):
                return event.job
    raise AssertionError(f"job {job_id} never reached {status}")


async def test_the_readme_worker_runs_as_written(tmp_path: Path) -> None:
    blocks = readme_blocks("Your own worker in five minutes")
    assert set(blocks) == {"toml", "python", "sh"}
    laid_out_as_make_run(tmp_path)
    (tmp_path / "thumbnails.toml").write_text(blocks["toml"])
    (tmp_path / "thumbnail_worker.py").write_text(blocks["python"])
    (tmp_path / "steps.sh").write_text("set -e\n" + blocks["sh"])
    settings = {"JOBSD_KINDS_FILE": "thumbnails.toml", "JOBSD_WORKER_TOKEN": WORKER, "JOBSD_LEASE_SECONDS": "3"}
    async with served(tmp_path, settings) as serve:
        env = exports(serve.banner)
        assert env == {"JOBSD_TOKEN": ADMIN, "JOBSD_TARGET": serve.target, "JOBSD_HTTP_TARGET": str(serve.http)}
        assert f"worker token (JOBS:EXECUTE, workspace default): {WORKER}" in serve.banner

        # The shell block, in its own process group (the worker it starts in the background goes with it).
        steps = await asyncio.create_subprocess_exec(
            "bash",
            "steps.sh",
            cwd=tmp_path,
            env=environment(env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(START):
                out, err = await steps.communicate()
        finally:
            if steps.returncode is None:
                os.killpg(steps.pid, signal.SIGKILL)
                await steps.wait()
        assert steps.returncode == 0, (out.decode(), err.decode())
        job_id = re.search(r"Job (\S+) \(thumbnail\) created", out.decode())
        assert job_id is not None, out.decode()

        async with AsyncJobsClient(serve.target, ADMIN) as client:
            done = await client.get_job(job_id.group(1))
            assert (done.status, done.progress_percentage) == (pb.JOB_STATUS_DONE, 100)

            # The same worker, and a cancel while it works: the handler sees it and ends the job cancelled.
            async with spawned(
                str(tmp_path / ".venv" / "bin" / "python"),
                "thumbnail_worker.py",
                cwd=tmp_path,
                env={**env, "JOBSD_WORKER_TOKEN": WORKER},
                stderr=asyncio.subprocess.PIPE,
            ) as worker:
                job = await client.create_job("thumbnail", params={"images": 1000})
                await wait_for(client, job.id, pb.JOB_STATUS_WORKING)
                await client.cancel_job(job.id)
                cancelled = await wait_for(client, job.id, pb.JOB_STATUS_CANCELLED)
                assert cancelled.error == ""
                worker.send_signal(signal.SIGTERM)
                async with asyncio.timeout(START):
                    assert await worker.wait() == 0
        code, _ = await serve.terminate()
        assert code == 0


async def test_jobsd_worker_beside_jobsd_serve_needs_no_flag_but_the_target(tmp_path: Path) -> None:
    laid_out_as_make_run(tmp_path)
    async with served(tmp_path, {"JOBSD_WORKER_TOKEN": WORKER}) as serve:
        async with spawned(
            JOBSD,
            "worker",
            "--grpc-target",
            serve.target,
            cwd=tmp_path,
            # No log level: run as the banner says, the worker tells that it runs (it used to start silent).
            env={"JOBSD_WORKER_TOKEN": WORKER, "JOBSD_LOG_FORMAT": "text"},
            stderr=asyncio.subprocess.PIPE,
        ) as worker:
            assert worker.stderr is not None
            async with asyncio.timeout(START):
                while b"executors running against" not in (line := await worker.stderr.readline()):
                    assert line, "jobsd worker exited"
            assert b".jobsd/worker/dataplane" in line
            # Both data planes are open, each its own.
            assert (tmp_path / ".jobsd" / "dataplane" / ".lock").exists()
            assert (tmp_path / ".jobsd" / "worker" / "dataplane" / ".lock").exists()
            async with AsyncJobsClient(serve.target, ADMIN) as client:
                job = await client.create_job("query", params={"sql": "SELECT 1 AS one"})
                await wait_for(client, job.id, pb.JOB_STATUS_DONE)
            worker.send_signal(signal.SIGTERM)
            async with asyncio.timeout(START):
                rest = await worker.stderr.read()
                assert await worker.wait() == 0, rest.decode()
            assert b"Traceback" not in rest
        code, _ = await serve.terminate()
        assert code == 0


async def test_without_a_worker_token_the_banner_prints_the_command_that_makes_one(tmp_path: Path) -> None:
    laid_out_as_make_run(tmp_path)
    async with served(tmp_path, {"JOBSD_EXECUTORS": "off"}) as serve:
        assert not any("worker token" in line for line in serve.banner)
        line = next(line.strip() for line in serve.banner if "JOBSD_WORKER_TOKEN=" in line)
        assert line == (
            "export JOBSD_WORKER_TOKEN=$(.venv/bin/jobsd token create --workspace default --scope JOBS:EXECUTE "
            "--name worker)"
        )
        # Pasted as printed, it makes a token a worker can run with.
        code, out, err = await run("bash", "-c", f'set -e; {line}; echo "$JOBSD_WORKER_TOKEN"', cwd=tmp_path)
        assert code == 0, err
        token = out.strip()
        async with AsyncJobsClient(serve.target, token) as client:
            workspace = await client.get_workspace()
            assert workspace.name == "default" and list(workspace.scopes) == ["JOBS:EXECUTE"]
        # The pasted jobsctl commands reach this server on its own ports.
        code, out, _ = await run(JOBSCTL, "ls", env=exports(serve.banner))
        assert (code, out) == (0, "No jobs found.\n")
        code, _ = await serve.terminate()
        assert code == 0
