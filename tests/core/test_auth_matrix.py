"""The auth matrix (docs/contract.md#auth): every RPC of Jobs and Workers x (no token, invalid token, another
workspace's token, narrow scopes, wrong scope, right scope). Requests name the job's workspace wherever the request
has a workspace_id, so the other workspace's token is asked to reach across. A refused call changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from jobsd_client import pb

from .conftest import Server, bounded, read_events

Metadata = tuple[tuple[str, str], ...]

# Who calls: a token's (workspace, scopes), or raw metadata for the unauthenticated rows.
JOBS_CALLERS: dict[str, tuple[str | None, tuple[str, ...]] | Metadata] = {
    "no-token": (),
    "invalid-token": (("authorization", "Bearer jobsd_this-token-was-never-issued"),),
    "not-bearer": (("authorization", "Basic dXNlcjpwYXNz"),),
    "other-workspace": ("other", ("ADMIN", "JOBS:CREATE", "JOBS:EXECUTE")),
    "narrow-datasource-other": ("default", ("DATASOURCES:READ:other",)),
    "narrow-pipe-other": ("default", ("PIPES:READ:x",)),
    "read-only-matching": ("default", ("DATASOURCES:READ:events", "PIPES:READ:by_day")),
    "execute-only": ("default", ("JOBS:EXECUTE",)),
    "right-admin": ("default", ("ADMIN",)),
    "right-datasources-create": ("default", ("DATASOURCES:CREATE",)),
    "right-service-every-workspace": (None, ("JOBS:CREATE", "JOBS:EXECUTE")),
}
WORKERS_CALLERS: dict[str, tuple[str | None, tuple[str, ...]] | Metadata] = {
    "no-token": (),
    "invalid-token": (("authorization", "Bearer jobsd_this-token-was-never-issued"),),
    "not-bearer": (("authorization", "Basic dXNlcjpwYXNz"),),
    "other-workspace": ("other", ("ADMIN", "JOBS:CREATE", "JOBS:EXECUTE")),
    "narrow-datasource-other": ("default", ("DATASOURCES:READ:other",)),
    "narrow-pipe-other": ("default", ("PIPES:READ:x",)),
    "read-only-matching": ("default", ("DATASOURCES:READ:events", "PIPES:READ:by_day")),
    "admin-without-execute": ("default", ("ADMIN", "DATASOURCES:CREATE", "JOBS:CREATE")),
    "right-worker-of-workspace": ("default", ("JOBS:EXECUTE",)),
    "right-worker-every-workspace": (None, ("JOBS:EXECUTE",)),
}

# Outcomes: OK and the job is in the answer; OK without it (filtered); PERMISSION_DENIED; UNAUTHENTICATED.
OK, HIDDEN, DENIED, UNAUTH = "ok", "ok-filtered", "denied", "unauthenticated"
CODES = {DENIED: grpc.StatusCode.PERMISSION_DENIED, UNAUTH: grpc.StatusCode.UNAUTHENTICATED}
_UNAUTH_ROWS = {"no-token": UNAUTH, "invalid-token": UNAUTH, "not-bearer": UNAUTH}


@dataclass
class State:
    job: pb.Job
    lease: str = ""


@dataclass(frozen=True)
class Rpc:
    service: str
    name: str
    # Prepare the target job (in workspace "default", data source "events", pipe "by_day").
    setup: Callable[[Server], Awaitable[State]]
    # Make the call; returns what the caller got.
    call: Callable[[Server, State, Metadata], Awaitable[Any]]
    # Whether the answer shows the target job (distinguishes OK from filtered).
    shows: Callable[[Any, State, Server], bool]
    # Expected outcome per caller (the unauthenticated rows are the same for every RPC).
    expected: dict[str, str]


async def waiting_job(server: Server) -> State:
    return State(await server.create_kind("populateview", target="events", pipe_id="t_by_day", pipe_name="by_day"))


async def cancelled_job(server: Server) -> State:
    state = await waiting_job(server)
    return State(await server.cancel(state.job.id))


async def working_job(server: Server) -> State:
    state = await waiting_job(server)
    claim = await server.claim_job(state.job.id)
    return State(claim.job, claim.lease_token)


async def first_events(stream: Any, until_synced: bool = False) -> list[pb.JobEvent]:
    events: list[pb.JobEvent] = []
    while not events or (until_synced and events[-1].type != pb.JobEvent.TYPE_SYNCED):
        events += await bounded(read_events(stream, 1))
    stream.cancel()
    return events


READ = {
    "other-workspace": DENIED,
    "narrow-datasource-other": DENIED,
    "narrow-pipe-other": DENIED,
    "read-only-matching": OK,
    "execute-only": DENIED,
    "right-admin": OK,
    "right-datasources-create": OK,
    "right-service-every-workspace": OK,
}
LIST = {**READ, "narrow-datasource-other": HIDDEN, "narrow-pipe-other": HIDDEN}
WRITE = {**READ, "read-only-matching": DENIED}
LOG = {**WRITE}
WORKSPACE = {  # GetWorkspace answers about the caller's own workspace: never the other one's
    "other-workspace": HIDDEN,
    "narrow-datasource-other": OK,
    "narrow-pipe-other": OK,
    "read-only-matching": OK,
    "execute-only": OK,
    "right-admin": OK,
    "right-datasources-create": OK,
    "right-service-every-workspace": HIDDEN,  # spans every workspace: it has none of its own
}
# ListKinds shows the server's configuration, not a workspace's data: any valid token reads it.
ANY_TOKEN = {caller: OK for caller in JOBS_CALLERS if caller not in _UNAUTH_ROWS}
WORK = {
    "other-workspace": DENIED,
    "narrow-datasource-other": DENIED,
    "narrow-pipe-other": DENIED,
    "read-only-matching": DENIED,
    "admin-without-execute": DENIED,
    "right-worker-of-workspace": OK,
    "right-worker-every-workspace": OK,
}


async def connect_until_assigned(server: Server, md: Metadata) -> list[pb.Assignment]:
    """Workers.Connect with one free slot; the assignments of the first message that has any."""
    hello = pb.WorkerMessage(hello=pb.ConnectHello(worker_id="w", workspace_id=server.workspace_id, slots=1))

    async def requests() -> AsyncIterator[pb.WorkerMessage]:
        yield hello
        await asyncio.Event().wait()  # keep our side open: a worker that closes it gets nothing more assigned

    stream = server.workers.Connect(requests(), metadata=md)
    try:
        while True:
            message = await bounded(stream.read())
            # grpc-stubs does not declare grpc.aio.EOF
            assert message is not grpc.aio.EOF, "the worker stream ended without an assignment"  # type: ignore[attr-defined]
            assert isinstance(message, pb.ServerMessage)
            if message.assignments:
                return list(message.assignments)
    finally:
        stream.cancel()


RPCS = [
    Rpc(
        "Jobs",
        "ListJobs",
        waiting_job,
        lambda s, st, md: s.jobs.ListJobs(pb.ListJobsRequest(workspace_id=s.workspace_id), metadata=md),
        lambda r, st, s: st.job.id in [j.id for j in r.jobs],
        LIST,
    ),
    Rpc(
        "Jobs",
        "GetJob",
        waiting_job,
        lambda s, st, md: s.jobs.GetJob(pb.GetJobRequest(job_id=st.job.id), metadata=md),
        lambda r, st, s: r.id == st.job.id,
        READ,
    ),
    Rpc(
        "Jobs",
        "CancelJob",
        waiting_job,
        lambda s, st, md: s.jobs.CancelJob(pb.CancelJobRequest(job_id=st.job.id), metadata=md),
        lambda r, st, s: r.id == st.job.id and r.status == pb.JOB_STATUS_CANCELLED,
        WRITE,
    ),
    Rpc(
        "Jobs",
        "WatchJob",
        waiting_job,
        lambda s, st, md: first_events(s.jobs.WatchJob(pb.WatchJobRequest(job_id=st.job.id), metadata=md)),
        lambda r, st, s: r[0].job.id == st.job.id,
        READ,
    ),
    Rpc(
        "Jobs",
        "WatchJobs",
        waiting_job,
        lambda s, st, md: first_events(
            s.jobs.WatchJobs(pb.WatchJobsRequest(workspace_id=s.workspace_id), metadata=md), until_synced=True
        ),
        lambda r, st, s: st.job.id in [e.job.id for e in r],
        LIST,
    ),
    Rpc(
        "Jobs",
        "CreateJob",
        waiting_job,
        lambda s, st, md: s.jobs.CreateJob(
            pb.CreateJobRequest(workspace_id=s.workspace_id, kind="query", query_sql="SELECT 1"), metadata=md
        ),
        lambda r, st, s: bool(r.id) and r.workspace_id == s.workspace_id,
        WRITE,
    ),
    Rpc(
        "Jobs",
        "CreateJobs",
        waiting_job,
        lambda s, st, md: s.jobs.CreateJobs(
            pb.CreateJobsRequest(
                jobs=[pb.CreateJobRequest(workspace_id=s.workspace_id, kind="query", query_sql="SELECT 1")] * 2
            ),
            metadata=md,
        ),
        lambda r, st, s: len(r.results) == 2 and all(x.job.workspace_id == s.workspace_id for x in r.results),
        WRITE,
    ),
    Rpc(
        "Jobs",
        "RetryJob",
        cancelled_job,
        lambda s, st, md: s.jobs.RetryJob(pb.RetryJobRequest(job_id=st.job.id), metadata=md),
        lambda r, st, s: r.id != st.job.id and r.status == pb.JOB_STATUS_WAITING,
        WRITE,
    ),
    Rpc(
        "Jobs",
        "ListJobsLog",
        waiting_job,
        lambda s, st, md: s.jobs.ListJobsLog(pb.ListJobsLogRequest(workspace_id=s.workspace_id), metadata=md),
        lambda r, st, s: st.job.id in [e.job_id for e in r.entries],
        LOG,
    ),
    Rpc(
        "Jobs",
        "GetWorkspace",
        waiting_job,
        lambda s, st, md: s.jobs.GetWorkspace(pb.GetWorkspaceRequest(), metadata=md),
        lambda r, st, s: r.id == s.workspace_id and r.name == "default",
        WORKSPACE,
    ),
    Rpc(
        "Jobs",
        "ListKinds",
        waiting_job,
        lambda s, st, md: s.jobs.ListKinds(pb.ListKindsRequest(), metadata=md),
        lambda r, st, s: {"import", "populateview"} <= {k.name for k in r.kinds},
        ANY_TOKEN,
    ),
    Rpc(
        "Workers",
        "ClaimJob",
        waiting_job,
        lambda s, st, md: s.workers.ClaimJob(
            pb.ClaimJobRequest(worker_id="w", workspace_id=s.workspace_id), metadata=md
        ),
        lambda r, st, s: r.job.id == st.job.id and bool(r.lease_token),
        WORK,
    ),
    Rpc(
        "Workers",
        "Connect",
        waiting_job,
        lambda s, st, md: connect_until_assigned(s, md),
        lambda r, st, s: [a.job.id for a in r] == [st.job.id] and bool(r[0].lease_token),
        WORK,
    ),
    Rpc(
        "Workers",
        "Heartbeat",
        working_job,
        lambda s, st, md: s.workers.Heartbeat(
            pb.HeartbeatRequest(
                job_id=st.job.id, lease_token=st.lease, progress=pb.ProgressUpdate(progress_percentage=10)
            ),
            metadata=md,
        ),
        lambda r, st, s: r.revision == st.job.revision + 1,
        WORK,
    ),
    Rpc(
        "Workers",
        "FinishJob",
        working_job,
        lambda s, st, md: s.workers.FinishJob(
            pb.FinishJobRequest(job_id=st.job.id, lease_token=st.lease, status=pb.JOB_STATUS_DONE), metadata=md
        ),
        lambda r, st, s: r.id == st.job.id and r.status == pb.JOB_STATUS_DONE,
        WORK,
    ),
]


def test_every_rpc_of_both_services_has_rows() -> None:
    jobs = set(pb.DESCRIPTOR.services_by_name["Jobs"].methods_by_name)
    workers = set(pb.DESCRIPTOR.services_by_name["Workers"].methods_by_name)
    assert {r.name for r in RPCS if r.service == "Jobs"} == jobs
    assert {r.name for r in RPCS if r.service == "Workers"} == workers
    for rpc in RPCS:
        callers = JOBS_CALLERS if rpc.service == "Jobs" else WORKERS_CALLERS
        assert set(rpc.expected) | set(_UNAUTH_ROWS) == set(callers), rpc.name


CASES = [
    pytest.param(rpc, caller, {**_UNAUTH_ROWS, **rpc.expected}[caller], id=f"{rpc.name}-{caller}")
    for rpc in RPCS
    for caller in (JOBS_CALLERS if rpc.service == "Jobs" else WORKERS_CALLERS)
]


async def metadata_for(server: Server, who: tuple[str | None, tuple[str, ...]] | Metadata) -> Metadata:
    if not who or isinstance(who[0], tuple):
        return who
    workspace, scopes = who
    assert isinstance(scopes, tuple)
    return server.md(await server.token(workspace, *scopes))


async def snapshot_of(server: Server, state: State) -> tuple[int, list[str]]:
    job = await server.get(state.job.id)
    return job.revision, sorted(await server.list_ids())


@pytest.mark.parametrize(("rpc", "caller", "outcome"), CASES)
async def test_auth_matrix(server: Server, rpc: Rpc, caller: str, outcome: str) -> None:
    await server.app.workspace_id_of("other")
    state = await rpc.setup(server)
    callers = JOBS_CALLERS if rpc.service == "Jobs" else WORKERS_CALLERS
    metadata = await metadata_for(server, callers[caller])
    before = await snapshot_of(server, state)
    try:
        result = await bounded(rpc.call(server, state, metadata))
    except grpc.aio.AioRpcError as exc:
        assert outcome in CODES, f"{rpc.name} as {caller}: expected {outcome}, got {exc.code().name}: {exc.details()}"
        assert exc.code() == CODES[outcome], f"{rpc.name} as {caller}: {exc.code().name}: {exc.details()}"
        assert exc.details(), "an error must say what is wrong"
        assert "Traceback" not in (exc.details() or "")
        assert await snapshot_of(server, state) == before, f"a refused {rpc.name} changed something"
        return
    assert outcome in (OK, HIDDEN), f"{rpc.name} as {caller}: expected {outcome}, got OK"
    assert rpc.shows(result, state, server) is (outcome == OK), f"{rpc.name} as {caller}: {outcome} but got {result}"
