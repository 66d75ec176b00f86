"""A MongoDB wire-protocol server for the suites: SecantusDB (`secantusdb`, a dev dependency pinned in
pyproject.toml), run as its own process on an ephemeral 127.0.0.1 port.

SecantusDB speaks the MongoDB wire protocol over TCP, stores data with WiredTiger, presents itself as a one-node
replica set named `secantus` (change streams with resume tokens), and runs a TTL monitor every 60 s. It is a
beta, GPL-2.0 test target, **not mongod**: the product never imports it, and every result obtained on it says so
(test ids `mongo-wire`). Where it answers differently from mongod, docs/scaling.md names the difference.

`WireServer.start()` launches `secantusd-py` and returns once the server logged that it listens and answered a
`ping`; `stop()` ends it (and is safe twice). One server serves a whole pytest session; tests isolate themselves
with a fresh database each (`fresh_database_name()`), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pymongo import MongoClient

__all__ = ["REPLICA_SET", "WireServer", "WireServerFailed", "fresh_database_name", "wire_server_program"]

REPLICA_SET: Final = "secantus"
# Starting takes ~1 s on an idle machine; a loaded CI machine gets much longer before the suite gives up.
_START_TIMEOUT: Final = 60.0
_STOP_TIMEOUT: Final = 10.0


class WireServerFailed(RuntimeError):
    """The wire server could not be started (not installed, exited, or never listened)."""


def wire_server_program() -> Path:
    """`secantusd-py` of this interpreter's environment (installed by `make install` from the dev extras)."""
    program = Path(sys.executable).parent / "secantusd-py"
    if not program.exists():
        raise WireServerFailed(
            f"{program} is missing: the MongoDB wire server comes with the dev extras (make install, or "
            "pip install -e '.[dev]')"
        )
    return program


def _die_with_parent() -> None:
    """In the server's process before exec: on Linux, SIGTERM it when the test process dies (a killed or timed-out
    pytest must not leave a server running); elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


_PR_SET_PDEATHSIG: Final = 1
# Runs the server's command line with the TTL monitor's period it was given (tests/support/wire_server_launch.py).
_LAUNCHER: Final = Path(__file__).with_name("wire_server_launch.py")


def fresh_database_name(prefix: str = "jobsd_test") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class WireServer:
    """One `secantusd-py` process. `storage`: a directory (kept across restarts) or None for `:memory:`."""

    storage: Path | None = None
    log_path: Path | None = None
    # None: the server's default TTL monitor (a sweep every 60 s, as mongod). 0 turns the monitor off, as
    # mongod's `ttlMonitorEnabled=false` does: for suites whose injected clock sits at a fixed past date.
    ttl_sweep_seconds: float | None = None
    port: int = 0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={REPLICA_SET}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> WireServer:
        program = wire_server_program()
        # The port is probed free then handed over; if another process takes it first, the server exits and we
        # try another one.
        last_error = ""
        for _ in range(3):
            self.port = _free_port()
            storage = ":memory:" if self.storage is None else str(self.storage)
            command = [str(program), "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", storage]
            if self.ttl_sweep_seconds is not None:
                # Not its secantusd.toml: the server reads `ttl_sweep_seconds` there but ignores it (see the launcher).
                command = [sys.executable, str(_LAUNCHER), str(self.ttl_sweep_seconds), *command[1:]]
            # cwd: the server auto-discovers ./secantusd.toml; run it where there is none.
            cwd = self.storage if self.storage is not None else Path(os.sep)
            self._process = subprocess.Popen(
                command,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            try:
                self._await_listening()
                self._await_ping()
                return self
            except WireServerFailed as exc:
                last_error = str(exc)
                self.stop()
        raise WireServerFailed(last_error)

    def _await_listening(self) -> None:
        """Read the server's output until it says it listens; keep the rest flowing to the log (or nowhere)."""
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + _START_TIMEOUT
        seen: list[str] = []
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    break
                line = process.stdout.readline().decode(errors="replace")
                if not line:
                    raise WireServerFailed(f"the wire server exited ({process.wait()}): {''.join(seen)[-2000:]}")
                seen.append(line)
                if f"listening on 127.0.0.1:{self.port}" in line:
                    self._drain_output(seen)
                    return
        raise WireServerFailed(f"the wire server did not listen within {_START_TIMEOUT:.0f} s: {''.join(seen)}")

    def _drain_output(self, seen: list[str]) -> None:
        """Hand the rest of the server's output to a thread that copies it to the log file, so its pipe never
        fills up and blocks the server."""
        process = self._process
        assert process is not None and process.stdout is not None
        stdout = process.stdout
        log = self.log_path

        def copy() -> None:
            sink = log.open("a", encoding="utf-8") if log is not None else None
            try:
                if sink is not None:
                    sink.writelines(seen)
                for raw in iter(stdout.readline, b""):
                    if sink is not None:
                        sink.write(raw.decode(errors="replace"))
                        sink.flush()
            finally:
                if sink is not None:
                    sink.close()

        threading.Thread(target=copy, name=f"wire-server-{self.port}-log", daemon=True).start()

    def _await_ping(self) -> None:
        timeout_ms = int(_START_TIMEOUT * 1000)
        client: MongoClient[dict[str, object]] = MongoClient(self.uri, serverSelectionTimeoutMS=timeout_ms)
        try:
            client.admin.command("ping")
        except Exception as exc:
            raise WireServerFailed(f"the wire server at {self.uri} does not answer: {exc}") from None
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would (for fault tests); `start()` again brings it back (on a new port)."""
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
