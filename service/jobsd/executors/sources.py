"""Where an import reads its bytes from: `file://` paths and `http(s)://` URLs, as blocking readers for a thread.

What may be read at all is the `ImportPolicy`'s business (`outbound`): the file root, the allowed addresses. How
much, how fast and for how long are `ImportLimits` (`limits`), enforced here as the bytes arrive.

The import parses on a data-plane thread (parsing is CPU work the event loop must not do), so a source is a
blocking `read()` of the next chunk. For HTTP the response is still read by aiohttp on the event loop: `read()`
asks the loop for one chunk at a time, so at most one chunk is in flight and memory stays bounded whatever the
file size. While it waits, it checks the download's deadline and the origin's transfer rate, so an origin that
trickles (one byte every few seconds) or goes silent ends the import within the rate window.

Decoding is done here, never by the HTTP client, so every byte is counted and bounded: the response's
Content-Encoding (gzip or deflate) is undone, then a file ending in `.gz` (or starting with the gzip magic bytes),
each inflating at most one chunk per call (a gzip bomb never expands in memory). Progress counts the bytes as
transferred (compressed), which is what Content-Length and the file size measure; `JOBSD_IMPORT_MAX_BYTES` bounds
those, `JOBSD_IMPORT_MAX_DECOMPRESSED_BYTES` what they decompress to.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import urlsplit

import aiohttp

from jobsd.domain.redaction import redact_url
from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.limits import DEFAULT_IMPORT_LIMITS, ImportLimits, LimitExceeded
from jobsd.executors.outbound import ImportPolicy, client_session, fetch

__all__ = [
    "CHUNK_BYTES",
    "ByteSource",
    "CountingReader",
    "ImportAborted",
    "OpenedSource",
    "open_source",
]

CHUNK_BYTES = 256 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
# How often a thread waiting for the network looks at the abort flag, the deadline and the rate.
_POLL_SECONDS = 0.25
# Content-Encoding -> zlib window bits (gzip header, or zlib header / gzip auto-detected).
_CONTENT_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 32 + zlib.MAX_WBITS}


class ImportAborted(Exception):
    """The job's task was cancelled (cancel, run-time limit, lost lease, shutdown) while the import ran."""


class ByteSource(Protocol):
    """A blocking reader of the next chunk; b"" at the end."""

    def read(self) -> bytes: ...


@dataclass(slots=True)
class OpenedSource:
    """An open source: its reader, its size when known, and the name formats are guessed from."""

    reader: CountingReader
    total_bytes: int | None
    path: str


class _Bounded:
    """Counts what passes through and raises `exceeded()` as soon as it is more than `limit` bytes."""

    def __init__(self, inner: ByteSource, limit: int, exceeded: Callable[[], LimitExceeded]) -> None:
        self._inner = inner
        self._limit = limit
        self._exceeded = exceeded
        self.count = 0

    def read(self) -> bytes:
        chunk = self._inner.read()
        self.count += len(chunk)
        if self.count > self._limit:
            raise self._exceeded()
        return chunk


class _Inflating:
    """Inflates a zlib/gzip stream read from `inner`, at most CHUNK_BYTES per call, so no chunk of a bomb ever
    expands in memory. gzip members may follow one another (as `cat a.gz b.gz` makes): each is inflated in turn;
    bytes after the last member that do not start another are ignored, as gzip(1) does."""

    def __init__(self, inner: ByteSource, wbits: int, what: str, first: bytes = b"") -> None:
        self._inner = inner
        self._wbits = wbits
        self._what = what
        self._inflate = zlib.decompressobj(wbits)
        self._input = first
        # Whether the current member has taken input (a stream that ends then is cut short), and whether what
        # follows the last member is being skipped.
        self._fed = False
        self._skipping = False
        self._ended = False
        self._members = 0

    def _next_member(self, rest: bytes) -> None:
        self._members += 1
        self._inflate = zlib.decompressobj(self._wbits)
        self._fed = False
        self._input = rest
        if not self._wbits & 16:
            self._skipping = True  # a zlib stream has one member

    def _is_trailing_garbage(self) -> bool:
        """After a member: input that does not start another one."""
        return self._members > 0 and not self._fed and len(self._input) >= 2 and not self._input.startswith(_GZIP_MAGIC)

    def read(self) -> bytes:
        while True:
            if self._input and not self._skipping and self._is_trailing_garbage():
                self._skipping = True
            if (self._input or self._fed) and not self._skipping:
                # With no input left, zlib may still hold output of what it took (a long match cut at the bound).
                try:
                    data = self._inflate.decompress(self._input, CHUNK_BYTES)
                except zlib.error as error:
                    raise ExecutionFailed(f"The file is not valid {self._what}: {error}") from None
                self._fed = True
                self._input = self._inflate.unconsumed_tail
                if self._inflate.eof:
                    self._next_member(self._inflate.unused_data + self._input)
                if data:
                    return data
                if self._input:
                    continue
            if self._ended:
                return b""
            chunk = self._inner.read()
            if not chunk:
                self._ended = True
                if self._fed and not self._skipping:
                    raise ExecutionFailed(f"The file is not valid {self._what}: it ends in the middle of the stream")
                return b""
            self._input = chunk


