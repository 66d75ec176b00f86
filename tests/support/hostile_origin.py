"""A real HTTP origin on 127.0.0.1 that attacks the imports fetching from it (never shipped with jobsd).

Each path is one attack of the abuse review, served for as long as the client keeps reading:

- `/trickle.csv`  a CSV header, then one byte every `trickle_seconds` (far below any sane transfer rate)
- `/silent.csv`   headers, then nothing at all
- `/endless.csv`  rows as fast as the client reads them, forever (passes any rate check, never ends)
- `/steady.csv`   rows at a steady 160 KB/s, forever (a fair rate, but it never ends)
- `/huge.csv`     says Content-Length 64 GiB, then sends rows
- `/bomb.csv.gz`  a gzip file of ~95 KiB that decompresses to `bomb_bytes` (64 MiB) of CSV
- `/bomb.csv`     the same bytes sent with `Content-Encoding: gzip`
- `/wide.csv`     a 20,000-column CSV (about 200 KB), `/wide.ndjson` the same as one NDJSON object
- `/endless-line.csv`  one line that never ends (no newline, ever)

`requests` counts what was asked for, `open_streams` how many responses are still being written (a test can
assert that jobsd let go of the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from tests.support.bounded import settle

__all__ = ["WIDE_COLUMNS", "HostileOrigin", "hostile_origin"]

WIDE_COLUMNS = 20_000
_ROW = b"1,abc\n"
_BLOCK = _ROW * (64 * 1024 // len(_ROW))
# Long rows: many bytes per row, so bytes arrive faster than any loader could hold up the transfer.
_LONG_ROW = b"1," + b"x" * 1021 + b"\n"
_LONG_ROWS = _LONG_ROW * 64


@functools.cache
def gzip_bomb(total_bytes: int, row: bytes = _LONG_ROW) -> bytes:
    """A gzip stream of a CSV (`a,b` then `row`s) of `total_bytes`, compressed at the highest level (~700:1)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(b"a,b\n")]
    block = row * (1024 * 1024 // len(row))
    for _ in range(max(1, total_bytes // len(block))):
        parts.append(packer.compress(block))
    parts.append(packer.flush())
    return b"".join(parts)


@dataclass
class HostileOrigin:
    base: str = ""
    trickle_seconds: float = 0.2
    bomb_bytes: int = 64 * 1024 * 1024
    # The bomb's rows: long ones by default (a limit is met after few rows), `b"1,abc\n"` for millions of rows.
    bomb_row: bytes = _LONG_ROW
    requests: Counter[str] = field(default_factory=Counter)
    open_streams: int = 0
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _asked: dict[str, asyncio.Event] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def note(self, path: str) -> None:
        self.requests[path] += 1
        self._asked.setdefault(path, asyncio.Event()).set()

    async def asked(self, path: str) -> None:
        """Return once `path` has been requested."""
        await self._asked.setdefault(path, asyncio.Event()).wait()

    async def stream_opened(self) -> None:
        async with self._changed:
            self.open_streams += 1
            self._changed.notify_all()

    async def stream_closed(self) -> None:
        async with self._changed:
            self.open_streams -= 1
            self._changed.notify_all()

    async def no_stream_open(self) -> None:
        """Return once every response the origin was writing has ended (the client let go of each)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.open_streams == 0)

    @property
    def bomb(self) -> bytes:
        return gzip_bomb(self.bomb_bytes, self.bomb_row)


async def _streaming(request: web.Request, origin: HostileOrigin, **headers: str) -> web.StreamResponse:
    origin.note(request.path)
    response = web.StreamResponse(headers={"Content-Type": "text/csv", **headers})
    await response.prepare(request)
    return response


@contextlib.asynccontextmanager
async def hostile_origin(**options: object) -> AsyncIterator[HostileOrigin]:
    origin = HostileOrigin(**options)  # type: ignore[arg-type]
    # The client hanging up ends a handler with ConnectionResetError (or cancels it): that is how each ends.
    endings = (ConnectionResetError, asyncio.CancelledError)

    async def forever(request: web.Request, first: bytes, chunk: bytes, pause: float, **headers: str) -> None:
        response = await _streaming(request, origin, **headers)
        await origin.stream_opened()
        try:
            await response.write(first)
            while True:
                await response.write(chunk)
                # The attack's own pace (not a test's synchronisation); at full speed it still yields, so an
                # origin in the test's event loop cannot starve the jobsd serving in it.
                await asyncio.sleep(pause)
        finally:
            await asyncio.shield(origin.stream_closed())

    async def trickle(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(*endings):
            await forever(request, b"a,b\n", b"1", origin.trickle_seconds)
        return web.Response()

    async def silent(request: web.Request) -> web.StreamResponse:
        response = await _streaming(request, origin)
        await origin.stream_opened()
        try:
            with contextlib.suppress(*endings):
                await asyncio.Event().wait()
        finally:
            await asyncio.shield(origin.stream_closed())
        return response

    async def endless(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(*endings):
            await forever(request, b"a,b\n", _LONG_ROWS, 0)
        return web.Response()

    async def steady(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(*endings):
            await forever(request, b"a,b\n", _BLOCK[: 8 * 1024 // len(_ROW) * len(_ROW)], 0.05)
        return web.Response()

    async def huge(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(*endings):
            await forever(request, b"a,b\n", _LONG_ROWS, 0, **{"Content-Length": str(64 * 1024**3)})
        return web.Response()

    async def bomb_file(request: web.Request) -> web.StreamResponse:
        origin.note(request.path)
        return web.Response(body=origin.bomb, content_type="application/gzip")

    async def bomb_encoded(request: web.Request) -> web.StreamResponse:
        origin.note(request.path)
        return web.Response(body=origin.bomb, headers={"Content-Type": "text/csv", "Content-Encoding": "gzip"})

    async def wide_csv(request: web.Request) -> web.StreamResponse:
        origin.note(request.path)
        header = ",".join(f"c{i}" for i in range(WIDE_COLUMNS))
        row = ",".join(str(i) for i in range(WIDE_COLUMNS))
        return web.Response(text=f"{header}\n{row}\n{row}\n", content_type="text/csv")

    async def wide_ndjson(request: web.Request) -> web.StreamResponse:
        origin.note(request.path)
        line = "{" + ",".join(f'"k{i}":{i}' for i in range(WIDE_COLUMNS)) + "}"
        return web.Response(text=f"{line}\n{line}\n", content_type="application/x-ndjson")

    async def endless_line(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(*endings):
            await forever(request, b"a", b"a" * 65536, 0)
        return web.Response()

    app = web.Application()
    app.router.add_get("/trickle.csv", trickle)
    app.router.add_get("/silent.csv", silent)
    app.router.add_get("/endless.csv", endless)
    app.router.add_get("/steady.csv", steady)
    app.router.add_get("/huge.csv", huge)
    app.router.add_get("/bomb.csv.gz", bomb_file)
    app.router.add_get("/bomb.csv", bomb_encoded)
    app.router.add_get("/wide.csv", wide_csv)
    app.router.add_get("/wide.ndjson", wide_ndjson)
    app.router.add_get("/endless-line.csv", endless_line)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    origin.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    origin.bomb  # made before anyone asks: a real origin has its file ready  # noqa: B018
    try:
        yield origin
    finally:
        await settle("stopping the hostile origin", runner.cleanup())
