// Small DOM and formatting helpers. Everything is built with createElement and textContent: no HTML strings, so
// nothing a job carries (names, SQL, error text) can become markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") element.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") element.addEventListener(key.slice(2), value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function h(tag, attrs = {}, ...children) {
  return build(document.createElement(tag), attrs, children);
}

export function s(tag, attrs = {}, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

export const STATUSES = ["waiting", "working", "cancelling", "done", "error", "cancelled"];
export const KINDS = ["import", "populateview", "copy", "query", "delete_data", "sink"];
export const TERMINAL = new Set(["done", "error", "cancelled"]);

// "2026-12-01 20:24:12.123456" (UTC, as the API renders it) -> milliseconds since the epoch.
export function parseTime(text) {
  if (!text) return NaN;
  return Date.parse(`${text.slice(0, 10)}T${text.slice(11, 23)}Z`);
}

export function timeText(text) {
  return text ? `${text.slice(0, 19)} UTC` : "—";
}

export function shortTime(text) {
  return text ? text.slice(5, 16) : "—";
}

export function durationText(ms) {
  if (!Number.isFinite(ms) || ms < 0) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const seconds = ms / 1000;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  const hours = Math.floor(minutes / 60);
  return `${hours} h ${minutes % 60} min`;
}

export function ageText(text, now = Date.now()) {
  const ms = now - parseTime(text);
  if (!Number.isFinite(ms)) return "";
  if (ms < 45000) return "just now";
  return `${durationText(ms).replace(/ \d+ s$/, "")} ago`;
}

export function numberText(n) {
  return typeof n === "number" ? n.toLocaleString("en-US") : "—";
}

export function bytesText(n) {
  if (typeof n !== "number") return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit ? value.toFixed(value < 10 ? 2 : 1) : value} ${units[unit]}`;
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}` }, status);
}

// A progress bar: role=progressbar for assistive technology; the width is set through the CSSOM, which the
// Content-Security-Policy allows (it forbids only inline style attributes and elements).
export function progressBar(percent, { label = "Progress", large = false } = {}) {
  const bar = h("div", { class: large ? "bar large" : "bar", role: "progressbar", "aria-label": label,
    "aria-valuemin": 0, "aria-valuemax": 100 });
  const fill = h("div", { class: "fill" });
  const text = h("span", { class: "bar-text" });
  bar.append(fill, text);
  setProgress(bar, percent);
  return bar;
}

export function setProgress(bar, percent) {
  const value = Math.max(0, Math.min(100, Number(percent) || 0));
  bar.setAttribute("aria-valuenow", String(value));
  bar.querySelector(".fill").style.width = `${value}%`;
  bar.querySelector(".bar-text").textContent = `${Number.isInteger(value) ? value : value.toFixed(1)} %`;
  bar.classList.toggle("complete", value >= 100);
}

export function clear(element) {
  while (element.firstChild) element.firstChild.remove();
  return element;
}