class CountingReader:
    """The decoded bytes of a source: transferred bytes counted (`bytes_read`, for progress) and bounded, the
    Content-Encoding undone, then gzip undone when the data is gzip, and the result bounded again."""

    def __init__(
        self,
        raw: ByteSource,
        gzip_hint: bool,
        *,
        limits: ImportLimits = DEFAULT_IMPORT_LIMITS,
        shown_url: str = "the file",
        content_encoding: str | None = None,
    ) -> None:
        self._transferred = _Bounded(raw, limits.max_bytes, lambda: limits.too_large(shown_url))
        self._encoded: ByteSource = self._transferred
        if content_encoding:
            self._encoded = _Inflating(self._transferred, _CONTENT_ENCODINGS[content_encoding], content_encoding)
        self._limits = limits
        self._gzip_hint = gzip_hint
        self._decoded: _Bounded | None = None
        # Called (on the reading thread) after each chunk read: how the loader reports bytes as they arrive,
        # not only when a batch of rows is loaded.
        self.on_chunk: Callable[[], None] | None = None

    @property
    def bytes_read(self) -> int:
        """Bytes transferred so far (compressed, as the origin sent them)."""
        return self._transferred.count

    @property
    def bytes_decoded(self) -> int:
        """Bytes of decoded (decompressed) data returned so far."""
        return 0 if self._decoded is None else self._decoded.count

    def read(self) -> bytes:
        chunk = self._read()
        if self.on_chunk is not None:
            self.on_chunk()
        return chunk

    def _read(self) -> bytes:
        if self._decoded is None:
            first = self._encoded.read()
            if first and (self._gzip_hint or first.startswith(_GZIP_MAGIC)):
                inner: ByteSource = _Inflating(self._encoded, 16 + zlib.MAX_WBITS, "gzip", first)
                first = b""
            else:
                inner = self._encoded
            self._decoded = _Bounded(inner, self._limits.max_decompressed_bytes, self._limits.decompresses_too_large)
            if first:
                self._decoded.count += len(first)
                if self._decoded.count > self._limits.max_decompressed_bytes:
                    raise self._limits.decompresses_too_large()
                return first
        return self._decoded.read()


class _FileReader:
    def __init__(self, handle: BinaryIO, abort: threading.Event) -> None:
        self._handle = handle
        self._abort = abort

    def read(self) -> bytes:
        if self._abort.is_set():
            raise ImportAborted
        return self._handle.read(CHUNK_BYTES)


