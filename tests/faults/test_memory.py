"""Memory stays bounded while a tenant's job tries to take it all, on a real `jobsd serve` with its defaults.

The review: one query materialising a 300 M-element list took the process from 170 MB to 5.0 GB (DuckDB's own
limit is 80 % of the machine); a 200 KB CSV of 20,000 columns from 680 MB to 2.9 GB and still climbing. Now the
query meets its workspace's DuckDB memory limit and ends in `error` saying so, the CSV is refused at its header,
and the process's peak resident memory (VmHWM) stays far below either. Each figure is printed for the record.
"""

from __future__ import annotations

from pathlib import Path

from jobsd_client import pb
from tests.support.hostile_origin import hostile_origin

from .conftest import serving

MiB = 1024 * 1024


async def test_a_query_that_would_take_gigabytes_ends_at_its_memory_limit(tmp_path: Path) -> None:
    async with serving(tmp_path / "state") as serve:
        job = await serve.create("query", params={"sql": "SELECT list(range) AS l FROM range(300000000)"})
        final = await serve.finished(job.id)
        peak = serve.peak_rss_bytes()
        after = await serve.create("query", params={"sql": "SELECT 42 AS answer"})
        answered = await serve.finished(after.id)
    took = (final.updated_at.ToMicroseconds() - final.started_at.ToMicroseconds()) / 1e6
    print(f"300 M-element list: {pb.JobStatus.Name(final.status)} after {took:.2f} s, peak RSS {peak / MiB:.0f} MiB")
    assert final.status == pb.JOB_STATUS_ERROR
    assert final.error.startswith("The job ran out of memory: its workspace may use 256 MiB of DuckDB memory")
    assert final.error.endswith(f"(JOBSD_JOB_MEMORY_LIMIT={1024 * MiB})")
    # Bounded: the workspace database's share (256 MiB by default) and the process itself.
    assert peak < 768 * MiB
    assert answered.status == pb.JOB_STATUS_DONE  # and the process goes on serving


async def test_the_wide_csv_is_refused_at_its_header(tmp_path: Path) -> None:
    async with hostile_origin() as origin, serving(tmp_path / "state") as serve:
        job = await serve.create("import", "wide", url=origin.url("wide.csv"))
        final = await serve.finished(job.id)
        peak = serve.peak_rss_bytes()
    took = (final.updated_at.ToMicroseconds() - final.started_at.ToMicroseconds()) / 1e6
    print(f"20,000-column CSV: refused after {took:.2f} s, peak RSS {peak / MiB:.0f} MiB")
    assert final.status == pb.JOB_STATUS_ERROR
    assert "(JOBSD_MAX_COLUMNS=500)" in final.error
    assert peak < 512 * MiB
