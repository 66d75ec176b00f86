"""Job kinds as configuration: what each kind of job is allowed to do, and the one place that says so.

A `KindSpec` holds a kind's rules — cancellable while working or not, how its concurrency key is built and how
many of its jobs may run per key, its lease, attempts, run-time limit and retention. A `KindRegistry` is the set
of kinds a jobsd knows: the six Tinybird kinds, built in with their documented rules, plus the kinds the operator
declares (`JOBSD_KINDS_FILE`, a TOML file, and/or `JOBSD_KINDS`, the same TOML as text). Everything that applies
a rule asks the registry: validation (only declared kinds are created or claimed), the state machine (may a
working job be cancelled), claims (key and limit), leases, attempts, the run-time sweep and retention.

The declaration format, one table per kind (every field optional):

    [thumbnail]
    description = "render thumbnails of uploaded images"
    cancellable_while_working = true      # a cancel reaches the running handler (ctx.cancel_requested)
    concurrency_key = "workspace"         # or "target": one queue per target data source
    concurrency_limit = 4                 # running jobs per concurrency key
    lease_seconds = 30                    # default: JOBSD_LEASE_SECONDS
    max_attempts = 3                      # default: JOBSD_MAX_ATTEMPTS
    time_limit_seconds = 600              # default: JOBSD_TIME_LIMIT_SECONDS; 0: no limit
    retention_hours = 48                  # default: JOBSD_RETENTION_HOURS

A built-in kind may be listed too, to change its numbers; its rules the Tinybird API documents (whether it can be
cancelled while working, its concurrency key) are fixed. One parser reads both sources; every problem is an
`InvalidArgument` that names the source, the kind and the field.
"""

from __future__ import annotations

import enum
import math
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from jobsd.domain.model import Job, JobKind, JobStatus
from jobsd.errors import InvalidArgument

__all__ = [
    "BUILTIN_KINDS",
    "KIND_FIELDS",
    "KeyScope",
    "KindDefaults",
    "KindRegistry",
    "KindSpec",
    "build_registry",
    "parse_kind_declarations",
]

_KIND_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class KeyScope(enum.StrEnum):
    """How a kind's concurrency key is built: what its limit counts running jobs over."""

    # `workspace:kind`: the limit counts the workspace's running jobs of the kind.
    WORKSPACE = "workspace"
    # `workspace:kind:target`: one queue per target data source (two populates of one table never overlap).
    TARGET = "target"


@dataclass(frozen=True, slots=True)
class KindSpec:
    name: str
    lease: timedelta
    max_attempts: int
    # None: no run-time limit.
    time_limit: timedelta | None
    retention: timedelta
    concurrency_limit: int
    concurrency_key: KeyScope = KeyScope.WORKSPACE
    cancellable_while_working: bool = False
    # Jobs of this kind must name a data source (`datasource.name`).
    needs_datasource: bool = False
    description: str = ""
    builtin: bool = False

    def key_for(self, workspace_id: str, target_datasource: str | None) -> str:
        """`workspace:kind`, or `workspace:kind:target` for kinds keyed by their target data source."""
        if self.concurrency_key is KeyScope.TARGET and target_datasource:
            return f"{workspace_id}:{self.name}:{target_datasource}"
        return f"{workspace_id}:{self.name}"

    def is_cancellable(self, status: JobStatus) -> bool:
        """Waiting jobs always; working ones only for kinds whose workers can stop part-way."""
        return status is JobStatus.WAITING or (status is JobStatus.WORKING and self.cancellable_while_working)

    @property
    def heartbeat_interval(self) -> timedelta:
        # Three heartbeats per lease: one lost heartbeat never costs the lease.
        return self.lease / 3

    def deadline(self, job: Job) -> datetime | None:
        """When a started job runs out of run time (from its first start: a requeued job keeps its clock)."""
        if self.time_limit is None or job.started_at is None:
            return None
        return job.started_at + self.time_limit

    def lease_until(self, job: Job, now: datetime) -> datetime:
        """The lease a claim or heartbeat gives: one lease from now, never past the run-time deadline, so a job
        that runs out of time lapses there and the lease sweep ends it."""
        until = now + self.lease
        deadline = self.deadline(job)
        return until if deadline is None else min(until, deadline)

    def cancel_rule(self) -> str:
        if self.cancellable_while_working:
            return f"{self.name} jobs can be cancelled while waiting or working"
        return f"{self.name} jobs can be cancelled only while waiting"

    def time_limit_text(self) -> str:
        return "none" if self.time_limit is None else _seconds_text(self.time_limit)

    def run_time_error(self) -> str:
        """The `error` of a job that ran past its limit."""
        return (
            f"Job exceeded the run-time limit of {self.time_limit_text()} for {self.name} jobs "
            "(time_limit_seconds; JOBSD_TIME_LIMITS)"
        )


