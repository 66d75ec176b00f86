"""Bad input on every request field of every RPC (docs/contract.md #api, #faults-and-operations): INVALID_ARGUMENT
naming the field (in the message and in the `jobsd-field` trailing metadata), or NOT_FOUND for ids that do not
exist, and nothing changes."""

from __future__ import annotations

import base64
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from jobsd_client import pb

from .conftest import Server, error_field, rpc_error

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
LONG_ID = "j" * 129


@dataclass
class State:
    job: pb.Job  # working, with `lease`
    lease: str
    ended: pb.Job  # cancelled


def token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def ts(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


Call = Callable[[Server, State], Awaitable[Any]]


def create(**fields: Any) -> Call:
    def call(s: Server, st: State) -> Awaitable[Any]:
        request = pb.CreateJobRequest(**{k: v for k, v in fields.items() if k not in ("datasource", "params")})
        for name in ("datasource", "params"):
            if fields.get(name) is not None:
                getattr(request, name).update(fields[name])
        return s.jobs.CreateJob(request, metadata=s.md(s.admin))

    return call


def list_jobs(token_of: str = "admin", **fields: Any) -> Call:
    return lambda s, st: s.jobs.ListJobs(pb.ListJobsRequest(**fields), metadata=s.md(getattr(s, token_of)))


def list_log(token_of: str = "admin", **fields: Any) -> Call:
    return lambda s, st: s.jobs.ListJobsLog(pb.ListJobsLogRequest(**fields), metadata=s.md(getattr(s, token_of)))


def watch(job_id: str | None = None, since: int = 0) -> Call:
    def call(s: Server, st: State) -> Awaitable[Any]:
        return s.watch(st.job.id if job_id is None else job_id, since=since).read()

    return call


def watch_jobs(token_of: str = "admin", **fields: Any) -> Call:
    return lambda s, st: s.jobs.WatchJobs(pb.WatchJobsRequest(**fields), metadata=s.md(getattr(s, token_of))).read()


def claim(**fields: Any) -> Call:
    fields.setdefault("worker_id", "w9")
    return lambda s, st: s.workers.ClaimJob(pb.ClaimJobRequest(**fields), metadata=s.md(s.worker))


def beat(progress: pb.ProgressUpdate | None = None, job_id: str | None = None, lease: str | None = None) -> Call:
    def call(s: Server, st: State) -> Awaitable[Any]:
        return s.heartbeat(st.job.id if job_id is None else job_id, st.lease if lease is None else lease, progress)

    return call


def finish(job_id: str | None = None, lease: str | None = None, **fields: Any) -> Call:
    fields.setdefault("status", pb.JOB_STATUS_DONE)

    def call(s: Server, st: State) -> Awaitable[Any]:
        request = pb.FinishJobRequest(
            job_id=st.job.id if job_id is None else job_id, lease_token=st.lease if lease is None else lease, **fields
        )
        return s.workers.FinishJob(request, metadata=s.md(s.worker))

    return call


def by_id(rpc: str, job_id: str) -> Call:
    requests = {"GetJob": pb.GetJobRequest, "CancelJob": pb.CancelJobRequest, "RetryJob": pb.RetryJobRequest}
    return lambda s, st: getattr(s.jobs, rpc)(requests[rpc](job_id=job_id), metadata=s.md(s.admin))


IA, NF = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
DS = {"name": "events"}
URL = "https://example.com/x.csv"
CASES: list[Any] = []


def case(rpc: str, name: str, call: Call, code: grpc.StatusCode, field: str | None, *marks: Any) -> None:
    CASES.append(pytest.param(call, code, field, id=f"{rpc}-{name}", marks=marks))


for rpc in ("GetJob", "CancelJob", "RetryJob"):
    case(rpc, "job_id-empty", by_id(rpc, ""), IA, "job_id")
    case(rpc, "job_id-too-long", by_id(rpc, LONG_ID), IA, "job_id")
    case(rpc, "job_id-unknown", by_id(rpc, UNKNOWN_ID), NF, None)
    case(rpc, "job_id-not-a-uuid", by_id(rpc, "../../etc/passwd"), NF, None)

case("WatchJob", "job_id-empty", watch(""), IA, "job_id")
case("WatchJob", "job_id-too-long", watch(LONG_ID), IA, "job_id")
case("WatchJob", "job_id-unknown", watch(UNKNOWN_ID), NF, None)
case("WatchJob", "since_revision-negative", watch(since=-1), IA, "since_revision")

for size in (-1, 101, 1000):
    case("ListJobs", f"page_size-{size}", list_jobs(page_size=size), IA, "page_size")
    case("ListJobsLog", f"page_size-{size}", list_log(page_size=size), IA, "page_size")
for name, raw in {
    "not-base64": "!!!not a token!!!",
    "base64-garbage": token(b"\xff\xfe\x00garbage"),
    "wrong-shape": token(b"foo"),
    "no-number": token(b"abc|def|1"),
}.items():
    case("ListJobs", f"page_token-{name}", list_jobs(page_token=raw), IA, "page_token")
    case("ListJobsLog", f"page_token-{name}", list_log(page_token=raw), IA, "page_token")
case("ListJobsLog", "page_token-of-ListJobs", list_log(page_token=token(b"1780315200000000|x")), IA, "page_token")
case("ListJobsLog", "page_token-bad-revision", list_log(page_token=token(b"1|x|y")), IA, "page_token")
case("ListJobs", "page_token-time-overflow", list_jobs(page_token=token(b"9" * 23 + b"|x")), IA, "page_token")
case(
    "ListJobsLog",
    "page_token-time-overflow",
    list_log(page_token=token(b"9" * 23 + b"|x|1")),
    IA,
    "page_token",
)
for rpc, make in (("ListJobs", list_jobs), ("ListJobsLog", list_log)):
    case(rpc, "created_after-out-of-range", make(created_after=ts(10**12)), IA, "created_after")
    case(rpc, "created_before-bad-nanos", make(created_before=ts(1, -5)), IA, "created_before")
    case(rpc, "workspace_id-missing-for-service-token", make(token_of="service"), IA, "workspace_id")
case("WatchJobs", "workspace_id-missing-for-service-token", watch_jobs(token_of="service"), IA, "workspace_id")

case("CreateJob", "kind-empty", create(datasource=DS, url=URL), IA, "kind")
case("CreateJob", "kind-unknown", create(kind="reindex", datasource=DS), IA, "kind")
case("CreateJob", "datasource-missing", create(kind="import", url=URL), IA, "datasource")
case(
    "CreateJob",
    "datasource-without-name",
    create(kind="import", url=URL, datasource={"id": "t_1"}),
    IA,
    "datasource.name",
)
case(
    "CreateJob",
    "datasource-bad-name",
    create(kind="import", url=URL, datasource={"name": "9 x"}),
    IA,
    "datasource.name",
)
case("CreateJob", "mode-bad", create(kind="import", url=URL, datasource=DS, mode="merge"), IA, "mode")
case("CreateJob", "url-missing", create(kind="import", datasource=DS), IA, "url")
case("CreateJob", "url-bad-scheme", create(kind="import", datasource=DS, url="ftp://example.com/x.csv"), IA, "url")
case("CreateJob", "url-no-host", create(kind="import", datasource=DS, url="https://"), IA, "url")
case("CreateJob", "query_sql-missing", create(kind="query"), IA, "params.sql")
case("CreateJob", "query_sql-too-long", create(kind="query", query_sql="S" * 100_001), IA, "query_sql")
case("CreateJob", "delete_condition-missing", create(kind="delete_data", datasource=DS), IA, "params.delete_condition")
case("CreateJob", "params-too-large", create(kind="sink", params={"blob": "x" * 70_000}), IA, "params")
case("CreateJob", "pipe_id-too-long", create(kind="sink", pipe_id="p" * 257), IA, "pipe_id")
case("CreateJob", "pipe_name-control-char", create(kind="sink", pipe_name="a\nb"), IA, "pipe_name")
case("CreateJob", "query_id-too-long", create(kind="sink", query_id="q" * 257), IA, "query_id")
case("CreateJob", "idempotency_key-too-long", create(kind="sink", idempotency_key="k" * 257), IA, "idempotency_key")
case("CreateJob", "request_id-too-long", create(kind="sink", request_id="r" * 257), IA, "request_id")
case(
    "CreateJob",
    "workspace_id-missing-for-service-token",
    lambda s, st: s.jobs.CreateJob(pb.CreateJobRequest(kind="sink"), metadata=s.md(s.service)),
    IA,
    "workspace_id",
)
case(
    "CreateJob",
    "workspace_id-unknown",
    lambda s, st: s.jobs.CreateJob(pb.CreateJobRequest(kind="sink", workspace_id="nope"), metadata=s.md(s.service)),
    NF,
    None,
)

case("ClaimJob", "worker_id-empty", claim(worker_id=""), IA, "worker_id")
case("ClaimJob", "worker_id-too-long", claim(worker_id="w" * 129), IA, "worker_id")
case("ClaimJob", "kinds-unknown", claim(kinds=["reindex"]), IA, "kinds")
case("ClaimJob", "kinds-one-unknown", claim(kinds=["import", "Import"]), IA, "kinds")
case("ClaimJob", "wait_seconds-negative", claim(wait_seconds=-1), IA, "wait_seconds")
case("ClaimJob", "wait_seconds-over-60", claim(wait_seconds=61), IA, "wait_seconds")
case("ClaimJob", "wait_seconds-nan", claim(wait_seconds=math.nan), IA, "wait_seconds")
case("ClaimJob", "wait_seconds-inf", claim(wait_seconds=math.inf), IA, "wait_seconds")

P = pb.ProgressUpdate
with_progress: tuple[tuple[str, Callable[[pb.ProgressUpdate], Call]], ...] = (
    ("Heartbeat", lambda p: beat(p)),
    ("FinishJob", lambda p: finish(progress=p)),
)
for rpc, make_with in with_progress:
    case(
        rpc, "progress_percentage-over-100", make_with(P(progress_percentage=100.5)), IA, "progress.progress_percentage"
    )
    case(rpc, "progress_percentage-negative", make_with(P(progress_percentage=-1)), IA, "progress.progress_percentage")
    case(rpc, "progress_percentage-nan", make_with(P(progress_percentage=math.nan)), IA, "progress.progress_percentage")
    case(rpc, "quarantine_rows-negative", make_with(P(quarantine_rows=-1)), IA, "progress.quarantine_rows")
    case(rpc, "invalid_lines-negative", make_with(P(invalid_lines=-3)), IA, "progress.invalid_lines")
    case(rpc, "statistics-negative", make_with(P(statistics=pb.Statistics(bytes=-1))), IA, "progress.statistics")
    case(
        rpc,
        "processed_data-negative",
        make_with(P(processed_data=pb.ProcessedData(read_rows=-1))),
        IA,
        "progress.processed_data",
    )
    case(
        rpc,
        "queries-bad-status",
        make_with(P(queries=[pb.QueryProgress(query_id="q1", status="finished")])),
        IA,
        "progress.queries[0].status",
    )
    case(
        rpc,
        "queries-empty-query_id",
        make_with(P(queries=[pb.QueryProgress(query_id="q1", status="done"), pb.QueryProgress(status="done")])),
        IA,
        "progress.queries[1].query_id",
    )
case("Heartbeat", "job_id-empty", beat(job_id=""), IA, "job_id")
case("Heartbeat", "job_id-too-long", beat(job_id=LONG_ID), IA, "job_id")
case("Heartbeat", "job_id-unknown", beat(job_id=UNKNOWN_ID), NF, None)
case("Heartbeat", "lease_token-empty", beat(lease=""), IA, "lease_token")
case("FinishJob", "job_id-empty", finish(job_id=""), IA, "job_id")
case("FinishJob", "job_id-unknown", finish(job_id=UNKNOWN_ID), NF, None)
case("FinishJob", "lease_token-empty", finish(lease=""), IA, "lease_token")
case("FinishJob", "status-missing", finish(status=pb.JOB_STATUS_UNSPECIFIED), IA, "status")
case("FinishJob", "status-waiting", finish(status=pb.JOB_STATUS_WAITING), IA, "status")
case("FinishJob", "status-working", finish(status=pb.JOB_STATUS_WORKING), IA, "status")
case("FinishJob", "status-cancelling", finish(status=pb.JOB_STATUS_CANCELLING), IA, "status")
case("FinishJob", "status-out-of-enum", finish(status=99), IA, "status")
case("FinishJob", "error-too-long", finish(status=pb.JOB_STATUS_ERROR, error="e" * 10_001), IA, "error")


async def world(server: Server) -> tuple[Any, ...]:
    """Everything a bad request could have changed: every job (status, revision), and the log."""
    jobs = await server.jobs.ListJobs(pb.ListJobsRequest(), metadata=server.md(server.admin))
    log = await server.jobs.ListJobsLog(pb.ListJobsLogRequest(), metadata=server.md(server.admin))
    return (
        sorted((j.id, j.status, j.revision, j.progress_percentage) for j in jobs.jobs),
        sorted((e.job_id, e.revision) for e in log.entries),
    )


@pytest.mark.parametrize(("call", "code", "field"), CASES)
async def test_bad_input(server: Server, call: Call, code: grpc.StatusCode, field: str | None) -> None:
    ended = await server.cancel((await server.create_kind("import")).id)
    job = await server.create_kind("populateview", target="mv")
    running = await server.claim_job(job.id)
    state = State(running.job, running.lease_token, ended)
    before = await world(server)

    error = await rpc_error(call(server, state))
    assert error.code() == code, f"{error.code().name}: {error.details()}"
    assert "Traceback" not in (error.details() or "")
    if field is not None:
        assert error_field(error) == field
        details = error.details() or ""
        assert details.startswith(f"{field}: "), details
        assert len(details) > len(field) + 5, "say what is wrong, not just where"
    assert await world(server) == before, "a refused request changed something"


# ---------------------------------------------------------------- edges that are not errors


@pytest.mark.parametrize("size", [0, 1, 100])
async def test_page_size_bounds_are_accepted(server: Server, size: int) -> None:
    ids = [(await server.create_kind("sink", target=None)).id for _ in range(3)]
    response = await server.jobs.ListJobs(pb.ListJobsRequest(page_size=size), metadata=server.md(server.admin))
    assert len(response.jobs) == min(3, size or 100)
    assert {j.id for j in response.jobs} <= set(ids)
    assert bool(response.next_page_token) is (size == 1)


@pytest.mark.parametrize("filters", [{"status": "finished"}, {"kind": "reindex"}, {"pipe_name": "x" * 300}])
async def test_an_unknown_filter_value_matches_nothing(server: Server, filters: dict[str, str]) -> None:
    await server.create_kind("import")
    assert await server.list_ids(**filters) == []


@pytest.mark.parametrize("wait", [0, 60])
async def test_wait_seconds_bounds_are_accepted(server: Server, wait: int) -> None:
    job = await server.create_kind("import")
    claim = await server.claim(wait=wait)
    assert claim.job.id == job.id
