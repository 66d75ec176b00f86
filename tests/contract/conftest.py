"""The `store` fixture: every contract test runs once per backend of `tests.support.backends.BACKENDS`.

Every store is built with the app's job encoder and wrapped in `wire.WireChecked`, so each job a test reads is
also read as a record whose stored wire bytes must decode to that job. A test marked
`@pytest.mark.needs(Capability.X)` is skipped, with the reason shown, on a store that answers
`supports(Capability.X)` with False (the store is asked once it is open).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobsd.store.base import Capability, JobStore
from tests.support.backends import BACKENDS, contract_backends

from .wire import WireChecked, encode_job


@pytest.fixture(params=contract_backends())
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[JobStore]:
    backend = BACKENDS[request.param]
    needed = {Capability(cap) for mark in request.node.iter_markers("needs") for cap in mark.args}
    async with backend.make(request, tmp_path, encode_job) as raw:
        await raw.open()
        try:
            missing = sorted(cap.value for cap in needed if not raw.supports(cap))
            if missing:
                pytest.skip(f"{backend.name} cannot provide {', '.join(missing)}")
            yield WireChecked(raw)
        finally:
            await raw.close()
