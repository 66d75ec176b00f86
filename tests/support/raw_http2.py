"""A raw HTTP/2 client, frame by frame, for attacking the gRPC port the way a misbehaving peer would.

grpcio's own client is too well behaved for these tests (it answers pings, paces its own, never sits silent): this
one sends exactly the frames a test asks for and hands back exactly what the server sends (RFC 9113, section 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from dataclasses import dataclass

__all__ = [
    "ENHANCE_YOUR_CALM",
    "GOAWAY",
    "NO_ERROR",
    "PING",
    "PREFACE",
    "SETTINGS",
    "SETTINGS_MAX_CONCURRENT_STREAMS",
    "Frame",
    "RawHttp2",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = 0x4
PING = 0x6
GOAWAY = 0x7
ACK = 0x1
NO_ERROR = 0x0
ENHANCE_YOUR_CALM = 0xB
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    stream: int
    payload: bytes

    @property
    def is_ack(self) -> bool:
        return bool(self.flags & ACK)

    def settings(self) -> dict[int, int]:
        """A SETTINGS frame's parameters (identifier -> value)."""
        return {
            ident: value
            for ident, value in (struct.unpack("!HI", self.payload[i : i + 6]) for i in range(0, len(self.payload), 6))
        }

    def goaway(self) -> tuple[int, int, bytes]:
        """A GOAWAY frame's (last stream id, error code, debug data)."""
        last, code = struct.unpack("!II", self.payload[:8])
        return last & 0x7FFFFFFF, code, self.payload[8:]


def frame(kind: int, flags: int = 0, stream: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream) + payload


class RawHttp2:
    """One TCP connection; `handshake()` sends the preface and an empty SETTINGS frame."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawHttp2:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def handshake(self) -> Frame:
        """Preface and SETTINGS out; the server's first SETTINGS frame back (acknowledged)."""
        await self.send(PREFACE + frame(SETTINGS))
        while True:
            got = await self.read_frame()
            if got is None:
                raise ConnectionError("the server closed the connection during the handshake")
            if got.type == SETTINGS and not got.is_ack:
                await self.send(frame(SETTINGS, ACK))
                return got

    async def ping(self, opaque: bytes = b"\0" * 8) -> None:
        await self.send(frame(PING, 0, 0, opaque))

    async def read_frame(self) -> Frame | None:
        """The next frame, or None once the server has closed the connection."""
        try:
            head = await self.reader.readexactly(9)
            length = int.from_bytes(head[:3], "big")
            payload = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return Frame(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)

    async def until(self, kind: int, *, answer_pings: bool = True) -> Frame | None:
        """Read until a frame of `kind` (returned) or the end of the connection (None)."""
        while True:
            got = await self.read_frame()
            if got is None or got.type == kind:
                return got
            if answer_pings and got.type == PING and not got.is_ack:
                await self.send(frame(PING, ACK, 0, got.payload))

    async def closed(self) -> bool:
        """True once the server has closed the connection (whatever it sent before)."""
        while await self.read_frame() is not None:
            pass
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
