"""One frozen settings object, read from flags and JOBSD_* environment variables (flags win)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from jobsd.domain.rules import DEFAULT_KIND_LIMITS, QueueRules
from jobsd.errors import InvalidArgument

__all__ = ["Settings", "add_arguments", "settings_from", "split_addr"]


@dataclass(frozen=True, slots=True)
class Settings:
    grpc_addr: str = "127.0.0.1:50051"
    # Empty disables the REST gateway.
    http_addr: str = "127.0.0.1:8080"
    # A bare /metrics listener for processes without the gateway (the gateway serves /metrics too); empty: none.
    metrics_addr: str = ""
    store: str = "sqlite:///.jobsd/jobsd.db"
    # Base of job_url and next links; empty: a trusted Host (trusted_hosts), else the gateway's own address.
    public_url: str = ""
    # Host header values (host or host:port) links may be built on; never an untrusted Host.
    trusted_hosts: tuple[str, ...] = ()
    admin_token: str = ""
    service_token: str = ""
    executors: bool = True
    retention_hours: float = 48.0
    log_retention_days: float = 30.0
    lease_seconds: float = 30.0
    max_attempts: int = 3
    kind_limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_KIND_LIMITS))
    # Background sweeps (leases, retention): how often they run.
    sweep_interval_seconds: float = 1.0
    # Where the executors keep their DuckDB data plane; empty: next to the SQLite file, or ./.jobsd.
    data_dir: str = ""
    executor_concurrency: int = 4
    # Workspace files of the data plane kept open at once (least recently used idle ones are closed).
    dataplane_max_open_workspaces: int = 16
    # file:// imports read only under this directory; empty: file imports are off.
    import_file_root: str = ""
    # CIDR networks imports may fetch from although they are not public (loopback, private, link-local...).
    import_allow_networks: tuple[str, ...] = ()
    import_max_redirects: int = 5
    # Nesting depth of any JSON input: REST bodies, NDJSON lines, Struct fields.
    max_json_depth: int = 64
    max_watch_streams: int = 20_000
    watch_buffer: int = 256
    max_request_bytes: int = 4 * 1024 * 1024
    # Worker protocol v2: jobs per CreateJobs call, worker streams per server, free slots per worker stream.
    max_create_batch: int = 500
    max_worker_streams: int = 1_000
    max_worker_slots: int = 256
    grace_seconds: float = 5.0
    log_level: str = "INFO"

    @property
    def rules(self) -> QueueRules:
        return QueueRules(
            retention=timedelta(hours=self.retention_hours),
            lease=timedelta(seconds=self.lease_seconds),
            max_attempts=self.max_attempts,
            kind_limits=dict(self.kind_limits),
        )

    @property
    def log_retention(self) -> timedelta:
        return timedelta(days=self.log_retention_days)

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def split_addr(name: str, addr: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8080`) -> (host, port); port 0 asks for an ephemeral one."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise InvalidArgument(name, f"expected HOST:PORT, got {addr!r}")
    return host.strip("[]"), int(port)


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "on", "yes"):
        return True
    if lowered in ("0", "false", "off", "no"):
        return False
    raise InvalidArgument(name, f"expected on/off, got {raw!r}")


def _number(name: str, raw: str, kind: type[int] | type[float], minimum: float) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidArgument(name, f"expected a number, got {raw!r}") from None
    if value < minimum:
        raise InvalidArgument(name, f"must be at least {minimum}, got {raw!r}")
    return value


def _limits(name: str, raw: str) -> dict[str, int]:
    limits = dict(DEFAULT_KIND_LIMITS)
    for part in filter(None, (p.strip() for p in raw.split(","))):
        kind, sep, value = part.partition("=")
        if not sep:
            raise InvalidArgument(name, f"expected kind=N[,kind=N...], got {part!r}")
        limits[kind.strip()] = int(_number(name, value.strip(), int, 1))
    return limits


def _networks(name: str, raw: str) -> tuple[str, ...]:
    networks: list[str] = []
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            networks.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise InvalidArgument(name, f"expected CIDR networks such as 10.0.0.0/8 or ::1/128, got {part!r}") from None
    return tuple(networks)


# setting name -> (environment variable, parser)
_FIELDS: dict[str, tuple[str, Any]] = {
    "grpc_addr": ("JOBSD_GRPC_ADDR", None),
    "http_addr": ("JOBSD_HTTP_ADDR", None),
    "metrics_addr": ("JOBSD_METRICS_ADDR", None),
    "store": ("JOBSD_STORE", None),
    "public_url": ("JOBSD_PUBLIC_URL", None),
    "trusted_hosts": ("JOBSD_TRUSTED_HOSTS", lambda n, r: tuple(h.strip() for h in r.split(",") if h.strip())),
    "admin_token": ("JOBSD_ADMIN_TOKEN", None),
    "service_token": ("JOBSD_SERVICE_TOKEN", None),
    "executors": ("JOBSD_EXECUTORS", _bool),
    "retention_hours": ("JOBSD_RETENTION_HOURS", lambda n, r: _number(n, r, float, 0.001)),
    "log_retention_days": ("JOBSD_LOG_RETENTION_DAYS", lambda n, r: _number(n, r, float, 0.001)),
    "lease_seconds": ("JOBSD_LEASE_SECONDS", lambda n, r: _number(n, r, float, 0.1)),
    "max_attempts": ("JOBSD_MAX_ATTEMPTS", lambda n, r: _number(n, r, int, 1)),
    "kind_limits": ("JOBSD_CONCURRENCY_LIMITS", _limits),
    "sweep_interval_seconds": ("JOBSD_SWEEP_INTERVAL_SECONDS", lambda n, r: _number(n, r, float, 0.01)),
    "data_dir": ("JOBSD_DATA_DIR", None),
    "executor_concurrency": ("JOBSD_EXECUTOR_CONCURRENCY", lambda n, r: _number(n, r, int, 1)),
    "dataplane_max_open_workspaces": ("JOBSD_DATAPLANE_MAX_OPEN_WORKSPACES", lambda n, r: _number(n, r, int, 1)),
    "import_file_root": ("JOBSD_IMPORT_FILE_ROOT", None),
    "import_allow_networks": ("JOBSD_IMPORT_ALLOW_NETWORKS", _networks),
    "import_max_redirects": ("JOBSD_IMPORT_MAX_REDIRECTS", lambda n, r: _number(n, r, int, 0)),
    "max_json_depth": ("JOBSD_MAX_JSON_DEPTH", lambda n, r: _number(n, r, int, 1)),
    "max_watch_streams": ("JOBSD_MAX_WATCH_STREAMS", lambda n, r: _number(n, r, int, 1)),
    "max_create_batch": ("JOBSD_MAX_CREATE_BATCH", lambda n, r: _number(n, r, int, 1)),
    "max_worker_streams": ("JOBSD_MAX_WORKER_STREAMS", lambda n, r: _number(n, r, int, 1)),
    "max_worker_slots": ("JOBSD_MAX_WORKER_SLOTS", lambda n, r: _number(n, r, int, 1)),
    "grace_seconds": ("JOBSD_GRACE_SECONDS", lambda n, r: _number(n, r, float, 0)),
    "log_level": ("JOBSD_LOG_LEVEL", None),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One --flag per setting (--grpc-addr, --store, ...); the help names the environment variable."""
    for name, (env, _) in _FIELDS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=f"(env {env})")


def settings_from(environ: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> Settings:
    """Defaults, overridden by JOBSD_* variables, overridden by flags that were given."""
    values: dict[str, Any] = {}
    for name, (env, parse) in _FIELDS.items():
        raw = (flags or {}).get(name)
        source = "--" + name.replace("_", "-")
        if raw is None:
            raw = environ.get(env)
            source = env
        if raw is None:
            continue
        values[name] = parse(source, str(raw)) if parse else str(raw)
    return Settings(**values)


def from_environment() -> Settings:
    return settings_from(os.environ)
