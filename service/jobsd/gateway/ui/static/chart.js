// Jobs per status over the window: stacked bars, one per time bucket, drawn as SVG (no library).

import { STATUSES, s } from "./dom.js";

const HEIGHT = 150;
const MARGIN = { top: 10, right: 8, bottom: 24, left: 34 };

function two(n) {
  return String(n).padStart(2, "0");
}

function tickLabel(ms, spanMs) {
  const d = new Date(ms);
  const hm = `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}`;
  return spanMs > 20 * 3600e3 ? `${two(d.getUTCMonth() + 1)}-${two(d.getUTCDate())} ${hm}` : hm;
}

// items: [{status, created}] with created in ms; from/to: the window in ms; width: pixels available.
export function statusChart({ items, from, to, width, buckets = 48 }) {
  const W = Math.max(280, Math.floor(width));
  const plotW = W - MARGIN.left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const span = Math.max(1, to - from);
  const counts = Array.from({ length: buckets }, () => Object.fromEntries(STATUSES.map((st) => [st, 0])));
  const totals = Object.fromEntries(STATUSES.map((st) => [st, 0]));
  for (const item of items) {
    if (!(item.created >= from && item.created <= to) || !(item.status in totals)) continue;
    const index = Math.min(buckets - 1, Math.floor(((item.created - from) / span) * buckets));
    counts[index][item.status] += 1;
    totals[item.status] += 1;
  }
  const peak = Math.max(1, ...counts.map((c) => STATUSES.reduce((sum, st) => sum + c[st], 0)));
  const slot = plotW / buckets;
  const barW = Math.max(1, slot - (slot > 6 ? 2 : 0.5));
  const y = (n) => MARGIN.top + plotH - (n / peak) * plotH;

  const hourText = span / buckets >= 3600e3 * 0.99 ? "per hour" : "per bucket";
  const summary = STATUSES.filter((st) => totals[st]).map((st) => `${st} ${totals[st]}`).join(", ") || "none";
  const svg = s("svg", {
    class: "chart",
    width: W,
    height: HEIGHT,
    viewBox: `0 0 ${W} ${HEIGHT}`,
    role: "img",
    "aria-labelledby": "chart-title chart-desc",
  });
  svg.append(
    s("title", { id: "chart-title" }, `Jobs created ${hourText} over the window, by status`),
    s("desc", { id: "chart-desc" }, `Totals: ${summary}. Highest bucket: ${peak} jobs.`),
  );
  // Grid and y axis: 0, half, peak.
  for (const value of new Set([0, Math.round(peak / 2), peak])) {
    svg.append(
      s("line", { class: "grid", x1: MARGIN.left, x2: W - MARGIN.right, y1: y(value), y2: y(value) }),
      s("text", { class: "axis", x: MARGIN.left - 6, y: y(value) + 4, "text-anchor": "end" }, String(value)),
    );
  }
  counts.forEach((bucket, index) => {
    let base = 0;
    const x = MARGIN.left + index * slot + (slot - barW) / 2;
    for (const st of STATUSES) {
      const n = bucket[st];
      if (!n) continue;
      const top = y(base + n);
      svg.append(
        s("rect", { class: `seg status-${st}`, x: x.toFixed(2), y: top.toFixed(2), width: barW.toFixed(2),
          height: Math.max(1, y(base) - top).toFixed(2) },
          s("title", {}, `${tickLabel(from + (index * span) / buckets, span)} UTC: ${n} ${st}`)),
      );
      base += n;
    }
  });
  const ticks = W < 520 ? 2 : 4; // labels must not overlap on a phone
  for (let i = 0; i <= ticks; i += 1) {
    const ms = from + (i * span) / ticks;
    const x = MARGIN.left + (i * plotW) / ticks;
    const anchor = i === 0 ? "start" : i === ticks ? "end" : "middle";
    svg.append(s("text", { class: "axis", x, y: HEIGHT - 6, "text-anchor": anchor }, tickLabel(ms, span)));
  }
  svg.append(s("line", { class: "baseline", x1: MARGIN.left, x2: W - MARGIN.right, y1: y(0), y2: y(0) }));
  return svg;
}
