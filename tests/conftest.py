"""Fixtures every suite shares: the one `clock`, the backend the end-to-end servers run on, and `wire_server`:
one MongoDB wire-protocol server (SecantusDB, tests/support/wire_server.py) for the whole session, started the
first time a test asks for it (the `mongo-wire` backend), stopped at the end; each test uses a database of its own.
`ttl_probe`: jobs for the server's TTL monitor, seeded when the wire server starts (tests/support/ttl_probe.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.store.base import JobStore
from tests.support.backends import DatabasePool, e2e_backends
from tests.support.server import T0, e2e_store
from tests.support.ttl_probe import TtlProbe, seed_ttl_probe
from tests.support.wire_server import WireServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "backends(*names): an end-to-end test that only means something on these backends (e.g. it removes the "
        "SQLite file); it is not generated for the others",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every test that (through its fixtures) starts a server over its suite's e2e backends."""
    if "e2e_backend_store" not in metafunc.fixturenames:
        return
    suite = metafunc.definition.path.relative_to(Path(__file__).parent).parts[0]
    names = e2e_backends(suite)
    for mark in metafunc.definition.iter_markers("backends"):
        names = [name for name in names if name in mark.args]
    metafunc.parametrize("e2e_backend_store", names, indirect=True)


@pytest.fixture
def clock() -> ManualClock:
    """The time of the test: it moves only when the test moves it."""
    return ManualClock(T0)


@pytest.fixture
async def e2e_backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore | None]:
    """The store of this test's end-to-end server (None: SQLite from the settings' URL, as `jobsd serve` does)."""
    async with e2e_store(request, request.param, tmp_path) as store:
        yield store


_TTL_PROBE = pytest.StashKey[TtlProbe]()


@pytest.fixture(scope="session")
def wire_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireServer]:
    """Started by the first test that needs it. If the session has the TTL test, its probe is seeded right then:
    the server's monitor then deletes the probe's jobs while the rest of the suite runs, instead of that test
    waiting up to a minute for it (and the server is not started earlier than a test needs it)."""
    server = WireServer(log_path=tmp_path_factory.mktemp("wire-server") / "secantusd.log").start()
    try:
        if any("ttl_probe" in getattr(item, "fixturenames", ()) for item in request.session.items):
            request.config.stash[_TTL_PROBE] = seed_ttl_probe(server.uri)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def wire_server_without_ttl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireServer]:
    """A second wire server whose TTL monitor is off (mongod: ttlMonitorEnabled=false), for the end-to-end suites:
    their ManualClock sits at a fixed date, so the wall-clock monitor would delete their jobs mid-test. Reads
    still carry the retention bound; the TTL monitor itself is tested on `wire_server` (tests/mongo)."""
    here = tmp_path_factory.mktemp("wire-server-without-ttl")
    server = WireServer(log_path=here / "secantusd.log", ttl_sweep_seconds=0).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def wire_database_pool(wire_server_without_ttl: WireServer) -> Iterator[DatabasePool]:
    """The end-to-end suites' databases on the wire server without TTL: emptied after each test and reused."""
    pool = DatabasePool(wire_server_without_ttl.uri)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="session")
def ttl_probe(request: pytest.FixtureRequest, wire_server: WireServer) -> TtlProbe:
    probe = request.config.stash.get(_TTL_PROBE, None)
    return probe if probe is not None else seed_ttl_probe(wire_server.uri)
