// A job's page: every field of its detail as the API renders it for its kind, a live progress bar (the job's own
// stream, GET /v0/jobs/{id}/events), queries as a table, the figures and error lines, the jobs_log timeline, and
// cancel / retry when both the token and the job allow them.

import { api, canWrite } from "./api.js";
import {
  TERMINAL,
  ageText,
  bytesText,
  clear,
  durationText,
  h,
  numberText,
  parseTime,
  progressBar,
  setProgress,
  statusBadge,
  timeText,
} from "./dom.js";
import { EventStream } from "./stream.js";

// Fields shown in their own cards rather than in the details list.
const CARD_FIELDS = new Set(["queries", "statistics", "quarantine_rows", "invalid_lines", "errors", "error",
  "processed_data", "datasource"]);
const TIME_FIELDS = new Set(["created_at", "updated_at", "started_at"]);
const CODE_FIELDS = new Set(["id", "job_id", "import_id", "query_id", "pipe_id"]);

function plain(value) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "null");
  if (typeof value === "object") return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
  return String(value);
}

function fieldValue(key, value) {
  if (value === null || value === undefined) return plain(value);
  if (key === "status") return statusBadge(value);
  if (TIME_FIELDS.has(key)) return [h("time", {}, timeText(value)), " ", h("span", { class: "muted" }, ageText(value))];
  if (key === "is_cancellable") return value ? "yes" : "no";
  if (key === "progress_percentage") return progressBar(value, { label: "Progress" });
  if (key === "query_sql" || key === "delete_condition") return h("pre", { class: "sql" }, value);
  if (key === "url") return h("code", { class: "wrap" }, value);
  if (key === "result" && typeof value === "object" && !Object.keys(value).length) {
    return h("span", { class: "muted" }, "{}");
  }
  if (CODE_FIELDS.has(key)) return h("code", { class: "wrap" }, value);
  return plain(value);
}

function definitionList(entries) {
  return h("dl", { class: "fields" }, entries.map(([key, value]) => [
    h("dt", {}, key),
    h("dd", { "data-field": key }, fieldValue(key, value)),
  ]));
}

export class JobView {
  constructor(root, id, ctx) {
    this.root = root;
    this.id = id;
    this.ctx = ctx;
    this.job = null;
    this.timeline = new Map(); // revision -> {status, updated_at, error}
    this.timelineError = null;
    this.openDetails = new Set();
    this.mayWrite = canWrite(ctx.workspace.scopes);
    clear(root).append(h("p", { class: "note" }, "Loading the job…"));
    this.load();
  }

  destroy() {
    if (this.stream) this.stream.close();
  }

