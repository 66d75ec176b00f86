"""Figures from the measurements, and the outputs: stdout table, latest.md, latest.json, latest.svg."""

from __future__ import annotations

import html
import json
import math
import platform
import pstats
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from bench.load import FanoutResult, LoadResult

if TYPE_CHECKING:
    from bench.run import Options, Run

__all__ = ["Figure", "Meta", "figures", "write", "write_profile"]

Bound = Literal["min", "max"]


@dataclass
class Figure:
    name: str
    label: str
    value: float | None
    anchor: float | None
    target: float | None
    bound: Bound
    unit: str
    anchor_label: str
    p50_ms: float | None = None
    p99_ms: float | None = None
    anchor_p50_ms: float | None = None
    anchor_p99_ms: float | None = None
    server_cpu_us: float | None = None
    anchor_cpu_us: float | None = None
    client_cpu: float | None = None  # load generator CPU seconds per second (1.0 = one core busy)
    anchor_client_cpu: float | None = None
    note: str = ""
    # For "unchanged within ±x": the lower edge of the accepted band (the target is the upper one).
    band_low: float | None = None
    # The ratio of each round (a figure's window next to its anchor's): the figure is judged on their median.
    rounds: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.rounds:
            return statistics.median(self.rounds)
        if self.value is None or self.anchor is None or not self.anchor or _nan(self.value) or _nan(self.anchor):
            return None
        return self.value / self.anchor

    @property
    def spread(self) -> str:
        if len(self.rounds) < 2:
            return "-"
        return f"{_fmt(min(self.rounds))}..{_fmt(max(self.rounds))}"

    @property
    def cpu_ratio(self) -> float | None:
        """For throughputs: anchor CPU per op / figure CPU per op, the ratio a CPU-bound server would reach; far
        less sensitive to other work on a shared machine than the rates themselves."""
        a, f = self.anchor_cpu_us, self.server_cpu_us
        if self.bound != "min" or a is None or f is None or _nan(a) or _nan(f) or not f:
            return None
        return a / f

    @property
    def status(self) -> str:
        ratio = self.ratio
        if ratio is None:
            return "n/a"
        if self.target is None:
            return "info"
        if self.bound == "min":
            return "ok" if ratio >= self.target else "MISSED"
        if self.band_low is not None and ratio < self.band_low:
            return "MISSED"
        return "ok" if ratio <= self.target else "MISSED"

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "value": _round(self.value),
            "anchor": _round(self.anchor),
            "ratio": _round(self.ratio),
            "ratio_by_cpu": _round(self.cpu_ratio),
            "round_ratios": [_round(r) for r in self.rounds],
            "target": self.target,
            "bound": self.bound,
            "unit": self.unit,
            "status": self.status,
            "p50_ms": _round(self.p50_ms),
            "p99_ms": _round(self.p99_ms),
            "anchor_p50_ms": _round(self.anchor_p50_ms),
            "anchor_p99_ms": _round(self.anchor_p99_ms),
            "server_cpu_us_per_op": _round(self.server_cpu_us),
            "anchor_cpu_us_per_op": _round(self.anchor_cpu_us),
            "client_cpu_cores": _round(self.client_cpu),
            "anchor_client_cpu_cores": _round(self.anchor_client_cpu),
            "anchor_is": self.anchor_label,
        }
        if self.band_low is not None:
            data["band"] = [self.band_low, self.target]
        if self.note:
            data["note"] = self.note
        return data


@dataclass
class Meta:
    jobs: int
    small: int
    quick: bool
    seconds: float
    concurrency: int
    channels: int
    streams: int
    elapsed: float
    profiled: bool


def _nan(x: float) -> bool:
    return isinstance(x, float) and math.isnan(x)


def _round(x: float | None) -> float | None:
    if x is None or _nan(x):
        return None
    return float(f"{x:.4g}")


def _median(values: list[float]) -> float:
    kept = [v for v in values if not _nan(v)]
    return statistics.median(kept) if kept else float("nan")


