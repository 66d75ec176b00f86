"""Running a blocking data-plane step so that cancelling the job's task stops the thread too."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

from jobsd.executors.dataplane import DataPlane, Session

__all__ = ["run_abortable"]

T = TypeVar("T")


async def run_abortable(plane: DataPlane, fn: Callable[[Session], T], abort: threading.Event) -> T:
    """`plane.run(fn)`; if the awaiting task is cancelled (worker shutdown), set `abort` — which `fn` checks
    between batches — and wait for the thread to clean up before the cancellation goes on."""
    future = asyncio.ensure_future(plane.run(fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        abort.set()
        with contextlib.suppress(BaseException):
            await future
        raise
