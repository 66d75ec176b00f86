// The jobs list: the 48 h window with the filters of GET /v0/jobs, newest first, paged with the API's cursor, and
// kept live by one stream (GET /v0/jobs/events): new jobs appear, statuses and progress change in place. Counts
// by status and the chart come from a read of the window, then from the same stream.

import { api } from "./api.js";
import { statusChart } from "./chart.js";
import {
  KINDS,
  STATUSES,
  TERMINAL,
  ageText,
  clear,
  durationText,
  h,
  parseTime,
  progressBar,
  setProgress,
  statusBadge,
  timeText,
} from "./dom.js";
import { EventStream } from "./stream.js";

const PAGE_SIZE = 50;
// The counts and the chart read at most this many pages of 100 jobs (the newest 3,000 of the window).
const SCAN_PAGES = 30;
const WINDOW_MS = 48 * 3600e3;
export const FILTER_KEYS = ["kind", "status", "pipe_name", "pipe_id", "created_after", "created_before"];

// Whether `incoming` is a later state of the job than `known`: by revision when both carry one (stream events),
// else by updated_at (a page of GET /v0/jobs has no revision; updated_at moves on every status change).
function isNewer(incoming, known) {
  if (!known) return true;
  if (incoming.revision && known.revision) return incoming.revision > known.revision;
  return incoming.updated_at >= known.updated_at;
}

export function listHash(filters, page = "") {
  const params = new URLSearchParams();
  for (const key of FILTER_KEYS) if (filters[key]) params.set(key, filters[key]);
  if (page) params.set("page", page);
  const text = params.toString();
  return text ? `#/?${text}` : "#/";
}

export class ListView {
  constructor(root, query, ctx) {
    this.root = root;
    this.ctx = ctx;
    this.filters = Object.fromEntries(FILTER_KEYS.map((key) => [key, query.get(key) || ""]));
    this.pageToken = query.get("page") || "";
    this.known = new Map(); // id -> the latest state seen of each job of the window (list item shape)
    this.rowIds = []; // the table's jobs, newest first
    this.rowElements = new Map();
    this.next = null;
    this.pageLoaded = false;
    this.loading = false;
    this.scanCapped = false;
    this.oldestScanned = Infinity;
    this.summaryQueued = false;
    this.render();
    this.stream = new EventStream("/v0/jobs/events", {
      params: this.streamFilters(),
      onEvent: (type, data) => this.onEvent(type, data),
      onState: (state, error) => this.onStreamState(state, error),
    });
    // Ages and the sliding window are redrawn from what is known: a timer for the clock, never a request.
    this.timer = setInterval(() => this.tick(), 30000);
  }

  destroy() {
    this.stream.close();
    clearInterval(this.timer);
    if (this.resize) this.resize.disconnect();
  }

  streamFilters() {
    // The status filter applies to the table only: the counts show every status.
    const { status, ...rest } = this.filters;
    return rest;
  }

  // ------------------------------------------------------------------ layout

