"""How an import's bytes become lines, within their limits: exact line lengths in bytes wherever a line falls in
the chunks, and decompression that is bounded and complete (gzip members, deflate, trailing bytes, a cut stream).
The end-to-end attacks are in tests/security/test_import_limits.py; these pin the edges."""

from __future__ import annotations

import gzip
import io
import tracemalloc
import zlib

import pytest

from jobsd.executors.errors import ExecutionFailed
from jobsd.executors.limits import ImportLimits, LimitExceeded
from jobsd.executors.records import text_lines
from jobsd.executors.sources import CHUNK_BYTES, CountingReader


class Chunks:
    """A ByteSource handing out `data` `size` bytes at a time."""

    def __init__(self, data: bytes, size: int) -> None:
        self._data = io.BytesIO(data)
        self._size = size

    def read(self) -> bytes:
        return self._data.read(self._size)


def lines_of(data: bytes, chunk: int, limit: int) -> list[str]:
    return list(text_lines(CountingReader(Chunks(data, chunk), False), ImportLimits(max_line_bytes=limit)))


@pytest.mark.parametrize("chunk", [1, 3, 7, 10, 64, 4096])
def test_a_line_of_exactly_the_limit_passes_and_one_byte_more_stops_at_its_number(chunk: int) -> None:
    ok = b"\xef\xbb\xbfa,b\n" + b"x" * 10 + b"\n" + "é".encode() * 5 + b"\nlast"
    assert lines_of(ok, chunk, 10) == ["a,b\n", "x" * 10 + "\n", "é" * 5 + "\n", "last"]
    for too_long in (b"a,b\n" + b"x" * 11 + b"\nc\n", b"a,b\nc\n" + b"x" * 11):
        with pytest.raises(LimitExceeded) as stopped:
            lines_of(too_long, chunk, 10)
        line = 2 if too_long.count(b"\n") == 3 else 3
        assert str(stopped.value).startswith(f"Line {line} is longer than 10 bytes"), (chunk, too_long)
        assert stopped.value.setting == "JOBSD_IMPORT_MAX_LINE_BYTES"


def decoded(data: bytes, **options: object) -> bytes:
    reader = CountingReader(Chunks(data, 65536), False, **options)  # type: ignore[arg-type]
    parts = []
    while chunk := reader.read():
        assert len(chunk) <= CHUNK_BYTES
        parts.append(chunk)
    return b"".join(parts)


PLAIN = b"".join(b"%d,abc\n" % i for i in range(100_000))


def test_gzip_members_deflate_and_trailing_bytes_decode_whole() -> None:
    assert decoded(gzip.compress(PLAIN)) == PLAIN
    assert decoded(gzip.compress(PLAIN[:1000]) + gzip.compress(PLAIN[1000:])) == PLAIN  # cat a.gz b.gz
    assert decoded(gzip.compress(PLAIN) + b"\0\0\0 padding") == PLAIN  # ignored, as gzip(1) does
    assert decoded(zlib.compress(PLAIN), content_encoding="deflate") == PLAIN
    assert decoded(gzip.compress(gzip.compress(PLAIN)), content_encoding="gzip") == PLAIN  # a .gz sent gzipped


def test_a_gzip_stream_cut_short_is_an_error_not_a_short_file() -> None:
    with pytest.raises(ExecutionFailed, match="it ends in the middle of the stream"):
        decoded(gzip.compress(PLAIN)[:5000])


def test_a_bomb_stops_at_the_limit_holding_one_chunk() -> None:
    bomb = gzip.compress(b"\0" * (256 * 1024 * 1024), 9)
    tracemalloc.start()
    try:
        limits = ImportLimits(max_decompressed_bytes=16 * 1024 * 1024)
        reader = CountingReader(Chunks(bomb, 65536), False, limits=limits)
        with pytest.raises(LimitExceeded) as stopped:
            while reader.read():  # what was read is dropped, as the loader drops what it has loaded
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stopped.value.setting == "JOBSD_IMPORT_MAX_DECOMPRESSED_BYTES"
    assert peak < 4 * CHUNK_BYTES + len(bomb)


def test_transferred_bytes_are_bounded_before_decoding() -> None:
    with pytest.raises(LimitExceeded) as stopped:
        decoded(gzip.compress(PLAIN), limits=ImportLimits(max_bytes=1000), shown_url="https://example.com/a.gz")
    assert str(stopped.value) == (
        "Could not fetch https://example.com/a.gz: it is larger than 1000 bytes (JOBSD_IMPORT_MAX_BYTES=1000)"
    )