def _windowed(
    f: Figure, figure: list[LoadResult] | None, anchor: list[LoadResult] | None, per_op: float = 1.0
) -> Figure:
    """Value, anchor and CPU per op as medians of the windows; the ratio as the median of the rounds' ratios."""
    if not figure:
        return f
    f.value = _median([w.rate * per_op for w in figure])
    f.server_cpu_us = _median([w.server_cpu_us / per_op for w in figure])
    if anchor:
        f.anchor = _median([w.rate for w in anchor])
        f.anchor_cpu_us = _median([w.server_cpu_us for w in anchor])
        f.rounds = [a.rate * per_op / b.rate for a, b in zip(figure, anchor, strict=False) if b.rate > 0]
    return f


class _Latencies(TypedDict):
    p50_ms: float | None
    p99_ms: float | None
    anchor_p50_ms: float | None
    anchor_p99_ms: float | None


def _latencies(measured: LoadResult | FanoutResult | None, anchor: LoadResult | FanoutResult | None) -> _Latencies:
    """A figure's percentiles: those of the measured run and of its anchor (None for a run that did not happen)."""
    return _Latencies(
        p50_ms=measured.p50_ms if measured else None,
        p99_ms=measured.p99_ms if measured else None,
        anchor_p50_ms=anchor.p50_ms if anchor else None,
        anchor_p99_ms=anchor.p99_ms if anchor else None,
    )


def _load_figure(
    name: str,
    label: str,
    fig: LoadResult | None,
    anchor: LoadResult | None,
    target: float | None,
    unit: str,
    anchor_label: str,
    note: str = "",
    windows: tuple[list[LoadResult] | None, list[LoadResult] | None] | None = None,
    per_op: float = 1.0,
) -> Figure:
    f = Figure(name, label, None, None, target, "min", unit, anchor_label, note=note)
    if fig is not None:
        f.value, f.p50_ms, f.p99_ms, f.server_cpu_us = fig.rate, fig.p50_ms, fig.p99_ms, fig.server_cpu_us
        f.client_cpu = fig.client_cpu / fig.seconds
        if fig.errors:
            f.note = (f.note + "; " if f.note else "") + f"{fig.errors} failed calls, first: {fig.first_error}"
    if anchor is not None:
        f.anchor, f.anchor_p50_ms, f.anchor_p99_ms, f.anchor_cpu_us = (
            anchor.rate,
            anchor.p50_ms,
            anchor.p99_ms,
            anchor.server_cpu_us,
        )
        f.anchor_client_cpu = anchor.client_cpu / anchor.seconds
    if per_op != 1.0 and fig is not None:
        f.value, f.server_cpu_us = fig.rate * per_op, fig.server_cpu_us / per_op
    if windows is not None:
        _windowed(f, *windows, per_op=per_op)
    return f


