"""Fixtures every suite shares: the one `clock`, and the backend the end-to-end servers run on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobsd.domain.clock import ManualClock
from jobsd.store.base import JobStore
from tests.support.backends import e2e_backends
from tests.support.server import T0, e2e_store


@pytest.fixture
def clock() -> ManualClock:
    """The time of the test: it moves only when the test moves it."""
    return ManualClock(T0)


@pytest.fixture(params=e2e_backends())
async def e2e_backend_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore | None]:
    """The store of this test's end-to-end server, once per e2e backend (None: SQLite from the settings' URL)."""
    async with e2e_store(request, request.param, tmp_path) as store:
        yield store
