"""Finding 3 — SSRF: imports fetched `http://127.0.0.1:<port>`, a redirect to loopback, and the service's own
`/metrics` into the attacker's data source, and their errors told a closed port from a non-HTTP one.

Real imports by a JOBS:CREATE token of beta against a real jobsd; the targets are a real HTTP origin, the jobsd's
own REST port, and raw TCP ports on 127.0.0.1. Refused targets are never contacted (the origin sees no request),
nothing is written, and every failure reads the same whatever the port did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from jobsd.domain.redaction import redact_url
from jobsd_client import pb
from tests.support.odd_ports import odd_ports

from .conftest import LogRecords, Origin, Stack

UNREACHABLE = (
    "no address of the host could be reached over HTTP (it may not exist, not answer, or be an address imports may "
    "not use)"
)


async def assert_refused(stack: Stack, url: str) -> str:
    job = await stack.run(stack.beta.tokens["creator"], "import", "fetched", url=url)
    assert job.status == pb.JOB_STATUS_ERROR, url
    assert job.error == f"Could not fetch {redact_url(url)}: {UNREACHABLE}", job.error
    return job.error


async def nothing_was_written(stack: Stack) -> None:
    status, listed = await stack.get("/v0/datasources", stack.beta.tokens["admin"])
    assert status == 200 and listed["datasources"] == []


async def test_loopback_and_the_service_s_own_endpoints_are_refused(
    stack: Stack, origin: Origin, logs: LogRecords
) -> None:
    (origin.root / "x.csv").write_text("a\n1\n")
    port = origin.base.rsplit(":", 1)[1]
    own = stack.app.http_port
    for url in (
        origin.url("x.csv"),
        f"http://localhost:{port}/files/x.csv",
        f"http://[::ffff:127.0.0.1]:{port}/files/x.csv",
        f"http://127.1:{port}/files/x.csv",
        f"http://127.0.0.1:{own}/metrics",
        f"http://localhost:{own}/metrics",
        f"http://127.0.0.1:{own}/v0/jobs?token={stack.alpha.tokens['admin']}",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/internal.csv",
    ):
        await assert_refused(stack, url)
    assert origin.paths == []
    await nothing_was_written(stack)
    assert "jobsd_rpc_seconds" not in stack.everything_said()


async def test_a_redirect_is_checked_again_at_every_hop(allowing_loopback: Stack, origin: Origin) -> None:
    stack = allowing_loopback
    (origin.root / "x.csv").write_text("a\n1\n")
    for target in (
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.csv",
        "http://192.168.0.1/x.csv",
        "http://[::ffff:10.0.0.1]/x.csv",
    ):
        await assert_refused(stack, f"{origin.base}/to?url={target}")
    job = await stack.run(
        stack.beta.tokens["creator"], "import", "fetched", url=f"{origin.base}/to?url=file:///etc/passwd"
    )
    assert job.status == pb.JOB_STATUS_ERROR and "not http:// or https://" in job.error
    await nothing_was_written(stack)
    # The allowed network itself works, redirects included.
    job = await stack.run(stack.beta.tokens["creator"], "import", "fetched", url=f"{origin.base}/to?url=/files/x.csv")
    assert job.status == pb.JOB_STATUS_DONE, job.error


@pytest.fixture
async def ports() -> AsyncIterator[dict[str, int]]:
    """127.0.0.1 ports that each behave differently: closed, a non-HTTP banner, a connection dropped at once."""
    async with odd_ports(b"220 smtp.internal ESMTP ready\r\n") as ports:
        yield ports


async def test_errors_do_not_tell_a_port_scanner_anything(
    stack: Stack, allowing_loopback: Stack, ports: dict[str, int]
) -> None:
    """Refused by policy (the default) or allowed but dead: the same text for every port, whatever it did."""
    texts = set()
    for server in (stack, allowing_loopback):
        for port in ports.values():
            job = await server.run(server.beta.tokens["creator"], "import", "scan", url=f"http://127.0.0.1:{port}/")
            assert job.status == pb.JOB_STATUS_ERROR
            texts.add(job.error.replace(str(port), "PORT"))
    assert texts == {f"Could not fetch http://127.0.0.1:PORT/: {UNREACHABLE}"}
