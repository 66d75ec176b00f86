"""A real jobsd (gRPC on an ephemeral port) with a ManualClock and tokens, on each end-to-end backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.store.base import JobStore
from tests.support.server import (
    WAIT,
    Server,
    bounded,
    error_field,
    make_settings,
    read_events,
    rpc_error,
    running_server,
)

__all__ = ["WAIT", "Server", "bounded", "error_field", "make_settings", "read_events", "rpc_error", "running_server"]


@pytest.fixture
async def server(tmp_path: Path, clock: ManualClock, e2e_backend_store: JobStore | None) -> AsyncIterator[Server]:
    async with running_server(make_settings(tmp_path), clock, e2e_backend_store) as srv:
        yield srv
