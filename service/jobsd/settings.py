"""One frozen settings object, read from flags and JOBSD_* environment variables (flags win).

Each field says, once, what it means, its variable, how its text is parsed and how its default reads; the
`jobsd serve` flags and their `--help`, the README's settings table (a test compares them) and the errors are all
made from that. A bad value is an `InvalidArgument` naming the variable (or flag) and what was wrong with it.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from jobsd.domain.fairshare import DEFAULT_MAX_WORKSPACE_SHARE
from jobsd.domain.kinds import BUILTIN_KINDS, KindDefaults, KindRegistry, build_registry, parse_kind_declarations
from jobsd.domain.validation import StructLimits
from jobsd.errors import InvalidArgument

__all__ = ["SETTINGS", "Setting", "Settings", "add_arguments", "settings_from", "split_addr"]

Parser = Callable[[str, str], Any]

_MiB = 1024 * 1024
_GiB = 1024 * _MiB
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    **{unit: 1000**power for power, pair in enumerate(("k kb", "m mb", "g gb", "t tb"), 1) for unit in pair.split()},
    **{unit: 1024**power for power, unit in enumerate(("kib", "mib", "gib", "tib"), 1)},
}


def _number(kind: type[int] | type[float], minimum: float) -> Parser:
    def parse(name: str, raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise InvalidArgument(name, f"expected {what}, got {raw!r}") from None
        if value < minimum:
            raise InvalidArgument(name, f"must be at least {minimum:g}, got {raw!r}")
        return value

    return parse


def _fraction(name: str, raw: str) -> float:
    """A number more than 0 and at most 1 (a share)."""
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgument(name, f"expected a number more than 0 and at most 1, got {raw!r}") from None
    if not 0 < value <= 1:  # NaN fails this too
        raise InvalidArgument(name, f"must be more than 0 and at most 1, got {raw!r}")
    return value


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise InvalidArgument(name, f"expected on/off, got {raw!r}")


def _per_kind(kind: type[int] | type[float], minimum: float, unit: str) -> Parser:
    number = _number(kind, minimum)

    def parse(name: str, raw: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            kind_name, sep, value = part.partition("=")
            if not sep or not kind_name.strip():
                raise InvalidArgument(name, f"expected kind={unit}[,kind={unit}...], got {part!r}")
            values[kind_name.strip()] = number(f"{name} ({kind_name.strip()})", value.strip())
        return values

    return parse


def _size(name: str, raw: str) -> int:
    """A byte count: `1048576`, `512MiB`, `4GiB`, `100MB` (KB/MB/GB powers of 1000, KiB/MiB/GiB of 1024)."""
    match = _SIZE.match(raw)
    unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise InvalidArgument(name, f"expected a size such as 512MiB, 4GiB or 1048576, got {raw!r}")
    value = int(float(match.group(1)) * unit)
    if value < 1:
        raise InvalidArgument(name, f"must be at least 1 byte, got {raw!r}")
    return value


def _networks(name: str, raw: str) -> tuple[str, ...]:
    networks: list[str] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise InvalidArgument(name, f"expected CIDR networks such as 10.0.0.0/8 or ::1/128, got {part!r}") from None
    return tuple(networks)


def _choice(*choices: str) -> Parser:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise InvalidArgument(name, f"expected one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _log_level(name: str, raw: str) -> str:
    level: str = _choice("debug", "info", "warning", "error", "critical")(name, raw)
    return level.upper()


def _setting(
    default: Any,
    env: str,
    meaning: str,
    parse: Parser | None = None,
    *,
    shown: str | None = None,
    metavar: str | None = None,
    aliases: tuple[str, ...] = (),
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A Settings field with its variable and meaning (and how to parse it and how its default reads)."""
    metadata = {"env": env, "meaning": meaning, "parse": parse, "shown": shown, "metavar": metavar, "aliases": aliases}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


