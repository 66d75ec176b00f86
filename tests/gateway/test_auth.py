"""The auth matrix: every endpoint against every kind of caller (docs/contract.md#auth).

Callers: no token, an unknown token, a token of another workspace, a token narrowed to another data source,
a token narrowed to the job's data source, a token without a reading scope (a worker's), and the right scope.
Tokens go in `?token=` or `Authorization: Bearer` (the query wins). Denied writes change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from jobsd_client import pb

from .support import INVALID_TOKEN, NO_ACCESS, Gateway

CALLERS = ["none", "invalid", "other_workspace", "narrow_other", "narrow_same", "no_read_scope", "right"]


@dataclass(frozen=True)
class Expect:
    status: int
    # For 403s: the message, or a fragment of it (the scope it names).
    message: str | None = None
    # For 200s of lists: whether the job (or its jobs_log rows) is in the answer.
    sees_job: bool | None = None


DENIED = Expect(403, INVALID_TOKEN)
NO_ACCESS_403 = Expect(403, NO_ACCESS)
READ_ONE = {
    "none": DENIED,
    "invalid": DENIED,
    "other_workspace": NO_ACCESS_403,
    "narrow_other": NO_ACCESS_403,
    "narrow_same": Expect(200),
    "no_read_scope": NO_ACCESS_403,
    "right": Expect(200),
}
WRITE_ONE = {**READ_ONE, "narrow_same": NO_ACCESS_403}  # reading one data source's jobs does not allow cancelling them
WORKSPACE = {
    **{caller: Expect(200) for caller in CALLERS},
    "none": DENIED,
    "invalid": DENIED,
}

MATRIX: dict[str, dict[str, Expect]] = {
    "list": {
        "none": DENIED,
        "invalid": DENIED,
        "other_workspace": Expect(200, sees_job=False),
        "narrow_other": Expect(200, sees_job=False),
        "narrow_same": Expect(200, sees_job=True),
        "no_read_scope": Expect(403, "scope to read jobs"),
        "right": Expect(200, sees_job=True),
    },
    "get": READ_ONE,
    "events": READ_ONE,
    "cancel": WRITE_ONE,
    "retry": WRITE_ONE,
    "jobs_log": {
        "none": DENIED,
        "invalid": DENIED,
        "other_workspace": Expect(200, sees_job=False),
        "narrow_other": Expect(403, "ADMIN"),
        "narrow_same": Expect(403, "ADMIN"),
        "no_read_scope": Expect(403, "scope to read jobs"),
        "right": Expect(200, sees_job=True),
    },
    "workspace_v0": WORKSPACE,
    "workspace_v1": WORKSPACE,
}


async def _token_of(gw: Gateway, caller: str) -> str | None:
    if caller == "none":
        return None
    if caller == "invalid":
        return "jobsd_not-a-token-anyone-made"
    if caller == "other_workspace":
        return gw.other
    if caller == "right":
        return gw.admin
    scope = {
        "narrow_other": "DATASOURCES:READ:elsewhere",
        "narrow_same": "DATASOURCES:READ:events",
        "no_read_scope": "JOBS:EXECUTE",
    }[caller]
    return await gw.app.create_token("default", [scope], caller)


async def _job_for(gw: Gateway, endpoint: str) -> pb.Job:
    if endpoint == "cancel":
        return await gw.create("import")  # waiting: cancellable
    if endpoint == "retry":
        return await gw.cancelled("import")
    return await gw.run("import")  # done: an event stream of it ends after the snapshot


def _path(endpoint: str, job_id: str) -> tuple[str, str]:
    return {
        "list": ("GET", "/v0/jobs"),
        "get": ("GET", f"/v0/jobs/{job_id}"),
        "events": ("GET", f"/v0/jobs/{job_id}/events"),
        "cancel": ("POST", f"/v0/jobs/{job_id}/cancel"),
        "retry": ("POST", f"/v0/jobs/{job_id}/retry"),
        "jobs_log": ("GET", "/v0/jobs_log"),
        "workspace_v0": ("GET", "/v0/workspace"),
        "workspace_v1": ("GET", "/v1/workspace"),
    }[endpoint]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", list(MATRIX))
@pytest.mark.parametrize("carrier", ["bearer", "query"])
async def test_auth_matrix(gw: Gateway, endpoint: str, caller: str, carrier: str) -> None:
    expect = MATRIX[endpoint][caller]
    job = await _job_for(gw, endpoint)
    token = await _token_of(gw, caller)
    method, path = _path(endpoint, job.id)
    if carrier == "bearer" or token is None:
        reply = await gw.call(method, path, token=token, anonymous=token is None)
    else:
        reply = await gw.call(method, path, params={"token": token}, anonymous=True)

    assert reply.status == expect.status, reply.body
    if expect.status == 403:
        assert expect.message is not None and expect.message in reply.error
        await _assert_unchanged(gw, endpoint, job)
        return
    if expect.sees_job is not None:
        rows = reply.body["jobs"] if endpoint == "list" else reply.body["data"]
        assert any(row.get("id", row.get("job_id")) == job.id for row in rows) is expect.sees_job
    if endpoint.startswith("workspace"):
        assert reply.body["name"] == ("other" if caller == "other_workspace" else "default")
    if endpoint == "cancel":
        assert reply.body["status"] == "cancelled"
    if endpoint == "retry":
        assert reply.body["id"] != job.id and reply.body["status"] == "waiting"


async def _assert_unchanged(gw: Gateway, endpoint: str, job: pb.Job) -> None:
    """A refused cancel or retry wrote nothing."""
    now = await gw.app.api.get_job(gw.admin, pb.GetJobRequest(job_id=job.id))
    assert (now.status, now.revision) == (job.status, job.revision)
    if endpoint == "retry":
        listed = await gw.app.api.list_jobs(gw.admin, pb.ListJobsRequest())
        assert [j.id for j in listed.jobs] == [job.id]


async def test_query_token_wins_over_the_header(gw: Gateway) -> None:
    job = await gw.create("import")

    with_valid_query = await gw.get(f"/v0/jobs/{job.id}", params={"token": gw.admin}, token="jobsd_wrong")
    with_invalid_query = await gw.get(f"/v0/jobs/{job.id}", params={"token": "jobsd_wrong"})

    assert with_valid_query.status == 200
    assert (with_invalid_query.status, with_invalid_query.error) == (403, INVALID_TOKEN)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "token-without-scheme"])
async def test_an_authorization_header_without_a_bearer_token_is_no_token(gw: Gateway, header: str) -> None:
    reply = await gw.get("/v0/jobs", headers={"Authorization": header}, anonymous=True)

    assert (reply.status, reply.error) == (403, INVALID_TOKEN)


async def test_the_bearer_scheme_is_case_insensitive(gw: Gateway) -> None:
    reply = await gw.get("/v0/jobs", headers={"Authorization": f"bearer {gw.admin}"}, anonymous=True)

    assert reply.status == 200
