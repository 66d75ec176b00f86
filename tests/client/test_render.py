"""The text jobsctl shows: progress line, sizes, tables, details, data sources."""

from __future__ import annotations

from jobsd_client import pb
from jobsd_client._render import (
    datasource_text,
    datasources_table,
    details_text,
    human_bytes,
    jobs_table,
    progress_line,
)


def test_progress_line_shows_status_percentage_queries_rows_and_bytes() -> None:
    job = pb.Job(
        id="0123456789abcdef",
        status=pb.JOB_STATUS_WORKING,
        progress_percentage=50,
        queries=[pb.QueryProgress(query_id="a", status="done"), pb.QueryProgress(query_id="b", status="working")],
        statistics=pb.Statistics(row_count=1_234_567, bytes=3_500_000),
        quarantine_rows=2,
    )
    line = progress_line(job, width=200, ascii_only=True)
    assert line.startswith("01234567  [############------------]   50.0%  working")
    assert "queries 1/2" in line and "rows 1,234,567" in line and "bytes 3.5 MB" in line and "quarantined 2" in line


def test_progress_line_before_any_figures_and_cut_to_the_terminal() -> None:
    job = pb.Job(id="abc", status=pb.JOB_STATUS_WAITING)
    assert progress_line(job, ascii_only=True).endswith("0.0%  waiting  rows -  bytes -")
    cut = progress_line(job, width=20)
    assert len(cut) == 20 and cut.endswith("\u2026")


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 1_500_000, 2 * 10**12, 5 * 10**15)] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "1.5 MB",
        "2.0 TB",
        "5000.0 TB",
    ]


def test_jobs_table_aligns_columns_and_falls_back_to_the_datasource_struct() -> None:
    with_ref = pb.Job(id="a", kind="import", status=pb.JOB_STATUS_DONE, datasource_ref=pb.DataSourceRef(name="events"))
    struct_only = pb.Job(id="bb", kind="query", status=pb.JOB_STATUS_ERROR)
    struct_only.datasource.update({"name": "results"})
    bare = pb.Job(id="ccc", kind="query", status=pb.JOB_STATUS_WAITING)
    lines = jobs_table([with_ref, struct_only, bare]).splitlines()
    assert [line.split() for line in lines] == [
        ["ID", "KIND", "STATUS", "CREATED_AT", "DATASOURCE"],
        ["a", "import", "done", "-", "events"],
        ["bb", "query", "error", "-", "results"],
        ["ccc", "query", "waiting", "-", "-"],
    ]
    assert lines[1].index("import") == lines[0].index("KIND")  # columns line up under their headers


def test_details_leave_the_data_source_object_to_datasource_show() -> None:
    job = pb.Job(id="j", kind="delete_data", status=pb.JOB_STATUS_DONE)
    job.result.update({"rows_affected": 2, "datasource": {"id": "t_1", "name": "events", "cluster": "default"}})
    result_lines = [line for line in details_text(job).splitlines() if line.startswith("result:")]
    assert [line.split(":", 1)[1].strip() for line in result_lines] == ['{"rows_affected": 2}']

    only_datasource = pb.Job(id="j", kind="import")
    only_datasource.result.update({"datasource": {"id": "t_1", "name": "events"}})
    assert "result:" not in details_text(only_datasource)


def test_data_sources_render_from_partial_or_odd_json() -> None:
    """The REST JSON is read defensively: missing or mistyped fields show as "-", never a crash."""
    full = {
        "name": "events",
        "id": "t_1",
        "type": "csv",
        "updated_at": "2026-06-01 12:00:00.123456",
        "statistics": {"row_count": 1234, "bytes": 2_500_000},
    }
    odd = {"name": "odd", "statistics": {"row_count": True, "bytes": "many"}, "columns": "not a list"}
    header, first, second = datasources_table([full, odd]).splitlines()
    assert header.split() == ["NAME", "ID", "TYPE", "ROWS", "BYTES", "UPDATED_AT"]
    assert first.split() == ["events", "t_1", "csv", "1,234", "2.5", "MB", "2026-06-01", "12:00:00"]
    assert second.split() == ["odd", "-", "-", "-", "-", "-"]

    shown = dict(line.split(":", 1) for line in datasource_text(odd).splitlines())
    assert {k: v.strip() for k, v in shown.items()} == {
        "name": "odd",
        "id": "-",
        "type": "-",
        "created_at": "-",
        "updated_at": "-",
        "rows": "-",
        "bytes": "-",
    }
