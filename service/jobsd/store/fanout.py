"""The in-process change fan-out both stores use: every published event to every current subscription.

`ChangeFanout.subscribe()` registers the subscription when it returns, so every event published after that reaches
it, even before its first `__anext__` (a watcher subscribes, then reads its snapshot, without a gap). Each
subscription buffers a bounded number of events; one that falls `capacity` events behind loses its backlog and
gets a single `FeedReset` (it must re-read), so a stalled consumer never grows the server's memory or slows the
writer.

Optional sequence filter (the MongoDB store needs it): `subscribe(since)` takes the store's count of acknowledged
writes at subscription time, and `publish(event, acknowledged)` the number of the write the event is for, when
this process made it. A change stream delivers a write some time after it was acknowledged; an event for a write
acknowledged before the subscription (number <= since) is from before "now" and is not delivered. The SQLite
store publishes in commit order right after its commits and passes no numbers.
"""

from __future__ import annotations

import asyncio
from typing import Final

from jobsd.store.base import ChangeEvent, FeedReset

__all__ = ["DEFAULT_FEED_CAPACITY", "ChangeFanout", "FeedSubscription"]

# Events buffered per subscriber; past it the subscriber gets one FeedReset instead of the backlog.
DEFAULT_FEED_CAPACITY: Final = 16_384


class FeedSubscription:
    """One subscriber of a `ChangeFanout` (see the module docstring)."""

    def __init__(self, fanout: ChangeFanout, capacity: int, since: int) -> None:
        self._fanout = fanout
        self._capacity = capacity
        self._since = since
        # None marks the end of the feed (the subscriber closed, or the store did).
        self._queue: asyncio.Queue[ChangeEvent | None] = asyncio.Queue()
        self._closed = False

    def offer(self, event: ChangeEvent, acknowledged: int | None = None) -> None:
        if self._closed or (acknowledged is not None and acknowledged <= self._since):
            return
        if self._queue.qsize() >= self._capacity:
            while not self._queue.empty():
                self._queue.get_nowait()
            event = FeedReset()
        self._queue.put_nowait(event)

    def end(self) -> None:
        if not self._closed:
            self._closed = True
            self._fanout.discard(self)
            self._queue.put_nowait(None)

    def __aiter__(self) -> FeedSubscription:
        return self

    async def __anext__(self) -> ChangeEvent:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self.end()


class ChangeFanout:
    """Every published event to every current subscription, in publication order."""

    def __init__(self, capacity: int = DEFAULT_FEED_CAPACITY) -> None:
        self._capacity = capacity
        self._subscriptions: set[FeedSubscription] = set()

    def subscribe(self, since: int = 0) -> FeedSubscription:
        subscription = FeedSubscription(self, self._capacity, since)
        self._subscriptions.add(subscription)
        return subscription

    def discard(self, subscription: FeedSubscription) -> None:
        self._subscriptions.discard(subscription)

    def publish(self, event: ChangeEvent, acknowledged: int | None = None) -> None:
        """`acknowledged`: the number of the write, if this process wrote it and the subscribers filter by it."""
        for subscription in list(self._subscriptions):
            subscription.offer(event, acknowledged)

    def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.end()
