"""Running blocking data-plane steps so that stopping the job stops the thread's work too.

Two ways a running step is stopped: a batch loop checks an `abort` flag between batches (imports), and a single
long SQL statement is interrupted on its cursor (`DuckDBPyConnection.interrupt`), which rolls its transaction
back, so the data source stays as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import duckdb

from jobsd.executors.dataplane import DataPlane, Session

__all__ = ["Interrupted", "run_abortable", "run_interruptible"]

T = TypeVar("T")


class Interrupted(Exception):
    """The step's statement was interrupted because a cancel was requested."""


async def run_abortable(plane: DataPlane, workspace: str, fn: Callable[[Session], T], abort: threading.Event) -> T:
    """`plane.run(fn)`; if the awaiting task is cancelled (worker shutdown), set `abort` — which `fn` checks
    between batches — and wait for the thread to clean up before the cancellation goes on."""
    future = asyncio.ensure_future(plane.run(workspace, fn))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        abort.set()
        with contextlib.suppress(BaseException):
            await future
        raise


async def run_interruptible(
    plane: DataPlane,
    workspace: str,
    fn: Callable[[Session, threading.Event], T],
    cancel_requested: Callable[[], Awaitable[None]],
) -> T:
    """`plane.run(fn)`, stopping it when `cancel_requested()` completes (then raising Interrupted) or when the
    awaiting task is cancelled: the event `fn` gets is set (for it to check before it starts writing) and the
    statement it is running is interrupted."""
    sessions: list[Session] = []
    stopping = threading.Event()
    finished = threading.Event()
    guard = threading.Lock()

    def tracked(session: Session) -> T:
        with guard:
            sessions.append(session)
        try:
            return fn(session, stopping)
        finally:
            with guard:
                finished.set()

    def interrupt() -> None:
        stopping.set()
        with guard:
            if not finished.is_set():
                for session in sessions:
                    session.cursor.interrupt()

    work = asyncio.ensure_future(plane.run(workspace, tracked))
    watcher = asyncio.ensure_future(cancel_requested())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            interrupt()
        try:
            return await asyncio.shield(work)
        except duckdb.InterruptException:
            raise Interrupted from None
    except asyncio.CancelledError:
        interrupt()
        with contextlib.suppress(BaseException):
            await work
        raise
    finally:
        watcher.cancel()
