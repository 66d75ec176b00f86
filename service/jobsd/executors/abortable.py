"""Running a blocking data-plane step so that stopping the job stops the thread's work too, promptly.

A job is stopped by a cancel request (kinds cancellable while working), or by its task being cancelled: the
worker SDK does that when the job's run-time limit passes, when jobsd says the job is no longer this worker's
(its lease lapsed, it ended, a heartbeat found it past its limit) and when a graceful stop runs out of grace.
Either way the step is stopped in two places at once:

- the `stopping` event the step gets is set: loops check it between batches (the import's loader, and its
  source readers while they wait for the network), and steps check it before they start writing;
- the statement in flight is interrupted (`DuckDBPyConnection.interrupt()` on the step's cursor), which rolls its
  transaction back, so the data source stays as it was. DuckDB forgets an interrupt that lands between two
  statements, so it is repeated until the thread has returned.

`run_interruptible` returns only once the thread has stopped: nothing of a stopped job runs on behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import duckdb

from jobsd.executors.context import ExecutionContext
from jobsd.executors.dataplane import DataPlane, Session
from jobsd.executors.errors import ExecutionCancelled

__all__ = ["Interrupted", "run_cancellable", "run_interruptible"]

T = TypeVar("T")

# While a stopped step's thread has not returned, its statement is interrupted again this often.
_REINTERRUPT_SECONDS = 0.05


class Interrupted(Exception):
    """The step was stopped because a cancel was requested (its statement was interrupted, or it saw `stopping`)."""


class _Step:
    """The session a step runs on (once its thread has one), and how to stop it."""

    def __init__(self, stopping: threading.Event) -> None:
        self.stopping = stopping
        self._guard = threading.Lock()
        self._session: Session | None = None
        self._finished = False

    def run(self, session: Session, fn: Callable[[Session, threading.Event], T]) -> T:
        with self._guard:
            self._session = session
        try:
            return fn(session, self.stopping)
        finally:
            with self._guard:
                self._finished = True

    def interrupt(self) -> None:
        self.stopping.set()
        with self._guard:
            if self._session is not None and not self._finished:
                self._session.cursor.interrupt()


async def _stop(step: _Step, work: asyncio.Future[T]) -> None:
    """Interrupt until the thread has returned (its result or error is the caller's to read)."""
    while not work.done():
        step.interrupt()
        await asyncio.wait({work}, timeout=_REINTERRUPT_SECONDS)


async def run_interruptible(
    plane: DataPlane,
    workspace: str,
    fn: Callable[[Session, threading.Event], T],
    cancel_requested: Callable[[], Awaitable[None]] | None = None,
    *,
    stopping: threading.Event | None = None,
) -> T:
    """`plane.run(fn)`, stopped (see the module) when `cancel_requested()` completes — then Interrupted is raised —
    or when the awaiting task is cancelled — then, once the thread has stopped, the cancellation goes on.

    `fn` gets the session and the `stopping` event (the caller's, when given: e.g. one its source readers watch).
    """
    step = _Step(stopping or threading.Event())
    work = asyncio.ensure_future(plane.run(workspace, lambda session: step.run(session, fn)))
    watcher = asyncio.ensure_future(cancel_requested()) if cancel_requested is not None else None
    try:
        cancelled = False
        if watcher is not None:
            await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                cancelled = True
                await _stop(step, work)
        try:
            return await asyncio.shield(work)
        except duckdb.InterruptException:
            raise Interrupted from None
        except Exception:
            if cancelled:
                # However the stop surfaced (an interrupted statement described as an SQL error, a loop that saw
                # `stopping`), the step ended because of the cancel.
                raise Interrupted from None
            raise
    except asyncio.CancelledError:
        stopped = asyncio.ensure_future(_stop(step, work))
        while not stopped.done():
            # A second cancellation must not leave the thread running behind us either.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(stopped)
        if not work.cancelled():
            work.exception()  # its error (mostly: the interrupted statement) is not the news; the stop is
        raise
    finally:
        if watcher is not None:
            watcher.cancel()


async def run_cancellable(
    ctx: ExecutionContext, plane: DataPlane, workspace: str, fn: Callable[[Session, threading.Event], T]
) -> T:
    """A job's one step by `run_interruptible`: a cancel request stops it and ends the job as cancelled."""
    try:
        return await run_interruptible(plane, workspace, fn, ctx.wait_cancel_requested)
    except Interrupted:
        raise ExecutionCancelled from None