def figures(run: Run, opts: Options) -> list[Figure]:
    loads = run.loads
    wins = run.windows
    v = run.values
    small = max(1, opts.jobs // opts.grow)
    out: list[Figure] = []
    if opts.wants("getjob"):
        out.append(
            _load_figure(
                "getjob_throughput",
                "GetJob",
                loads.get("getjob"),
                loads.get("echo@getjob"),
                0.7,
                "calls/s",
                "unary echo",
                windows=(wins.get("getjob"), wins.get("echo@getjob")),
            )
        )
    if opts.wants("listjobs"):
        rows = v.get("list_rows", {})
        full = sum(1 for n in rows.values() if n == 100)
        out.append(
            _load_figure(
                "listjobs_throughput",
                "ListJobs 100 rows, filters",
                loads.get("listjobs"),
                loads.get("echo@listjobs"),
                0.35,
                "calls/s",
                "unary echo",
                note=f"{len(rows)} filter sets, {full} return a full page of 100",
                windows=(wins.get("listjobs"), wins.get("echo@listjobs")),
            )
        )
        big, little = loads.get("listjobs_probe"), loads.get("listjobs_probe_small")
        out.append(
            Figure(
                "listjobs_p99_growth",
                f"ListJobs p99 (1 in flight), {small:,} -> {opts.jobs:,} jobs",
                big.p99_ms if big else None,
                little.p99_ms if little else None,
                1.2,
                "max",
                "ms",
                f"ListJobs p99 at {small:,} jobs",
                **_latencies(big, little),
                band_low=0.8,
                note=f"one call at a time, filters in turn; unchanged within ±20 % when the store grows x{opts.grow}",
            )
        )
    if opts.wants("lifecycle"):
        life = loads.get("lifecycle")
        f = _load_figure(
            "lifecycle_rate",
            "lifecycle v1 (4 unary RPCs)",
            life,
            loads.get("echo@lifecycle"),
            0.15,
            "jobs/s",
            "unary echo RPC/s",
            note=(f"= {4 * life.rate:,.0f} RPC/s; claim retries {v.get('claim_retries', 0)}" if life else ""),
            windows=(wins.get("lifecycle"), wins.get("echo@lifecycle")),
        )
        out.append(f)
    if opts.wants("lifecycle_v2"):
        out.append(
            _load_figure(
                "lifecycle_v2_rate",
                "lifecycle v2 (CreateJobs + worker stream)",
                loads.get("lifecycle_v2"),
                loads.get("echo@lifecycle_v2"),
                0.3,
                "jobs/s",
                "unary echo RPC/s",
                note="per job: created in a CreateJobs of 50, assigned on the stream, one heartbeat with progress, the"
                " finish with figures, each answered; p50/p99 from assignment to the finish's answer",
                windows=(wins.get("lifecycle_v2"), wins.get("echo@lifecycle_v2")),
            )
        )
    if opts.wants("watch"):
        w: FanoutResult | None = v.get("watch")
        a: FanoutResult | None = v.get("echo_fanout")
        out.append(
            Figure(
                "watch_fanout",
                f"1 update -> {opts.streams:,} WatchJob",
                w.median if w else None,
                a.median if a else None,
                2.0,
                "max",
                "s",
                "bare streaming fan-out",
                **_latencies(w, a),
                server_cpu_us=(w.server_cpu / (len(w.rounds) * w.streams) * 1e6) if w else None,
                anchor_cpu_us=(a.server_cpu / (len(a.rounds) * a.streams) * 1e6) if a else None,
                note=(
                    f"median of {len(w.rounds)} updates (rounds {', '.join(f'{x * 1000:.0f}' for x in w.rounds)} ms;"
                    f" anchor {', '.join(f'{x * 1000:.0f}' for x in a.rounds) if a else '?'} ms);"
                    f" p50/p99 are per-stream delivery latencies; opening took {w.open_seconds:.1f} s"
                    if w
                    else ""
                ),
            )
        )
    if opts.wants("gateway"):
        gw = loads.get("gateway")
        note = "" if gw else "not available: " + "; ".join(n for n in run.notes if n.startswith("gateway")) or "n/a"
        out.append(
            _load_figure(
                "gateway_get_job",
                "gateway GET /v0/jobs/{id}",
                gw,
                loads.get("hello"),
                0.6,
                "requests/s",
                "bare aiohttp hello",
                note=note if not gw else f"body {v.get('gateway_bytes', 0)} B; hello answers as many bytes",
                windows=(wins.get("gateway"), wins.get("hello")),
            )
        )
    if opts.wants("memory"):
        big_rss, small_rss = v.get("rss"), v.get("rss_small")
        parts = v.get("memory_parts", {})
        big_parts, small_parts = parts.get("large", {}), parts.get("small", {})
        split = ", ".join(
            f"{name} {big_parts[name]:.1f} / {small_parts[name]:.1f} MB"
            for name in ("RssAnon", "RssFile")
            if name in big_parts and name in small_parts
        )
        out.append(
            Figure(
                "server_memory",
                f"server RSS, {small:,} -> {opts.jobs:,} jobs",
                big_rss,
                small_rss,
                1.2,
                "max",
                "MB",
                f"RSS at {small:,} jobs",
                note=(
                    "both servers side by side, after the same GetJob and ListJobs loads; the large one at the end of"
                    f" the run: {v.get('rss_end', float('nan')):.0f} MB"
                    + (f"; large / small: {split}" if split else "")
                ),
            )
        )
    sqlite = v.get("sqlite", {})
    if opts.wants("create"):
        anchor_label = "bare SQLite insert+commit/s"
        for name, label, key, target, per_op in (
            ("create_job", "CreateJob", "create", 0.1, 1.0),
            ("create_jobs_batched", "CreateJobs, 50 a call", "create_batched", 0.3, 50.0),
        ):
            f = _load_figure(
                name,
                label,
                loads.get(key),
                None,
                target,
                "jobs/s",
                anchor_label,
                windows=(wins.get(key), wins.get("sqlite")),
                per_op=per_op,
            )
            if f.anchor is None:
                f.anchor = sqlite.get("commit_rate")
            # The anchor is one CPU-bound loop: its CPU per insert is the inverse of its rate.
            f.anchor_cpu_us = 1e6 / f.anchor if f.anchor else None
            out.append(f)
    peers = v.get("peers")
    if opts.wants("peers") and peers is not None:
        out.extend(_peer_figures(peers))
    if opts.wants("seed"):
        info = v.get("seed")
        rate = info.rate if info is not None and info.added else None
        out.append(
            Figure(
                "seed_bulk",
                "bulk seeding (informational)",
                rate,
                sqlite.get("bulk_rate"),
                None,
                "min",
                "rows/s",
                "bare SQLite bulk insert rows/s",
                note=(
                    f"{info.added:,} rows in {info.seconds:.1f} s incl. 11 index builds"
                    if info is not None and info.added
                    else "store reused, nothing seeded"
                ),
            )
        )
    if opts.wants("getjob") and loads.get("getjob_small") is not None:
        big, little = loads.get("getjob"), loads.get("getjob_small")
        assert big is not None and little is not None
        out.append(
            Figure(
                "getjob_p99_growth",
                f"GetJob p99, {small:,} -> {opts.jobs:,} jobs (info)",
                big.p99_ms,
                little.p99_ms,
                None,
                "max",
                "ms",
                f"GetJob p99 at {small:,} jobs",
                p50_ms=big.p50_ms,
                p99_ms=big.p99_ms,
                anchor_p50_ms=little.p50_ms,
                anchor_p99_ms=little.p99_ms,
            )
        )
    return out


# ---------------------------------------------------------------- outputs


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or _nan(x):
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def _target(f: Figure) -> str:
    if f.target is None:
        return "info"
    if f.band_low is not None:
        return f"{f.band_low:g}..{f.target:g}"
    return ("≥ " if f.bound == "min" else "≤ ") + f"{f.target:g}"


def _rows(figs: list[Figure]) -> list[list[str]]:
    rows = [
        [
            "figure",
            "value",
            "anchor",
            "ratio",
            "by CPU",
            "target",
            "status",
            "spread",
            "p50/p99 ms",
            "anchor p50/p99 ms",
            "srv CPU µs/op (anchor)",
            "client cores (anchor)",
        ]
    ]
    for f in figs:
        rows.append(
            [
                f.label,
                f"{_fmt(f.value)} {f.unit}",
                _fmt(f.anchor),
                _fmt(f.ratio),
                _fmt(f.cpu_ratio),
                _target(f),
                f.status,
                f.spread,
                f"{_fmt(f.p50_ms)} / {_fmt(f.p99_ms)}",
                f"{_fmt(f.anchor_p50_ms)} / {_fmt(f.anchor_p99_ms)}",
                f"{_fmt(f.server_cpu_us)} ({_fmt(f.anchor_cpu_us)})",
                f"{_fmt(f.client_cpu, 2)} ({_fmt(f.anchor_client_cpu, 2)})",
            ]
        )
    return rows


def _text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)


