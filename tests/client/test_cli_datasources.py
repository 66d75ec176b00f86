"""`jobsctl datasource create|ls|show`, run as real subprocesses against a real jobsd with its executors and REST
gateway on ephemeral ports (the data-source routes live there, on the executors' data plane)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from jobsd.app import JobsdApp
from jobsd.domain.model import datasource_id_for
from jobsd.store.base import JobStore
from tests.support.server import executor_settings, running_app, serving_http

from .conftest import jobsctl

SCHEMA = "date DateTime, user_id Int64, `event` String"
EVENTS_CSV = "date,user_id,event\n2024-01-01 10:00:00,1,view\n2024-01-01 11:00:00,2,buy\n"


@dataclass
class Served:
    """A jobsd with executors: gRPC target, REST gateway URL, tokens, and the default workspace's id."""

    app: JobsdApp
    target: str
    http: str
    admin: str
    workspace_id: str

    async def ctl(self, *args: str, token: str | None = None, http: str | None = None) -> tuple[int, str, str]:
        env = {"JOBSD_HTTP_TARGET": self.http if http is None else http}
        return await jobsctl(*args, target=self.target, token=token or self.admin, extra_env=env)

    async def rest(self, path: str) -> Any:
        """The gateway's JSON for GET `path`, read directly (what jobsctl's output is compared with)."""
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.http + path, headers={"Authorization": f"Bearer {self.admin}"}) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.fixture
async def served(tmp_path: Path, e2e_backend_store: JobStore | None) -> AsyncIterator[Served]:
    settings = executor_settings(tmp_path, grace_seconds=1.0)
    async with running_app(settings, None, e2e_backend_store) as app:
        admin = await app.create_token("default", ["ADMIN"], "admin")
        yield Served(
            app,
            f"127.0.0.1:{app.grpc_port}",
            f"http://127.0.0.1:{app.http_port}",
            admin,
            await app.workspace_id_of("default"),
        )


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """An http:// URL nothing answers: a bound socket that does not listen refuses every connection."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


@pytest.fixture
async def csv_url(tmp_path: Path) -> AsyncIterator[str]:
    """A CSV served by a local HTTP server, as an import would fetch it."""
    root = tmp_path / "served"
    root.mkdir()
    (root / "events.csv").write_text(EVENTS_CSV)
    app = web.Application()
    app.router.add_static("/", root)
    async with serving_http(app) as base:
        yield f"{base}/events.csv"


async def test_create_then_ls_and_show_print_what_was_created(served: Served) -> None:
    code, out, err = await served.ctl(
        "datasource", "create", "events", "--schema", SCHEMA, "--engine-sorting-key", "date, user_id"
    )
    expected_id = datasource_id_for(served.workspace_id, "events")
    assert (code, err, out) == (0, "", f"Data source events created ({expected_id})\n")

    code, out, err = await served.ctl("datasource", "ls")
    assert (code, err) == (0, "")
    header, row = out.splitlines()
    assert header.split() == ["NAME", "ID", "TYPE", "ROWS", "BYTES", "UPDATED_AT"]
    assert row.split()[:5] == ["events", expected_id, "api", "0", "0"]

    code, out, err = await served.ctl("datasource", "show", "events")
    assert (code, err) == (0, "")
    lines = [line.split(":", 1) for line in out.splitlines()]
    shown = [(name, value.strip()) for name, value in lines]
    assert ("id", expected_id) in shown
    assert ("sorting_key", "date, user_id") in shown
    assert ("engine", "MergeTree") in shown
    assert [value for name, value in shown if name == "column"] == [
        "date  DateTime",
        "user_id  Int64",
        "event  String",
    ]


async def test_json_is_the_gateway_s_json_and_flags_win_over_the_environment(served: Served, refusing_url: str) -> None:
    # The environment points nowhere; --http-target (before or after the action) is what is used.
    code, out, err = await served.ctl(
        "--http-target", served.http, "datasource", "create", "events", "--schema", SCHEMA, "--json", http=refusing_url
    )
    assert (code, err) == (0, "")
    created = json.loads(out)
    assert (created["name"], created["id"]) == ("events", datasource_id_for(served.workspace_id, "events"))
    assert [c["name"] for c in created["columns"]] == ["date", "user_id", "event"]

    code, out, _ = await served.ctl("datasource", "ls", "--json", "--http-target", served.http, http=refusing_url)
    assert code == 0
    assert [s["name"] for s in json.loads(out)["datasources"]] == ["events"]

    code, out, _ = await served.ctl("datasource", "show", "events", "--json", "--http-target", served.http)
    assert code == 0
    assert json.loads(out) == await served.rest("/v0/datasources/events")


async def test_an_empty_workspace_says_so(served: Served) -> None:
    assert await served.ctl("datasource", "ls") == (0, "No data sources found.\n", "")


async def test_failures_are_one_error_line_and_exit_1(served: Served, refusing_url: str) -> None:
    assert (await served.ctl("datasource", "create", "events", "--schema", SCHEMA))[0] == 0
    reader = await served.app.create_token("default", ["DATASOURCES:READ:other"], "reader")

    cases = [
        (("datasource", "create", "events", "--schema", SCHEMA), {}, 'error: Data source "events" already exists\n'),
        (("datasource", "show", "nowhere"), {}, 'error: Data source "nowhere" not found\n'),
        (("datasource", "show", "events"), {"token": reader}, None),
        (
            ("datasource", "ls"),
            {"token": "not-a-token"},
            "error: invalid authentication token (check --token or JOBSD_TOKEN)\n",
        ),
        (("datasource", "ls"), {"http": "ftp://127.0.0.1/"}, None),
    ]
    for args, options, expected in cases:
        code, out, err = await served.ctl(*args, **options)
        assert (code, out) == (1, ""), (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
        if expected is not None:
            assert err == expected
    assert "doesn't have access" in (await served.ctl("datasource", "show", "events", token=reader))[2]
    assert "http:// or https://" in (await served.ctl("datasource", "ls", http="ftp://127.0.0.1/"))[2]

    code, out, err = await served.ctl("datasource", "create", "bad", "--schema", "a Decimal")
    assert (code, out) == (1, "") and err.startswith("error: ") and "unknown type 'Decimal'" in err
    listed = (await served.ctl("datasource", "ls"))[1].splitlines()[1:]
    assert "bad" not in [line.split()[0] for line in listed]  # by name: a random id may spell "bad" in hex

    code, out, err = await served.ctl("datasource", "ls", http=refusing_url)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: cannot reach the REST gateway at {refusing_url}: ") and err.count("\n") == 1


async def test_usage_mistakes_exit_2(served: Served) -> None:
    code, _, err = await served.ctl("datasource", "create", "events")
    assert code == 2 and "--schema" in err
    code, _, err = await served.ctl("datasource")
    assert code == 2 and "ACTION" in err


async def test_an_import_s_data_source_has_one_id_in_the_job_and_in_show(served: Served, csv_url: str) -> None:
    code, out, err = await served.ctl("import", csv_url, "--datasource", "events", "--watch", "--json")
    assert (code, err) == (0, ""), err
    created, _ = json.JSONDecoder().raw_decode(out)  # the new job, then one event per line until it ends
    job_id = created["id"]

    code, out, _ = await served.ctl("datasource", "show", "events", "--json")
    assert code == 0
    source = json.loads(out)
    detail = await served.rest(f"/v0/jobs/{job_id}")

    assert source["id"] == detail["datasource"]["id"] == datasource_id_for(served.workspace_id, "events")
    assert source["statistics"] == detail["datasource"]["statistics"] == detail["statistics"]
    assert source["statistics"]["row_count"] == 2
    assert (source["type"], detail["datasource"]["type"]) == ("csv", "csv")
    code, out, _ = await served.ctl("datasource", "ls")
    assert code == 0 and out.splitlines()[1].split()[:4] == ["events", source["id"], "csv", "2"]


async def test_a_slow_gateway_is_reported_after_the_timeout(served: Served) -> None:
    """A gateway that accepts but never answers: jobsctl gives up after --timeout, with a message."""
    hung: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)  # never answered; closed when the test ends

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        code, out, err = await served.ctl("datasource", "ls", "--timeout", "0.5", http=f"http://127.0.0.1:{port}")
    finally:
        for writer in hung:
            writer.close()
        server.close()
        await server.wait_closed()
    assert (code, out) == (1, "")
    assert err == f"error: no answer from the REST gateway at http://127.0.0.1:{port} within 0.5 s\n"