class _HttpReader:
    """Reads an aiohttp response on its event loop from another thread, one chunk per call, within the
    download's deadline and at the minimum transfer rate."""

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        url: str,
        loop: asyncio.AbstractEventLoop,
        abort: threading.Event,
        *,
        limits: ImportLimits = DEFAULT_IMPORT_LIMITS,
        started: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._response = response
        self._url = url
        self._loop = loop
        self._abort = abort
        self._limits = limits
        self._monotonic = monotonic
        self._deadline = (monotonic() if started is None else started) + limits.timeout_seconds
        self._received = 0
        # The current rate window: seconds spent waiting for the origin, and the bytes it sent meanwhile.
        self._window_waited = 0.0
        self._window_bytes = 0

    def _too_slow(self, waited: float, received: int) -> bool:
        limits = self._limits
        return (
            limits.min_bytes_per_second > 0
            and waited >= limits.rate_window_seconds
            and received < limits.min_bytes_per_second * waited
        )

    def read(self) -> bytes:
        future = asyncio.run_coroutine_threadsafe(self._response.content.read(CHUNK_BYTES), self._loop)
        asked = self._monotonic()
        while True:
            if self._abort.is_set():
                future.cancel()
                raise ImportAborted
            try:
                chunk = future.result(timeout=_POLL_SECONDS)
            except concurrent.futures.TimeoutError:
                now = self._monotonic()
                if now >= self._deadline:
                    future.cancel()
                    raise self._limits.timed_out(self._url) from None
                waited = self._window_waited + (now - asked)
                if self._too_slow(waited, self._window_bytes):
                    future.cancel()
                    raise self._limits.too_slow(self._url, self._window_bytes, waited) from None
                continue
            except (aiohttp.ClientError, TimeoutError, concurrent.futures.CancelledError) as error:
                reason = str(error) or type(error).__name__
                raise ExecutionFailed(
                    f"Could not fetch {self._url}: the download broke off after {self._received} bytes ({reason})"
                ) from None
            now = self._monotonic()
            self._received += len(chunk)
            self._window_waited += now - asked
            self._window_bytes += len(chunk)
            if chunk and now >= self._deadline:
                raise self._limits.timed_out(self._url)
            if self._window_waited >= self._limits.rate_window_seconds:
                if self._too_slow(self._window_waited, self._window_bytes):
                    raise self._limits.too_slow(self._url, self._window_bytes, self._window_waited)
                self._window_waited, self._window_bytes = 0.0, 0
            return chunk


def _content_encoding(response: aiohttp.ClientResponse, shown: str) -> str | None:
    """The response's Content-Encoding, lower-cased (None for identity); ExecutionFailed for one we cannot undo."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding not in _CONTENT_ENCODINGS:
        raise ExecutionFailed(
            f"Could not fetch {shown}: it is sent with Content-Encoding {encoding!r}, which imports cannot read "
            "(gzip and deflate they can)"
        )
    return encoding


@contextlib.asynccontextmanager
async def open_source(
    url: str,
    *,
    abort: threading.Event,
    policy: ImportPolicy,
    session: aiohttp.ClientSession | None = None,
    limits: ImportLimits = DEFAULT_IMPORT_LIMITS,
) -> AsyncIterator[OpenedSource]:
    """Open `url` for reading on a data-plane thread, as `policy` allows and within `limits`; ExecutionFailed says
    why it cannot be (LimitExceeded, which limit it broke).

    `session`, when given, must come from `outbound.client_session(policy)` (it resolves names through the policy
    and leaves Content-Encoding to this module).
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
            if size > limits.max_bytes:
                raise limits.too_large(shown)
            reader = CountingReader(
                _FileReader(handle, abort), gzip_hint=path.name.endswith(".gz"), limits=limits, shown_url=shown
            )
            yield OpenedSource(reader, size, path.name)
        finally:
            handle.close()
        return
    if scheme not in ("http", "https"):
        raise ExecutionFailed(f"Could not fetch {shown!r}: the URL must start with http://, https:// or file://")
    owned = session is None
    client = session or client_session(policy)
    started = time.monotonic()
    try:
        response = await fetch(client, url, policy, limits)
        async with response:
            if response.status >= 400:
                raise ExecutionFailed(
                    f"Could not fetch {shown}: HTTP {response.status} {response.reason or ''}".strip()
                )
            encoding = _content_encoding(response, shown)
            # Bytes as transferred, encoded or not: what Content-Length counts, and what progress counts.
            total = response.content_length
            if total is not None and total > limits.max_bytes:
                raise limits.too_large(shown)
            name = urlsplit(str(response.url)).path
            raw = _HttpReader(response, shown, asyncio.get_running_loop(), abort, limits=limits, started=started)
            reader = CountingReader(
                raw, gzip_hint=name.endswith(".gz"), limits=limits, shown_url=shown, content_encoding=encoding
            )
            yield OpenedSource(reader, total, name)
    finally:
        if owned:
            await client.close()
