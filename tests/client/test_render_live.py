"""What `jobsctl` prints of a job in motion, as pure functions: the elapsed time, rate and ETA of `watch`, the bytes
figure that never drops at done, a restarted run, the live table of `ls --follow`, and the query summary of
`details`. Times are given (the jobs' own and `now`), never read from a clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobsd_client import pb
from jobsd_client._render import (
    ProgressClock,
    clock_text,
    details_text,
    follow_header,
    follow_row,
    follow_table,
    job_figures,
    progress_line,
    queries_summary,
)
from jobsd_client.events import EventType, JobEvent

T0 = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)


def at(job: pb.Job, seconds: float, status: pb.JobStatus.ValueType = pb.JOB_STATUS_WORKING, **figures: int) -> pb.Job:
    state = pb.Job()
    state.CopyFrom(job)
    state.status = status
    state.updated_at.FromDatetime(T0 + timedelta(seconds=seconds))
    if "percentage" in figures:
        state.progress_percentage = figures.pop("percentage")
    if figures:
        state.processed_data.CopyFrom(pb.ProcessedData(**figures))
    return state


def seen(clock: ProgressClock, state: pb.Job) -> None:
    """The watch sees `state` at its `updated_at` (the test's way of saying when)."""
    clock.update(state, state.updated_at.ToDatetime(tzinfo=UTC))


def an_import() -> pb.Job:
    job = pb.Job(id="4f234d28-0000-4000-8000-000000000001", kind="import", url="https://example.com/e.csv")
    job.created_at.FromDatetime(T0)
    job.started_at.FromDatetime(T0)
    return job


def test_clock_text_reads_as_a_watch_does() -> None:
    assert [clock_text(s) for s in (0, 7, 61, 750, 3723, -5)] == ["0:00", "0:07", "1:01", "12:30", "1:02:03", "0:00"]


def test_the_rate_and_eta_come_from_the_recent_states_of_the_current_run() -> None:
    clock = ProgressClock(window=10.0)
    job = an_import()
    assert clock.text(job, T0) == "elapsed 0:00"
    states = [
        at(job, 0),
        at(job, 2, percentage=10, read_bytes=2_000_000),
        at(job, 4, percentage=20, read_bytes=4_000_000),
    ]
    for state in states:
        seen(clock, state)
    # 4 MB in 4 s; 20 % in 4 s leaves 80 % for 16 s.
    assert clock.text(states[-1], T0 + timedelta(seconds=5)) == "elapsed 0:05  1.0 MB/s  ETA 0:16"
    # States older than the window drop out but the last one before it (at 4 s): 1 MB in 12 s, 20 % in 12 s.
    later = [at(job, 14, percentage=30, read_bytes=4_500_000), at(job, 16, percentage=40, read_bytes=5_000_000)]
    for state in later:
        seen(clock, state)
    assert clock.text(later[-1], T0 + timedelta(seconds=16)) == "elapsed 0:16  83.3 kB/s  ETA 0:36"


def test_a_restarted_run_starts_its_rate_over_and_the_line_says_it_restarted() -> None:
    clock = ProgressClock()
    job = an_import()
    for state in (at(job, 0), at(job, 2, percentage=47, read_bytes=8_600_000)):
        seen(clock, state)
    again = at(job, 30, percentage=5, read_bytes=100_000)
    again.returns = 1
    again.note = "run 1 ended unfinished: its worker w1 stopped heartbeating (attempt 1 of 3); the next run starts over"
    seen(clock, again)
    timing = clock.text(again, T0 + timedelta(seconds=31))
    assert timing == "elapsed 0:31"  # no rate from the other run's figures
    line = progress_line(again, 200, ascii_only=True, timing=timing)
    assert "5.0%  working  run 2 (restarted)  elapsed 0:31" in line
    details = details_text(again)
    assert "returns:" in details and f"note:             {again.note}" in details


def test_a_done_job_shows_its_time_and_rate_without_an_eta() -> None:
    clock = ProgressClock()
    job = an_import()
    seen(clock, at(job, 0))
    done = at(job, 8, pb.JOB_STATUS_DONE, percentage=100, read_bytes=8_000_000, written_bytes=7_000_000)
    seen(clock, done)
    assert clock.text(done, T0 + timedelta(hours=1)) == "elapsed 0:08  1.0 MB/s"


def test_an_import_s_bytes_are_the_source_s_while_it_runs_and_once_done() -> None:
    job = an_import()
    running = at(job, 1, percentage=80, read_bytes=8_600_000, written_rows=900)
    done = at(job, 2, pb.JOB_STATUS_DONE, percentage=100, read_bytes=10_750_000, written_rows=1000)
    done.processed_data.written_bytes = 7_000_000  # DuckDB's size of what it stored: another measure
    assert job_figures(running) == (900, 8_600_000)
    assert job_figures(done) == (1000, 10_750_000)
    copy = pb.Job(id="c", kind="copy")
    copy.processed_data.CopyFrom(pb.ProcessedData(read_bytes=5, written_rows=2, written_bytes=70))
    assert job_figures(copy) == (2, 70)  # a copy's are what it wrote


def test_the_follow_table_lines_up_and_keeps_the_newest_that_fit() -> None:
    jobs = []
    for i in range(5):
        job = pb.Job(id=f"{i:08d}-0000-4000-8000-000000000000", kind="import", status=pb.JOB_STATUS_WAITING)
        job.created_at.FromDatetime(T0 + timedelta(minutes=i))
        job.datasource_ref.name = f"ds{i}"
        jobs.append(job)
    jobs[4].status = pb.JOB_STATUS_WORKING
    jobs[4].returns = 1
    assert follow_header().split() == ["ID", "KIND", "STATUS", "PROGRESS", "ROWS", "BYTES", "CREATED_AT", "DATASOURCE"]
    row = follow_row(jobs[4])
    assert row.split() == [jobs[4].id, "import", "working*", "0.0%", "-", "-", "2026-12-02", "05:04:00", "ds4"]
    assert follow_header().index("DATASOURCE") == row.index("ds4")
    table = follow_table(jobs, height=4).splitlines()
    assert [line.split()[0] for line in table] == ["ID", jobs[4].id, jobs[3].id, "..."]
    assert table[-1] == "... and 3 more"


def test_queries_are_summarised_by_status_and_the_failed_ones_listed() -> None:
    job = pb.Job(id="p", kind="populateview", progress_percentage=97.8)
    statuses = ["done"] * 880 + ["working"] * 15 + ["error"] * 4 + ["cancelled"]
    job.queries.extend(pb.QueryProgress(query_id=f"q{i}", status=s) for i, s in enumerate(statuses))
    assert queries_summary(job.queries) == "900 (880 done, 15 working, 4 error, 1 cancelled)"
    lines = details_text(job).splitlines()
    assert [line.split()[1] for line in lines if line.startswith("query:")] == ["q895", "q896", "q897", "q898", "q899"]
    assert sum(1 for line in details_text(job, all_queries=True).splitlines() if line.startswith("query:")) == 900


def test_events_carry_their_type_by_name_and_still_compare_as_the_protobuf_ints() -> None:
    message = pb.JobEvent(type=pb.JobEvent.TYPE_STATUS, revision=3)
    message.job.id = "j"
    event = JobEvent(message)
    assert event.type is EventType.STATUS and int(event.type) == int(pb.JobEvent.TYPE_STATUS) == 2
    assert str(event.type) == "status" and event.type.name == "STATUS"
    assert event.has_job and event.HasField("job") and event.job.id == "j" and event.revision == 3
    assert repr(event) == "JobEvent(type=status, job='j', revision=3)"
    synced = JobEvent(pb.JobEvent(type=pb.JobEvent.TYPE_SYNCED))
    assert synced.type is EventType.SYNCED and not synced.has_job and synced.resumes_at is None
    assert (
        JobEvent(pb.JobEvent(type=pb.JobEvent.Type.ValueType(99))).type is EventType.UNSPECIFIED
    )  # a newer server's type
