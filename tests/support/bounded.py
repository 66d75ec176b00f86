"""Waits of the test harness that give up, so a test that fails (or hangs) can never hang the run.

`settle`: one step of a teardown — stopping a server, closing a channel, a client or an origin — within a bound; a
step that does not end is cancelled and the teardown fails with `TeardownHung`, naming the step and where it was
stuck. `with_deadline`: an async test body within a deadline (tests/conftest.py gives every async test one, below
pytest-timeout's): past it the body is cancelled at the await it is stuck on, so its teardown runs on a loop that
still works, instead of pytest-timeout's SIGALRM landing at a random point inside the event loop. `leftover_tasks`:
what a test left running on its loop, cancelled within a bound (tests/conftest.py, after every async test).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

__all__ = [
    "CANCEL_SECONDS",
    "TEARDOWN_SECONDS",
    "TeardownHung",
    "TestHung",
    "leftover_tasks",
    "settle",
    "with_deadline",
]

P = ParamSpec("P")
T = TypeVar("T")

# One teardown step (a server's stop within its grace and margin, a channel's close...) ends well within this.
TEARDOWN_SECONDS = 30.0
# What a step that ran out of time still gets to unwind once cancelled.
CANCEL_SECONDS = 2.0


class TeardownHung(AssertionError):
    """A teardown step did not end within its bound (it was cancelled, or left behind if even that did not end it)."""


class TestHung(AssertionError):
    """An async test did not end within its deadline (its body was cancelled where it waited)."""

    __test__ = False  # not a test class, for pytest's collector


def _where(task: asyncio.Future[Any]) -> str:
    """Where `task` waits now (its coroutine's stack), for the error that names it."""
    if not isinstance(task, asyncio.Task):
        return "  (not a task)"
    frames = []
    for frame in task.get_stack(limit=12):
        # Cython frames (grpc's) have no line number: print_stack would fail on them.
        line = frame.f_lineno if frame.f_lineno is not None else "?"
        frames.append(f"  {frame.f_code.co_filename}:{line} in {frame.f_code.co_name}")
    return "\n".join(frames) or f"  ({task!r})"


async def settle(what: str, step: Awaitable[T], seconds: float = TEARDOWN_SECONDS) -> T:
    """`step`'s result, if it ends within `seconds`; else it is cancelled and TeardownHung names it."""
    task: asyncio.Future[T] = asyncio.ensure_future(step)
    try:
        await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not task.done():
        where = _where(task)
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_SECONDS)
        left = "" if task.done() else f", nor {CANCEL_SECONDS:g} s after it was cancelled (left behind)"
        raise TeardownHung(f"{what} did not end within {seconds:g} s{left}; it was waiting at:\n{where}")
    return task.result()


def with_deadline(
    test: Callable[P, Coroutine[Any, Any, T]], seconds: float, name: str
) -> Callable[P, Coroutine[Any, Any, T]]:
    """`test` (an async test function), failing with TestHung once it has run `seconds`."""

    @functools.wraps(test)
    async def bounded(*args: P.args, **kwargs: P.kwargs) -> T:
        deadline = asyncio.timeout(seconds)
        try:
            async with deadline:
                return await test(*args, **kwargs)
        except TimeoutError as timed_out:
            if not deadline.expired():
                raise  # the test's own TimeoutError
            raise TestHung(
                f"{name} did not end within {seconds:.0f} s (the deadline tests/conftest.py gives an async test, "
                "below pytest-timeout's): it was cancelled where it waited (see the traceback)"
            ) from timed_out

    return bounded


async def leftover_tasks(seconds: float = TEARDOWN_SECONDS) -> None:
    """Cancel every task still running on this loop but the caller; TeardownHung names those that did not end.

    Those are forgotten by asyncio (`_unregister_task`), so closing the loop does not wait for them forever."""
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    if not left:
        return
    for task in left:
        task.cancel()
    await asyncio.wait(left, timeout=seconds)
    stuck = [task for task in left if not task.done()]
    if not stuck:
        return
    described = "\n".join(f"- {task.get_name()}:\n{_where(task)}" for task in stuck)
    for task in stuck:
        asyncio.tasks._unregister_task(task)
    raise TeardownHung(
        f"{len(stuck)} tasks left running by the test did not end within {seconds:g} s of being cancelled "
        f"(forgotten, so the loop could close):\n{described}"
    )
