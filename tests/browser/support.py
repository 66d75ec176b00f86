"""Handles of the browser tests: `Jobsd` (the server, driven over gRPC) and `Tab` (a page and what it requested)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support.jobs import struct

ADMIN_TOKEN = "jobsd_browser-tests-admin-token-0123456789abcdef"
SERVICE_TOKEN = "jobsd_browser-tests-service-token-0123456789abcdef"
# Where the suite writes its screenshots when asked (`make screenshots`: docs/screenshots).
SCREENSHOTS = os.environ.get("JOBSD_SCREENSHOTS_DIR")
RPC_TIMEOUT = 10.0


@dataclass
class Claim:
    job: pb.Job
    lease_token: str


class Jobsd:
    """A running `jobsd serve`: jobs are created with the admin token and worked with the service token."""

    def __init__(self, grpc_target: str, base: str, store: str) -> None:
        self.grpc_target = grpc_target
        self.base = base
        self.store = store
        self.admin = ADMIN_TOKEN
        self._channel = grpc.insecure_channel(grpc_target)
        self.jobs = pb_grpc.JobsStub(self._channel)
        self.workers = pb_grpc.WorkersStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    @staticmethod
    def _md(token: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {token}"),)

    def create(self, kind: str, **fields: Any) -> pb.Job:
        for key in ("datasource", "params"):
            if isinstance(fields.get(key), dict):
                fields[key] = struct(fields[key])
        job: pb.Job = self.jobs.CreateJob(
            pb.CreateJobRequest(kind=kind, **fields), metadata=self._md(self.admin), timeout=RPC_TIMEOUT
        )
        return job

    def get(self, job_id: str) -> pb.Job:
        job: pb.Job = self.jobs.GetJob(
            pb.GetJobRequest(job_id=job_id), metadata=self._md(self.admin), timeout=RPC_TIMEOUT
        )
        return job

    def cancel(self, job_id: str) -> pb.Job:
        job: pb.Job = self.jobs.CancelJob(
            pb.CancelJobRequest(job_id=job_id), metadata=self._md(self.admin), timeout=RPC_TIMEOUT
        )
        return job

    def claim(self, job: pb.Job) -> Claim:
        """Claim `job` (the oldest waiting job of its kind: the tests leave no other one waiting)."""
        claimed: pb.ClaimJobResponse = self.workers.ClaimJob(
            pb.ClaimJobRequest(worker_id="browser-tests", kinds=[job.kind], wait_seconds=0),
            metadata=self._md(SERVICE_TOKEN),
            timeout=RPC_TIMEOUT,
        )
        assert claimed.job.id == job.id, f"claimed {claimed.job.id or 'nothing'} instead of {job.id}"
        return Claim(claimed.job, claimed.lease_token)

    def heartbeat(self, claim: Claim, **progress: Any) -> pb.HeartbeatResponse:
        response: pb.HeartbeatResponse = self.workers.Heartbeat(
            pb.HeartbeatRequest(
                job_id=claim.job.id, lease_token=claim.lease_token, progress=pb.ProgressUpdate(**progress)
            ),
            metadata=self._md(SERVICE_TOKEN),
            timeout=RPC_TIMEOUT,
        )
        return response

    def finish(
        self, claim: Claim, status: pb.JobStatus.ValueType = pb.JOB_STATUS_DONE, error: str = "", **progress: Any
    ) -> pb.Job:
        job: pb.Job = self.workers.FinishJob(
            pb.FinishJobRequest(
                job_id=claim.job.id,
                lease_token=claim.lease_token,
                status=status,
                error=error,
                progress=pb.ProgressUpdate(**progress),
            ),
            metadata=self._md(SERVICE_TOKEN),
            timeout=RPC_TIMEOUT,
        )
        return job

    def cancel_waiting(self) -> None:
        listed: pb.ListJobsResponse = self.jobs.ListJobs(
            pb.ListJobsRequest(status="waiting"), metadata=self._md(self.admin), timeout=RPC_TIMEOUT
        )
        for job in listed.jobs:
            self.cancel(job.id)

    def token(self, *scopes: str, name: str = "browser-test") -> str:
        """A new token of workspace `default`, made by `jobsd token create` as an operator would."""
        args = [sys.executable, "-m", "jobsd.cli", "token", "create", "--workspace", "default", "--name", name]
        for scope in scopes:
            args += ["--scope", scope]
        made = subprocess.run([*args, "--store", self.store], capture_output=True, text=True, check=True, timeout=60)
        return made.stdout.strip()


@dataclass
class Tab:
    page: Any
    context: Any
    jobsd: Jobsd
    requested: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def open(self, base: str | None = None, hash_route: str = "") -> None:
        self.page.goto(f"{base or self.jobsd.base}/{hash_route}")

    def sign_in(self, token: str | None = None) -> None:
        """Paste the token into the token page, as a person would."""
        secret = token or self.jobsd.admin
        self.tokens.append(secret)
        self.page.get_by_label("Token").fill(secret)
        self.page.get_by_role("button", name="Open dashboard").click()

    def row(self, job_id: str) -> Any:
        return self.page.locator(f'tr[data-id="{job_id}"]')

    def screenshot(self, name: str, full_page: bool = True) -> None:
        if SCREENSHOTS:
            Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}.png"), full_page=full_page)
