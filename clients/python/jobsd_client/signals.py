"""Waiting for SIGINT / SIGTERM in an asyncio program: the one helper every long-running jobsd process uses."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator, Sequence

__all__ = ["STOP_SIGNALS", "stop_on_signals", "until_signalled"]

# The signals that ask a process to stop: Ctrl-C and what a supervisor (systemd, Docker, Kubernetes) sends.
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> Iterator[asyncio.Event]:
    """An event set when one of `signals` arrives while the block runs; the handlers are removed after it.

    Call it from inside the running event loop (the handlers are installed on it).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def until_signalled(signals: Sequence[signal.Signals] = STOP_SIGNALS) -> None:
    """Return when one of `signals` arrives."""
    with stop_on_signals(signals) as stop:
        await stop.wait()
