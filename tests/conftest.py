"""Fixtures every suite shares: the one `clock`, the backend the end-to-end servers run on, and `wire_server`:
one MongoDB wire-protocol server (SecantusDB, tests/support/wire_server.py) for the whole session, started the
first time a test asks for it (the `mongo-wire` backend), stopped at the end; each test uses a database of its own.
`ttl_probe`: jobs for the server's TTL monitor, seeded when the wire server starts (tests/support/ttl_probe.py).

A hung test fails and the run goes on (tests/support/bounded.py): every async test body gets a deadline below
pytest-timeout's (`timeout` in pyproject.toml, or its marker), leaving `_TEARDOWN_RESERVE_SECONDS` for its
teardown, whose steps are bounded themselves; after it, the tasks it left on its loop are cancelled within a bound
(`_no_task_left_behind`). pytest-timeout's SIGALRM (method `signal`, over setup, call and teardown: `timeout_func_only`
stays false) is the fallback for a test that blocks its event loop's thread. And if even that cannot end a test (a
thread holding the GIL, a signal swallowed by a callback), `faulthandler` dumps every thread's stack and ends the
process `_HARD_STOP_AFTER_SECONDS` past the test's timeout: CI fails with the stacks instead of hanging.
"""

from __future__ import annotations

import faulthandler
import inspect
import os
import time
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.store.base import JobStore
from tests.support.backends import DatabasePool, e2e_backends
from tests.support.bounded import leftover_tasks, with_deadline
from tests.support.server import T0, e2e_store
from tests.support.ttl_probe import TtlProbe, seed_ttl_probe
from tests.support.wire_server import WireServer


def pytest_configure(config: pytest.Config) -> None:
    # Capturing is suspended while plugins configure: descriptor 2 is the terminal's (as pytest's faulthandler does).
    config.stash[_REAL_STDERR] = os.dup(2)
    config.addinivalue_line(
        "markers",
        "backends(*names): an end-to-end test that only means something on these backends (e.g. it removes the "
        "SQLite file); it is not generated for the others",
    )


# Of a test's pytest-timeout, what its async body may not use: its teardown's (each step bounded by
# tests/support/bounded.TEARDOWN_SECONDS; a server's stop ends within its grace and shutdown margin).
_TEARDOWN_RESERVE_SECONDS = 30.0
# Past a test's pytest-timeout, when faulthandler gives up on the process (see the module).
_HARD_STOP_AFTER_SECONDS = 180.0
_STARTED = pytest.StashKey[float]()
# The terminal's stderr, not a test's captured one: the stacks of a process ended by faulthandler must be seen.
_REAL_STDERR = pytest.StashKey[int]()


def _timeout_of(item: pytest.Item) -> float:
    """The test's pytest-timeout in seconds (its marker's, else the configured one); 0: none."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        given = marker.args[0] if marker.args else marker.kwargs.get("timeout", 0)
        return float(given or 0)
    return float(item.config.getini("timeout") or 0)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    item.stash[_STARTED] = time.monotonic()
    timeout = _timeout_of(item)
    # pytest's own faulthandler_timeout, when someone sets it, owns faulthandler's one timer.
    hard_stop = timeout > 0 and not float(item.config.getini("faulthandler_timeout") or 0)
    if hard_stop:
        faulthandler.dump_traceback_later(
            timeout + _HARD_STOP_AFTER_SECONDS, exit=True, file=item.config.stash[_REAL_STDERR]
        )
    try:
        return (yield)
    finally:
        if hard_stop:
            faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """An async test's body within what its timeout leaves after its setup and its teardown's reserve."""
    timeout = _timeout_of(item)
    if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(item.obj) or timeout <= 0:
        return (yield)
    elapsed = time.monotonic() - item.stash.get(_STARTED, time.monotonic())
    seconds = max(timeout - elapsed - _TEARDOWN_RESERVE_SECONDS, 1.0)
    test = item.obj
    item.obj = with_deadline(test, seconds, item.nodeid)
    try:
        return (yield)
    finally:
        item.obj = test


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # First of the test's fixtures, so torn down last (after every server and client of the test).
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.fixturenames.insert(0, "_no_task_left_behind")


@pytest.fixture
async def _no_task_left_behind() -> AsyncIterator[None]:
    """After an async test and its fixtures: what they left running is cancelled, within a bound."""
    yield
    await leftover_tasks()


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