  async load() {
    try {
      this.job = await api(`/v0/jobs/${encodeURIComponent(this.id)}`);
    } catch (error) {
      if (this.ctx.refused(error)) return;
      const text = error.status === 404
        ? `No job with id ${this.id} in the last 48 hours.`
        : error.status === 403
          ? `This token cannot see this job: ${error.message}`
          : error.message;
      clear(this.root).append(
        h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, "Job not shown")),
        h("p", { class: "error-box", role: "alert" }, text),
        h("p", {}, h("a", { href: "#/" }, "← All jobs")));
      return;
    }
    this.layout();
    this.update();
    this.loadTimeline();
    if (!TERMINAL.has(this.job.status)) {
      this.stream = new EventStream(`/v0/jobs/${encodeURIComponent(this.id)}/events`, {
        onEvent: (type, data, revision) => this.onEvent(type, data, revision),
        onState: (state, error) => this.ctx.setLive(state, error),
        isLast: (_type, data) => TERMINAL.has(data.status),
      });
    } else {
      this.ctx.setLive("ended");
    }
  }

  async loadTimeline() {
    try {
      const body = await api("/v0/jobs_log", { params: { job_id: this.id, limit: 100 } });
      for (const row of body.data) {
        this.timeline.set(row.revision, { status: row.status, updated_at: row.updated_at, error: row.error });
      }
      this.timelineError = null;
    } catch (error) {
      this.timelineError = error.message;
    }
    this.renderTimeline();
  }

  onEvent(type, data, revision) {
    this.job = { ...this.job, ...data };
    if (type === "status") {
      this.timeline.set(Number(revision), { status: data.status, updated_at: data.updated_at, error: data.error });
      this.renderTimeline();
    }
    this.update();
  }

  // ------------------------------------------------------------------ layout

  layout() {
    const job = this.job;
    this.title = h("h1", { tabindex: "-1" }, `${job.kind} job`);
    this.headStatus = h("span", { class: "head-status" });
    // Built at the job's progress: a bar drawn at 0 first would visibly slide up to it.
    const initial = job.status === "done" ? 100 : job.progress_percentage || 0;
    this.bar = progressBar(initial, { label: "Job progress", large: true });
    this.barNote = h("span", { class: "note" });
    this.times = h("p", { class: "times" });
    this.cancelButton = h("button", { type: "button", class: "danger", hidden: true, onclick: () => this.act("cancel") },
      "Cancel job");
    this.retryButton = h("button", { type: "button", hidden: true, onclick: () => this.act("retry") }, "Retry job");
    this.actionError = h("p", { class: "error-box", role: "alert", hidden: true });
    this.actionNote = h("p", { class: "note" },
      this.mayWrite ? "" : "This token can read jobs but not cancel or retry them (that needs ADMIN, JOBS:CREATE "
        + "or DATASOURCES:CREATE).");
    this.details = h("div", {});
    this.outcome = h("div", {});
    this.queries = h("div", {});
    this.datasource = h("div", {});
    this.timelineBox = h("div", {});
    this.raw = h("pre", { class: "json" });
    clear(this.root).append(
      h("p", { class: "crumbs" }, h("a", { href: "#/" }, "← All jobs")),
      h("section", { class: "card job-head", "aria-labelledby": "job-title" },
        h("div", { class: "head-line" }, this.title, this.headStatus),
        h("p", { class: "job-id" }, h("code", { id: "job-title-id" }, job.id)),
        h("div", { class: "progress-line" }, this.bar, this.barNote),
        this.times,
        h("div", { class: "actions" }, this.cancelButton, this.retryButton),
        this.actionError, this.actionNote),
      h("div", { class: "grid" },
        h("section", { class: "card", "aria-labelledby": "details-title" },
          h("h2", { id: "details-title" }, "Details"), this.details),
        h("div", { class: "stack" },
          h("section", { class: "card", "aria-labelledby": "outcome-title" },
            h("h2", { id: "outcome-title" }, "Figures and errors"), this.outcome),
          h("section", { class: "card", "aria-labelledby": "timeline-title" },
            h("h2", { id: "timeline-title" }, "Timeline"), this.timelineBox))),
      h("section", { class: "card", "aria-labelledby": "queries-title", "data-section": "queries" },
        h("h2", { id: "queries-title" }, "Queries"), this.queries),
      h("section", { class: "card", "aria-labelledby": "ds-title" },
        h("h2", { id: "ds-title" }, "Data source"), this.datasource),
      h("details", { class: "card raw" }, h("summary", {}, "The detail as JSON"), this.raw),
    );
    this.title.id = "job-title";
    this.title.focus();
  }

  update() {
    const job = this.job;
    document.title = `jobsd · ${job.kind} ${job.id.slice(0, 8)} · ${job.status}`;
    clear(this.headStatus).append(statusBadge(job.status));
    const percent = job.status === "done" ? 100 : job.progress_percentage;
    this.bar.hidden = typeof percent !== "number";
    if (typeof percent === "number") setProgress(this.bar, percent);
    this.barNote.textContent = typeof percent === "number" ? "" : job.status === "waiting"
      ? "Queued: waiting for a worker" : TERMINAL.has(job.status) ? "" : "Running";
    const created = parseTime(job.created_at);
    const took = TERMINAL.has(job.status)
      ? `took ${durationText(parseTime(job.updated_at) - created)}`
      : `running for ${durationText(Date.now() - created)}`;
    this.times.textContent = `Created ${timeText(job.created_at)} · ${took}`;
    this.cancelButton.hidden = !(this.mayWrite && job.is_cancellable);
    this.retryButton.hidden = !(this.mayWrite && (job.status === "error" || job.status === "cancelled"));
    this.renderDetails();
    this.renderOutcome();
    this.renderQueries();
    this.renderDatasource();
    this.raw.textContent = JSON.stringify(job, null, 2);
  }

  renderDetails() {
    const entries = Object.entries(this.job).filter(([key]) => !CARD_FIELDS.has(key));
    clear(this.details).append(definitionList(entries));
  }

  renderOutcome() {
    const job = this.job;
    const rows = [];
    if ("statistics" in job) {
      const st = job.statistics;
      rows.push(["statistics", st ? `${numberText(st.row_count)} rows · ${bytesText(st.bytes)}` : null]);
    }
    for (const key of ["quarantine_rows", "invalid_lines"]) if (key in job) rows.push([key, numberText(job[key])]);
    const box = clear(this.outcome);
    if (rows.length) {
      box.append(h("dl", { class: "fields figures" }, rows.map(([key, value]) => [
        h("dt", {}, key),
        h("dd", { "data-field": key, class: key !== "statistics" && job[key] > 0 ? "warn" : "" },
          value === null ? h("span", { class: "muted" }, "null (until the job is done)") : value),
      ])));
    }
    if ("processed_data" in job) {
      const pd = job.processed_data;
      box.append(h("table", { class: "mini", "data-field": "processed_data" },
        h("caption", {}, "processed_data"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), h("th", { scope: "col" }, "rows"),
          h("th", { scope: "col" }, "bytes"))),
        h("tbody", {},
          h("tr", {}, h("th", { scope: "row" }, "read"), h("td", {}, numberText(pd.read_rows)),
            h("td", {}, bytesText(pd.read_bytes))),
          h("tr", {}, h("th", { scope: "row" }, "written"), h("td", {}, numberText(pd.written_rows)),
            h("td", {}, bytesText(pd.written_bytes))))));
    }
    if (job.error) box.append(h("p", { class: "error-line", "data-field": "error" }, h("strong", {}, "error: "), job.error));
    if (job.errors && job.errors.length) {
      box.append(h("p", { class: "sub" }, `errors (${job.errors.length})`),
        h("ul", { class: "error-lines", "data-field": "errors" }, job.errors.map((line) => h("li", {}, line))));
    }
    if (!box.firstChild) box.append(h("p", { class: "muted" }, "No figures for this kind of job."));
  }

  renderQueries() {
    const section = this.queries.closest("section");
    const queries = this.job.queries;
    section.hidden = !Array.isArray(queries);
    if (!Array.isArray(queries)) return;
    const done = queries.filter((q) => q.status === "done").length;
    clear(this.queries).append(
      h("p", { class: "sub" }, queries.length ? `${done} of ${queries.length} done` : "No query has started yet."),
      queries.length ? h("div", { class: "table-wrap" }, h("table", { class: "mini queries" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "#"), h("th", { scope: "col" }, "query_id"),
          h("th", { scope: "col" }, "status"))),
        h("tbody", {}, queries.map((q, i) => h("tr", {},
          h("td", {}, String(i + 1)), h("td", {}, h("code", {}, q.query_id)), h("td", {}, statusBadge(q.status))))))) : null);
  }

  renderDatasource() {
    const ds = this.job.datasource;
    const box = clear(this.datasource);
    if (!ds) {
      box.append(h("p", { class: "muted" }, "null"));
      return;
    }
    const more = Object.entries(ds).filter(([key]) => key !== "id" && key !== "name");
    const details = h("details", { "data-key": "datasource" },
      h("summary", {}, `Every field (${more.length + 2})`), definitionList(Object.entries(ds)));
    if (this.openDetails.has("datasource")) details.open = true;
    details.addEventListener("toggle", () => {
      if (details.open) this.openDetails.add("datasource");
      else this.openDetails.delete("datasource");
    });
    box.append(h("p", {}, h("strong", {}, ds.name), " ", h("code", {}, ds.id)), details);
  }

  renderTimeline() {
    const box = clear(this.timelineBox);
    if (this.timelineError) box.append(h("p", { class: "note" }, `jobs_log: ${this.timelineError}`));
    const entries = [...this.timeline.entries()].sort((a, b) => a[0] - b[0]);
    if (!entries.length) return;
    let previous = null;
    box.append(h("ol", { class: "timeline" }, entries.map(([revision, entry]) => {
      const at = parseTime(entry.updated_at);
      const step = previous === null ? "" : `+${durationText(at - previous)}`;
      previous = at;
      return h("li", { "data-revision": String(revision) },
        statusBadge(entry.status),
        h("time", {}, timeText(entry.updated_at)),
        h("span", { class: "muted" }, step),
        entry.error ? h("p", { class: "error-line" }, entry.error) : null);
    })));
  }

  // ------------------------------------------------------------------ actions

  async act(action) {
    const button = action === "cancel" ? this.cancelButton : this.retryButton;
    button.disabled = true;
    this.actionError.hidden = true;
    try {
      const job = await api(`/v0/jobs/${encodeURIComponent(this.id)}/${action}`, { method: "POST" });
      if (action === "retry") {
        this.ctx.navigate(`#/jobs/${job.id}`);
        return;
      }
      if (isNewerDetail(job, this.job)) this.job = job;
      this.update();
    } catch (error) {
      if (this.ctx.refused(error)) return;
      this.actionError.textContent = `${action === "cancel" ? "Cancel" : "Retry"} refused: ${error.message}`;
      this.actionError.hidden = false;
      // The page was behind (the stream may be reconnecting): show the job as it is now.
      try {
        this.job = await api(`/v0/jobs/${encodeURIComponent(this.id)}`);
        this.update();
      } catch {
        // the refusal above is what matters
      }
    } finally {
      button.disabled = false;
    }
  }
}

function isNewerDetail(incoming, known) {
  return incoming.updated_at >= known.updated_at;
}