def _seconds_text(value: timedelta) -> str:
    seconds = value.total_seconds()
    return f"{seconds:g} s"


@dataclass(frozen=True, slots=True)
class KindDefaults:
    """The numbers a kind gets when it does not set its own: the global settings."""

    lease: timedelta = timedelta(seconds=30)
    max_attempts: int = 3
    time_limit: timedelta | None = timedelta(hours=24)
    retention: timedelta = timedelta(hours=48)


# The Tinybird kinds: (concurrency key, limit, cancellable while working, needs a data source, description).
_BUILTINS: tuple[tuple[str, KeyScope, int, bool, bool, str], ...] = (
    (JobKind.IMPORT, KeyScope.WORKSPACE, 4, False, True, "import a CSV or NDJSON file from a URL into a data source"),
    (
        JobKind.POPULATEVIEW,
        KeyScope.TARGET,
        1,
        True,
        True,
        "populate a data source from a materialized node, partition by partition",
    ),
    (JobKind.COPY, KeyScope.TARGET, 1, True, True, "run SQL and write its result into a data source"),
    (JobKind.QUERY, KeyScope.WORKSPACE, 4, False, False, "run SQL in the background and keep its result"),
    (JobKind.DELETE_DATA, KeyScope.TARGET, 1, False, True, "delete the rows of a data source matching a condition"),
    (JobKind.SINK, KeyScope.WORKSPACE, 2, False, False, "export a pipe's result to an external destination"),
)


def _builtin_specs(defaults: KindDefaults) -> dict[str, KindSpec]:
    return {
        str(name): KindSpec(
            name=str(name),
            lease=defaults.lease,
            max_attempts=defaults.max_attempts,
            time_limit=defaults.time_limit,
            retention=defaults.retention,
            concurrency_limit=limit,
            concurrency_key=scope,
            cancellable_while_working=cancellable,
            needs_datasource=needs_datasource,
            description=description,
            builtin=True,
        )
        for name, scope, limit, cancellable, needs_datasource, description in _BUILTINS
    }


