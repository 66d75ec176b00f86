"""Stopping one part of the process within a bound, so that a stop never waits forever on any one part.

A part that has not ended when its time is up is cancelled and given `CANCEL_WAIT_SECONDS` more to unwind; one that
does not end even then (a task that holds on to its cancellation, e.g. while a thread it waits for runs on) is left
behind, and the stop goes on. Either way one error line names the part and how long it was given.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

__all__ = ["CANCEL_WAIT_SECONDS", "stop_within"]

# What a part that ran out of time still gets to unwind once cancelled.
CANCEL_WAIT_SECONDS = 1.0


def _settled(task: asyncio.Future[object], what: str, log: logging.Logger) -> None:
    """Log how a part that ended failed, if it did (its error is not the stop's: the stop goes on)."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        log.error("stopping: %s failed: %s", what, error, exc_info=error)


async def stop_within(what: str, stopping: Awaitable[object], seconds: float, log: logging.Logger) -> bool:
    """Await `stopping` (one part's stop, named `what` in the log) for at most `seconds`; True if it ended in time.

    Past its time it is cancelled and given CANCEL_WAIT_SECONDS more, then left (see the module). An error it
    raises is logged, not raised. If the caller is cancelled meanwhile, the part is cancelled too."""
    task: asyncio.Future[object] = asyncio.ensure_future(stopping)
    try:
        await asyncio.wait({task}, timeout=max(0.0, seconds))
        if task.done():
            _settled(task, what, log)
            return True
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_WAIT_SECONDS)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        _settled(task, what, log)
        log.error("stopping: %s did not end within %.1f s; it was cancelled", what, seconds)
    else:
        task.add_done_callback(lambda ended: _settled(ended, what, log))
        log.error(
            "stopping: %s did not end within %.1f s, nor %.1f s after it was cancelled; it is left behind",
            what,
            seconds,
            CANCEL_WAIT_SECONDS,
        )
    return False
