"""Helpers of the gateway tests: the `Gateway` handle (app, clock, tokens, HTTP and worker calls) and the golden files.

Jobs are moved through their life by the Workers RPCs with a worker token, exactly as a real worker would.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from google.protobuf import struct_pb2

from jobsd.app import JobsdApp
from jobsd.domain.clock import ManualClock
from jobsd.settings import Settings
from jobsd_client import pb
from jobsd_client.pb import jobs_pb2_grpc as pb_grpc
from tests.support import server
from tests.support.endpoints import bearer_metadata
from tests.support.sse import read_sse_event

T = TypeVar("T")

GOLDEN_DIR = Path(__file__).parent / "golden"
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6}$")
NO_ACCESS = "The token you have provided doesn't have access to this resource"
INVALID_TOKEN = "invalid authentication token"
# Stream reads are bounded only so that a broken stream fails the test instead of hanging it.
READ_TIMEOUT = 10.0

# What a job of each kind is created with unless a test says otherwise.
DEFAULT_FIELDS: dict[str, dict[str, Any]] = {
    "import": {"datasource": {"id": "t_events", "name": "events"}, "url": "https://example.com/events.csv"},
    "populateview": {
        "datasource": {"id": "t_events", "name": "events"},
        "pipe_id": "t_pipe",
        "pipe_name": "top_product_per_day",
        "params": {"sql": "SELECT * FROM source"},
    },
    "copy": {
        "datasource": {"id": "t_events", "name": "events"},
        "pipe_id": "t_pipe",
        "pipe_name": "copy_pipe",
        "query_sql": "SELECT * FROM source",
    },
    "query": {"query_sql": "SELECT count() FROM events"},
    "delete_data": {"datasource": {"id": "t_events", "name": "events"}, "params": {"delete_condition": "id = 1"}},
    "sink": {"pipe_id": "t_sink", "pipe_name": "sink_pipe", "query_sql": "SELECT * FROM events"},
}


def load_golden(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    return loaded


def struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


@dataclass
class Reply:
    status: int
    body: Any  # parsed JSON, or the text when the response is not JSON
    headers: Mapping[str, str]

    @property
    def error(self) -> str:
        # Tinybird's shape; `detail` only beside a documented message that is the start of ours (the reason).
        assert isinstance(self.body, dict), self.body
        assert set(self.body) in ({"error", "documentation"}, {"error", "detail", "documentation"}), self.body
        message: str = self.body["error"]
        return message


@dataclass
class Gateway:
    app: JobsdApp
    clock: ManualClock
    http: aiohttp.ClientSession
    base: str
    workers: pb_grpc.WorkersAsyncStub
    admin: str  # ADMIN of workspace "default"
    worker: str  # JOBS:EXECUTE on every workspace
    other: str  # ADMIN of workspace "other"
    tokens: dict[str, str] = field(default_factory=dict)

    md = staticmethod(bearer_metadata)

    # ------------------------------------------------------------ jobs

    async def create(self, kind: str = "import", token: str | None = None, **overrides: Any) -> pb.Job:
        fields = {**DEFAULT_FIELDS[kind], **overrides}
        for key in ("datasource", "params"):
            if key in fields and isinstance(fields[key], Mapping):
                fields[key] = struct(fields[key])
        return await self.app.api.create_job(token or self.admin, pb.CreateJobRequest(kind=kind, **fields))

    async def claim(self, kind: str) -> pb.ClaimJobResponse:
        claimed: pb.ClaimJobResponse = await self.workers.ClaimJob(
            pb.ClaimJobRequest(worker_id="gateway-tests", kinds=[kind], wait_seconds=0), metadata=self.md(self.worker)
        )
        assert claimed.HasField("job"), f"no {kind} job to claim"
        return claimed

    async def heartbeat(self, claim: pb.ClaimJobResponse, progress: pb.ProgressUpdate) -> pb.HeartbeatResponse:
        response: pb.HeartbeatResponse = await self.workers.Heartbeat(
            pb.HeartbeatRequest(job_id=claim.job.id, lease_token=claim.lease_token, progress=progress),
            metadata=self.md(self.worker),
        )
        return response

    async def finish(
        self,
        claim: pb.ClaimJobResponse,
        status: pb.JobStatus.ValueType = pb.JOB_STATUS_DONE,
        progress: pb.ProgressUpdate | None = None,
        error: str = "",
    ) -> pb.Job:
        request = pb.FinishJobRequest(job_id=claim.job.id, lease_token=claim.lease_token, status=status, error=error)
        if progress is not None:
            request.progress.CopyFrom(progress)
        finished: pb.Job = await self.workers.FinishJob(request, metadata=self.md(self.worker))
        return finished

    async def run(self, kind: str, progress: pb.ProgressUpdate | None = None, **overrides: Any) -> pb.Job:
        """A job of `kind`, created, claimed and finished as done."""
        await self.create(kind, **overrides)
        return await self.finish(await self.claim(kind), progress=progress)

    async def heard_through_a_run(self, kind: str, heard: Callable[[], Awaitable[T]]) -> tuple[T, T, T]:
        """Claim the waiting job of `kind`, report 40 %, finish it as done: what `heard()` (e.g. the next event of
        a stream) says after each of the three."""
        claim = await self.claim(kind)
        on_claim = await heard()
        await self.heartbeat(claim, pb.ProgressUpdate(progress_percentage=40.0))
        on_progress = await heard()
        await self.finish(claim)
        return on_claim, on_progress, await heard()

    async def cancelled(self, kind: str = "import", **overrides: Any) -> pb.Job:
        job = await self.create(kind, **overrides)
        return await self.app.api.cancel_job(self.admin, pb.CancelJobRequest(job_id=job.id))

    # ------------------------------------------------------------ HTTP

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        anonymous: bool = False,
    ) -> Reply:
        """`path` relative to the gateway (or an absolute URL); the admin token as a Bearer header by default."""
        sent = dict(headers or {})
        if not anonymous:
            sent.setdefault("Authorization", f"Bearer {token or self.admin}")
        url = path if path.startswith("http") else self.base + path
        async with self.http.request(method, url, params=params, headers=sent, data=data) as response:
            text = await response.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return Reply(response.status, body, response.headers)

    async def get(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("GET", path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> Reply:
        return await self.call("POST", path, **kwargs)

    async def list_ids(self, token: str | None = None, **params: str) -> list[str]:
        reply = await self.get("/v0/jobs", token=token, params=params)
        assert reply.status == 200, reply.body
        return [item["id"] for item in reply.body["jobs"]]


async def read_event(response: aiohttp.ClientResponse) -> dict[str, Any] | None:
    """The next Server-Sent Event (see `read_sse_event`), each line awaited at most READ_TIMEOUT seconds."""
    return await read_sse_event(response, READ_TIMEOUT)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """The shared harness's settings, with the REST gateway on an ephemeral port."""
    return server.make_settings(tmp_path, **{"http_addr": "127.0.0.1:0", **overrides})
