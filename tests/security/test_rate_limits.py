"""Per-token rate limits: one token bucket per token, shared by the gRPC services and the REST gateway.

The attacker (alpha) spends its burst over both edges at once; its next request is refused on either edge with
the delay to wait — REST `429` with `Retry-After` and `X-RateLimit-*`, gRPC RESOURCE_EXHAUSTED with
`retry-after-ms` and `x-ratelimit-*` in trailing metadata, the SDK's `ResourceExhausted.retry_after` — while the
bystander (beta) is served as if nothing happened, a refused write writes nothing, an open stream keeps delivering,
and the endpoints that need no token never count. Time is the server's injected clock: the test moves it by the
delay the refusal named, and the next request is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from jobsd.api.remote import GrpcJobsApi
from jobsd.domain.clock import ManualClock
from jobsd.gateway.server import GatewayServer
from jobsd.service.ratelimit import TokenBuckets
from jobsd_client import AsyncJobsClient, pb
from jobsd_client.errors import ResourceExhausted
from tests.support.server import make_settings

from .tenants import Tenants, bounded, next_event, rpc_error, tenant_server, trailer

RATE = 2.0  # requests a second
BURST = 5


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Tenants]:
    async with tenant_server(tmp_path, rate_limit=RATE, rate_limit_burst=BURST) as started:
        yield started


async def rest_status(s: Tenants, path: str, token: str | None) -> tuple[int, dict[str, str], str]:
    headers = s.bearer(token) if token else {}
    async with s.http.get(f"{s.rest}{path}", headers=headers) as response:
        return response.status, dict(response.headers), await response.text()


async def workspace(s: Tenants, token: str) -> pb.Workspace:
    answer: pb.Workspace = await bounded(s.jobs.GetWorkspace(pb.GetWorkspaceRequest(), metadata=s.md(token)))
    return answer


async def test_a_token_past_its_rate_is_refused_on_both_edges_and_others_are_not(server: Tenants) -> None:
    s = server
    # The burst, spent over both edges: three gRPC calls and two REST requests.
    for _ in range(3):
        assert (await workspace(s, s.alpha)).name == "alpha"
    for _ in range(2):
        assert (await rest_status(s, "/v0/jobs", s.alpha))[0] == 200

    # REST: 429, the delay and the bucket's state.
    status, headers, body = await rest_status(s, "/v0/jobs", s.alpha)
    assert status == 429, body
    assert headers["Retry-After"] == "1"  # 0.5 s, in whole seconds
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"], headers["X-RateLimit-Reset"]) == (
        "5",
        "0",
        "3",  # 5 requests at 2 a second: 2.5 s to full
    )
    assert "JOBSD_RATE_LIMIT=2" in body and "retry after 500 ms" in body

    # gRPC: RESOURCE_EXHAUSTED with the delay in trailing metadata; a refused write writes nothing.
    refused = await rpc_error(
        s.jobs.CreateJob(
            pb.CreateJobRequest(kind="query", query_sql="SELECT 1"),
            metadata=s.md(s.alpha),
        )
    )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailer(refused, "retry-after-ms") == "500"
    assert [trailer(refused, key) for key in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")] == [
        "5",
        "0",
        "3",
    ]
    # The SDK says how long to wait.
    async with AsyncJobsClient(f"127.0.0.1:{s.app.grpc_port}", s.alpha) as client:
        with pytest.raises(ResourceExhausted) as info:
            await bounded(client.get_workspace())
    assert info.value.retry_after == 0.5
    assert (info.value.limit, info.value.remaining, info.value.reset_after) == (5, 0, 3.0)

    # The bystander is served on both edges; a bad token is refused as such and takes from no one.
    for _ in range(BURST):
        assert (await workspace(s, s.beta)).name == "beta"
    assert (await rest_status(s, "/v0/jobs", "jobsd_not-a-token"))[0] == 403
    # What needs no token never counts, whatever token comes with it.
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/v0/regions", "/", "/ui/app.js"):
        assert (await rest_status(s, path, s.alpha))[0] == 200, path

    # The delay the refusal named: one request, then refused again.
    s.clock.advance(timedelta(milliseconds=500))
    assert (await workspace(s, s.alpha)).name == "alpha"
    assert (await rest_status(s, "/v0/jobs", s.alpha))[0] == 429
    # After the reset time the whole burst is back; nothing was created while refused.
    s.clock.advance(timedelta(seconds=3))
    listed = await bounded(s.jobs.ListJobs(pb.ListJobsRequest(), metadata=s.md(s.alpha)))
    assert list(listed.jobs) == []
    for _ in range(BURST - 1):
        assert (await rest_status(s, "/v0/jobs", s.alpha))[0] == 200
    assert (await rest_status(s, "/v0/jobs", s.alpha))[0] == 429


async def test_an_open_stream_counts_once_and_keeps_delivering(server: Tenants) -> None:
    s = server
    job = pb.CreateJobRequest(kind="import", url="https://example.com/a.csv")
    job.datasource.update({"name": "events"})
    created = await bounded(s.jobs.CreateJob(job, metadata=s.md(s.alpha)))  # 1
    stream = s.jobs.WatchJob(pb.WatchJobRequest(job_id=created.id), metadata=s.md(s.alpha))  # 2
    assert (await next_event(stream)).type == pb.JobEvent.TYPE_SNAPSHOT
    async with s.http.get(f"{s.rest}/v0/jobs/events", headers=s.bearer(s.alpha)) as sse:  # 3
        assert sse.status == 200
        for _ in range(2):  # 4, 5
            assert (await workspace(s, s.alpha)).name == "alpha"
        assert (await rpc_error(workspace(s, s.alpha))).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A worker (its own token) claims the job: the exhausted token's stream still hears of it.
        claim = await bounded(
            s.workers.ClaimJob(pb.ClaimJobRequest(worker_id="w", kinds=["import"]), metadata=s.md(s.worker))
        )
        assert claim.job.id == created.id
        event = await next_event(stream)
        assert (event.type, event.job.status) == (pb.JobEvent.TYPE_STATUS, pb.JOB_STATUS_WORKING)
    stream.cancel()


async def test_rate_zero_is_off(tmp_path: Path) -> None:
    async with tenant_server(tmp_path, rate_limit=0, rate_limit_burst=1) as s:
        for _ in range(20):
            assert (await workspace(s, s.alpha)).name == "alpha"
        assert (await rest_status(s, "/v0/jobs", s.alpha))[0] == 200


def test_the_buckets_stay_bounded_and_forget_only_what_does_not_matter() -> None:
    clock = ManualClock()
    buckets = TokenBuckets(clock, rate=1.0, burst=2, max_buckets=10)
    buckets.take("busy")
    buckets.take("busy")
    for i in range(9):  # nine more tokens, each taking one
        buckets.take(f"t{i}")
    assert buckets.tracked() <= 10
    clock.advance(timedelta(seconds=2))  # every bucket is full again: the same as none, so the first to go
    for i in range(50):
        buckets.take(f"new{i}")
    assert buckets.tracked() <= 10
    # A busy token is still limited: its bucket is made again, full, and empties like any other.
    buckets.take("busy")
    buckets.take("busy")
    with pytest.raises(ResourceExhausted) as info:
        buckets.take("busy")
    assert info.value.retry_after == 1.0


async def test_the_standalone_gateway_answers_the_same_429(server: Tenants, tmp_path: Path) -> None:
    """`jobsd gateway --grpc-target`: the refusal crosses gRPC (trailing metadata) and becomes the same headers."""
    s = server
    remote = GrpcJobsApi(f"127.0.0.1:{s.app.grpc_port}")
    gateway = GatewayServer(remote, make_settings(tmp_path, http_addr="127.0.0.1:0"))
    port = await gateway.start()
    try:
        for _ in range(BURST):
            assert (await workspace(s, s.alpha)).name == "alpha"
        async with s.http.get(f"http://127.0.0.1:{port}/v0/jobs", headers=s.bearer(s.alpha)) as refused:
            assert refused.status == 429
            assert "JOBSD_RATE_LIMIT=2" in (await refused.json())["error"]
            headers = refused.headers
        assert [
            headers[h] for h in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
        ] == [
            "1",
            "5",
            "0",
            "3",
        ]
        async with s.http.get(f"http://127.0.0.1:{port}/v0/jobs", headers=s.bearer(s.beta)) as served:
            assert served.status == 200
    finally:
        await gateway.stop()
        await remote.close()
