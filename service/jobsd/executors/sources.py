"""Where an import reads its bytes from: `file://` paths and `http(s)://` URLs, as blocking readers for a thread.

What may be read at all is the `ImportPolicy`'s business (`outbound`): the file root, the allowed addresses.

The import parses on a data-plane thread (parsing is CPU work the event loop must not do), so a source is a
blocking `read()` of the next chunk. For HTTP the response is still read by aiohttp on the event loop: `read()`
asks the loop for one chunk at a time, so at most one chunk is in flight and memory stays bounded whatever the
file size. Files ending in `.gz` (or starting with the gzip magic bytes) are decompressed on the fly; progress
counts the bytes as transferred (compressed), which is what Content-Length and the file size measure.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

import aiohttp

from jobsd.domain.redaction import redact_url
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.outbound import ImportPolicy, client_session, fetch

__all__ = [
    "CHUNK_BYTES",
    "ByteSource",
    "ImportAborted",
    "OpenedSource",
    "open_source",
]

CHUNK_BYTES = 256 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


class ImportAborted(Exception):
    """The job's task was cancelled (worker shutdown) while the import thread was running."""


class ByteSource(Protocol):
    """A blocking reader of the next chunk; b"" at the end."""

    def read(self) -> bytes: ...


@dataclass(slots=True)
class OpenedSource:
    """An open source: its reader, its size when known, and the name formats are guessed from."""

    reader: CountingReader
    total_bytes: int | None
    path: str


class CountingReader:
    """Counts transferred bytes (for progress) and undoes gzip when the data is gzip-compressed."""

    def __init__(self, raw: ByteSource, gzip_hint: bool) -> None:
        self._raw = raw
        self.bytes_read = 0
        self._gunzip: zlib._Decompress | None = None
        self._decided = False
        self._gzip_hint = gzip_hint

    def read(self) -> bytes:
        while True:
            chunk = self._raw.read()
            self.bytes_read += len(chunk)
            if not self._decided and chunk:
                self._decided = True
                if self._gzip_hint or chunk.startswith(_GZIP_MAGIC):
                    self._gunzip = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if self._gunzip is None:
                return chunk
            if not chunk:
                return self._gunzip.flush()
            try:
                data = self._gunzip.decompress(chunk)
            except zlib.error as error:
                raise ExecutionFailed(f"The file is not valid gzip: {error}") from None
            if data:
                return data


class _FileReader:
    def __init__(self, handle: BinaryIO, abort: threading.Event) -> None:
        self._handle = handle
        self._abort = abort

    def read(self) -> bytes:
        if self._abort.is_set():
            raise ImportAborted
        return self._handle.read(CHUNK_BYTES)


class _HttpReader:
    """Reads an aiohttp response on its event loop from another thread, one chunk per call."""

    def __init__(
        self, response: aiohttp.ClientResponse, url: str, loop: asyncio.AbstractEventLoop, abort: threading.Event
    ) -> None:
        self._response = response
        self._url = url
        self._loop = loop
        self._abort = abort
        self._received = 0

    def read(self) -> bytes:
        future = asyncio.run_coroutine_threadsafe(self._response.content.read(CHUNK_BYTES), self._loop)
        while True:
            if self._abort.is_set():
                future.cancel()
                raise ImportAborted
            try:
                chunk = future.result(timeout=0.25)
            except concurrent.futures.TimeoutError:
                continue
            except (aiohttp.ClientError, TimeoutError, concurrent.futures.CancelledError) as error:
                reason = str(error) or type(error).__name__
                raise ExecutionFailed(
                    f"Could not fetch {self._url}: the download broke off after {self._received} bytes ({reason})"
                ) from None
            self._received += len(chunk)
            return chunk


@contextlib.asynccontextmanager
async def open_source(
    url: str,
    *,
    abort: threading.Event,
    policy: ImportPolicy,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[OpenedSource]:
    """Open `url` for reading on a data-plane thread, as `policy` allows; ExecutionFailed says why it cannot be.

    `session`, when given, must come from `outbound.client_session(policy)` (it resolves names through the policy).
    """
    scheme = urlsplit(url).scheme.lower()
    shown = redact_url(url)
    if scheme == "file":
        path = policy.file_path(url)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except OSError as error:
            raise ExecutionFailed(f"Could not read {shown}: {error.strerror or 'it cannot be opened'}") from None
        try:
            size = os.fstat(handle.fileno()).st_size
            reader = CountingReader(_FileReader(handle, abort), gzip_hint=path.name.endswith(".gz"))
            yield OpenedSource(reader, size, path.name)
        finally:
            handle.close()
        return
    if scheme not in ("http", "https"):
        raise ExecutionFailed(f"Could not fetch {shown!r}: the URL must start with http://, https:// or file://")
    owned = session is None
    client = session or client_session(policy)
    try:
        response = await fetch(client, url, policy)
        async with response:
            if response.status >= 400:
                raise ExecutionFailed(
                    f"Could not fetch {shown}: HTTP {response.status} {response.reason or ''}".strip()
                )
            # aiohttp undoes Content-Encoding itself; Content-Length then counts the encoded bytes, so no total.
            encoded = bool(response.headers.get("Content-Encoding"))
            total = None if encoded else response.content_length
            name = urlsplit(str(response.url)).path
            reader = CountingReader(
                _HttpReader(response, shown, asyncio.get_running_loop(), abort), gzip_hint=name.endswith(".gz")
            )
            yield OpenedSource(reader, total, name)
    finally:
        if owned:
            await client.close()
