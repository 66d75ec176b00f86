"""Finding 5 — input hygiene: deeply nested JSON to `POST /v0/datasources` was a 500 with a traceback in the log; one
deeply nested NDJSON line failed a whole import with RecursionError; a gRPC request with corrupt protobuf or bad
UTF-8 ended UNKNOWN "Unexpected <class ...DecodeError>". Each is now a clear refusal naming what is wrong, nothing
is written, and the log holds no ERROR record for it."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from jobsd_client import pb

from .conftest import LogRecords, Stack

DEEP = 100_000


async def test_deeply_nested_json_bodies_are_a_400_naming_the_body(stack: Stack, logs: LogRecords) -> None:
    token = stack.beta.tokens["admin"]
    bodies = [
        '{"name": "deep", "schema": ' + "[" * DEEP + "]" * DEEP + "}",
        '{"name": "deep", "schema": "a Int64", "description": ' + '{"x": ' * DEEP + "1" + "}" * DEEP + "}",
        '{"name": "deep", "schema": [' + "[" * 65 + "]" * 65 + "]}",
    ]
    for body in bodies:
        status, answer = await stack.post(
            "/v0/datasources", token, data=body, headers={"Content-Type": "application/json"}
        )
        assert status == 400
        assert answer["error"] == "body: is JSON nested more than 64 levels deep"
        assert set(answer) == {"error", "documentation"}
    status, listed = await stack.get("/v0/datasources", token)
    assert status == 200 and listed["datasources"] == []
    # A body at the limit is read as usual (and refused for what it says, not for its shape).
    at_limit = '{"name": "ok", "schema": "a Int64", "x": ' + "[" * 63 + "]" * 63 + "}"
    status, created = await stack.post(
        "/v0/datasources", token, data=at_limit, headers={"Content-Type": "application/json"}
    )
    assert status == 200, created
    assert logs.errors() == [] and "Traceback" not in logs.text()


async def test_a_deeply_nested_ndjson_line_is_an_invalid_line_and_the_import_goes_on(
    stack: Stack, logs: LogRecords
) -> None:
    lines = [
        json.dumps({"id": 1, "tag": "first"}),
        '{"id": 2, "tag": ' + "[" * DEEP + "]" * DEEP + "}",
        json.dumps({"id": 3, "tag": "third"}),
    ]
    (stack.imports / "deep.ndjson").write_text("\n".join(lines) + "\n")
    job = await stack.run(stack.beta.tokens["admin"], "import", "deep", url=f"file://{stack.imports}/deep.ndjson")
    assert job.status == pb.JOB_STATUS_DONE, job.error
    assert job.invalid_lines == 1
    assert job.statistics.row_count == 2
    assert list(job.errors)[1:] == ["line 2: is JSON nested more than 64 levels deep"]
    assert logs.errors() == []


def _identity(data: bytes) -> bytes:
    return data


def _raw(stack: Stack, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A call that sends the bytes it is given as they are: what a broken or hostile client puts on the wire."""
    return stack.channel.unary_unary(
        f"/jobsd.v1.Jobs/{method}", request_serializer=_identity, response_deserializer=_identity
    )


def _raw_stream(stack: Stack, method: str) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    """`_raw` for a server-streaming method."""
    return stack.channel.unary_stream(
        f"/jobsd.v1.Jobs/{method}", request_serializer=_identity, response_deserializer=_identity
    )


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\xff\xff\xff\xff", "Wire format was corrupt"),
        (b"\x0a\x04\xff\xfe\xfd\xfc", "String field had bad UTF-8"),
    ],
)
async def test_undecodable_grpc_requests_are_invalid_argument(
    stack: Stack, logs: LogRecords, payload: bytes, problem: str
) -> None:
    md = stack.md(stack.beta.tokens["admin"])
    for method in ("GetJob", "CreateJob", "CancelJob", "ListJobs"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _raw(stack, method)(payload, metadata=md)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        details = refused.value.details() or ""
        assert details.startswith("request: is not a valid jobsd.v1.") and details.endswith(problem), details
        trailing: tuple[Any, ...] = tuple(refused.value.trailing_metadata() or ())
        assert ("jobsd-field", "request") in trailing
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in _raw_stream(stack, "WatchJob")(payload, metadata=md):
            pass
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await stack.jobs.ListJobs(pb.ListJobsRequest(), metadata=md)
    assert list(listed.jobs) == []
    assert logs.errors() == []