  render() {
    clear(this.root);
    const f = this.filters;
    const select = (id, label, values, value) =>
      h("div", { class: "field" },
        h("label", { for: id }, label),
        h("select", { id, name: id },
          h("option", { value: "" }, "any"),
          values.map((v) => h("option", { value: v, selected: v === value }, v))));
    const input = (id, label, value, type = "text", extra = {}) =>
      h("div", { class: "field" },
        h("label", { for: id }, label),
        h("input", { id, name: id, type, value, autocomplete: "off", spellcheck: "false", ...extra }));
    this.form = h("form", { class: "filters", "aria-label": "Filter jobs", onsubmit: (e) => this.onFilter(e) },
      select("kind", "Kind", KINDS, f.kind),
      select("status", "Status", STATUSES, f.status),
      input("pipe_name", "Pipe name", f.pipe_name),
      input("pipe_id", "Pipe id", f.pipe_id),
      input("created_after", "Created after (UTC)", f.created_after, "datetime-local", { step: 60 }),
      input("created_before", "Created before (UTC)", f.created_before, "datetime-local", { step: 60 }),
      h("div", { class: "field buttons" },
        h("button", { type: "submit" }, "Apply"),
        h("button", { type: "button", class: "quiet", onclick: () => this.ctx.navigate("#/") }, "Clear")));
    this.counts = h("div", { class: "counts", role: "group", "aria-label": "Jobs by status" });
    this.chartBox = h("div", { class: "chart-box" });
    this.scanNote = h("p", { class: "note" });
    this.tbody = h("tbody", {});
    this.empty = h("p", { class: "empty", hidden: true });
    this.pager = h("nav", { class: "pager", "aria-label": "Pages" });
    this.errorBox = h("p", { class: "error-box", role: "alert", hidden: true });
    this.title = h("h1", { tabindex: "-1" }, "Jobs");
    this.root.append(
      h("div", { class: "page-head" }, this.title,
        h("p", { class: "sub" }, "The last 48 hours, newest first. Updates arrive live; nothing is polled.")),
      this.errorBox,
      this.form,
      h("section", { class: "card summary", "aria-labelledby": "summary-title" },
        h("h2", { id: "summary-title" }, "By status"),
        this.counts, this.chartBox, this.scanNote),
      h("section", { class: "card", "aria-labelledby": "jobs-title" },
        h("h2", { id: "jobs-title" }, this.pageToken ? "Jobs (older page)" : "Jobs"),
        h("div", { class: "table-wrap" },
          h("table", { class: "jobs" },
            h("caption", { class: "sr-only" }, "Jobs, newest first"),
            h("thead", {}, h("tr", {},
              h("th", { scope: "col" }, "Job"),
              h("th", { scope: "col" }, "Status"),
              h("th", { scope: "col", class: "c-progress" }, "Progress"),
              h("th", { scope: "col", class: "c-ds" }, "Data source"),
              h("th", { scope: "col", class: "c-pipe" }, "Pipe"),
              h("th", { scope: "col", class: "c-created" }, "Created"),
              h("th", { scope: "col", class: "c-took" }, "Took"))),
            this.tbody)),
        this.empty, this.pager),
    );
    this.resize = new ResizeObserver(() => this.renderChart());
    this.resize.observe(this.chartBox);
    this.renderSummary();
  }

  onFilter(event) {
    event.preventDefault();
    const values = {};
    for (const key of FILTER_KEYS) values[key] = this.form.elements[key].value.trim();
    this.ctx.navigate(listHash(values));
  }

  showError(error) {
    this.errorBox.textContent = error.message;
    this.errorBox.hidden = false;
  }

  // ------------------------------------------------------------------ data

  onStreamState(state, error) {
    this.ctx.setLive(state, error);
    if (state === "failed") {
      if (!this.ctx.refused(error)) this.showError(error);
      return;
    }
    // The stream is open, so it is subscribed: the page and the counts read after this miss no change.
    if (!this.pageLoaded && !this.loading) this.load();
  }

  async load() {
    this.loading = true;
    try {
      const params = { ...this.filters, limit: PAGE_SIZE, page_token: this.pageToken };
      const [page] = await Promise.all([api("/v0/jobs", { params }), this.scan()]);
      // `next` is an absolute link; only its cursor is used, against this origin.
      this.next = page.next ? new URL(page.next, window.location.origin).searchParams.get("page_token") : null;
      for (const item of page.jobs) {
        this.merge(item);
        this.rowIds.push(item.id);
      }
      this.pageLoaded = true;
      this.errorBox.hidden = true;
      this.renderRows();
      // Jobs created while the page was being read: the stream told of them, the page may not have them.
      for (const item of [...this.known.values()]) this.place(item);
      this.renderPager();
      this.renderSummary();
    } catch (error) {
      if (!this.ctx.refused(error)) this.showError(error);
    } finally {
      this.loading = false;
    }
  }

