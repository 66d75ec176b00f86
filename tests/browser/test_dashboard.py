"""The dashboard in a real browser (headless Chromium) against real jobsd processes.

Each test reads as what a person does and sees: paste a token, watch a job appear and run to done without
reloading, cancel from the job's page, get the API's refusal inline, be told a token has no rights. The tab
fixture also checks, for every test, that no URL the browser requested carried the token.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from jobsd_client import pb

from .support import Jobsd, Tab

IMPORT_FIELDS = {
    "datasource": {"id": "t_events", "name": "events", "engine": {"engine": "MergeTree", "sorting_key": "date"}},
    "url": "https://example.com/events.csv",
    "mode": "append",
}
POPULATE_FIELDS = {
    "datasource": {"id": "t_events_by_day", "name": "events_by_day"},
    "pipe_id": "t_pipe_events_by_day",
    "pipe_name": "events_by_day",
    "params": {"sql": "SELECT date, count() AS n FROM events GROUP BY date", "partition_by": "date"},
}


def _no_reload_marker(tab: Tab) -> None:
    tab.page.evaluate("window.__sameDocument = true")


def _assert_not_reloaded(tab: Tab) -> None:
    assert tab.page.evaluate("window.__sameDocument === true"), "the page was reloaded"


def test_a_new_job_appears_in_the_list_live_and_runs_to_done(tab: Tab, jobsd: Jobsd) -> None:
    # Some history first, so the counts and the chart have something to show.
    done = jobsd.create("import", **IMPORT_FIELDS)
    jobsd.finish(jobsd.claim(done), statistics=pb.Statistics(bytes=116_499, row_count=2_996))
    failed = jobsd.create(
        "copy",
        datasource={"id": "t_copy", "name": "events_copy"},
        pipe_name="copy_events",
        query_sql="SELECT * FROM events",
    )
    jobsd.finish(jobsd.claim(failed), status=pb.JOB_STATUS_ERROR, error="Table events_copy is read-only")
    jobsd.cancel(jobsd.create("query", query_sql="SELECT count() FROM events").id)

    tab.open()
    expect(tab.page.get_by_role("heading", name="Open the jobs dashboard")).to_be_visible()
    tab.screenshot("token")
    tab.sign_in()
    expect(tab.page.get_by_role("heading", name="Jobs", level=1)).to_be_visible()
    expect(tab.page.locator("#live")).to_have_text("live")
    expect(tab.row(done.id)).to_contain_text("done")
    done_count = tab.page.locator('.count[data-status="done"] .n')
    done_before = int(done_count.inner_text())
    _no_reload_marker(tab)

    job = jobsd.create("populateview", **POPULATE_FIELDS)
    row = tab.row(job.id)
    expect(row).to_be_visible()
    expect(row).to_contain_text("waiting")
    expect(tab.page.locator("tbody tr").first).to_have_attribute("data-id", job.id)  # newest first

    claim = jobsd.claim(job)
    expect(row.locator(".badge")).to_have_text("working")
    jobsd.heartbeat(claim, progress_percentage=40.0)
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "40")
    tab.screenshot("list")
    jobsd.heartbeat(claim, progress_percentage=100.0)
    expect(row.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "100")
    jobsd.finish(claim)
    expect(row.locator(".badge")).to_have_text("done")
    expect(done_count).to_have_text(str(done_before + 1))
    _assert_not_reloaded(tab)


def test_the_job_page_follows_its_job_to_done(tab: Tab, jobsd: Jobsd) -> None:
    job = jobsd.create("populateview", **POPULATE_FIELDS)
    tab.open(hash_route=f"#/jobs/{job.id}")
    tab.sign_in()
    page = tab.page
    expect(page.get_by_role("heading", name="populateview job")).to_be_visible()
    expect(page.locator(".head-status .badge")).to_have_text("waiting")
    expect(page.locator('[data-field="pipe_name"]')).to_have_text("events_by_day")
    _no_reload_marker(tab)

    claim = jobsd.claim(job)
    partitions = [f"q_2026_11_{day:02d}" for day in range(1, 8)]
    for finished in range(1, len(partitions) + 1):
        queries = [
            pb.QueryProgress(query_id=q, status="done" if i < finished else "working" if i == finished else "waiting")
            for i, q in enumerate(partitions)
        ]
        jobsd.heartbeat(claim, progress_percentage=100.0 * finished / len(partitions), queries=queries)
        if finished == 3:
            bar = page.get_by_role("progressbar", name="Job progress")
            expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^42\.85"))
            expect(page.locator("table.queries tbody tr")).to_have_count(7)
            expect(page.locator("[data-section=queries] .sub")).to_have_text("3 of 7 done")
    jobsd.finish(claim, queries=[pb.QueryProgress(query_id=q, status="done") for q in partitions])

    expect(page.locator(".head-status .badge")).to_have_text("done")
    expect(page.get_by_role("progressbar", name="Job progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("[data-section=queries] .sub")).to_have_text("7 of 7 done")
    expect(page.locator(".timeline li .badge")).to_have_text(["waiting", "working", "done"])
    expect(page.locator("#live")).to_have_text("finished")
    expect(page.get_by_role("button", name="Cancel job")).to_be_hidden()
    _assert_not_reloaded(tab)


def test_an_import_page_shows_its_figures_and_error_lines(tab: Tab, jobsd: Jobsd) -> None:
    job = jobsd.create("import", **IMPORT_FIELDS)
    jobsd.finish(
        jobsd.claim(job),
        statistics=pb.Statistics(bytes=116_499, row_count=2_996),
        quarantine_rows=2,
        invalid_lines=2,
        errors=[
            "line 1042: expected 5 columns, got 3",
            "line 2210: unterminated quoted field",
            "2 rows did not match the schema and went to events_quarantine",
        ],
    )
    tab.open(hash_route=f"#/jobs/{job.id}")
    tab.sign_in()
    page = tab.page

    expect(page.locator('[data-field="statistics"]')).to_have_text("2,996 rows · 116.5 KB")
    expect(page.locator('[data-field="quarantine_rows"]')).to_have_text("2")
    expect(page.locator('[data-field="invalid_lines"]')).to_have_text("2")
    expect(page.locator('[data-field="errors"] li')).to_have_count(3)
    expect(page.locator('[data-field="url"]')).to_have_text("https://example.com/events.csv")
    expect(page.locator('[data-field="mode"]')).to_have_text("append")
    for field in (
        "kind",
        "id",
        "job_id",
        "status",
        "created_at",
        "updated_at",
        "started_at",
        "is_cancellable",
        "import_id",
    ):
        expect(page.locator(f'[aria-labelledby=details-title] dd[data-field="{field}"]')).to_have_count(1)
    expect(page.locator(".timeline li .badge")).to_have_text(["waiting", "working", "done"])
    tab.screenshot("job")


def test_a_waiting_job_is_cancelled_from_its_page(tab: Tab, jobsd: Jobsd) -> None:
    job = jobsd.create("import", **IMPORT_FIELDS)
    tab.open(hash_route=f"#/jobs/{job.id}")
    tab.sign_in()
    page = tab.page
    cancel = page.get_by_role("button", name="Cancel job")
    expect(cancel).to_be_visible()
    expect(page.get_by_role("button", name="Retry job")).to_be_hidden()

    cancel.click()

    expect(page.locator(".head-status .badge")).to_have_text("cancelled")
    expect(cancel).to_be_hidden()
    expect(page.get_by_role("button", name="Retry job")).to_be_visible()  # a cancelled job may be retried
    expect(page.locator(".timeline li .badge")).to_have_text(["waiting", "cancelled"])
    assert jobsd.get(job.id).status == pb.JOB_STATUS_CANCELLED


def test_a_refused_action_shows_the_apis_error(tab: Tab, jobsd: Jobsd) -> None:
    job = jobsd.create("import", **IMPORT_FIELDS)
    page = tab.page
    # The page does not hear of the cancel made elsewhere (its stream is cut), so its button is out of date.
    page.route(re.compile(r"/v0/jobs/[^/]+/events"), lambda route: route.abort())
    tab.open(hash_route=f"#/jobs/{job.id}")
    tab.sign_in()
    cancel = page.get_by_role("button", name="Cancel job")
    expect(cancel).to_be_visible()
    revision = jobsd.cancel(job.id).revision

    cancel.click()

    alert = page.locator(".job-head [role=alert]")
    expect(alert).to_have_text("Cancel refused: Job is not in cancellable status")
    expect(page.locator(".head-status .badge")).to_have_text("cancelled")  # then re-read: the job as it is
    assert jobsd.get(job.id).revision == revision  # the refused cancel changed nothing


def test_a_token_without_rights_gets_a_page_saying_so(tab: Tab, jobsd: Jobsd) -> None:
    worker_only = jobsd.token("JOBS:EXECUTE", name="executor-only")
    tab.open()
    tab.sign_in(worker_only)
    page = tab.page

    expect(page.get_by_role("heading", name="This token cannot read jobs")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("The token lacks the scope to read jobs")
    expect(page.locator(".no-rights")).to_contain_text("JOBS:EXECUTE")
    page.get_by_role("button", name="Use another token").click()
    expect(page.get_by_label("Token")).to_be_focused()


def test_an_unknown_token_is_refused_on_the_token_page(tab: Tab) -> None:
    tab.open()
    tab.sign_in("jobsd_nobody-made-this-token")

    expect(tab.page.get_by_role("alert")).to_contain_text("invalid authentication token")
    expect(tab.page.get_by_label("Token")).to_be_visible()
    assert tab.page.evaluate("sessionStorage.length") == 0


def test_a_reader_sees_no_cancel_button(tab: Tab, jobsd: Jobsd) -> None:
    job = jobsd.create("import", **IMPORT_FIELDS)
    reader = jobsd.token("DATASOURCES:READ:events", name="events-reader")
    tab.open(hash_route=f"#/jobs/{job.id}")
    tab.sign_in(reader)
    page = tab.page

    expect(page.locator(".head-status .badge")).to_have_text("waiting")
    expect(page.locator('[aria-labelledby=details-title] dd[data-field="is_cancellable"]')).to_have_text("yes")
    expect(page.get_by_role("button", name="Cancel job")).to_have_count(0)
    expect(page.locator(".job-head p.note")).to_contain_text("can read jobs but not cancel or retry")
    expect(page.locator(".timeline li .badge")).to_have_text(["waiting"])  # its jobs_log rows, job_id=


def test_the_token_stays_in_session_storage_and_out_of_every_url(tab: Tab, jobsd: Jobsd) -> None:
    job = jobsd.create("import", **IMPORT_FIELDS)
    page = tab.page
    tab.open()
    tab.sign_in()
    expect(tab.row(job.id)).to_be_visible()
    page.get_by_label("Kind").select_option("import")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"#/\?kind=import$"))
    tab.row(job.id).get_by_role("link").click()
    expect(page.get_by_role("button", name="Cancel job")).to_be_visible()
    page.get_by_role("button", name="Cancel job").click()
    expect(page.locator(".head-status .badge")).to_have_text("cancelled")
    page.reload()  # a reload keeps the token (sessionStorage), with no prompt
    expect(page.locator(".head-status .badge")).to_have_text("cancelled")

    api_calls = [url for url in tab.requested if "/v0/" in url]
    assert any("/v0/jobs/events" in url for url in api_calls) and any(
        f"/v0/jobs/{job.id}/events" in url for url in api_calls
    )
    assert not [url for url in tab.requested if jobsd.admin in url]
    assert tab.context.cookies() == []
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("sessionStorage.getItem('jobsd.token')") == jobsd.admin


@pytest.mark.parametrize("tab", [{"width": 390, "height": 844}], indirect=True)
def test_at_phone_width_with_the_keyboard_only(tab: Tab, jobsd: Jobsd) -> None:
    job = jobsd.create(
        "copy",
        datasource={"id": "t_copy", "name": "events_copy"},
        pipe_name="copy_events",
        query_sql="SELECT * FROM events",
    )
    page = tab.page
    tab.open()
    token = page.get_by_label("Token")
    expect(token).to_be_focused()  # the token page puts the cursor in the field
    tab.tokens.append(jobsd.admin)
    page.keyboard.type(jobsd.admin)
    page.keyboard.press("Enter")
    link = tab.row(job.id).get_by_role("link")
    expect(link).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
    table = page.locator(".table-wrap")
    assert table.evaluate("e => e.scrollWidth <= e.clientWidth"), "the jobs table scrolls sideways"
    tab.screenshot("list-phone")

    link.focus()
    page.keyboard.press("Enter")
    cancel = page.get_by_role("button", name="Cancel job")
    expect(cancel).to_be_visible()
    cancel.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".head-status .badge")).to_have_text("cancelled")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"


def test_the_standalone_gateway_serves_the_same_live_dashboard(tab: Tab, jobsd: Jobsd, standalone_base: str) -> None:
    tab.open(standalone_base)
    tab.sign_in()
    expect(tab.page.locator("#live")).to_have_text("live")

    job = jobsd.create("query", query_sql="SELECT 42")

    expect(tab.row(job.id)).to_contain_text("waiting")
    jobsd.cancel(job.id)
    expect(tab.row(job.id).locator(".badge")).to_have_text("cancelled")
    assert all(url.startswith(standalone_base) for url in tab.requested), "the page talks to its own origin only"


def test_the_list_pages_with_the_apis_cursor(tab: Tab, jobsd: Jobsd) -> None:
    jobs = [jobsd.create("query", query_sql=f"SELECT {n}", pipe_name="paging_pipe") for n in range(53)]
    newest_first = [job.id for job in reversed(jobs)]
    tab.open(hash_route="#/?pipe_name=paging_pipe")
    tab.sign_in()
    page = tab.page
    rows = page.locator("tbody tr")

    expect(rows).to_have_count(50)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == newest_first[:50]
    page.get_by_role("link", name="Older jobs →").click()
    expect(rows).to_have_count(3)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == newest_first[50:]
    expect(page.get_by_role("link", name="Older jobs →")).to_have_count(0)
    expect(page.locator('.count[data-status="waiting"] .n')).to_have_text("53")  # the counts cover the window
    page.get_by_role("link", name="← Newest").click()
    expect(rows).to_have_count(50)
    assert any("page_token=" in url for url in tab.requested if "/v0/jobs?" in url)
