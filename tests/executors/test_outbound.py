"""What an import may fetch: public addresses only, unless the operator allows a network; checked after name
resolution and on every redirect; one message whatever a refused or dead target did."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from jobsd.executors.dataplane import DataPlane
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.import_data import run_import
from jobsd.executors.outbound import ImportPolicy
from tests.support.odd_ports import odd_ports as serving_odd_ports

from .conftest import LOCAL, WORKSPACE, FileServer, RecordingContext, make_job

DEFAULT = ImportPolicy()
UNREACHABLE = (
    "no address of the host could be reached over HTTP (it may not exist, not answer, or be an address imports may "
    "not use)"
)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:4700::1111", True),
        ("127.0.0.1", False),
        ("127.9.9.9", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # shared address space (carrier NAT)
        ("100.100.100.200", False),  # Alibaba Cloud metadata
        ("169.254.169.254", False),  # AWS / GCP / Azure metadata
        ("192.0.0.192", False),  # Oracle Cloud metadata
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("198.18.0.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fd00:ec2::254", False),  # AWS metadata over IPv6
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("::ffff:93.184.215.14", True),
        ("64:ff9b::a9fe:a9fe", False),  # NAT64 of 169.254.169.254
        ("2002:a9fe:a9fe::1", False),  # 6to4 of 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ],
)
def test_only_public_unicast_addresses_are_fetched_by_default(address: str, public: bool) -> None:
    assert DEFAULT.allows(ipaddress.ip_address(address)) is public


def test_allowed_networks_open_exactly_those_addresses() -> None:
    policy = ImportPolicy.build(allow_networks=["127.0.0.1/32", "10.0.0.0/8"])
    assert policy.allows(ipaddress.ip_address("127.0.0.1"))
    assert policy.allows(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert policy.allows(ipaddress.ip_address("10.200.0.1"))
    assert not policy.allows(ipaddress.ip_address("127.0.0.2"))
    assert not policy.allows(ipaddress.ip_address("169.254.169.254"))
    assert not policy.allows(ipaddress.ip_address("::1"))


async def failure(plane: DataPlane, url: str, policy: ImportPolicy = DEFAULT) -> str:
    ctx = RecordingContext(make_job("import", datasource="stolen", url=url))
    with pytest.raises(ExecutionFailed) as failed:
        await run_import(ctx, plane, policy=policy)
    assert await plane.find_datasource("stolen", workspace=WORKSPACE) is None
    return failed.value.message


async def test_loopback_is_refused_by_default_by_address_and_by_name(plane: DataPlane, files: FileServer) -> None:
    files.write("x.csv", "a\n1\n")
    port = files.base.rsplit(":", 1)[1]
    for url in (
        files.url("x.csv"),
        f"http://localhost:{port}/files/x.csv",
        f"http://[::ffff:127.0.0.1]:{port}/files/x.csv",
        f"http://[::1]:{port}/files/x.csv",
        f"http://127.1:{port}/files/x.csv",
        f"http://2130706433:{port}/files/x.csv",
    ):
        assert await failure(plane, url) == f"Could not fetch {url}: {UNREACHABLE}", url
    assert files.requests == []


async def test_the_connection_goes_to_the_address_that_was_checked(plane: DataPlane, files: FileServer) -> None:
    """`localhost` resolves to 127.0.0.1 (and maybe ::1): allowing only ::1 must not let the client fall back to
    127.0.0.1, where the server is."""
    files.write("x.csv", "a\n1\n")
    port = files.base.rsplit(":", 1)[1]
    url = f"http://localhost:{port}/files/x.csv"
    only_v6 = ImportPolicy.build(allow_networks=["::1/128"])
    assert await failure(plane, url, only_v6) == f"Could not fetch {url}: {UNREACHABLE}"
    assert files.requests == []
    ctx = RecordingContext(make_job("import", datasource="fine", url=url))
    await run_import(ctx, plane, policy=LOCAL)
    assert files.requests == ["/files/x.csv"]


@pytest.fixture
async def redirector(files: FileServer) -> AsyncIterator[str]:
    """An origin on 127.0.0.1 whose /to?url=... answers 302 to that URL (the attacker's own server)."""

    async def to(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["url"])

    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"/loop?n={int(request.query.get('n', '0')) + 1}")

    app = web.Application()
    app.router.add_get("/to", to)
    app.router.add_get("/loop", loop)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_every_redirect_is_checked_again(plane: DataPlane, files: FileServer, redirector: str) -> None:
    files.write("x.csv", "a\n1\n2\n")
    for target in (
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/internal.csv",
        "http://[::1]:9/x.csv",
        "http://[::ffff:127.0.0.2]/x.csv",
    ):
        url = f"{redirector}/to?url={target}"
        assert await failure(plane, url, LOCAL) == f"Could not fetch {url}: {UNREACHABLE}", target
    url = f"{redirector}/to?url=file:///etc/passwd"
    assert "redirects to a URL that is not http:// or https://" in await failure(plane, url, LOCAL)
    assert "more than 5 redirects" in await failure(plane, f"{redirector}/loop", LOCAL)
    # A redirect the policy allows is followed.
    ctx = RecordingContext(make_job("import", datasource="moved", url=f"{redirector}/to?url={files.url('x.csv')}"))
    await run_import(ctx, plane, policy=LOCAL)
    assert ctx.figures["statistics"]["row_count"] == 2


@pytest.fixture
async def odd_ports() -> AsyncIterator[dict[str, int]]:
    """Ports that each fail differently: nothing listening, a non-HTTP banner, a connection closed at once."""
    async with serving_odd_ports(b"SSH-2.0-OpenSSH_9.6\r\n") as ports:
        yield ports


async def test_refused_closed_and_non_http_targets_give_one_message(
    plane: DataPlane, odd_ports: dict[str, int]
) -> None:
    """Nothing tells a port scanner which ports exist: the same text, with the port given, for each."""
    texts = set()
    for policy in (DEFAULT, LOCAL):
        for port in odd_ports.values():
            url = f"http://127.0.0.1:{port}/x.csv"
            texts.add((await failure(plane, url, policy)).replace(str(port), "PORT"))
    assert texts == {f"Could not fetch http://127.0.0.1:PORT/x.csv: {UNREACHABLE}"}


async def test_a_symlink_in_the_import_root_that_leads_to_state_is_refused(plane: DataPlane, tmp_path: Path) -> None:
    root = tmp_path / "imports"
    root.mkdir()
    (root / "ok.csv").write_text("a\n1\n")
    state = tmp_path / "state"
    state.mkdir()
    (state / "admin-token").write_text("jobsd_secret_admin_token\n")
    (root / "token.csv").symlink_to(state / "admin-token")
    (root / "state").symlink_to(state, target_is_directory=True)
    policy = ImportPolicy.build(file_root=root, state_paths=[state])
    for name in ("token.csv", "state/admin-token"):
        message = await failure(plane, f"file://{root}/{name}", policy)
        assert message.endswith("file imports may only read the server's import directory")
        assert "jobsd_secret_admin_token" not in message
    ctx = RecordingContext(make_job("import", datasource="fine", url=f"file://{root}/ok.csv"))
    await run_import(ctx, plane, policy=policy)


def test_a_file_root_that_overlaps_state_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "imports").mkdir(parents=True)
    for root, overlapping in ((tmp_path, state), (state, state), (state / "imports", state)):
        with pytest.raises(Exception, match="where jobsd keeps its state"):
            ImportPolicy.build(file_root=root, state_paths=[overlapping])
    with pytest.raises(Exception, match="is not a directory"):
        ImportPolicy.build(file_root=tmp_path / "missing")