def _header(meta: Meta) -> list[str]:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"{'quick' if meta.quick else 'full'} run, {when}, {platform.machine()} {platform.python_implementation()} "
        f"{platform.python_version()}, {_cpus()} CPUs{' — jobsd under cProfile' if meta.profiled else ''}",
        f"store: {meta.jobs:,} jobs (growth figures: {meta.small:,} -> {meta.jobs:,}); loads: {meta.concurrency} calls "
        f"in flight over {meta.channels} connections, {meta.seconds:g} s measured each; fan-out: {meta.streams:,} "
        f"streams, 100 per connection; whole run {meta.elapsed:.0f} s",
    ]


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def write(figs: list[Figure], run: Run, meta: Meta, out: Path, stem: str = "latest") -> None:
    rows = _rows(figs)
    header = _header(meta)
    missed = [f.label for f in figs if f.status == "MISSED"]
    print()
    print("\n".join(header))
    print(_text_table(rows))
    for f in figs:
        if f.note:
            print(f"  {f.name}: {f.note}")
    print(f"MISSED: {', '.join(missed)}" if missed else "every target met")
    notes = [f"- `{f.name}`: {f.note}" for f in figs if f.note]
    md = [
        "# jobsd benchmark — latest",
        "",
        *(f"{h}  " for h in header),
        "",
        "Each figure is a ratio to a limit anchor measured in the same run on the same machine "
        "(docs/contract.md#performance). "
        "Throughputs are calls per second; p50/p99 are per call (per stream for the fan-out). "
        "`srv CPU µs/op` is the server process's CPU time per call over the measured window (the anchor's in "
        "brackets); `client cores` is the load generator's CPU use (1.0 = one core busy).",
        "",
        _md_table(rows),
        "",
        "**MISSED: " + ", ".join(missed) + "**" if missed else "Every target met.",
        "",
        "Notes:",
        "",
        *notes,
        *(f"- {n}" for n in run.notes),
        "",
        f"![ratios]({stem}.svg)",
        "",
    ]
    rows_by_filter = run.values.get("list_rows")
    if rows_by_filter:
        md += ["ListJobs rows returned per filter set: " + ", ".join(f"{k}={n}" for k, n in rows_by_filter.items()), ""]
    probe, probe_small = run.values.get("list_probe"), run.values.get("list_probe_small")
    if probe:
        md += ["ListJobs latency per filter set, one call at a time (p50 / p99 ms):", ""]
        md += ["| filters | at N | at N/grow |", "|---|---|---|"]
        for name, (p50, p99) in probe.items():
            other = (probe_small or {}).get(name)
            small_cell = f"{other[0]:.2f} / {other[1]:.2f}" if other else "-"
            md.append(f"| {name} | {p50:.2f} / {p99:.2f} | {small_cell} |")
        md.append("")
    (out / f"{stem}.md").write_text("\n".join(md))
    (out / f"{stem}.json").write_text(json.dumps({f.name: f.as_json() for f in figs}, indent=2) + "\n")
    (out / f"{stem}.svg").write_text(svg(figs, header[0]))
    print(f"wrote {out / stem}.md, {stem}.json, {stem}.svg")