_BUILTIN_LIMITS = ",".join(f"{spec.name}={spec.concurrency_limit}" for spec in BUILTIN_KINDS)


@dataclass(frozen=True, slots=True)
class Settings:
    grpc_addr: str = _setting("127.0.0.1:50051", "JOBSD_GRPC_ADDR", "gRPC listen address (port 0: any free port)")
    http_addr: str = _setting("127.0.0.1:8080", "JOBSD_HTTP_ADDR", "REST gateway address; empty disables it")
    metrics_addr: str = _setting(
        "",
        "JOBSD_METRICS_ADDR",
        "a bare `/metrics` listener for processes without the gateway (the gateway serves `/metrics` too)",
    )
    store: str = _setting(
        "sqlite:///.jobsd/jobsd.db", "JOBSD_STORE", "`sqlite:///path` or a `mongodb://` / `mongodb+srv://` URI"
    )
    sqlite_commit_window_ms: float = _setting(
        12.0,
        "JOBSD_SQLITE_COMMIT_WINDOW_MS",
        "embedded store: while several calls write, how long their writes may gather to share one COMMIT (one "
        "that no write joined for a fifth of it commits then); a write that comes alone never waits; 0: no waiting",
        _number(float, 0),
    )
    sqlite_commit_max_writes: int = _setting(
        64,
        "JOBSD_SQLITE_COMMIT_MAX_WRITES",
        "embedded store: writes one COMMIT carries at most (1: every write commits alone)",
        _number(int, 1),
    )
    sqlite_wal_limit_mb: int = _setting(
        64,
        "JOBSD_SQLITE_WAL_LIMIT_MB",
        "embedded store: the WAL's size in MiB past which new writes wait (one checkpoint, at most a second) so it "
        "can start over and be cut back to this size; writes that never pause would otherwise grow it without end; "
        "0: no limit",
        _number(int, 0),
    )
    public_url: str = _setting(
        "",
        "JOBSD_PUBLIC_URL",
        "base of `job_url` and `next` links; without it a Host in `JOBSD_TRUSTED_HOSTS`, else the gateway's own "
        "address (never an untrusted Host header)",
        metavar="URL",
    )
    trusted_hosts: tuple[str, ...] = _setting(
        (),
        "JOBSD_TRUSTED_HOSTS",
        "Host header values (`host` or `host:port`) links may be built on",
        lambda n, r: tuple(h.strip() for h in r.split(",") if h.strip()),
        metavar="HOST,...",
    )
    admin_token: str = _setting(
        "", "JOBSD_ADMIN_TOKEN", "ensures an ADMIN token of workspace `default` with exactly this value"
    )
    worker_token: str = _setting(
        "",
        "JOBSD_WORKER_TOKEN",
        "ensures a JOBS:EXECUTE token of workspace `default` with exactly this value (`jobsd worker` and SDK workers "
        "use it; `make run` keeps one in .jobsd/worker-token)",
    )
    service_token: str = _setting(
        "", "JOBSD_SERVICE_TOKEN", "ensures a token with JOBS:CREATE and JOBS:EXECUTE on every workspace"
    )
    executors: bool = _setting(True, "JOBSD_EXECUTORS", "run the built-in executors in-process", _bool)
    kinds_file: str = _setting(
        "", "JOBSD_KINDS_FILE", "a TOML file declaring job kinds and their rules (see Job kinds)", metavar="PATH"
    )
    kinds: str = _setting(
        "",
        "JOBSD_KINDS",
        "job kinds as TOML text, as in the file, e.g. `thumbnail = {cancellable_while_working = true}`",
        metavar="TOML",
    )
    retention_hours: float = _setting(
        48.0,
        "JOBSD_RETENTION_HOURS",
        "the visibility window of a job (of every kind that sets none)",
        _number(float, 0.001),
    )
    log_retention_days: float = _setting(
        30.0, "JOBSD_LOG_RETENTION_DAYS", "how long `jobs_log` keeps status changes", _number(float, 0.001)
    )
    lease_seconds: float = _setting(
        30.0,
        "JOBSD_LEASE_SECONDS",
        "worker lease (of every kind that sets none); workers heartbeat every third of it",
        _number(float, 0.1),
    )
    max_attempts: int = _setting(
        3,
        "JOBSD_MAX_ATTEMPTS",
        "lease lapses before a job ends in `error` (of every kind that sets none)",
        _number(int, 1),
    )
    max_returns: int = _setting(
        5,
        "JOBSD_MAX_RETURNS",
        "times a job may go back to the queue unfinished (a lapsed lease, or a release when its worker stops); "
        "the next return ends it in `error`",
        _number(int, 0),
    )
    time_limit_seconds: float = _setting(
        86_400.0,
        "JOBSD_TIME_LIMIT_SECONDS",
        "run-time limit from a job's first start (of every kind that sets none); 0: none",
        _number(float, 0),
    )
    kind_limits: Mapping[str, int] = _setting(
        None,
        "JOBSD_CONCURRENCY_LIMITS",
        "running jobs per concurrency key, by kind (`kind=N,...`; wins over the kind's own)",
        _per_kind(int, 1, "N"),
        shown=_BUILTIN_LIMITS,
        metavar="KIND=N,...",
        aliases=("--kind-limits",),
        factory=dict,
    )
    time_limits: Mapping[str, float] = _setting(
        None,
        "JOBSD_TIME_LIMITS",
        "run-time limit by kind (`kind=seconds,...`; 0: none; wins over the kind's own)",
        _per_kind(float, 0, "seconds"),
        shown="each kind's own",
        metavar="KIND=SECONDS,...",
        factory=dict,
    )
    sweep_interval_seconds: float = _setting(
        1.0,
        "JOBSD_SWEEP_INTERVAL_SECONDS",
        "how often the background sweeps run (lapsed leases, run-time limits, retention)",
        _number(float, 0.01),
    )
    data_dir: str = _setting(
        "",
        "JOBSD_DATA_DIR",
        "where the executors keep the DuckDB data plane (`dataplane/`, one file per workspace); one process each",
        shown="the SQLite file's directory, else .jobsd/",
        metavar="DIR",
    )
    executor_concurrency: int = _setting(
        4, "JOBSD_EXECUTOR_CONCURRENCY", "jobs the in-process executors run at once", _number(int, 1)
    )
    progress_interval_seconds: float = _setting(
        1.0,
        "JOBSD_PROGRESS_INTERVAL_SECONDS",
        "how often the executors send a running job's figures (progress, rows, bytes) to watchers, at most; "
        "a progress write is not a status change (no `jobs_log` row)",
        _number(float, 0.05),
    )
    dataplane_max_open_workspaces: int = _setting(
        16,
        "JOBSD_DATAPLANE_MAX_OPEN_WORKSPACES",
        "workspace files of the data plane open at once (idle ones closed, least recently used first)",
        _number(int, 1),
    )
    import_file_root: str = _setting(
        "",
        "JOBSD_IMPORT_FILE_ROOT",
        "the one directory `file://` imports may read; must not overlap the store or the data directory; empty: off",
        shown="off (`make run`: examples/)",
        metavar="DIR",
    )
    import_allow_networks: tuple[str, ...] = _setting(
        (),
        "JOBSD_IMPORT_ALLOW_NETWORKS",
        "CIDRs imports may fetch from although not public (loopback, private, link-local are refused otherwise)",
        _networks,
        shown="none",
        metavar="CIDR,...",
    )
    import_max_redirects: int = _setting(
        5, "JOBSD_IMPORT_MAX_REDIRECTS", "redirects an import follows, each checked like the first URL", _number(int, 0)
    )
    import_timeout_seconds: float = _setting(
        1800.0,
        "JOBSD_IMPORT_TIMEOUT_SECONDS",
        "an import's whole download, from the request to the last byte",
        _number(float, 0.1),
    )
    import_min_bytes_per_second: int = _setting(
        1024,
        "JOBSD_IMPORT_MIN_BYTES_PER_SECOND",
        "transfer rate an import's origin must keep up over each rate window of waiting for it; 0: no minimum",
        _number(int, 0),
    )
    import_rate_window_seconds: float = _setting(
        30.0,
        "JOBSD_IMPORT_RATE_WINDOW_SECONDS",
        "the window the minimum rate is measured over (and the most an origin's response headers may take)",
        _number(float, 0.1),
    )
    import_max_bytes: int = _setting(
        4 * _GiB,
        "JOBSD_IMPORT_MAX_BYTES",
        "bytes one import may transfer (compressed or not; `512MiB`, `4GiB`, ... or a number)",
        _size,
        shown="4GiB",
        metavar="SIZE",
    )
    import_max_decompressed_bytes: int = _setting(
        16 * _GiB,
        "JOBSD_IMPORT_MAX_DECOMPRESSED_BYTES",
        "bytes one import's data may decompress to (gzip files, gzip/deflate Content-Encoding)",
        _size,
        shown="16GiB",
        metavar="SIZE",
    )
    import_max_line_bytes: int = _setting(
        8 * _MiB,
        "JOBSD_IMPORT_MAX_LINE_BYTES",
        "bytes of one line of an imported file; a longer one stops the import",
        _size,
        shown="8MiB",
        metavar="SIZE",
    )
    max_columns: int = _setting(
        500,
        "JOBSD_MAX_COLUMNS",
        "columns of a data source: an import's CSV header or NDJSON keys, a schema given to `POST /v0/datasources`",
        _number(int, 1),
    )
    job_memory_limit: int = _setting(
        1 * _GiB,
        "JOBSD_JOB_MEMORY_LIMIT",
        "DuckDB memory of one workspace's database (its jobs running at once share it; beyond it statements spill "
        "to disk, then fail)",
        _size,
        shown="1GiB",
        metavar="SIZE",
    )
    dataplane_memory_limit: int = _setting(
        4 * _GiB,
        "JOBSD_DATAPLANE_MEMORY_LIMIT",
        "DuckDB memory of the whole data plane: each open workspace database gets at most its share",
        _size,
        shown="4GiB",
        metavar="SIZE",
    )
    job_threads: int = _setting(2, "JOBSD_JOB_THREADS", "DuckDB threads one statement may use", _number(int, 1))
    job_temp_disk_limit: int = _setting(
        8 * _GiB,
        "JOBSD_JOB_TEMP_DISK_LIMIT",
        "disk one workspace's database may spill to while its statements run",
        _size,
        shown="8GiB",
        metavar="SIZE",
    )
    dataplane_threads: int = _setting(
        0,
        "JOBSD_DATAPLANE_THREADS",
        "statements the data plane runs at once (so at most this times `JOBSD_JOB_THREADS` DuckDB threads); 0: "
        "`JOBSD_EXECUTOR_CONCURRENCY` + 2",
        _number(int, 0),
        shown="0",
    )
    max_json_depth: int = _setting(
        64,
        "JOBSD_MAX_JSON_DEPTH",
        "nesting depth of any JSON input (REST bodies, NDJSON lines, Struct fields); deeper is refused",
        _number(int, 1),
    )
    max_watch_streams: int = _setting(
        20_000,
        "JOBSD_MAX_WATCH_STREAMS",
        "open watch streams per process (`WatchJob`, `WatchJobs` and their REST event streams)",
        _number(int, 1),
    )
    max_watch_streams_per_workspace: int = _setting(
        1_000,
        "JOBSD_MAX_WATCH_STREAMS_PER_WORKSPACE",
        "open watch streams on one workspace's jobs (beyond it RESOURCE_EXHAUSTED / 429), within the process's cap",
        _number(int, 1),
    )
    watch_buffer: int = _setting(
        256,
        "JOBSD_WATCH_BUFFER",
        "events buffered per watch stream (beyond it progress events are coalesced)",
        _number(int, 8),
    )
    max_request_bytes: int = _setting(
        4 * 1024 * 1024, "JOBSD_MAX_REQUEST_BYTES", "largest gRPC message or REST body accepted", _number(int, 1024)
    )
    max_datasource_bytes: int = _setting(
        64 * 1024,
        "JOBSD_MAX_DATASOURCE_BYTES",
        "a job's `datasource` object, as compact JSON (CreateJob, CreateJobs, a retry); larger is INVALID_ARGUMENT",
        _size,
        shown="64KiB",
        metavar="SIZE",
    )
    max_params_bytes: int = _setting(
        64 * 1024,
        "JOBSD_MAX_PARAMS_BYTES",
        "a job's `params` object, as compact JSON (CreateJob, CreateJobs, a retry); larger is INVALID_ARGUMENT",
        _size,
        shown="64KiB",
        metavar="SIZE",
    )
    max_result_bytes: int = _setting(
        256 * 1024,
        "JOBSD_MAX_RESULT_BYTES",
        "a job's `result` object, as compact JSON (a worker's heartbeat or finish, v1 or v2); larger is "
        "INVALID_ARGUMENT",
        _size,
        shown="256KiB",
        metavar="SIZE",
    )
    max_page_bytes: int = _setting(
        3 * 1024 * 1024,
        "JOBSD_MAX_PAGE_BYTES",
        "encoded bytes of the jobs on one `ListJobs` / `GET /v0/jobs` page (it stops before the job that would pass "
        "it; a larger job comes alone); keep it under what clients receive (gRPC: 4 MiB by default)",
        _size,
        shown="3MiB",
        metavar="SIZE",
    )
    rate_limit: float = _setting(
        5_000.0,
        "JOBSD_RATE_LIMIT",
        "requests a second one token may make, gRPC and REST together (its bucket's refill rate; a stream counts "
        "once, when it opens); beyond it RESOURCE_EXHAUSTED / 429 with the delay; 0: off",
        _number(float, 0),
    )
    rate_limit_burst: int = _setting(
        10_000,
        "JOBSD_RATE_LIMIT_BURST",
        "requests one token may make at once after a quiet spell (its bucket's size)",
        _number(int, 1),
    )
    max_create_batch: int = _setting(
        500, "JOBSD_MAX_CREATE_BATCH", "jobs one `CreateJobs` call may create", _number(int, 1)
    )
    max_worker_streams: int = _setting(
        1_000, "JOBSD_MAX_WORKER_STREAMS", "open `Workers.Connect` streams per process", _number(int, 1)
    )
    max_worker_slots: int = _setting(
        256,
        "JOBSD_MAX_WORKER_SLOTS",
        "free slots one worker stream may have (and heartbeats / finishes per message)",
        _number(int, 1),
    )
    max_workspace_share: float = _setting(
        DEFAULT_MAX_WORKSPACE_SHARE,
        "JOBSD_MAX_WORKSPACE_SHARE",
        "share of one worker's slots (a worker stream's, the built-in executors') one workspace may hold while "
        "another workspace has a job that worker could start (at least one slot; alone, all of them); 1: no cap",
        _fraction,
    )
    grace_seconds: float = _setting(
        5.0, "JOBSD_GRACE_SECONDS", "graceful-shutdown grace for in-flight RPCs and running jobs", _number(float, 0)
    )
    shutdown_margin_seconds: float = _setting(
        10.0,
        "JOBSD_SHUTDOWN_MARGIN_SECONDS",
        "after SIGTERM the process exits within the grace plus this, whatever still runs (then with status 1, "
        "leaving unreleased leases to lapse)",
        _number(float, 0.1),
    )
    log_level: str = _setting("INFO", "JOBSD_LOG_LEVEL", "debug, info, warning or error", _log_level)
    log_format: str = _setting(
        "",
        "JOBSD_LOG_FORMAT",
        "`text` (one readable line per record) or `json` (one object per line)",
        _choice("text", "json"),
        shown="text on a terminal, else json",
    )
    # REST connections (gateway/protocol.py, gateway/connections.py; docs/security.md#limits).
    http_header_timeout_seconds: float = _setting(
        10.0,
        "JOBSD_HTTP_HEADER_TIMEOUT_SECONDS",
        "a REST request's line and headers must arrive within this (from the connection's start, or the "
        "request's first byte); else 408 and the connection is closed",
        _number(float, 0.01),
    )
    http_body_timeout_seconds: float = _setting(
        30.0,
        "JOBSD_HTTP_BODY_TIMEOUT_SECONDS",
        "a REST request's body must arrive within this after its headers; else 408",
        _number(float, 0.01),
    )
    http_idle_timeout_seconds: float = _setting(
        75.0,
        "JOBSD_HTTP_IDLE_TIMEOUT_SECONDS",
        "a kept-alive REST connection with no request this long is closed",
        _number(float, 0.01),
    )
    http_max_connections: int = _setting(
        1_000,
        "JOBSD_HTTP_MAX_CONNECTIONS",
        "REST connections open at once; beyond it a new one is answered 503 and closed",
        _number(int, 1),
    )
    # gRPC connections (app.py: grpc_server_options; docs/security.md#limits).
    grpc_handshake_timeout_seconds: float = _setting(
        10.0,
        "JOBSD_GRPC_HANDSHAKE_TIMEOUT_SECONDS",
        "a gRPC connection must send its HTTP/2 preface within this; else it is closed",
        _number(float, 0.01),
    )
    grpc_max_connection_idle_seconds: float = _setting(
        300.0,
        "JOBSD_GRPC_MAX_CONNECTION_IDLE_SECONDS",
        "a gRPC connection with no RPC in flight this long gets GOAWAY (clients reconnect when they need to)",
        _number(float, 0.01),
    )
    grpc_keepalive_seconds: float = _setting(
        60.0,
        "JOBSD_GRPC_KEEPALIVE_SECONDS",
        "how often the server pings each gRPC peer (a vanished client's streams end)",
        _number(float, 0.01),
    )
    grpc_keepalive_timeout_seconds: float = _setting(
        20.0,
        "JOBSD_GRPC_KEEPALIVE_TIMEOUT_SECONDS",
        "a gRPC peer that leaves a ping unanswered this long is dropped",
        _number(float, 0.01),
    )
    grpc_min_ping_interval_seconds: float = _setting(
        10.0,
        "JOBSD_GRPC_MIN_PING_INTERVAL_SECONDS",
        "clients may ping at most this often (with or without calls in flight)",
        _number(float, 0),
    )
    grpc_max_ping_strikes: int = _setting(
        2,
        "JOBSD_GRPC_MAX_PING_STRIKES",
        "pings too early a client may send before it gets GOAWAY `too_many_pings`",
        _number(int, 0),
    )
    grpc_max_concurrent_streams: int = _setting(
        1_000,
        "JOBSD_GRPC_MAX_CONCURRENT_STREAMS",
        "HTTP/2 streams at once on one gRPC connection (a client beyond it waits)",
        _number(int, 1),
    )
    # The kinds this process knows (built from the fields above when the settings are made).
    kind_registry: KindRegistry = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind_registry", self._build_registry())

    def _build_registry(self) -> KindRegistry:
        declarations = []
        if self.kinds_file:
            path = Path(self.kinds_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise InvalidArgument("JOBSD_KINDS_FILE", f"cannot read {path}: {exc.strerror or exc}") from None
            declarations.append(
                (f"JOBSD_KINDS_FILE ({path})", parse_kind_declarations(f"JOBSD_KINDS_FILE ({path})", text))
            )
        if self.kinds.strip():
            declarations.append(("JOBSD_KINDS", parse_kind_declarations("JOBSD_KINDS", self.kinds)))
        return build_registry(
            self.kind_defaults,
            declarations,
            concurrency_limits=self.kind_limits,
            time_limits=self.time_limits,
        )

    @property
    def kind_defaults(self) -> KindDefaults:
        return KindDefaults(
            lease=timedelta(seconds=self.lease_seconds),
            max_attempts=self.max_attempts,
            time_limit=timedelta(seconds=self.time_limit_seconds) if self.time_limit_seconds > 0 else None,
            retention=timedelta(hours=self.retention_hours),
        )

    @property
    def struct_limits(self) -> StructLimits:
        return StructLimits(
            datasource=self.max_datasource_bytes, params=self.max_params_bytes, result=self.max_result_bytes
        )

    @property
    def log_retention(self) -> timedelta:
        return timedelta(days=self.log_retention_days)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as the CLI and the docs see it."""

    name: str
    env: str
    meaning: str
    parse: Parser | None
    default: Any
    shown: str | None
    metavar: str | None
    aliases: tuple[str, ...]

    @property
    def flag(self) -> str:
        """`--` and the variable's name without JOBSD_: JOBSD_CONCURRENCY_LIMITS is --concurrency-limits."""
        return "--" + self.env.removeprefix("JOBSD_").lower().replace("_", "-")

    @property
    def default_text(self) -> str:
        """How the default reads in `--help` and the README."""
        if self.shown is not None:
            return self.shown
        value = self.default
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if value in ("", (), None):
            return "none"
        return str(value)

    @property
    def placeholder(self) -> str:
        """What the flag takes, as `--help` shows it."""
        if self.metavar:
            return self.metavar
        name = self.name
        if name.endswith("_addr"):
            return "HOST:PORT"
        for suffix in ("seconds", "hours", "days"):
            if name.endswith("_" + suffix):
                return suffix.upper()
        if isinstance(self.default, bool):
            return "on|off"
        if isinstance(self.default, int):
            return "N"
        return {"store": "URI", "public_url": "URL", "log_level": "LEVEL", "log_format": "text|json"}.get(name, "TOKEN")


def _settings_table() -> tuple[Setting, ...]:
    rows = []
    for f in dataclasses.fields(Settings):
        if "env" not in f.metadata:
            continue
        factory: Any = f.default_factory
        default = factory() if f.default is dataclasses.MISSING else f.default
        m = f.metadata
        rows.append(
            Setting(f.name, m["env"], m["meaning"], m["parse"], default, m["shown"], m["metavar"], m["aliases"])
        )
    return tuple(rows)


# Every setting, in the order of the Settings fields.
SETTINGS: tuple[Setting, ...] = _settings_table()


def split_addr(name: str, addr: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8080`) -> (host, port); port 0 asks for an ephemeral one."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise InvalidArgument(name, f"expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, named after its variable (--grpc-addr, --concurrency-limits, ...), with its meaning,
    its variable and its default in the help."""
    group = parser.add_argument_group("settings (each flag wins over its JOBSD_* variable)")
    for setting in SETTINGS:
        group.add_argument(
            setting.flag,
            *setting.aliases,
            dest=setting.name,
            default=None,
            metavar=setting.placeholder,
            help=f"{setting.meaning} [{setting.env}; default: {setting.default_text}]".replace("%", "%%"),
        )


def settings_from(environ: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> Settings:
    """Defaults, overridden by JOBSD_* variables, overridden by flags that were given."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = (flags or {}).get(setting.name)
        source = setting.flag
        if raw is None:
            raw = environ.get(setting.env)
            source = setting.env
        if raw is None:
            continue
        values[setting.name] = setting.parse(source, str(raw)) if setting.parse else str(raw)
    return Settings(**values)


def from_environment() -> Settings:
    return settings_from(os.environ)
