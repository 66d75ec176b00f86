"""The index plan of the MongoDB store and the query documents that use it.

Pure functions from store requests to filter / sort / hint, so the shapes can be checked without a server
(tests/mongo) and their plans with one (`explain()` in tests/mongo/test_real_server.py).

Every job list query is led by `workspace_id`, carries the visibility bound, and names (hints) the index whose
key order is its page order: equality fields first, then `created_at_us, _id`. The server then walks the index
in order and stops after one page; it never sorts in memory, however many jobs the store holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from jobsd.domain.clock import to_micros
from jobsd.domain.model import RUNNING_STATUSES, TERMINAL_STATUSES, JobStatus
from jobsd.store.base import ClaimRequest, JobQuery, LogQuery
from jobsd.store.mongo.codec import CLAIM_LOCK_UNTIL, LOG_PENDING, micros

__all__ = [
    "ACTIVE_STATUSES",
    "CLAIM_BY_KIND_INDEX",
    "CLAIM_INDEX",
    "JOBS",
    "JOBS_LOG",
    "LEASES_INDEX",
    "SLOTS",
    "TOKENS",
    "TURNS",
    "WORKSPACES",
    "FindPlan",
    "IndexSpec",
    "claim_plan",
    "collection_indexes",
    "lapsed_plan",
    "list_plans",
    "log_plan",
    "visible_at",
    "waiting_workspaces_plan",
]

JOBS: Final = "jobs"
JOBS_LOG: Final = "jobs_log"
# One document per concurrency key that has (or had) running jobs: {_id: key, kind, holders: [job ids]}.
SLOTS: Final = "slots"
# One document per workspace that shared a claim with others: {_id: workspace_id, served: its turn}.
TURNS: Final = "turns"
WORKSPACES: Final = "workspaces"
TOKENS: Final = "tokens"

ACTIVE_STATUSES: Final = tuple(sorted(s.value for s in JobStatus if s not in TERMINAL_STATUSES))
_RUNNING: Final = tuple(sorted(s.value for s in RUNNING_STATUSES))

CLAIM_INDEX: Final = "jobs_claim"
CLAIM_BY_KIND_INDEX: Final = "jobs_claim_by_kind"
LEASES_INDEX: Final = "jobs_leases"
_LIST_ORDER: Final = (("created_at_us", -1), ("_id", -1))
_CLAIM_ORDER: Final = (("created_at_us", 1), ("_id", 1))


@dataclass(frozen=True, slots=True)
class IndexSpec:
    name: str
    keys: tuple[tuple[str, int], ...]
    options: Mapping[str, Any] = field(default_factory=dict)


def _list_index(name: str, *equality: str) -> IndexSpec:
    return IndexSpec(name, (("workspace_id", 1), *((f, 1) for f in equality), ("created_at_us", 1), ("_id", 1)))


# Exact-match list filters, most selective first: the first one present picks the index.
_FILTER_INDEXES: Final = (
    ("pipe_id", "jobs_by_pipe_id"),
    ("pipe_name", "jobs_by_pipe_name"),
    ("kind", "jobs_by_kind"),
    ("status", "jobs_by_status"),
)
_BY_WORKSPACE: Final = "jobs_by_workspace"
_BY_DATASOURCE: Final = "jobs_by_datasource_name"
_BY_PIPE_NAME: Final = "jobs_by_pipe_name"
LOG_BY_WORKSPACE: Final = "jobs_log_by_workspace"
LOG_BY_JOB: Final = "jobs_log_by_job"
LOG_TTL: Final = "jobs_log_ttl"


def collection_indexes(log_retention: timedelta | None) -> dict[str, tuple[IndexSpec, ...]]:
    """Every index `MongoStore.open()` creates, per collection (the `_id` index is implicit). Without a log
    retention there is no TTL on jobs_log (`purge` alone enforces the retention it is given)."""
    log_ttl: tuple[IndexSpec, ...] = ()
    if log_retention is not None:
        seconds = max(1, int(log_retention.total_seconds()))
        log_ttl = (IndexSpec(LOG_TTL, (("updated_at", 1),), {"expireAfterSeconds": seconds}),)
    return {
        JOBS: (
            _list_index(_BY_WORKSPACE),
            _list_index("jobs_by_kind", "kind"),
            _list_index("jobs_by_status", "status"),
            _list_index("jobs_by_pipe_id", "pipe_id"),
            _list_index(_BY_PIPE_NAME, "pipe_name"),
            _list_index(_BY_DATASOURCE, "datasource_name"),
            # Claims (jobsd.domain.fairshare): the workspaces with waiting jobs (a distinct over workspace_id), then
            # one workspace's waiting jobs FIFO; all kinds or the requested ones.
            IndexSpec(CLAIM_INDEX, (("status", 1), ("workspace_id", 1), ("created_at_us", 1), ("_id", 1))),
            IndexSpec(
                CLAIM_BY_KIND_INDEX,
                (("status", 1), ("kind", 1), ("workspace_id", 1), ("created_at_us", 1), ("_id", 1)),
            ),
            # The lease sweeper: running jobs by lease end.
            IndexSpec(LEASES_INDEX, (("status", 1), ("lease_expires_at_us", 1), ("_id", 1))),
            # Retention: the TTL monitor deletes a job once its expires_at passed (about once a minute; reads do
            # not wait for it, they carry the bound themselves). Jobs without expires_at (running) never expire.
            IndexSpec("jobs_expiry", (("expires_at", 1),), {"expireAfterSeconds": 0}),
            IndexSpec(
                "jobs_idempotency",
                (("workspace_id", 1), ("idempotency_key", 1)),
                {"unique": True, "partialFilterExpression": {"idempotency_key": {"$type": "string"}}},
            ),
            # Only the few documents whose jobs_log rows are not copied yet: the sweep finds them without a scan.
            IndexSpec("jobs_log_pending", ((LOG_PENDING, 1),), {"partialFilterExpression": {LOG_PENDING: True}}),
        ),
        JOBS_LOG: (
            IndexSpec(LOG_BY_WORKSPACE, (("workspace_id", 1), ("updated_at_us", 1), ("job_id", 1), ("revision", 1))),
            IndexSpec(LOG_BY_JOB, (("workspace_id", 1), ("job_id", 1), ("updated_at_us", 1), ("revision", 1))),
            # JOBSD_LOG_RETENTION_DAYS; `purge` also deletes explicitly, so a late TTL monitor changes nothing.
            *log_ttl,
        ),
        WORKSPACES: (IndexSpec("workspaces_by_name", (("name", 1),), {"unique": True}),),
        TOKENS: (),
        SLOTS: (),
        TURNS: (),
    }


@dataclass(frozen=True, slots=True)
class FindPlan:
    """One find: the filter, the order, and the index (by name) that yields that order."""

    filter: dict[str, Any]
    sort: tuple[tuple[str, int], ...]
    hint: str
    limit: int = 0


def visible_at(now: datetime) -> dict[str, Any]:
    """The retention bound: a job whose expires_at is not after `now` is gone, whether or not TTL deleted it."""
    return {"$or": [{"expires_at_us": None}, {"expires_at_us": {"$gt": micros(now)}}]}


def _created_range(after: datetime | None, before: datetime | None) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if after is not None:
        bounds["$gte"] = micros(after)
    if before is not None:
        bounds["$lte"] = micros(before)
    return bounds


def list_plans(query: JobQuery) -> list[FindPlan]:
    """The finds `list_jobs` runs, newest first each; more than one only for a narrow read scope (one per data
    source / pipe the token may read, merged by the caller). No plan: the scope can read nothing."""
    equal: dict[str, Any] = {"workspace_id": query.scope.workspace_id}
    index = _BY_WORKSPACE
    for name, name_index in reversed(_FILTER_INDEXES):
        value = getattr(query.filter, name)
        if value is not None:
            equal[name] = value
            index = name_index  # reversed: the most selective filter present wins
    created = _created_range(query.filter.created_after, query.filter.created_before)
    conditions: list[dict[str, Any]] = [visible_at(query.now)]
    if query.after is not None:
        at, job_id = to_micros(query.after[0]), query.after[1]
        # The plain bound lets the index range stop at the cursor; the $or breaks ties on _id.
        created["$lte"] = min(created.get("$lte", at), at)
        conditions.append({"$or": [{"created_at_us": {"$lt": at}}, {"created_at_us": at, "_id": {"$lt": job_id}}]})
    if query.only_active:
        conditions.append({"status": {"$in": list(ACTIVE_STATUSES)}})

    def plan(extra: dict[str, Any], hint: str) -> FindPlan:
        doc = {**equal, **extra}
        if created:
            doc["created_at_us"] = dict(created)
        doc["$and"] = list(conditions)
        return FindPlan(doc, _LIST_ORDER, hint, query.limit)

    if query.scope.everything:
        return [plan({}, index)]
    plans: list[FindPlan] = []
    for field_name, names, hint in (
        ("datasource_name", query.scope.datasource_names, _BY_DATASOURCE),
        ("pipe_name", query.scope.pipe_names, _BY_PIPE_NAME),
    ):
        for name in sorted(names):
            if equal.get(field_name, name) != name:
                continue  # the request filters on another pipe: this readable one adds nothing
            plans.append(plan({field_name: name}, hint))
    return plans


def waiting_workspaces_plan(request: ClaimRequest) -> tuple[dict[str, Any], str]:
    """The filter and index of a distinct over `workspace_id`: the workspaces with waiting jobs of the requested
    kinds (a few index steps per workspace; retention is left to the claim that follows)."""
    kinds = sorted(set(request.kinds))
    doc: dict[str, Any] = {"status": JobStatus.WAITING.value}
    if kinds:
        doc["kind"] = kinds[0] if len(kinds) == 1 else {"$in": kinds}
    return doc, CLAIM_BY_KIND_INDEX if kinds else CLAIM_INDEX


def claim_plan(
    request: ClaimRequest, full_keys: Sequence[str], lock_free_at: datetime, *, concurrency_key: str | None = None
) -> FindPlan:
    """The oldest waiting, visible, unlocked job of the requested kinds in the request's workspace (a claim takes
    one workspace at a time) whose concurrency key is not full (or, with `concurrency_key`, of that one key)."""
    if request.workspace_id is None:
        raise ValueError("a claim plan is for one workspace: the request names none")
    kinds = sorted(set(request.kinds))
    doc: dict[str, Any] = {"status": JobStatus.WAITING.value}
    if kinds:
        doc["kind"] = kinds[0] if len(kinds) == 1 else {"$in": kinds}
    doc["workspace_id"] = request.workspace_id
    if concurrency_key is not None:
        doc["concurrency_key"] = concurrency_key
    elif full_keys:
        doc["concurrency_key"] = {"$nin": sorted(full_keys)}
    doc["$and"] = [
        visible_at(request.now),
        # Not locked by another claimer (or its lock lapsed: that claimer died between lock and claim).
        {"$or": [{CLAIM_LOCK_UNTIL: None}, {CLAIM_LOCK_UNTIL: {"$lte": micros(lock_free_at)}}]},
    ]
    return FindPlan(doc, _CLAIM_ORDER, CLAIM_BY_KIND_INDEX if kinds else CLAIM_INDEX, 1)


def lapsed_plan(now: datetime, limit: int) -> FindPlan:
    doc: dict[str, Any] = {
        "status": {"$in": list(_RUNNING)},
        "lease_expires_at_us": {"$lt": micros(now)},
        "$and": [visible_at(now)],
    }
    return FindPlan(doc, (("lease_expires_at_us", 1), ("_id", 1)), LEASES_INDEX, limit)


def log_plan(query: LogQuery) -> FindPlan:
    """jobs_log rows newest first (updated_at, job_id, revision), on the workspace index or, for one job, on the
    job index (where job_id is fixed, so it drops out of the order)."""
    wanted = query.filter
    doc: dict[str, Any] = {"workspace_id": query.workspace_id, **wanted.log_equalities()}
    created = _created_range(wanted.created_after, wanted.created_before)
    if created:
        doc["created_at_us"] = created
    if query.after is not None:
        at, job_id, revision = to_micros(query.after[0]), query.after[1], query.after[2]
        doc["updated_at_us"] = {"$lte": at}
        doc["$and"] = [
            {
                "$or": [
                    {"updated_at_us": {"$lt": at}},
                    {"updated_at_us": at, "job_id": {"$lt": job_id}},
                    {"updated_at_us": at, "job_id": job_id, "revision": {"$lt": revision}},
                ]
            }
        ]
    if wanted.job_id is not None:
        return FindPlan(doc, (("updated_at_us", -1), ("revision", -1)), LOG_BY_JOB, query.limit)
    return FindPlan(doc, (("updated_at_us", -1), ("job_id", -1), ("revision", -1)), LOG_BY_WORKSPACE, query.limit)
