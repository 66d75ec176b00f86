"""The embedded store's WAL checkpoints, off the event loop.

A checkpoint copies the pages committed to the WAL back into the database file and syncs it. SQLite runs one
automatically inside the COMMIT that takes the WAL past `wal_autocheckpoint` pages, on the writing connection. On
the store's connection that meant the event loop: measured under 64 concurrent job lifecycles, one COMMIT in ~150
took 0.67 s (10,000 pages copied to scattered places in a large file, then fsync), two thirds of all the time spent
committing, and every call in the process waited for it.

So the store's connection has automatic checkpoints off, and this thread, on a connection of its own, runs a
PASSIVE checkpoint every `interval` seconds: it copies what is committed without taking the write lock (writers go
on appending meanwhile), and SQLite's C code runs without the GIL, so the event loop keeps serving. A page that many
writes touched between two checkpoints (an index's tail) is copied once. Durability does not depend on checkpoints:
a commit is in the WAL when it returns. Like SQLite's own checkpoints, a PASSIVE one cannot reach frames a reader of
another connection still needs; the WAL then grows until it can.

A checkpoint alone does not make the WAL smaller: SQLite starts writing it from its beginning again only when a
write transaction begins while every frame is already copied back, and under writes that never pause (group
commits back to back) a checkpoint never catches the WAL at rest. So the store asks for a `catch_up` when the WAL
has grown past its limit: it holds new writes, this thread runs a checkpoint at once, and reports back; the first
write after that finds the WAL fully copied and starts it over (jobsd.store.sqlite.store, "WAL limit").
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["CHECKPOINT_INTERVAL", "WalCheckpointer"]

log = logging.getLogger(__name__)

# Seconds between checkpoints. Longer copies a rewritten page fewer times; shorter keeps the WAL smaller.
CHECKPOINT_INTERVAL: Final = 0.5
# How long stop() waits for a checkpoint in progress before it leaves the thread to finish on its own.
_STOP_TIMEOUT: Final = 30.0


class WalCheckpointer:
    """One thread checkpointing one SQLite file's WAL. `start()`, then `await stop()` (safe twice)."""

    def __init__(self, path: Path, *, interval: float = CHECKPOINT_INTERVAL, busy_timeout_ms: int = 5_000) -> None:
        self._path = path
        self._interval = interval
        self._busy_timeout_ms = busy_timeout_ms
        self._stopping = threading.Event()
        # Set to run the next checkpoint now (stop, or a catch-up asked for) rather than at the end of the interval.
        self._wake = threading.Event()
        # Called on this thread after the next checkpoint with (frames in the WAL, frames copied); -1, -1 if it failed.
        self._catch_up: Callable[[int, int], None] | None = None
        self._thread: threading.Thread | None = None
        # What the checkpoints did, for the store's metrics (ints written by this thread, read by the loop's).
        self.checkpoints = 0  # completed checkpoint runs
        self.failures = 0  # runs that raised (busy past the timeout, the file gone)
        # The WAL's size in frames (pages) at the last run, and how many of them it could not copy back: frames a
        # reader of another connection still needs, or written during the run. A WAL that stays behind is one a
        # long read pins, and it grows until the read ends.
        self.wal_frames = 0
        self.wal_frames_behind = 0

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._wake.clear()
        self._thread = threading.Thread(target=self._run, name=f"jobsd-wal-checkpoint:{self._path.name}", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        await asyncio.to_thread(thread.join, _STOP_TIMEOUT)

    def catch_up(self, done: Callable[[int, int], None]) -> None:
        """Run a checkpoint now; then call `done(frames in the WAL, frames copied)` on this thread (-1, -1 when it
        failed or the thread is not running). The caller makes `done` safe to call from another thread."""
        if self._thread is None or self._stopping.is_set():
            done(-1, -1)
            return
        self._catch_up = done
        self._wake.set()

    def _run(self) -> None:
        try:
            # mode=rw: never create the file. The thread starts after the store opened it; if the file was removed
            # meanwhile, connecting would make an empty one in its place, and the store would then report a
            # replaced file instead of a missing one.
            conn = sqlite3.connect(f"{self._path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            log.warning("WAL checkpoints of %s are off: cannot open it: %s", self._path, exc)
            return
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            while True:
                self._wake.wait(self._interval)
                self._wake.clear()
                if self._stopping.is_set():
                    break
                done, self._catch_up = self._catch_up, None
                frames, copied = self._checkpoint(conn)
                if done is not None:
                    done(frames, copied)
        finally:
            conn.close()
            done, self._catch_up = self._catch_up, None
            if done is not None:
                done(-1, -1)

    def _checkpoint(self, conn: sqlite3.Connection) -> tuple[int, int]:
        try:
            row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self.failures += 1
            # The next round tries again; the store's own calls report a file that is really gone.
            log.debug("WAL checkpoint of %s failed: %s", self._path, exc)
            return -1, -1
        # (busy, frames in the WAL, frames checkpointed); -1, -1 when the file is not in WAL mode.
        frames, copied = (int(row[1]), int(row[2])) if row is not None else (-1, -1)
        self.wal_frames, self.wal_frames_behind = max(frames, 0), max(frames - copied, 0)
        self.checkpoints += 1
        return frames, copied
