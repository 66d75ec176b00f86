"""127.0.0.1 ports that fail an HTTP client each in its own way: what an import's fetch must describe in one
message that tells a port scanner nothing (tests/executors, tests/security)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["odd_ports"]


@asynccontextmanager
async def odd_ports(greeting: bytes) -> AsyncIterator[dict[str, int]]:
    """Ports by what they do: `closed` (bound, never listening: connections are refused), `banner` (a non-HTTP
    server that sends `greeting` and closes), `hang-up` (a connection closed at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
        bound.bind(("127.0.0.1", 0))

        async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(greeting)
            await writer.drain()
            writer.close()

        async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        greeter = await asyncio.start_server(banner, "127.0.0.1", 0)
        closer = await asyncio.start_server(hang_up, "127.0.0.1", 0)
        try:
            yield {
                "closed": bound.getsockname()[1],
                "banner": greeter.sockets[0].getsockname()[1],
                "hang-up": closer.sockets[0].getsockname()[1],
            }
        finally:
            for server in (greeter, closer):
                server.close()
                await server.wait_closed()