def svg(figs: list[Figure], title: str) -> str:
    """A horizontal bar per figure: its ratio, the target as a tick, green when met, red when missed."""
    shown = [f for f in figs if f.ratio is not None]
    bar_h, gap, left, width, top = 22, 10, 380, 520, 50
    height = top + len(shown) * (bar_h + gap) + 40
    scale_max = max([2.2] + [min(f.ratio or 0, 10.0) * 1.1 for f in shown])

    def x(r: float) -> float:
        return left + width * min(r, scale_max) / scale_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 140}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="10" y="20" font-size="14" font-weight="bold">jobsd bench: figure / anchor</text>',
        f'<text x="10" y="38" fill="#555">{html.escape(title)}</text>',
    ]
    for tick in [0, 0.5, 1, 1.5, 2] + ([5, 10] if scale_max > 5 else []):
        if tick <= scale_max:
            parts.append(
                f'<line x1="{x(tick):.1f}" y1="{top - 5}" x2="{x(tick):.1f}" y2="{height - 30}" stroke="#ddd"/>'
                f'<text x="{x(tick):.1f}" y="{height - 15}" text-anchor="middle" fill="#555">{tick:g}x</text>'
            )
    for i, f in enumerate(shown):
        ratio = f.ratio or 0.0
        y = top + i * (bar_h + gap)
        color = {"ok": "#3a9d5d", "MISSED": "#d0473c"}.get(f.status, "#999")
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(f.label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{x(ratio) - left:.1f}" height="{bar_h}" fill="{color}"/>')
        if f.target is not None:
            for edge in (f.target, f.band_low):
                if edge is not None:
                    parts.append(
                        f'<line x1="{x(edge):.1f}" y1="{y - 3}" x2="{x(edge):.1f}" y2="{y + bar_h + 3}" '
                        'stroke="black" stroke-width="2"/>'
                    )
        label = f"{ratio:.3g}x {'' if f.status == 'info' else f.status}"
        label_x = max(x(ratio), x(f.target) if f.target is not None and abs(x(f.target) - x(ratio)) < 60 else 0)
        parts.append(f'<text x="{label_x + 6:.1f}" y="{y + 15}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_profile(prof: Path, out: Path) -> None:
    """The server's hottest functions (own time and cumulative), as text next to the results."""
    if not prof.exists():
        return
    import io

    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf)
    stats.strip_dirs()
    buf.write("== by own time (tottime) ==\n")
    stats.sort_stats("tottime").print_stats(45)
    buf.write("\n== by cumulative time ==\n")
    stats.sort_stats("cumulative").print_stats(60)
    out.write_text(buf.getvalue())
    print(f"wrote {out}")


def _peer_figures(peers: Any) -> list[Figure]:
    """jobsd against the peers (bench/peers.py): medians of alternating windows, the by-CPU ratio from the CPU of
    every process involved (server, worker, producer)."""
    out = []
    for name, label, key, target, unit, anchor_label in (
        ("peers_e2e_noop", "end-to-end no-op jobs vs Celery + Redis", "e2e", 2.0, "jobs/s", "Celery + Redis jobs/s"),
        ("peers_rest_get", "REST GET one job vs Flower", "rest_get", 3.0, "requests/s", "Flower /api/task/info"),
        ("peers_rest_list", "REST list 100 vs Flower (info)", "rest_list", None, "requests/s", "Flower /api/tasks"),
    ):
        ours, theirs = peers.windows.get(key, []), peers.windows.get(key + "@peer", [])
        f = Figure(name, label, None, None, target, "min", unit, anchor_label)
        if ours and theirs:
            f.value = _median([x.rate for x in ours])
            f.anchor = _median([x.rate for x in theirs])
            f.server_cpu_us = _median([x.cpu_us for x in ours])
            f.anchor_cpu_us = _median([x.cpu_us for x in theirs])
            f.rounds = [a.rate / b.rate for a, b in zip(ours, theirs, strict=False) if b.rate > 0]
            p50 = [x.p50_ms for x in ours if x.p50_ms is not None]
            if p50:
                f.p50_ms = _median(p50)
                f.p99_ms = _median([x.p99_ms for x in ours if x.p99_ms is not None])
                f.anchor_p50_ms = _median([x.p50_ms for x in theirs if x.p50_ms is not None])
                f.anchor_p99_ms = _median([x.p99_ms for x in theirs if x.p99_ms is not None])
            f.note = (
                "CPU per op: every process of each side (server, worker, producer)"
                if key == "e2e"
                else "wrk 1 thread, 32 connections; CPU per op: the answering server"
            )
        out.append(f)
    return out
