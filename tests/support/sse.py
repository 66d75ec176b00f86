"""Reading a REST event stream (Server-Sent Events, `GET /v0/jobs/{id}/events` and `/v0/jobs/events`) as a
browser would: one event at a time, keep-alive comments skipped."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

__all__ = ["read_sse_event"]


async def read_sse_event(response: aiohttp.ClientResponse, line_wait: float) -> dict[str, Any] | None:
    """The next Server-Sent Event as {"id", "event", "data"} (data parsed), or None at the end of the stream.
    Each line is awaited at most `line_wait` seconds, so a broken stream fails the test instead of hanging it."""
    fields: dict[str, Any] = {}
    while True:
        line = await asyncio.wait_for(response.content.readline(), line_wait)
        if not line:
            return None
        text = line.decode().rstrip("\n")
        if text == "":
            if fields:
                fields["data"] = json.loads(fields["data"])
                return fields
            continue
        if text.startswith(":"):  # a keep-alive comment
            continue
        name, _, value = text.partition(": ")
        fields[name] = value