  async scan() {
    let token = "";
    for (let page = 0; page < SCAN_PAGES; page += 1) {
      const body = await api("/v0/jobs", { params: { ...this.streamFilters(), limit: 100, page_token: token } });
      for (const item of body.jobs) {
        this.merge(item);
        this.oldestScanned = Math.min(this.oldestScanned, parseTime(item.created_at));
      }
      if (!body.next) {
        this.scanCapped = false;
        return;
      }
      token = new URL(body.next, window.location.origin).searchParams.get("page_token");
    }
    this.scanCapped = true;
  }

  merge(item) {
    const known = this.known.get(item.id);
    if (!isNewer(item, known)) return false;
    this.known.set(item.id, { ...known, ...item });
    return true;
  }

  matchesTable(item) {
    const f = this.filters;
    const created = item.created_at.replace(" ", "T");
    return (
      (!f.status || item.status === f.status) &&
      (!f.kind || item.kind === f.kind) &&
      (!f.pipe_name || item.pipe_name === f.pipe_name) &&
      (!f.pipe_id || item.pipe_id === f.pipe_id) &&
      (!f.created_after || created >= f.created_after) &&
      (!f.created_before || created.slice(0, 16) <= f.created_before)
    );
  }

  onEvent(type, item) {
    if (type === "synced" || !item.id) return;
    if (!this.merge(item)) return;
    this.queueSummary();
    // Before the page is in, the change is kept in `known`; load() places what the page did not have.
    if (this.pageLoaded) this.place(this.known.get(item.id));
  }

  // Show `latest` in the table: in place when its row is there, as a new row when it belongs on this page.
  place(latest) {
    if (this.rowElements.has(latest.id)) {
      this.updateRow(latest);
      return;
    }
    if (this.pageToken || !this.matchesTable(latest)) return; // new jobs belong on the first page
    const oldest = this.rowIds.length ? this.known.get(this.rowIds[this.rowIds.length - 1]) : null;
    if (this.next && oldest && latest.created_at < oldest.created_at) return; // on a later page
    const index = this.rowIds.findIndex((id) => this.known.get(id).created_at < latest.created_at);
    const at = index < 0 ? this.rowIds.length : index;
    this.rowIds.splice(at, 0, latest.id);
    const row = this.buildRow(latest);
    row.classList.add("arrived");
    this.tbody.insertBefore(row, this.tbody.children[at] || null);
    this.empty.hidden = true;
  }

  // ------------------------------------------------------------------ table

  renderRows() {
    clear(this.tbody);
    this.rowElements.clear();
    for (const id of this.rowIds) this.tbody.append(this.buildRow(this.known.get(id)));
    this.empty.hidden = this.rowIds.length > 0;
    this.empty.textContent = this.pageToken
      ? "No older jobs."
      : "No job of the last 48 hours matches. New ones appear here as soon as they are created.";
  }

  buildRow(item) {
    const link = h("a", { href: `#/jobs/${item.id}`, class: "job-link" }, h("code", {}, item.id.slice(0, 8)));
    const row = h("tr", { "data-id": item.id },
      h("td", { class: "c-job" }, link, h("span", { class: "kind" }, item.kind, h("span", { class: "when" }))),
      h("td", { class: "c-status" }),
      h("td", { class: "c-progress" }),
      h("td", { class: "c-ds" }, item.datasource ? item.datasource.name : "—"),
      h("td", { class: "c-pipe" }, item.pipe_name || "—"),
      h("td", { class: "c-created" }, h("time", {}, timeText(item.created_at)), h("span", { class: "age" })),
      h("td", { class: "c-took" }));
    this.rowElements.set(item.id, row);
    this.fillRow(row, item);
    return row;
  }

  updateRow(item) {
    const row = this.rowElements.get(item.id);
    if (row) this.fillRow(row, item);
  }

