"""The MongoDB store's change feed: one change stream per process, fanned out to every local subscriber.

`ChangeStreamPump` owns the process's single change stream on `jobs`. It keeps the resume token of the last event
and, when the connection drops, reopens the stream after that token, so no write is missed across a reconnect or
a primary failover. When the token can no longer be resumed (it fell off the oplog: ChangeStreamHistoryLost, or
the stream was invalidated) it restarts from now and publishes `FeedReset`, telling subscribers to re-read the
current state instead of silently missing events.

`ChangeFanout` (jobsd.store.fanout, shared with the SQLite store, re-exported here) hands each event to every
subscription, with bounded per-subscriber buffers that degrade to `FeedReset`, filtered by the acknowledged-write
number the MongoDB store passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from pymongo.errors import OperationFailure, PyMongoError

from jobsd.domain.model import Job
from jobsd.store.base import ChangeEvent, FeedReset, JobChanged
from jobsd.store.fanout import DEFAULT_FEED_CAPACITY, ChangeFanout, FeedSubscription

__all__ = [
    "CHANGE_STREAM_UNSUPPORTED",
    "DEFAULT_FEED_CAPACITY",
    "ChangeFanout",
    "ChangeStream",
    "ChangeStreamPump",
    "FeedSubscription",
    "change_streams_unsupported",
]

_log = logging.getLogger("jobsd.store.mongo")

# Server error codes: change streams need a replica set (standalone mongod answers 40573).
CHANGE_STREAM_UNSUPPORTED: Final = frozenset({40573})
# The resume token is gone: ChangeStreamHistoryLost (286), ChangeStreamFatalError (280, "resume token not found").
_HISTORY_LOST: Final = frozenset({286, 280})


def change_streams_unsupported(exc: BaseException) -> bool:
    """The server (or the in-process emulation) cannot run change streams at all."""
    if isinstance(exc, NotImplementedError):
        return True
    return isinstance(exc, OperationFailure) and exc.code in CHANGE_STREAM_UNSUPPORTED


def _history_lost(exc: BaseException) -> bool:
    return isinstance(exc, OperationFailure) and exc.code in _HISTORY_LOST


class ChangeStream(Protocol):
    """What the pump needs of `pymongo.asynchronous.change_stream.AsyncChangeStream`."""

    @property
    def resume_token(self) -> Mapping[str, Any] | None: ...

    def __aiter__(self) -> AsyncIterator[Mapping[str, Any]]: ...

    async def close(self) -> None: ...


# Opens the stream, resuming after the token when one is given.
OpenStream = Callable[[Mapping[str, Any] | None], Awaitable[ChangeStream]]


class ChangeStreamPump:
    """Reads the process's one change stream and publishes each job write as `JobChanged`."""

    def __init__(
        self,
        open_stream: OpenStream,
        publish: Callable[[ChangeEvent], None],
        decode: Callable[[Mapping[str, Any]], Job],
        *,
        retry_delay: float = 0.5,
        max_retry_delay: float = 10.0,
    ) -> None:
        self._open_stream = open_stream
        self._publish = publish
        self._decode = decode
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._token: Mapping[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def resume_token(self) -> Mapping[str, Any] | None:
        return self._token

    async def start(self) -> bool:
        """Open the stream now (so writes from here on are seen) and start reading it. False if the server cannot
        run change streams; connection errors propagate."""
        try:
            stream = await self._open_stream(None)
        except (NotImplementedError, OperationFailure) as exc:
            if change_streams_unsupported(exc):
                return False
            raise
        self._task = asyncio.create_task(self._run(stream), name="jobsd-mongo-change-stream")
        return True

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, stream: ChangeStream) -> None:
        try:
            while True:
                reset = await self._drain(stream)
                await _close_quietly(stream)
                stream = await self._reopen(reset)
        finally:
            await _close_quietly(stream)

    async def _drain(self, stream: ChangeStream) -> bool:
        """Publish events until the stream ends. True if its position is lost (restart from now and reset)."""
        try:
            async for change in stream:
                self._token = stream.resume_token
                if change.get("operationType") == "invalidate":
                    _log.warning("the jobs change stream was invalidated; restarting it from now")
                    return True
                document = change.get("fullDocument")
                if document is None:
                    continue
                try:
                    job = self._decode(document)
                except Exception:  # one unreadable document must not stop the feed for every watcher
                    _log.exception("skipping a jobs change event whose document cannot be read")
                    continue
                self._publish(JobChanged(job))
        except PyMongoError as exc:
            if _history_lost(exc):
                _log.warning("the jobs change stream lost its position (%s); restarting it from now", exc)
                return True
            _log.warning("the jobs change stream failed (%s); resuming it", exc)
            return False
        except Exception:  # a bug must not end the feed of every watcher of this process for good
            _log.exception("the jobs change stream failed unexpectedly; resuming it")
            await asyncio.sleep(self._retry_delay)
            return False
        # Iteration ended without an error: the stream was closed under us. Resume where it stopped.
        return False

    async def _reopen(self, reset: bool) -> ChangeStream:
        """A new stream after the last token (or from now after a reset); FeedReset once the new one is open, so
        subscribers that re-read miss nothing written in between."""
        delay = self._retry_delay
        while True:
            token = None if reset else self._token
            try:
                stream = await self._open_stream(token)
            except PyMongoError as exc:
                if _history_lost(exc):
                    _log.warning("cannot resume the jobs change stream (%s); restarting it from now", exc)
                    reset = True
                    continue
                _log.warning("cannot reopen the jobs change stream (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
                continue
            if reset:
                self._token = None
                self._publish(FeedReset())
            return stream


async def _close_quietly(stream: ChangeStream) -> None:
    with contextlib.suppress(PyMongoError):
        await stream.close()
