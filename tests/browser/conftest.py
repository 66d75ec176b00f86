"""Browser tests: Debian's Chromium, headless, driven by Playwright from pytest, against real jobsd processes.

One `jobsd serve` (gateway in-process) and one `jobsd gateway --grpc-target` per run, on ephemeral ports, and
one browser per run (a fresh context, so a fresh sessionStorage, per test). Jobs are moved through
their lives over gRPC, by the Workers API as a real worker would. Waits are Playwright's bounded expectations
(they retry until the page shows the state, up to a timeout), never sleeps.

Without Chromium or Playwright the tests are skipped and the run ends with a loud warning; with
`JOBSD_REQUIRE_BROWSER=1` (what `.ci/run` sets) their absence fails them instead.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from .support import ADMIN_TOKEN, SERVICE_TOKEN, Jobsd, Tab

CHROMIUM = os.environ.get("JOBSD_CHROMIUM", "/usr/bin/chromium")
# No sandbox (the tests run as root), and no background connections: the machine's closed network refuses them,
# many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REQUIRED = os.environ.get("JOBSD_REQUIRE_BROWSER") == "1"
PROCESS_START_SECONDS = 30.0
_SERVE_BANNER = re.compile(r"serving gRPC on 127\.0\.0\.1:(\d+) and REST on (http://127\.0\.0\.1:\d+)")
_GATEWAY_LINE = re.compile(r"standalone REST gateway on port (\d+)")
_DASHBOARD_LINE = re.compile(r"Dashboard: open (http://127\.0\.0\.1:\d+)/ and paste the admin token")


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (make install installs it from PyPI)"
    if not os.access(CHROMIUM, os.X_OK) and shutil.which(CHROMIUM) is None:
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver)"
    return None


MISSING = _missing()
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MISSING is None or REQUIRED:
        return  # required: the session fixture fails every browser test instead
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.skip(reason=f"BROWSER TESTS NOT RUN: {MISSING}"))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if MISSING is not None:
        terminalreporter.write_line("")
        terminalreporter.write_line(
            f"WARNING: the browser tests (tests/browser) did NOT run: {MISSING}", yellow=True, bold=True
        )


# ------------------------------------------------------------------ processes


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBSD_")}
    return {**env, **extra}


class _Process:
    """A child process whose output is read by a thread, so a line can be waited for without polling."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log_path = log
        self._log: IO[str] = log.open("w")
        self.process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._log.write(line)
            self._log.flush()
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str]) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            for line in self._lines:
                if match := pattern.search(line):
                    return match
            return None

        with self._changed:
            done = self._changed.wait_for(
                lambda: found() is not None or self.process.poll() is not None, PROCESS_START_SECONDS
            )
            match = found()
        if not done or match is None:
            self.stop()
            raise RuntimeError(f"{pattern.pattern!r} never printed; output:\n{self.log_path.read_text()[-3000:]}")
        return match

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(PROCESS_START_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        self._log.close()


@pytest.fixture(scope="session")
def jobsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jobsd]:
    """`jobsd serve` on ephemeral ports with its gateway in-process (executors off: the tests are the workers)."""
    if MISSING is not None:
        pytest.fail(f"the browser tests must run here (JOBSD_REQUIRE_BROWSER=1), but {MISSING}")
    state = tmp_path_factory.mktemp("jobsd")
    server = _Process(
        [
            sys.executable,
            "-m",
            "jobsd.cli",
            "serve",
            "--banner",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--store",
            f"sqlite:///{state}/jobsd.db",
            "--executors",
            "off",
        ],
        _env(JOBSD_ADMIN_TOKEN=ADMIN_TOKEN, JOBSD_SERVICE_TOKEN=SERVICE_TOKEN, JOBSD_DATA_DIR=str(state)),
        state / "serve.log",
    )
    try:
        banner = server.wait_for(_SERVE_BANNER)
        dashboard = server.wait_for(_DASHBOARD_LINE)  # the tests open the URL the banner prints
        assert dashboard[1] == banner[2]
        handle = Jobsd(grpc_target=f"127.0.0.1:{banner[1]}", base=dashboard[1], store=f"sqlite:///{state}/jobsd.db")
        try:
            yield handle
        finally:
            handle.close()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def standalone_base(jobsd: Jobsd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`jobsd gateway --grpc-target` in front of the same jobsd: the base URL of its dashboard."""
    logs = tmp_path_factory.mktemp("gateway")
    gateway = _Process(
        [
            sys.executable,
            "-m",
            "jobsd.cli",
            "gateway",
            "--grpc-target",
            jobsd.grpc_target,
            "--http-addr",
            "127.0.0.1:0",
        ],
        _env(JOBSD_LOG_LEVEL="INFO"),
        logs / "gateway.log",
    )
    try:
        port = gateway.wait_for(_GATEWAY_LINE)[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        gateway.stop()


# ------------------------------------------------------------------ the browser


# Module scope, in one module: one browser for the run. Playwright's sync API keeps an event loop running in this
# thread while it is open, which would stop every asyncio test after it; closing it with the module frees the
# thread for them.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    if MISSING is not None:
        pytest.fail(f"the browser tests must run here (JOBSD_REQUIRE_BROWSER=1), but {MISSING}")
    # A bound on every wait for the page to show a state (they return as soon as it does).
    expect.set_options(timeout=10_000)
    with sync_playwright() as playwright:
        # Playwright starts Chromium with a fresh temporary profile (user data dir) of its own.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def tab(browser: Any, jobsd: Jobsd, request: pytest.FixtureRequest) -> Iterator[Tab]:
    """A fresh browser context and page. Every URL it requests is recorded, and none may carry the token."""
    size = getattr(request, "param", None) or {"width": 1280, "height": 900}
    context = browser.new_context(viewport=size, device_scale_factor=1, reduced_motion="reduce")
    context.set_default_timeout(10_000)
    page = context.new_page()
    opened = Tab(page, context, jobsd)
    page.on("request", lambda r: opened.requested.append(r.url))
    page.on("console", lambda m: opened.console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: opened.console.append(f"pageerror: {e}"))
    try:
        yield opened
    finally:
        context.close()
        jobsd.cancel_waiting()  # a claim in the next test must find its own job
    assert not [line for line in opened.console if line.startswith("pageerror")], opened.console
    for token in opened.tokens:
        assert not [url for url in opened.requested if token in url], "a token appeared in a requested URL"