class KindRegistry:
    """The kinds one jobsd knows, by name."""

    def __init__(self, specs: Iterable[KindSpec], defaults: KindDefaults | None = None) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._defaults = defaults or KindDefaults()
        self.names: tuple[str, ...] = tuple(sorted(self._specs))

    def __iter__(self) -> Iterator[KindSpec]:
        return (self._specs[name] for name in self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __len__(self) -> int:
        return len(self._specs)

    def get(self, name: str) -> KindSpec:
        """The kind's rules. A kind no longer declared (jobs created before a restart that dropped it) gets the
        defaults: not cancellable while working, keyed by workspace, one at a time."""
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        d = self._defaults
        return KindSpec(name, d.lease, d.max_attempts, d.time_limit, d.retention, concurrency_limit=1)

    def require(self, name: str, field: str = "kind") -> KindSpec:
        """The declared kind, or InvalidArgument naming `field` and listing the declared kinds."""
        spec = self._specs.get(name)
        if spec is None:
            raise InvalidArgument(field, f"unknown kind {name!r}; expected one of {', '.join(self.names)}")
        return spec

    def is_cancellable(self, job: Job) -> bool:
        return self.get(job.kind).is_cancellable(job.status)

    def limit_for(self, kind: str) -> int:
        return self.get(kind).concurrency_limit


# Declaration field -> what it holds (the help of the README and the errors).
KIND_FIELDS: Mapping[str, str] = {
    "description": "a line saying what the kind does",
    "cancellable_while_working": "true: a cancel reaches a working job's handler; false: only waiting jobs cancel",
    "concurrency_key": '"workspace" (workspace:kind) or "target" (workspace:kind:target data source)',
    "concurrency_limit": "running jobs per concurrency key (at least 1)",
    "lease_seconds": "the worker lease; workers heartbeat every third of it",
    "max_attempts": "lease lapses before a job ends in error (at least 1)",
    "time_limit_seconds": "run-time limit from the first start; 0: none",
    "retention_hours": "how long a job stays visible after it is created",
}
# What a built-in kind may not change: the Tinybird API documents it.
_FIXED_FOR_BUILTINS = ("cancellable_while_working", "concurrency_key")


def parse_kind_declarations(source: str, text: str) -> dict[str, dict[str, Any]]:
    """TOML text -> {kind: {field: value}}, every field checked; InvalidArgument names `source`, kind and field."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(source, f"is not valid TOML: {exc}") from None
    declared: dict[str, dict[str, Any]] = {}
    for name, table in document.items():
        if not _KIND_NAME.match(name):
            raise InvalidArgument(
                source, f"kind {name!r}: a kind name is 1-64 lower-case letters, digits and _, starting with a letter"
            )
        if not isinstance(table, dict):
            raise InvalidArgument(
                source, f"kind {name!r}: expected a table of its rules, e.g. {name} = {{concurrency_limit = 2}}"
            )
        declared[name] = {key: _check_field(source, name, key, value) for key, value in table.items()}
    return declared


def _check_field(source: str, kind: str, key: str, value: Any) -> Any:
    def bad(problem: str) -> InvalidArgument:
        return InvalidArgument(source, f"kind {kind!r}, field {key!r}: {problem}, got {value!r}")

    def number(minimum: float, *, integer: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad("expected a number")
        if integer and not isinstance(value, int):
            raise bad("expected a whole number")
        if value < minimum:
            raise bad(f"must be at least {minimum:g}")
        return value

    if key == "description":
        if not isinstance(value, str) or len(value) > 200:
            raise bad("expected a string of at most 200 characters")
        return value
    if key == "cancellable_while_working":
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value
    if key == "concurrency_key":
        if value not in tuple(KeyScope):
            raise bad('expected "workspace" or "target"')
        return KeyScope(value)
    if key in ("concurrency_limit", "max_attempts"):
        return int(number(1, integer=True))
    if key == "lease_seconds":
        return float(number(0.1))
    if key == "time_limit_seconds":
        return float(number(0))
    if key == "retention_hours":
        return float(number(0.001))
    raise InvalidArgument(source, f"kind {kind!r}: unknown field {key!r}; expected some of {', '.join(KIND_FIELDS)}")


def build_registry(
    defaults: KindDefaults,
    declarations: Iterable[tuple[str, Mapping[str, Mapping[str, Any]]]] = (),
    *,
    concurrency_limits: Mapping[str, int] | None = None,
    time_limits: Mapping[str, float] | None = None,
) -> KindRegistry:
    """Built-in kinds, then each source's declarations (a kind declared by two sources is refused), then the
    per-kind overrides `JOBSD_CONCURRENCY_LIMITS` and `JOBSD_TIME_LIMITS` (which must name declared kinds)."""
    specs = _builtin_specs(defaults)
    declared_by: dict[str, str] = {}
    for source, declared in declarations:
        for name, fields in declared.items():
            if name in declared_by:
                raise InvalidArgument(source, f"kind {name!r} is already declared in {declared_by[name]}")
            declared_by[name] = source
            specs[name] = _declare(source, name, fields, specs.get(name), defaults)
    for setting, overrides, apply in (
        ("JOBSD_CONCURRENCY_LIMITS", concurrency_limits, _with_limit),
        ("JOBSD_TIME_LIMITS", time_limits, _with_time_limit),
    ):
        for name, value in (overrides or {}).items():
            if name not in specs:
                raise InvalidArgument(setting, f"unknown kind {name!r}; declared kinds: {', '.join(sorted(specs))}")
            specs[name] = apply(specs[name], value)
    return KindRegistry(specs.values(), defaults)


def _with_limit(spec: KindSpec, value: float) -> KindSpec:
    return replace(spec, concurrency_limit=int(value))


def _with_time_limit(spec: KindSpec, value: float) -> KindSpec:
    return replace(spec, time_limit=timedelta(seconds=value) if value > 0 else None)


def _declare(
    source: str, name: str, fields: Mapping[str, Any], builtin: KindSpec | None, defaults: KindDefaults
) -> KindSpec:
    if builtin is not None:
        for key in _FIXED_FOR_BUILTINS:
            current = getattr(builtin, key)
            if key in fields and fields[key] != current:
                raise InvalidArgument(
                    source,
                    f"kind {name!r}, field {key!r}: is fixed for the built-in kind {name} (the Tinybird Jobs API "
                    f"documents it as {str(current).lower()}); only its numbers can change",
                )
        base = builtin
    else:
        base = KindSpec(
            name=name,
            lease=defaults.lease,
            max_attempts=defaults.max_attempts,
            time_limit=defaults.time_limit,
            retention=defaults.retention,
            concurrency_limit=1,
        )
    changes: dict[str, Any] = {}
    for key, value in fields.items():
        if key == "lease_seconds":
            changes["lease"] = timedelta(seconds=value)
        elif key == "time_limit_seconds":
            changes["time_limit"] = timedelta(seconds=value) if value > 0 else None
        elif key == "retention_hours":
            changes["retention"] = timedelta(hours=value)
        else:
            changes[key] = value
    spec = replace(base, **changes)
    if builtin is None and spec.concurrency_key is KeyScope.TARGET:
        # A kind queued per target data source cannot be created without one.
        spec = replace(spec, needs_datasource=True)
    return spec


# The Tinybird kinds with the default numbers: what a jobsd knows when the operator declares nothing.
BUILTIN_KINDS = build_registry(KindDefaults())
