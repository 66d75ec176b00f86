"""A multi-MB import keeps its Python memory bounded: it streams, it never holds the file."""

from __future__ import annotations

import tracemalloc

from jobsd.executors.dataplane import DataPlane
from jobsd.executors.import_data import run_import

from .conftest import LOCAL, FileServer, RecordingContext, make_job

ROWS = 120_000


def write_big_csv(files: FileServer) -> int:
    path = files.root / "big.csv"
    with path.open("w") as out:
        out.write("ts,user_id,event,amount,note\n")
        for i in range(ROWS):
            out.write(f"2024-01-{1 + i % 28:02d} {i % 24:02d}:00:00,{i},event-{i % 7},{i * 0.25},note number {i}\n")
    return path.stat().st_size


async def test_a_large_file_streams_with_bounded_memory(plane: DataPlane, files: FileServer) -> None:
    size = write_big_csv(files)
    ctx = RecordingContext(make_job("import", datasource="big", url=files.url("big.csv", chunked=True)))
    tracemalloc.start()
    try:
        await run_import(ctx, plane, policy=LOCAL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert ctx.figures["statistics"]["row_count"] == ROWS
    assert ctx.figures["processed_data"]["read_bytes"] == size
    print(f"file {size / 2**20:.1f} MiB, Python peak {peak / 2**20:.1f} MiB")
    # The file is ~7 MiB: holding it, even as raw bytes, would break the bound. A batch (5,000 records) is the
    # most the import holds as Python objects, plus one 256 KiB chunk.
    assert size > 6.5 * 2**20
    assert peak < 6 * 2**20