  fillRow(row, item) {
    const [job, status, progress, , , created, took] = row.children;
    job.querySelector("a").setAttribute("aria-label", `${item.kind} job ${item.id}, ${item.status}`);
    row.dataset.status = item.status;
    clear(status).append(statusBadge(item.status));
    const active = item.status === "working" || item.status === "cancelling";
    const percent = item.status === "done" ? 100 : item.progress_percentage;
    const bar = progress.querySelector(".bar");
    if ((active || item.status === "done") && typeof percent === "number") {
      if (bar) setProgress(bar, percent);
      else clear(progress).append(progressBar(percent, { label: `Progress of job ${item.id.slice(0, 8)}` }));
    } else {
      clear(progress).append(h("span", { class: "muted" }, item.status === "waiting" ? "queued" : active ? "…" : "—"));
    }
    created.querySelector(".age").textContent = ageText(item.created_at);
    job.querySelector(".when").textContent = ` · ${ageText(item.created_at)}`; // the phone layout's Created
    const start = parseTime(item.created_at);
    took.textContent = TERMINAL.has(item.status)
      ? durationText(parseTime(item.updated_at) - start)
      : `${durationText(Date.now() - start)} so far`;
  }

  renderPager() {
    clear(this.pager);
    if (this.pageToken) this.pager.append(h("a", { href: listHash(this.filters), class: "button quiet" }, "← Newest"));
    if (this.next) {
      this.pager.append(h("a", { href: listHash(this.filters, this.next), class: "button" }, "Older jobs →"));
    }
  }

  // ------------------------------------------------------------------ summary

  queueSummary() {
    if (this.summaryQueued) return;
    this.summaryQueued = true;
    requestAnimationFrame(() => {
      this.summaryQueued = false;
      this.renderSummary();
    });
  }

  windowBounds(now = Date.now()) {
    let from = now - WINDOW_MS;
    let to = now;
    if (this.filters.created_after) from = Math.max(from, Date.parse(`${this.filters.created_after}Z`));
    if (this.filters.created_before) to = Math.min(to, Date.parse(`${this.filters.created_before}Z`) + 59999);
    return { from, to: Math.max(to, from + 60000) };
  }

  summaryItems() {
    const { from } = this.windowBounds();
    const items = [];
    for (const item of this.known.values()) {
      const created = parseTime(item.created_at);
      if (created < from || (this.scanCapped && created < this.oldestScanned)) continue;
      items.push({ status: item.status, created });
    }
    return items;
  }

  renderSummary() {
    const items = this.summaryItems();
    const totals = Object.fromEntries(STATUSES.map((st) => [st, 0]));
    for (const item of items) totals[item.status] += 1;
    clear(this.counts);
    const chip = (status, label, count) => {
      const pressed = this.filters.status === status;
      return h("button", {
        type: "button",
        class: `count ${status ? `status-${status}` : "all"}`,
        "aria-pressed": String(pressed),
        "data-status": status || "all",
        title: status ? `Show only ${status} jobs` : "Show every status",
        onclick: () => this.ctx.navigate(listHash({ ...this.filters, status: pressed ? "" : status })),
      }, h("span", { class: "n" }, String(count)), h("span", { class: "l" }, label));
    };
    this.counts.append(chip("", "total", items.length), ...STATUSES.map((st) => chip(st, st, totals[st])));
    this.scanNote.textContent = !this.pageLoaded
      ? "Reading the window…"
      : this.scanCapped
        ? `Counts of the newest ${items.length.toLocaleString("en-US")} jobs read (the window holds more).`
        : "Every job of the window that matches the filters (status aside), by creation hour (UTC).";
    this.renderChart(items);
  }

  renderChart(items = this.summaryItems()) {
    const width = this.chartBox.clientWidth;
    if (!width) return;
    const { from, to } = this.windowBounds();
    clear(this.chartBox).append(statusChart({ items, from, to, width }));
  }

  tick() {
    for (const id of this.rowIds) this.updateRow(this.known.get(id));
    this.renderSummary();
  }
}
