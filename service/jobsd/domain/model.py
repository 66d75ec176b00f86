"""The job and the records around it. Plain data: no transport, no storage."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import operator
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar, cast

__all__ = [
    "TERMINAL_STATUSES",
    "Job",
    "JobKind",
    "JobStatus",
    "LogEntry",
    "ProcessedData",
    "Progress",
    "QueryProgress",
    "Statistics",
    "TokenRecord",
    "Workspace",
    "builder",
    "datasource_id_for",
    "evolve",
    "new_job",
    "new_log_entry",
]

_T = TypeVar("_T")
_set_slot = object.__setattr__


def builder(cls: type[_T]) -> type[_T]:
    """A constructor of `cls`, a frozen dataclass with slots and no `__post_init__`: called as `cls` is (the same
    fields, defaults and factories), it makes a real `cls` at the cost of an unfrozen dataclass.

    A frozen `__init__` sets each field through `object.__setattr__`, a C call of ~1,200 instructions, where a plain
    one stores the slot directly: Job's 40 fields cost ~67k instructions per job, the builder's ~22k. The builder is
    a plain dataclass with the same slots (so the same memory layout), whose `__init__` ends by making the object
    a `cls` (`__class__` assignment, allowed between classes of one layout); from then on it is frozen like any."""
    spec: list[tuple[str, Any, Any]] = []
    for f in fields(cls):  # type: ignore[arg-type]
        if f.default_factory is not MISSING:
            spec.append((f.name, f.type, dataclasses.field(default_factory=f.default_factory)))
        else:
            spec.append((f.name, f.type, dataclasses.field(default=f.default)))

    def __post_init__(self: object) -> None:
        _set_slot(self, "__class__", cls)

    draft = dataclasses.make_dataclass(
        f"_{cls.__name__}Builder",
        spec,
        namespace={"__post_init__": __post_init__},
        slots=True,
        eq=False,
        repr=False,
        match_args=False,
    )
    if getattr(draft, "__slots__", ()) != getattr(cls, "__slots__", None) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a slotted dataclass the builder can make")
    return cast(type[_T], draft)


class JobStatus(enum.StrEnum):
    """Where a job is in its life. Each value is documented because users see them.

    WAITING: created, queued until a worker claims it and its concurrency key has a free slot.
    WORKING: a worker holds its lease and is running it.
    CANCELLING: cancel was requested while working; the worker stops at its next heartbeat.
    DONE: finished successfully (terminal).
    ERROR: finished with an error, or its lease lapsed too many times (terminal).
    CANCELLED: cancelled before it started, or its worker stopped after a cancel request (terminal).
    """

    WAITING = "waiting"
    WORKING = "working"
    CANCELLING = "cancelling"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED})
RUNNING_STATUSES = frozenset({JobStatus.WORKING, JobStatus.CANCELLING})


class JobKind(enum.StrEnum):
    """The built-in (Tinybird) kinds. The kinds a jobsd knows, with their rules, are its `KindRegistry`."""

    IMPORT = "import"
    POPULATEVIEW = "populateview"
    COPY = "copy"
    QUERY = "query"
    DELETE_DATA = "delete_data"
    SINK = "sink"


@dataclass(frozen=True, slots=True)
class QueryProgress:
    query_id: str
    status: str


@dataclass(frozen=True, slots=True)
class Statistics:
    bytes: int = 0
    row_count: int = 0


@dataclass(frozen=True, slots=True)
class ProcessedData:
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Progress:
    """What a worker reports on a heartbeat or at the finish; None/empty means "unchanged"."""

    progress_percentage: float | None = None
    queries: tuple[QueryProgress, ...] | None = None
    statistics: Statistics | None = None
    quarantine_rows: int | None = None
    invalid_lines: int | None = None
    processed_data: ProcessedData | None = None
    result: dict[str, Any] | None = None
    errors: tuple[str, ...] | None = None

    def is_empty(self) -> bool:
        return not self.given()

    def given(self) -> dict[str, Any]:
        """The fields this report sets (those not None), by name; each names the `Job` field it replaces."""
        return {name: value for name in _PROGRESS_FIELDS if (value := getattr(self, name)) is not None}


_PROGRESS_FIELDS = tuple(f.name for f in fields(Progress))


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    workspace_id: str
    kind: str
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    revision: int
    # The revision at which the status last changed: an event is a status change iff it equals `revision`.
    status_revision: int
    concurrency_key: str
    # Visible until this instant; None while a worker runs it (a running job never vanishes).
    expires_at: datetime | None
    started_at: datetime | None = None
    datasource: dict[str, Any] | None = None
    pipe_id: str | None = None
    pipe_name: str | None = None
    query_id: str | None = None
    query_sql: str | None = None
    mode: str | None = None
    url: str | None = None
    import_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    progress_percentage: float = 0.0
    queries: tuple[QueryProgress, ...] = ()
    statistics: Statistics | None = None
    quarantine_rows: int = 0
    invalid_lines: int = 0
    processed_data: ProcessedData | None = None
    error: str | None = None
    errors: tuple[str, ...] = ()
    attempt: int = 0
    # Times the job went back to the queue unfinished: its lease lapsed, or its worker released it (a graceful
    # stop). Bounded by the service's max_returns (JOBSD_MAX_RETURNS), so a job that keeps coming back ends.
    returns: int = 0
    # Why the job last went back to the queue unfinished (its worker stopped heartbeating, or released it): set
    # with `returns`, kept to the end, so a job on its second run says so. The next run starts its figures over.
    note: str | None = None
    worker_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    idempotency_key: str | None = None
    request_id: str | None = None
    # Set when a cancel is requested while waiting/working (kept for the log and the worker).
    cancel_requested_at: datetime | None = None

    @property
    def datasource_id(self) -> str | None:
        value = (self.datasource or {}).get("id")
        return str(value) if value is not None else None

    @property
    def datasource_name(self) -> str | None:
        value = (self.datasource or {}).get("name")
        return str(value) if value is not None else None


_JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Job))
_JOB_FIELD_SET = frozenset(_JOB_FIELDS)
_JOB_FIELD_INDEX = {name: i for i, name in enumerate(_JOB_FIELDS)}
_job_values = operator.attrgetter(*_JOB_FIELDS)
# `Job(...)`, by `builder`: what every new job and every state change is made with.
new_job = builder(Job)


def evolve(job: Job, **changes: Any) -> Job:
    """`dataclasses.replace(job, **changes)` at a fraction of the cost: every state change makes one or two new
    jobs, and `replace` (a dict of all 40 fields, then the frozen `__init__` with 40 keywords) was a visible share of
    a write. Job has no `__post_init__`, so its 40 values (read in one C call), changed, are all `replace` passes."""
    if not changes.keys() <= _JOB_FIELD_SET:
        raise TypeError(f"Job has no field(s) {sorted(changes.keys() - _JOB_FIELD_SET)}")
    values = list(_job_values(job))
    for name, value in changes.items():
        values[_JOB_FIELD_INDEX[name]] = value
    return new_job(*values)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One row of jobs_log: a status change, with the columns of Tinybird's jobs_log service data source."""

    job_id: str
    job_type: str
    status: str
    error: str | None
    workspace_id: str
    request_id: str
    pipe_id: str | None
    datasource_id: str | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    job_metadata: dict[str, Any]
    revision: int


new_log_entry = builder(LogEntry)


@dataclass(frozen=True, slots=True)
class Workspace:
    id: str
    name: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token: only the SHA-256 of the secret is kept."""

    token_hash: str
    name: str
    # None: an internal service token valid for every workspace.
    workspace_id: str | None
    scopes: tuple[str, ...]
    created_at: datetime


def datasource_id_for(workspace_id: str, name: str) -> str:
    """The stable Tinybird-style id (`t_<32 hex>`) of a data source: the same in jobs and in the data plane."""
    return "t_" + hashlib.sha256(f"{workspace_id}/{name}".encode()).hexdigest()[:32]
